"""Find target layers by dotted name, and pick a sensible default per architecture."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from torch import nn

from .errors import AdvisedError
from .model_layouts import hf_default_layers

__all__ = ["resolve_layers", "default_layers", "layer_names", "suggest_layers"]


def layer_names(model: nn.Module) -> list[str]:
    """Every addressable (non-root) module name of ``model``, in definition order."""
    return [name for name, _ in model.named_modules() if name]


# Modules whose output is a poor CAM target: elementwise or bookkeeping layers
# (a map there equals the map of the conv before it, up to scale) and padding.
_NOT_TARGETS = (
    nn.modules.batchnorm._NormBase,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Sigmoid,
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    nn.Flatten,
    nn.AdaptiveAvgPool2d,
    nn.Linear,
)


def suggest_layers(model: nn.Module) -> list[str]:
    """Module names worth offering as CAM layers: convolutions and the blocks
    holding them, without norms, activations, dropout, padding, pooling heads
    or anything named ``*padding``."""
    return [
        name
        for name, module in model.named_modules()
        if name
        and not isinstance(module, _NOT_TARGETS)
        and "padding" not in name.rsplit(".", 1)[-1]
    ]


def _walk(model: nn.Module, dotted: str) -> nn.Module | None:
    """Follow ``dotted`` attribute by attribute; numeric parts index containers,
    so ``"layers.-1.blocks.-1.norm1"`` works like ``model.layers[-1].blocks[-1].norm1``."""
    module: nn.Module = model
    for part in dotted.split("."):
        child = getattr(module, part, None) if not part.lstrip("-").isdigit() else None
        if child is None and isinstance(module, nn.Sequential | nn.ModuleList):
            try:
                child = module[int(part)]
            except (ValueError, IndexError):
                return None
        if child is None:
            child = module._modules.get(part)
        if not isinstance(child, nn.Module):
            return None
        module = child
    return module


def resolve_layers(
    model: nn.Module, layers: str | Sequence[str] | None
) -> list[tuple[str, nn.Module]]:
    """Map dotted names to ``(canonical name, module)`` pairs.

    ``None`` picks :func:`default_layers`. An unknown name raises ``ValueError``
    listing the closest valid names.
    """
    if layers is None:
        layers = default_layers(model)
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, Sequence) or not layers:
        raise ValueError(
            f"layers must be a non-empty list of module names, got {layers!r}"
        )
    by_module = {id(m): name for name, m in model.named_modules() if name}
    resolved: list[tuple[str, nn.Module]] = []
    for name in layers:
        if not isinstance(name, str):
            raise TypeError(
                f"layers must hold dotted module names (str), got {type(name).__name__}: {name!r}"
            )
        module = _walk(model, name) if name else None
        if module is None or id(module) not in by_module:
            valid = layer_names(model)
            close = difflib.get_close_matches(name, valid, n=5, cutoff=0.4)
            hint = f" Closest valid names: {', '.join(close)}." if close else ""
            raise AdvisedError(
                f"Unknown layer {name!r} in {type(model).__name__}.{hint} "
                f"{len(valid)} modules exist;",
                python="list them with gradcam_engine.layer_names(model).",
                app=(
                    "tick 'Suggest this model's layers' on the form to list "
                    "them, or leave 'Layers' empty for the model's default layer."
                ),
            )
        canonical = by_module[id(module)]
        if canonical in (n for n, _ in resolved):
            raise ValueError(
                f"layer {canonical!r} is listed twice in layers={list(layers)!r}"
            )
        resolved.append((canonical, module))
    return resolved


def _is_transformer_block(module: nn.Module) -> bool:
    return hasattr(module, "norm1") and hasattr(module, "attn")


def default_layers(model: nn.Module) -> list[str]:
    """The layer most CAM tutorials use for this architecture.

    DeepLabV3-style segmentation: ``backbone.layer4``; ViT/DeiT/Swin: the last
    block's ``norm1``; torchvision ViT: the last encoder layer's ``ln_1``;
    ResNets: ``layer4``; Hugging Face and open_clip models: see
    ``model_layouts.hf_default_layers``; other CNNs: the top-level stage
    holding the last conv.
    """
    hf = hf_default_layers(model)
    if hf:
        return hf
    names = dict(model.named_modules())
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module) and "backbone.layer4" in names:
        return ["backbone.layer4"]
    blocks = [name for name, m in names.items() if name and _is_transformer_block(m)]
    if blocks:
        return [f"{blocks[-1]}.norm1"]
    tv_vit = [name for name, m in names.items() if name and hasattr(m, "ln_1")]
    if tv_vit:
        return [f"{tv_vit[-1]}.ln_1"]
    if "layer4" in names:
        return ["layer4"]
    convs = [name for name, m in names.items() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(
            f"Cannot pick a default layer for {type(model).__name__}: it has no Conv2d "
            "and no transformer blocks. Pass layers=[...] explicitly."
        )
    return [convs[-1].split(".")[0]]
