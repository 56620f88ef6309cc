"""Token grids and default layers of Hugging Face and open_clip vision models.

Read from the models' own metadata, duck-typed (this module never imports
transformers or open_clip): a Hugging Face model's ``config`` (``patch_size``,
``num_register_tokens``, ``depths`` for Swin's merged stages) and its
embedding parameters (``cls_token`` / ``class_embedding``,
``distillation_token``); open_clip's ``VisionTransformer`` (``class_embedding``,
``patch_size``).
"""

from __future__ import annotations

import math
import re

from torch import nn

__all__ = ["config_token_layout", "hf_default_layers"]

# Swin-style models merge 2x2 patches per stage; a few stages at most.
_MAX_STAGES = 6


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = tuple(value)[:2]
    return int(first), int(second)


def _vision_config(model: nn.Module):
    """The first config in ``model`` that has a patch size (a CLIPModel's
    root config holds none: its vision tower's does)."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "patch_size", None) is not None:
            return config
    return None


def _prefix_tokens(model: nn.Module, config) -> int:
    """Class token, DeiT's distillation token and register tokens."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_parameters()}
    count = int(bool(names & {"cls_token", "class_embedding"}))
    count += int("distillation_token" in names)
    return count + int(getattr(config, "num_register_tokens", 0) or 0)


def config_token_layout(
    model: nn.Module, input_hw: tuple[int, int], tokens: int | None = None
) -> tuple[int, tuple[int, int]] | None:
    """``(prefix tokens, (h, w) grid)`` of an open_clip or Hugging Face vision
    transformer for this input size, or None for other models.

    A hierarchical model (a config with ``depths``: Swin) has one grid per
    stage; ``tokens`` (the layer's token count) picks the stage.
    """
    height, width = input_hw
    for module in model.modules():  # open_clip VisionTransformer
        if all(hasattr(module, a) for a in ("class_embedding", "grid_size")):
            ph, pw = _pair(module.patch_size)
            return 1, (height // ph, width // pw)
    config = _vision_config(model)
    if config is None:
        return None
    ph, pw = _pair(config.patch_size)
    prefix = _prefix_tokens(model, config)
    if not getattr(config, "depths", None):  # a strided patch conv: whole patches
        return prefix, (height // ph, width // pw)
    # Swin pads the input to whole patches and each merge to even sizes.
    first = grid = (math.ceil(height / ph), math.ceil(width / pw))
    for _ in range(_MAX_STAGES):
        if tokens is None or prefix + grid[0] * grid[1] == tokens:
            return prefix, grid
        grid = (math.ceil(grid[0] / 2), math.ceil(grid[1] / 2))
    return prefix, first


_STAGE = re.compile(r"(^|\.)stages\.\d+$")


def hf_default_layers(model: nn.Module) -> list[str] | None:
    """The usual CAM layer of a Hugging Face vision model, or None for others.

    Transformers (ViT, DeiT, BEiT, Swin): the last block's ``layernorm_before``
    (timm's ``norm1``; DINOv2's ``norm1``); CLIP's vision tower: the last ``layer_norm1``; CNNs
    with a config (ResNet, ConvNeXt): the last encoder stage.
    """
    names = dict(model.named_modules())
    blocks = [n for n, m in names.items() if n and hasattr(m, "layernorm_before")]
    if blocks:
        return [f"{blocks[-1]}.layernorm_before"]
    dino = [
        n
        for n, m in names.items()
        if n and hasattr(m, "norm1") and hasattr(m, "attention")
    ]
    if dino:  # DINOv2's layers name them norm1 / attention
        return [f"{dino[-1]}.norm1"]
    clip = [
        n
        for n, m in names.items()
        if n and hasattr(m, "layer_norm1") and hasattr(m, "self_attn")
    ]
    if clip:
        return [f"{clip[-1]}.layer_norm1"]
    if getattr(model, "config", None) is None:
        return None
    stages = [n for n in names if _STAGE.search(n)]
    return [stages[-1]] if stages else None
