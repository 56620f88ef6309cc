"""Heatmaps land on the object in the ORIGINAL image under any preprocessing.

A hand-built model whose true CAM is known: a 1x1 conv fires on pure red only,
global pooling, a linear head (class 0 = "red"). Its Grad-CAM at the conv is
the red region of the model input, so the stored map must peak on the red
square of the original image wherever the transforms put it.
"""

import base64
import io
import pathlib
import re

import fiftyone as fo
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import v2

from gradcam_engine import compute_cams, score_cams
from gradcam_engine.audit.export import export_review
from gradcam_engine.runs import cam_runs
from gradcam_engine.runs.storage import heatmap_to_float
from gradcam_engine.sources.models import IMAGENET_MEAN, IMAGENET_STD

# landscape, portrait, square and wide: several aspect ratios in one run
SIZES = [(120, 80), (80, 120), (100, 100), (150, 60)]
NORM = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)


class RedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            # normalised red scores ~6.1, grey ~-0.6, black padding ~1.7: bias -3
            self.features.weight.copy_(torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1))
            self.features.bias.fill_(-3.0)
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.head.bias.zero_()

    def forward(self, x):
        a = torch.relu(self.features(x))
        return self.head(a.mean(dim=(2, 3)))


def object_box(width: int, height: int) -> tuple[int, int, int, int]:
    """Off-centre (up and right), inside the central square a center crop keeps."""
    m = min(width, height)
    cx, cy, half = width // 2 + m * 15 // 100, height // 2 - m * 15 // 100, m // 10
    return cx - half, cy - half, cx + half, cy + half


