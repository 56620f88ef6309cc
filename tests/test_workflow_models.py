"""compute_cams with real model families: pretrained EfficientNet-Lite0 and DeepLabV3."""

from __future__ import annotations

import fiftyone as fo
import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from PIL import Image

from gradcam_engine import compute_cams, get_cam_run
from gradcam_engine.sources.models import ResizeNormalize


def test_pretrained_efficientnet_predictions_land_in_fields(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "chelsea.png")
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "coffee.jpg", quality=95)
    ds = fo.Dataset()
    ds.add_samples(
        [fo.Sample(filepath=str(tmp_path / n)) for n in ("chelsea.png", "coffee.jpg")]
    )
    summary = compute_cams(
        ds, "efficientnet-lite0-imagenet", run_key="eff", progress=False
    )
    assert summary.fields == {"_conv_head": "eff_conv_head"}
    assert summary.num_computed == 2
    assert ds.values("eff_prediction.label") == ["Egyptian cat", "espresso"]
    assert ds.values("eff_target.label") == ["Egyptian cat", "espresso"]
    assert all(c > 0.2 for c in ds.values("eff_prediction.confidence"))
    config = get_cam_run(ds, "eff").config
    assert config["model"].startswith("efficientnet-lite0-imagenet")
    assert config["classes"].startswith("1000 classes")
    # forcing another class explains that class instead
    compute_cams(
        ds, "efficientnet-lite0-imagenet", run_key="cup", target=968, progress=False
    )
    assert ds.values("cup_target.label") == ["cup", "cup"]
    assert ds.values("cup_prediction.label") == ["Egyptian cat", "espresso"]
    ds.delete()


@pytest.fixture(scope="module")
def seg_model():
    torch.manual_seed(0)
    return torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=4
    ).eval()


def test_segmentation_with_predicted_and_ground_truth_masks(tmp_path, seg_model):
    photo = skimage.data.astronaut()[::2, ::2]  # 256 x 256
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.roll(photo, 40 * i, axis=1)).save(path)
        paths.append(str(path))
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    masks = []
    for i in range(3):
        mask = np.zeros((256, 256), np.uint8)
        mask[40:200, 60:180] = 2 if i < 2 else 3
        mask[0:10, 0:10] = 1
        masks.append(fo.Segmentation(mask=mask))
    masks[2] = None
    ds.set_values("gt_seg", masks)
    common = dict(
        task="segmentation",
        layers=["backbone.16"],
        transforms=ResizeNormalize(96),
        num_workers=0,
        progress=False,
    )
    summary = compute_cams(ds, seg_model, run_key="segpred", **common)
    assert summary.num_computed == 3
    assert set(ds.values("segpred_target.label")) <= {"0", "1", "2", "3"}
    assert ds.values("segpred_prediction.label") == ds.values("segpred_target.label")
    assert ds.first().segpred_backbone_16.map.shape == (256, 256)

    summary = compute_cams(
        ds, seg_model, run_key="seggt", target="label", label_field="gt_seg", **common
    )
    assert (summary.num_computed, summary.num_errors) == (2, 1)
    assert ds.values("seggt_target.label") == ["2", "2", None]
    assert "no segmentation" in ds.values("seggt_error")[2]
    confidences = ds.values("seggt_target.confidence")
    assert all(0 < c <= 1 for c in confidences[:2])

    classes = ["background", "sky", "person", "rocket"]
    compute_cams(
        ds, seg_model, run_key="segint", target=1, label_field="gt_seg",
        classes=classes, **common,
    )  # fmt: skip
    assert ds.values("segint_target.label")[:2] == ["sky", "sky"]
    with pytest.raises(ValueError, match="Segmentation"):
        ds.set_values("cls", [fo.Classification(label="x")] * 3)
        compute_cams(
            ds, seg_model, run_key="bad", target="label", label_field="cls", **common
        )
    ds.delete()
