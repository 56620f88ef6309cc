"""compute_cams on a patches view (issue 21 item 4): a classifier explained
on each object crop, its map placed back onto the crop's place in the source
image, on the source sample's ``{R}_detections`` (the per-object storage of
detection runs). Known truth: the red/green model of test_multilabel.py.
"""

from __future__ import annotations

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image
from test_multilabel import SIZE, SQUARES, RedGreenModel, _inside, _square_mask
from torchvision.transforms import ToTensor

from gradcam_engine import compute_cams, delete_cam_run, get_cam_run
from gradcam_engine.audit.detection_view import show_detection_maps

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ["red", "green", "blue"]
MARGIN = 4  # the boxes hold their square and a black margin


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("patches")
    ds = fo.Dataset()
    samples = []
    for k, squares in enumerate(SQUARES):
        image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
        boxes = []
        for name, (top, left) in squares.items():
            image[top : top + 12, left : left + 12, CLASSES.index(name)] = 255
            x0, y0 = max(left - MARGIN, 0), max(top - MARGIN, 0)
            x1, y1 = min(left + 12 + MARGIN, SIZE), min(top + 12 + MARGIN, SIZE)
            box = [x0 / SIZE, y0 / SIZE, (x1 - x0) / SIZE, (y1 - y0) / SIZE]
            boxes.append(fo.Detection(label=name, bounding_box=box))
        path = root / f"img{k}.png"
        Image.fromarray(image).save(path)
        samples.append(
            fo.Sample(filepath=str(path), ground_truth=fo.Detections(detections=boxes))
        )
    ds.add_samples(samples)
    yield ds
    ds.delete()


def _run(collection, run_key, **kwargs):
    return compute_cams(
        collection,
        RedGreenModel(),
        ["features"],
        "gradcam",
        run_key,
        classes=CLASSES,
        transforms=ToTensor(),
        num_workers=0,
        **{"progress": False, **kwargs},
    )


@pytest.mark.parametrize("target", ["predicted", "label"])
def test_patch_maps_land_on_their_square_in_the_source_image(dataset, target):
    patches = dataset.to_patches("ground_truth")
    key = f"crops_{target}"
    label_field = "ground_truth" if target == "label" else None
    summary = _run(patches, key, target=target, label_field=label_field)
    assert summary.num_computed == 3 and not summary.num_errors
    assert get_cam_run(dataset, key).config["task"] == "patches"
    patch_ids = set(patches.values("ground_truth.id"))
    for sample, squares in zip(dataset, SQUARES, strict=True):
        dets = sample[f"{key}_detections"].detections
        assert {d.gt_id for d in dets} <= patch_ids
        assert sorted(d.label for d in dets) == sorted(squares)
        for d in dets:
            assert d.prediction == d.label and d.confidence > 0.9
            # the crop's map, placed on the whole source image
            assert d.features_map.map.shape == (SIZE, SIZE)
            mask = _square_mask(*squares[d.label])
            assert _inside(d.features_map, mask) > 0.9, (d.label, sample.filepath)
        combined = sample[f"{key}_features"]
        for top, left in squares.values():
            assert _inside(combined, _square_mask(top, left)) > 0.2
    # the App's "show the selected detection's CAM" works on a patch's map
    det = dataset.first()[f"{key}_detections"].detections[0]
    chosen = show_detection_maps(dataset, key, [det.id])
    assert chosen == {dataset.first().id: det.id}
    shown = dataset.first()[f"{key}_features_detection"].map
    assert np.array_equal(shown, det.features_map.map)
    again = _run(patches, key, target=target, label_field=label_field)
    assert again.num_computed == 0 and again.num_skipped == 3  # resumes
    replaced = _run(
        patches, key, target=target, label_field=label_field, overwrite=True
    )
    assert replaced.num_computed == 3 and replaced.run_key == key
    delete_cam_run(dataset, key)
    assert not [f for f in dataset.get_field_schema() if f.startswith(key)]


def test_unsupported_patch_runs_refused_before_any_write(dataset):
    before = set(dataset.get_field_schema())
    patches = dataset.to_patches("ground_truth")
    with pytest.raises(ValueError, match="task='multilabel' is not supported"):
        _run(patches, "crops_bad", task="multilabel")
    with pytest.raises(ValueError, match="pass label_field='ground_truth'"):
        _run(patches, "crops_bad", target="label", label_field="other")
    assert set(dataset.get_field_schema()) == before
    assert "crops_bad" not in dataset.list_runs()
