"""sources.geometry: the probe recovers known transform geometry, and maps land."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import v2

from gradcam_engine.runs.storage import to_uint8_map
from gradcam_engine.sources.geometry import (
    Geometry,
    GeometryError,
    TransformGeometry,
    map_to_original,
)
from gradcam_engine.sources.models import ResizeNormalize, load_model, timm_transforms

EVAL = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])


def letterbox(img: Image.Image, n: int = 224) -> torch.Tensor:
    scale = n / max(img.size)
    w, h = round(img.width * scale), round(img.height * scale)
    canvas = Image.new("RGB", (n, n), (114, 114, 114))
    canvas.paste(img.resize((w, h), Image.BILINEAR), ((n - w) // 2, (n - h) // 2))
    return T.functional.to_tensor(canvas)


def test_center_crop_geometry_matches_the_arithmetic():
    # 640x480 -> Resize(256) gives 341x256; CenterCrop(224) starts at (58, 16)
    geometry = TransformGeometry(EVAL)((640, 480))
    assert geometry.input_size == (224, 224)
    assert geometry.scale == pytest.approx((640 / 341, 480 / 256), abs=0.01)
    assert geometry.offset == pytest.approx((58 * 640 / 341, 16 * 480 / 256), abs=0.5)
    x0, y0, x1, y1 = geometry.seen_box()
    assert (x0, y0) == pytest.approx((108.9, 30.0), abs=0.5)
    assert (x1, y1) == pytest.approx((108.9 + 224 * 640 / 341, 450.0), abs=0.5)


@pytest.mark.parametrize(
    "transforms",
    [
        v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(256),
                v2.CenterCrop(224),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize([0.5] * 3, [0.2] * 3),
            ]
        ),  # fmt: skip
        create_transform(input_size=(3, 224, 224), crop_pct=0.875),
    ],
    ids=["transforms_v2", "timm"],
)
def test_normalised_v2_and_timm_give_the_same_geometry(transforms):
    reference = TransformGeometry(EVAL)((480, 640))
    geometry = TransformGeometry(transforms)((480, 640))
    assert geometry.input_size == reference.input_size
    assert geometry.seen_box() == pytest.approx(reference.seen_box(), abs=0.5)


def test_letterbox_sees_everything_and_large_images_stay_accurate():
    geometry = TransformGeometry(letterbox)((4000, 3000))  # 8-bit ramp, 4000 px
    # scale 4000/224; the 168-row image sits 28 rows below the top of the input
    assert geometry.scale == pytest.approx((4000 / 224, 4000 / 224), rel=0.002)
    assert geometry.offset[1] == pytest.approx(-28 * 4000 / 224, abs=4000 / 256)
    assert geometry.seen_box_relative() == pytest.approx([0, 0, 1, 1], abs=0.002)


def test_map_to_original_zero_where_unseen_and_on_the_right_spot():
    geometry = TransformGeometry(EVAL)((640, 480))
    cam = np.zeros((224, 224), np.float32)
    cam[100:124, 150:174] = 1.0  # a spot right of the crop's centre
    out = map_to_original(cam, geometry, (320, 240))
    assert out.shape == (240, 320)
    assert out[:, :53].max() == 0 and out[:, 268:].max() == 0  # cropped away
    ys, xs = np.nonzero(out > 0.5)
    # input (162, 112) -> original (108.9 + 162 * 1.877, 30 + 112 * 1.875) / 2
    assert xs.mean() == pytest.approx((108.9 + 162 * 640 / 341) / 2, abs=1.5)
    assert ys.mean() == pytest.approx((30 + 112 * 1.875) / 2, abs=1.5)
    with pytest.raises(ValueError, match=r"cam has shape \(7, 7\).*224x224"):
        map_to_original(np.zeros((7, 7)), geometry, (320, 240))


@pytest.mark.parametrize("size", [(300, 200), (320, 240), (640, 480)])
def test_default_whole_image_resize_is_placed_as_a_stretch(size):
    fitted = TransformGeometry(ResizeNormalize(64))(size)
    exact = Geometry(size, (64, 64), (size[0] / 64, size[1] / 64), (0.0, 0.0))
    cam = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    mapped = to_uint8_map(cam, size, 256, fitted).astype(int)
    # white noise, the worst case for the fit's sub-pixel offsets (a 5x
    # downscale of an undithered ramp read 0.13 input pixels off at 320x240,
    # and left the first column blank)
    difference = np.abs(mapped - to_uint8_map(cam, size, 256, exact))
    assert difference.max() <= 3 and difference.mean() < 0.5
    assert mapped[:, 0].any() and mapped[:, -1].any()
    # the exact placement is the plain stretch, to warpAffine's 1/32-pixel
    # grid (neighbours of white noise differ by up to 255: 255 / 64 ~ 4 levels)
    stretched = to_uint8_map(cam, size, 256)
    assert (
        np.abs(to_uint8_map(cam, size, 256, exact) - stretched.astype(int)).max() <= 4
    )


def test_a_deterministic_flip_is_mapped_mirrored():
    flip = T.Compose([T.Resize((50, 60)), T.functional.hflip, T.ToTensor()])
    geometry = TransformGeometry(flip)((120, 100))
    assert geometry.scale[0] == pytest.approx(-2.0, abs=0.05)
    cam = np.zeros((50, 60), np.float32)
    cam[:, :10] = 1.0  # left of the input = right of the original
    out = map_to_original(cam, geometry, (120, 100))
    assert out[:, 105:].min() > 0.9 and out[:, :90].max() == 0


@pytest.mark.parametrize("channels", [1, 3])
def test_grayscale_transforms_are_probed_in_gray(channels):
    gray = T.Compose(
        [T.Grayscale(channels), T.Resize(256), T.CenterCrop(224), T.ToTensor()]
    )
    reference = TransformGeometry(EVAL)((480, 640))
    geometry = TransformGeometry(gray)((480, 640))
    assert geometry.input_size == reference.input_size
    assert geometry.seen_box() == pytest.approx(reference.seen_box(), abs=0.5)


def test_probes_once_per_size():
    calls = []

    def counting(img):
        calls.append(img.size)
        return EVAL(img)

    probe = TransformGeometry(counting)
    before = len(calls)
    first = probe((300, 200))
    assert probe((300, 200)) is first and len(calls) == before + 1


@pytest.mark.parametrize(
    "transforms, match",
    [
        (T.Compose([T.RandomResizedCrop(64), T.ToTensor()]), r"Compose\[Rand.*random"),
        (T.Compose([T.ColorJitter(0.5), T.ToTensor()]), "random"),
        (T.Compose([T.RandomRotation((10, 10)), T.ToTensor()]), "not an axis-aligned"),
        (
            lambda img: T.functional.to_tensor(
                T.functional.perspective(
                    img,
                    [[0, 0], [99, 0], [99, 99], [0, 99]],
                    [[10, 5], [90, 0], [99, 99], [0, 90]],
                )
            ),
            "not an axis-aligned",
        ),  # fmt: skip
        (
            lambda img: T.functional.to_tensor(
                T.functional.adjust_brightness(img, 1.3)
            ),
            "change colours",
        ),  # fmt: skip
        (lambda img: torch.zeros(5), r"shape \(5,\)"),
        (lambda img: 1 / 0, "raised on a 640x480 probe image: ZeroDivisionError"),
    ],
    ids=[
        "random_crop",
        "jitter",
        "rotation",
        "perspective",
        "brightness",
        "flat",
        "raises",
    ],
)
def test_unmappable_transforms_are_refused(transforms, match):
    with pytest.raises(GeometryError, match=match):
        TransformGeometry(transforms)


def test_geometry_description_is_json_and_stable():
    import json

    first = TransformGeometry(EVAL).reference()
    assert first == TransformGeometry(EVAL).reference()
    assert json.loads(json.dumps(first)) == first
    assert first["sizes"]["640x480"]["seen_box"] == pytest.approx(
        [0.1701, 0.0625, 0.6574, 0.875], abs=0.001
    )


def test_timm_models_get_their_own_eval_transforms():
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    transforms = timm_transforms(model)
    assert transforms is not None and load_model(model).transforms is not None
    # the model's own input size and crop_pct (resnet18's default weights: 0.95)
    config = timm.data.resolve_data_config({}, model=model)
    geometry = TransformGeometry(transforms)((640, 480))
    assert geometry.input_size == tuple(config["input_size"][1:])
    assert geometry.seen_box_relative()[3] == pytest.approx(
        config["crop_pct"], abs=0.01
    )
    assert timm_transforms(nn.Conv2d(3, 3, 1)) is None
    assert load_model(nn.Conv2d(3, 3, 1)).transforms is None  # -> 224 resize


def test_seen_box_clips_to_the_image():
    geometry = Geometry((100, 50), (10, 10), (20.0, 10.0), (-50.0, 0.0))
    assert geometry.seen_box() == (0.0, 0.0, 100.0, 50.0)
    assert geometry.seen_box_relative() == [0.0, 0.0, 1.0, 1.0]


def test_one_pixel_wide_images_map():
    probe = TransformGeometry(ResizeNormalize(16))
    for size in [(1, 1), (1, 40), (2, 3)]:
        geometry = probe(size)
        assert geometry.seen_box_relative() == pytest.approx([0, 0, 1, 1], abs=0.01)
        out = map_to_original(np.ones((16, 16), np.float32), geometry, size)
        assert out.shape == size[::-1] and out.min() > 0.99


@pytest.mark.parametrize(
    "transforms",
    [
        ResizeNormalize(224),
        EVAL,
        letterbox,
        T.Compose([T.Resize(200), T.Pad(5), T.ToTensor()]),
    ],
    ids=["resize", "crop", "letterbox", "pad"],
)
def test_normal_equations_fit_what_lstsq_fits(transforms, monkeypatch):
    import gradcam_engine.sources.geometry as geometry_module

    sizes = [(320, 240), (481, 333), (97, 501), (1000, 30)]
    fast = TransformGeometry(transforms)
    fitted = [fast(size) for size in sizes]
    monkeypatch.setattr(
        geometry_module,
        "_solve_normal",
        lambda gram, rhs, design, coords: np.linalg.lstsq(design, coords, rcond=None)[
            0
        ],
    )
    slow = TransformGeometry(transforms)
    for size, geometry in zip(sizes, fitted, strict=True):
        reference = slow(size)
        assert geometry.input_size == reference.input_size
        assert geometry.scale == pytest.approx(reference.scale, rel=1e-9)
        assert geometry.offset == pytest.approx(reference.offset, abs=1e-6)
