"""Multi-label classifiers (issue 21 item 3): ``task="multilabel"``, one map
per explained label stored on its own fo.Classification of ``{R}_labels``
(the per-object storage of detection runs), on a real FiftyOne dataset.

The known-truth model's "red" logit reads only red pixels and its "green"
logit only green ones: each label's map must land on its own square.
"""

from __future__ import annotations

import fiftyone as fo
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import ToTensor

from gradcam_engine import (
    compute_cams,
    get_cam_run,
    score_cams,
    score_label_maps,
    show_label_maps,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ["red", "green", "blue"]
SIZE = 48
# (top, left) of each 12 px square per image; None: not in that image
SQUARES = [
    {"red": (4, 4), "green": (30, 30)},
    {"red": (30, 6)},
    {"green": (6, 28)},
]


class RedGreenModel(nn.Module):
    """A 1x1 conv whose channel c fires only on pure colour c; logit c is the
    mean of channel c, shifted so that an absent colour scores sigmoid < 0.05
    and a 12 px square on a 48 px image > 0.9."""

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            conv.weight.copy_((2 * torch.eye(3) - 1)[:, :, None, None])
            conv.bias.zero_()
        self.features = nn.Sequential(conv, nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3)) * 96.0 - 3.0


def _square_mask(top, left, side=12):
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("multilabel")
    ds = fo.Dataset()
    samples = []
    for k, squares in enumerate(SQUARES):
        image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
        for name, (top, left) in squares.items():
            image[top : top + 12, left : left + 12, CLASSES.index(name)] = 255
        path = root / f"img{k}.png"
        Image.fromarray(image).save(path)
        truth = [fo.Classification(label=name) for name in squares]
        objects = [
            fo.Detection(label=name, bounding_box=[left / SIZE, top / SIZE, 0.25, 0.25])
            for name, (top, left) in squares.items()
        ]
        samples.append(
            fo.Sample(
                filepath=str(path),
                ground_truth=fo.Classifications(classifications=truth),
                single=fo.Classification(label=next(iter(squares))),
                objects=fo.Detections(detections=objects),
            )
        )
    ds.add_samples(samples)
    yield ds
    ds.delete()


def _run(ds, run_key, **kwargs):
    kwargs.setdefault("classes", CLASSES)
    return compute_cams(
        ds,
        RedGreenModel(),
        ["features"],
        "gradcam",
        run_key,
        task="multilabel",
        transforms=ToTensor(),
        progress=False,
        num_workers=0,
        **kwargs,
    )


def _inside(heatmap: fo.Heatmap, mask: np.ndarray) -> float:
    """Share of the map's mass inside ``mask`` (the map resized to the image)."""
    arr = np.asarray(Image.fromarray(heatmap.map).resize((SIZE, SIZE)), float)
    return float(arr[mask].sum() / max(arr.sum(), 1e-9))


def _check_labels_on_their_squares(ds, run_key):
    for sample, squares in zip(ds, SQUARES, strict=True):
        assert sample[f"{run_key}_error"] is None
        labels = sample[f"{run_key}_labels"].classifications
        assert sorted(c.label for c in labels) == sorted(squares)
        for c in labels:
            assert c.confidence > 0.9
            assert c.features_map.map.shape == (SIZE, SIZE)  # longest side 64
            mask = _square_mask(*squares[c.label])
            assert _inside(c.features_map, mask) > 0.95, (c.label, sample.filepath)
        # the combined map covers every explained square
        combined = sample[f"{run_key}_features"]
        for top, left in squares.values():
            assert _inside(combined, _square_mask(top, left)) > 0.2
        top_label = sample[f"{run_key}_prediction"]
        assert top_label.label in squares and top_label.confidence > 0.9


def test_predicted_labels_each_map_on_its_own_square(dataset):
    summary = _run(dataset, "ml_pred")
    assert summary.num_computed == 3 and not summary.num_errors
    _check_labels_on_their_squares(dataset, "ml_pred")
    info = get_cam_run(dataset, "ml_pred")
    assert info.config["task"] == "multilabel"
    assert info.config["multilabel"]["threshold"] == 0.5
    assert "ml_pred_labels" in summary.fields_written
    # a threshold above every sigmoid explains nothing: empty labels, done
    _run(dataset, "ml_high", confidence_thresh=0.999)
    for sample in dataset:
        assert sample["ml_high_labels"].classifications == []
        assert sample["ml_high_features"].map.max() == 0


def test_ground_truth_labels_each_map_on_its_own_square(dataset):
    summary = _run(dataset, "ml_label", target="label", label_field="ground_truth")
    assert summary.num_computed == 3 and not summary.num_errors
    _check_labels_on_their_squares(dataset, "ml_label")
    # the App draws sample heatmaps: the chosen label's map is copied there
    assert show_label_maps(dataset, "ml_label", "green") == 2
    for sample, squares in zip(dataset, SQUARES, strict=True):
        chosen = sample["ml_label_features_label"]
        if "green" not in squares:
            assert chosen is None
            continue
        assert _inside(chosen, _square_mask(*squares["green"])) > 0.95
    assert (
        "ml_label_features_label"
        in get_cam_run(dataset, "ml_label").config["owned_fields"]
    )
    with pytest.raises(ValueError, match="'blue' was not explained"):
        show_label_maps(dataset, "ml_label", "blue")
    # the combined map per sample scores like any run's map
    score_cams(dataset, "ml_label", gt_field="objects", progress=False)
    assert min(dataset.values("ml_label_features_focus")) > 0.9
    # focus per label against the objects of its own class
    means = score_label_maps(dataset, "ml_label", "objects")
    assert means["red"] > 0.95 and means["green"] > 0.95
    for sample in dataset:
        for c in sample["ml_label_labels"].classifications:
            assert c.features_focus > 0.95


def test_refused_before_any_write(dataset):
    before = set(dataset.get_field_schema())
    with pytest.raises(ValueError, match="target must be 'predicted'.*got 0"):
        _run(dataset, "ml_bad", target=0)
    with pytest.raises(ValueError, match="needs a fo.Classifications field"):
        _run(dataset, "ml_bad", target="label", label_field="single")
    with pytest.raises(ValueError, match="confidence_thresh must be in"):
        _run(dataset, "ml_bad", confidence_thresh=1.5)
    with pytest.raises(ValueError, match="not classes of the model: 'red'"):
        _run(
            dataset,
            "ml_bad",
            target="label",
            label_field="ground_truth",
            classes=["purple", "green", "blue"],
        )
    assert set(dataset.get_field_schema()) == before
    assert "ml_bad" not in dataset.list_runs()


def build_red_green():
    """A model source (``CAM_AUDIT_MODEL_SOURCES``): ``(module, transforms,
    classes)``, for the App's operators."""
    return RedGreenModel().eval(), ToTensor(), list(CLASSES)
