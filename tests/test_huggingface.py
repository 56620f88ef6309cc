"""Hugging Face transformers image classifiers (issue 21 item 1), built offline
from tiny configs (random weights).

The engine reads the logits from the output object and the token grid from
the config (ViT: 1 prefix token, DeiT: 2, Swin: none and a merged stage);
each map equals pytorch-grad-cam's on the same layer with a hand-written
reshape. compute_cams takes the image processor as the transform and
``id2label`` as the classes, directly and through a registered model source
loaded from a ``save_pretrained`` directory.
"""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
from PIL import Image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    SwinConfig,
    SwinForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from gradcam_engine import CamEngine, compute_cams, get_cam_run, load_hf_classifier
from gradcam_engine.sources.huggingface import ImageProcessorTransform
from gradcam_engine.sources.models import load_model, register_model_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32
LABELS = {0: "cat", 1: "dog", 2: "bird"}
_VIT = dict(
    image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2,
    num_attention_heads=2, intermediate_size=64, id2label=LABELS,
)  # fmt: skip


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(**_VIT)).eval()


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "vit":
        return _vit()
    if name == "deit":  # class and distillation tokens
        return DeiTForImageClassificationWithTeacher(DeiTConfig(**_VIT)).eval()
    if name == "dinov2":  # class and 2 register tokens, 14-pixel patches
        config = Dinov2WithRegistersConfig(
            **(_VIT | dict(image_size=28, patch_size=14, num_register_tokens=2))
        )
        return Dinov2WithRegistersForImageClassification(config).eval()
    if name == "swin":  # [B, h*w, C] tokens, 8x8 then 4x4 after a merge
        config = SwinConfig(
            image_size=SIZE, patch_size=4, embed_dim=16, depths=[1, 1],
            num_heads=[1, 2], window_size=4, id2label=LABELS,
        )  # fmt: skip
        return SwinForImageClassification(config).eval()
    cnn = dict(hidden_sizes=[8, 16], depths=[1, 1], id2label=LABELS)
    if name == "convnext":
        config = ConvNextConfig(num_stages=2, **cnn)
        return ConvNextForImageClassification(config).eval()
    config = ResNetConfig(embedding_size=8, layer_type="basic", **cnn)
    return ResNetForImageClassification(config).eval()


class _Logits(nn.Module):
    """pytorch-grad-cam needs a tensor output (its HF tutorial's wrapper)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits


def _tokens(prefix: int, grid: int):
    def reshape(t):
        return t[:, prefix:].reshape(t.shape[0], grid, grid, -1).permute(0, 3, 1, 2)

    return reshape


@pytest.mark.parametrize(
    ("name", "layer", "reshape"),
    [
        ("vit", "vit.layers.1.layernorm_before", _tokens(1, 4)),
        ("deit", "deit.layers.1.layernorm_before", _tokens(2, 4)),
        ("dinov2", "dinov2_with_registers.encoder.layer.1.norm1", _tokens(3, 2)),
        ("swin", "swin.encoder.layers.1.blocks.0.layernorm_before", _tokens(0, 4)),
        ("convnext", "convnext.encoder.stages.1", None),
        ("resnet", "resnet.encoder.stages.1", None),
    ],
)
def test_engine_reads_logits_grid_and_default_layer_from_the_model(
    name, layer, reshape
):
    model = _build(name)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with CamEngine(model) as engine:
        assert engine.layer_names == [layer]
        result = engine.compute(x, [None, 2])
    with torch.no_grad():
        predicted = int(model(x).logits[0].argmax())
    assert result.target_classes == [predicted, 2]
    wrapped = _Logits(model)
    module = wrapped.get_submodule(f"model.{layer}")
    with pgc.GradCAM(wrapped, [module], reshape_transform=reshape) as cam:
        targets = [ClassifierOutputTarget(c) for c in (predicted, 2)]
        expected = torch.from_numpy(cam(x, targets))
    assert torch.allclose(result.maps[:, 0], expected, atol=1e-4)


def _dataset(tmp_path, n: int = 3) -> fo.Dataset:
    rng = np.random.default_rng(0)
    dataset = fo.Dataset()
    for i in range(n):
        path = str(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(path)
        label = fo.Classification(label=LABELS[i % 3])
        dataset.add_sample(fo.Sample(filepath=path, ground_truth=label))
    return dataset


def test_compute_cams_takes_the_processor_and_id2label(tmp_path):
    model = _vit()
    processor = ViTImageProcessor(size={"height": SIZE, "width": SIZE})
    loaded = load_model(model)
    assert loaded.classes == ["cat", "dog", "bird"]
    assert "ViTForImageClassification" in loaded.description
    # without a processor: the whole image at the config's input size
    assert loaded.transforms.size == (SIZE, SIZE)

    dataset = _dataset(tmp_path)
    summary = compute_cams(
        dataset,
        model,
        run_key="hf",
        target="label",
        label_field="ground_truth",
        transforms=ImageProcessorTransform(processor),
        progress=False,
    )
    assert (summary.num_computed, summary.num_errors) == (3, 0)
    assert dataset.values("hf_target.label") == ["cat", "dog", "bird"]
    assert set(dataset.values("hf_prediction.label")) <= set(LABELS.values())
    heatmap = dataset.first()["hf_vit_layers_1_layernorm_before"]
    assert heatmap.map.shape == (30, 50)  # the whole original image
    assert "ViTImageProcessor" in get_cam_run(dataset, "hf").config["transforms"]


def test_registered_source_loads_a_saved_model_with_its_processor(tmp_path):
    model_dir = tmp_path / "tiny-vit"
    _vit().save_pretrained(model_dir)
    processor = ViTImageProcessor(
        size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor.save_pretrained(model_dir)
    register_model_source("test-hf-tiny-vit", lambda: load_hf_classifier(model_dir))
    loaded = load_model("test-hf-tiny-vit")
    assert isinstance(loaded.transforms, ImageProcessorTransform)
    assert loaded.classes == ["cat", "dog", "bird"]
    image = Image.fromarray(np.full((20, 30, 3), 255, dtype=np.uint8))
    assert torch.allclose(loaded.transforms(image), torch.ones(3, SIZE, SIZE))

    # the App's path: the compute_cams operator with the source's name
    dataset = _dataset(tmp_path, 2)
    result = foo.get_operator("@cam-audit/cam-audit/compute_cams")(
        dataset,
        model="test-hf-tiny-vit",
        run_key="src",
        layers=["vit.layers.1.layernorm_before"],
        batch_size=2,
    )
    assert result.error is None, result.error
    assert dataset.count("src_vit_layers_1_layernorm_before") == 2
    assert set(dataset.values("src_prediction.label")) <= set(LABELS.values())
    assert get_cam_run(dataset, "src").config["model_source"] == "test-hf-tiny-vit"
    with pytest.raises(ValueError, match=r"Cannot load a transformers image .*'/no/"):
        load_hf_classifier("/no/such/dir")
