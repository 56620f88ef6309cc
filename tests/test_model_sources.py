"""Model sources: the registry, entry points, files, zoo models and their adapter."""

from __future__ import annotations

import fiftyone as fo
import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from PIL import Image

from gradcam_engine import compute_cams
from gradcam_engine.sources.models import (
    LoadedModel,
    ResizeNormalize,
    from_torch_image_model,
    imagenet_classes,
    list_model_sources,
    load_model,
    register_model_source,
)


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=3).eval()


def tiny_with_extras():
    return tiny_net(), ResizeNormalize(32), ["a", "b", "c"]


def test_registry_lists_and_refuses_duplicates():
    assert "efficientnet-lite0-imagenet" in list_model_sources()
    register_model_source("tiny-test-net", lambda: LoadedModel(tiny_net()))
    assert "tiny-test-net" in list_model_sources()
    loaded = load_model("tiny-test-net")
    assert isinstance(loaded.module, torch.nn.Module)
    assert loaded.description == "tiny-test-net"
    with pytest.raises(ValueError, match="already registered"):
        register_model_source("tiny-test-net", lambda: LoadedModel(tiny_net()))
    with pytest.raises(ValueError, match="':'"):
        register_model_source("a:b", lambda: None)


def test_unknown_source_suggests_close_names():
    with pytest.raises(ValueError, match=r"Did you mean 'efficientnet-lite0-imagenet'"):
        load_model("efficientnet-lite0")
    with pytest.raises(TypeError, match="model must be"):
        load_model(42)


def test_imagenet_classes_offline():
    names = imagenet_classes()
    assert len(names) == 1000
    assert names[285] == "Egyptian cat" and names[967] == "espresso"


def test_bundled_efficientnet_source():
    pytest.importorskip("efficientnet_lite_pytorch")
    loaded = load_model("efficientnet-lite0-imagenet")
    assert loaded.default_layers == ["_conv_head"]
    assert len(loaded.classes) == 1000
    x = loaded.transforms(Image.fromarray(skimage.data.chelsea()))
    assert x.shape == (3, 224, 224)
    with torch.no_grad():
        assert int(loaded.module(x[None]).argmax()) == 285


def test_entry_points():
    loaded = load_model("test_model_sources:tiny_net")
    assert isinstance(loaded.module, torch.nn.Module) and loaded.classes is None
    loaded = load_model("test_model_sources:tiny_with_extras")
    assert loaded.classes == ["a", "b", "c"]
    assert loaded.transforms(Image.new("RGB", (50, 40))).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="no_such_module"):
        load_model("no_such_module:fn")
    with pytest.raises(ValueError, match="'missing'"):
        load_model("test_model_sources:missing")


def test_model_files(tmp_path):
    net = tiny_net()
    x = torch.randn(1, 3, 32, 32)
    torch.save(net, tmp_path / "full.pt")
    with pytest.raises(ValueError, match=r"pickled.*allow_pickle=True"):
        load_model(str(tmp_path / "full.pt"))  # weights_only=True by default
    loaded = load_model(str(tmp_path / "full.pt"), allow_pickle=True)
    assert torch.allclose(loaded.module(x), net(x))
    torch.save({"model": net, "classes": ["a", "b", "c"]}, tmp_path / "ckpt.pt")
    ckpt = load_model(tmp_path / "ckpt.pt", allow_pickle=True)
    assert ckpt.classes == ["a", "b", "c"]
    torch.jit.trace(net, x).save(str(tmp_path / "scripted.pt"))
    with pytest.raises(ValueError, match="TorchScript.*forward hooks"):
        load_model(str(tmp_path / "scripted.pt"))
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="state_dict"):
        load_model(str(tmp_path / "weights.pt"))


def test_zoo_error_is_clear():
    with pytest.raises(
        RuntimeError, match=r"zoo model 'no-such-model'.*list_zoo_models"
    ):
        load_model("zoo:no-such-model")


def _torch_image_model():
    import fiftyone.utils.torch as fout

    config = fout.TorchImageModelConfig(
        {
            "entrypoint_fcn": tiny_net,
            "image_size": [48, 48],
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225],
            "classes": ["a", "b", "c"],
            "output_processor_cls": "fiftyone.utils.torch.ClassifierOutputProcessor",
        }
    )
    return fout.TorchImageModel(config)


def test_torch_image_model_adapter_in_compute_cams(tmp_path):
    zoo_model = _torch_image_model()
    loaded = from_torch_image_model(zoo_model)
    assert loaded.module is zoo_model._model and loaded.classes == ["a", "b", "c"]
    x = loaded.transforms(Image.fromarray(skimage.data.coffee()))
    assert x.shape == (3, 48, 48)
    fixed = from_torch_image_model(zoo_model, size=32).transforms
    assert fixed(Image.fromarray(skimage.data.coffee())).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="size must be None or a positive int, got 0"):
        from_torch_image_model(zoo_model, size=0)
    for name in ("coffee", "camera"):
        Image.fromarray(getattr(skimage.data, name)()).save(tmp_path / f"{name}.png")
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=str(p)) for p in sorted(tmp_path.glob("*.png"))])
    with zoo_model:  # disables gradients, as FiftyOne does for inference
        summary = compute_cams(
            ds, zoo_model, run_key="zoo", num_workers=0, progress=False
        )
        assert not torch.is_grad_enabled()
    assert summary.num_computed == 2
    assert set(ds.values("zoo_prediction.label")) <= {"a", "b", "c"}
    heatmap = ds.first().zoo_layer4.map
    assert heatmap.shape == (256, 256) and np.ptp(heatmap) > 0
    ds.delete()


def test_resize_normalize_gives_a_contiguous_normalised_tensor():
    img = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (90, 70, 3), np.uint8)
    )
    transforms = ResizeNormalize(32)
    x = transforms(img)
    resized = np.asarray(img.resize((32, 32), Image.BILINEAR), dtype=np.float32)
    expected = (
        torch.from_numpy(resized / 255.0).permute(2, 0, 1)
        - torch.tensor(transforms.mean).view(3, 1, 1)
    ) / torch.tensor(transforms.std).view(3, 1, 1)
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and x.is_contiguous()
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