def letterbox(img: Image.Image, n: int = 64) -> torch.Tensor:
    """A plain function: keep the aspect, pad to a square with black."""
    scale = n / max(img.size)
    w, h = round(img.width * scale), round(img.height * scale)
    canvas = Image.new("RGB", (n, n), (0, 0, 0))
    canvas.paste(img.resize((w, h), Image.BILINEAR), ((n - w) // 2, (n - h) // 2))
    return NORM(T.functional.to_tensor(canvas))


TRANSFORMS = {
    "torchvision_center_crop": T.Compose(
        [T.Resize(64), T.CenterCrop(56), T.ToTensor(), NORM]
    ),
    "v2_center_crop": v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(64),
            v2.CenterCrop(56),
            v2.ToDtype(torch.float32, scale=True),
            NORM,
        ]
    ),
    "timm_crop_pct": create_transform(
        input_size=(3, 56, 56), crop_pct=0.875, interpolation="bilinear"
    ),
    "letterbox_function": letterbox,
    # a shorter-side resize: landscape and portrait inputs differ in size
    "shorter_side_mixed_sizes": T.Compose([T.Resize(48), T.ToTensor(), NORM]),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("geometry")
    ds = fo.Dataset()
    samples = []
    for width, height in SIZES:
        arr = np.full((height, width, 3), 128, dtype=np.uint8)
        x0, y0, x1, y1 = object_box(width, height)
        arr[y0:y1, x0:x1] = (255, 0, 0)
        path = root / f"{width}x{height}.png"
        Image.fromarray(arr).save(path)
        box = [x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height]
        samples.append(
            fo.Sample(
                filepath=str(path),
                ground_truth=fo.Detections(
                    detections=[fo.Detection(label="red", bounding_box=box)]
                ),
            )
        )
    ds.add_samples(samples)
    yield ds
    ds.delete()


def zoo_model():
    """A FiftyOne TorchImageModel around RedNet; its own transforms upsize the
    shorter side to 96 (fiftyone's MinResize): inputs of several sizes."""
    import fiftyone.utils.torch as fout

    config = fout.TorchImageModelConfig(
        {
            "entrypoint_fcn": RedNet,
            "image_min_dim": 96,
            "image_mean": list(IMAGENET_MEAN),
            "image_std": list(IMAGENET_STD),
            "classes": ["red", "other"],
            "output_processor_cls": "fiftyone.utils.torch.ClassifierOutputProcessor",
        }
    )
    return fout.TorchImageModel(config)


@pytest.mark.parametrize("name", [*sorted(TRANSFORMS), "zoo_model_own_transforms"])
def test_heatmap_peak_and_focus_on_the_object(dataset, name):
    key = f"g_{name}"
    model, transforms = (
        (zoo_model(), None) if name.startswith("zoo") else (RedNet(), TRANSFORMS[name])
    )
    summary = compute_cams(
        dataset, model, layers=["features"], run_key=key, target=0,
        transforms=transforms, batch_size=4, num_workers=0, progress=False,
    )  # fmt: skip
    assert summary.num_errors == 0, summary.errors
    score_cams(dataset, run_key=key, gt_field="ground_truth")
    field = f"{key}_features"
    for filepath, heatmap, focus in zip(
        *dataset.values(["filepath", field, f"{field}_focus"]), strict=True
    ):
        width, height = map(int, filepath.rsplit("/", 1)[1][:-4].split("x"))
        cam = heatmap_to_float(heatmap)
        assert cam.shape == (height, width)  # small images: stored at full size
        py, px = np.unravel_index(np.argmax(cam), cam.shape)
        x0, y0, x1, y1 = object_box(width, height)
        assert x0 <= px < x1 and y0 <= py < y1, (name, filepath, (px, py))
        assert focus >= 0.8, (name, filepath, focus)
    assert "geometry" in cam_runs.get_cam_run(dataset, key).config


class DarkNet(RedNet):
    """One input channel: fires where the grayscale image is darker than 0.4
    (the red square's luma is 0.30, the grey background's 0.50)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.features.weight.fill_(-1.0)
            self.features.bias.fill_(0.4)


def test_grayscale_model_center_crop(dataset):
    gray = T.Compose([T.Grayscale(), T.Resize(64), T.CenterCrop(56), T.ToTensor()])
    summary = compute_cams(
        dataset, DarkNet(), layers=["features"], run_key="gray", target=0,
        transforms=gray, num_workers=0, progress=False,
    )  # fmt: skip
    assert summary.num_errors == 0, summary.errors
    score_cams(dataset, run_key="gray", gt_field="ground_truth")
    assert min(dataset.values("gray_features_focus")) >= 0.8


def test_seen_box_of_a_center_crop(dataset):
    compute_cams(
        dataset, RedNet(), layers=["features"], run_key="seen", target=0,
        transforms=TRANSFORMS["torchvision_center_crop"], num_workers=0,
        progress=False,
    )  # fmt: skip
    boxes = dict(zip(*dataset.values(["filepath", "seen_seen"]), strict=True))
    # 120x80 -> Resize(64) 96x64 (1.25 px per input px) -> CenterCrop(56): the
    # model saw a 70x70 square, 25 px in from the left and 5 px from the top.
    box = next(b for path, b in boxes.items() if path.endswith("120x80.png"))
    expected = [25 / 120, 5 / 80, 70 / 120, 70 / 80]
    assert box.bounding_box == pytest.approx(expected, abs=0.01)
    # ... and the stored map is 0 where the model never looked.
    heatmap = dataset.match(fo.ViewField("filepath").ends_with("120x80.png")).first()
    cam = heatmap_to_float(heatmap["seen_features"])
    assert cam[:, :24].max() == 0 and cam[:, 96:].max() == 0 and cam[76:].max() == 0


def test_review_page_shows_the_seen_box(dataset, tmp_path):
    compute_cams(
        dataset, RedNet(), layers=["features"], run_key="page", target=0,
        transforms=TRANSFORMS["torchvision_center_crop"], num_workers=0,
        progress=False,
    )  # fmt: skip
    score_cams(dataset, run_key="page", gt_field="ground_truth")
    path = export_review(dataset, "page", tmp_path / "r.html", top_k=4)
    text = pathlib.Path(path).read_text(encoding="utf-8")
    # 120x80: the model saw 70x70 of 120x80 = 51% (drawn as a dashed yellow box)
    assert "<dt>seen</dt><dd>51% (yellow box)</dd>" in text
    assert text.count("(yellow box)") == 4  # every sample here was cropped
    overlays = re.findall(r'class="overlay" alt="heatmap 120x80.png" src="data:image/'
                          r'jpeg;base64,([^"]+)"', text)  # fmt: skip
    over = np.asarray(Image.open(io.BytesIO(base64.b64decode(overlays[0]))))
    left = round(25 / 120 * over.shape[1])  # the box's left edge
    column = over[:, max(0, left - 1) : left + 2].reshape(-1, 3).astype(int)
    # bright red and green: the yellow dashes (JPEG smears their blue); the
    # heatmap there is 0 (dark blue) and the grey image is dimmed by it
    yellow = (column[:, 0] > 180) & (column[:, 1] > 160)
    assert yellow.sum() >= 20


@pytest.mark.parametrize(
    "transforms, match",
    [
        (T.Compose([T.RandomResizedCrop(56), T.ToTensor(), NORM]), "random"),
        (T.Compose([T.Resize(56), T.RandomHorizontalFlip(), T.ToTensor()]), "random"),
        (
            T.Compose([T.Resize(56), T.RandomRotation((30, 30)), T.ToTensor()]),
            "not an axis-aligned",
        ),
    ],
)
def test_unmappable_transforms_refused_before_any_write(dataset, transforms, match):
    fields = set(dataset.get_field_schema())
    with pytest.raises(ValueError, match=match) as info:
        compute_cams(
            dataset, RedNet(), layers=["features"], run_key="refused",
            transforms=transforms, num_workers=0, progress=False,
        )  # fmt: skip
    assert "Compose[" in str(info.value)  # names the transform and its parts
    assert set(dataset.get_field_schema()) == fields
    assert "refused" not in dataset.list_runs()


def test_a_size_the_transform_cannot_take_is_that_sample_error(dataset):
    base = TRANSFORMS["torchvision_center_crop"]

    def no_wide(img):
        if img.width > 2 * img.height:
            raise RuntimeError("too wide")
        return base(img)

    summary = compute_cams(
        dataset, RedNet(), layers=["features"], run_key="wide", target=0,
        transforms=no_wide, num_workers=0, progress=False,
    )  # fmt: skip
    assert (summary.num_computed, summary.num_errors) == (3, 1)
    errors = [e for e in dataset.values("wide_error") if e]
    assert len(errors) == 1 and "too wide" in errors[0]
