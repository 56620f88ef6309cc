"""Turn a layer's output into a ``[B, C, h, w]`` map, reading the grid from the model.

Transformers emit tokens ``[B, T, C]`` (ViT, DeiT) or channels-last maps
``[B, h, w, C]`` (Swin). The grid comes from the model's own metadata: timm's
``num_prefix_tokens`` and ``patch_embed.dynamic_feat_size``, torchvision's
``patch_size``, a Hugging Face model's config and open_clip's patch size
(``model_layouts``); nothing assumes 14x14.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .model_layouts import config_token_layout

__all__ = ["LayerReshape", "make_reshape", "token_layout"]

# fn(activation, module, input_hw) -> [B, C, h, w]
LayerReshape = Callable[[torch.Tensor, nn.Module, tuple[int, int]], torch.Tensor]


def token_layout(
    model: nn.Module, input_hw: tuple[int, int], tokens: int | None = None
) -> tuple[int, tuple[int, int]]:
    """``(number of prefix tokens, (h, w) patch grid)`` of a ViT for this input size.

    ``tokens``, the layer's token count, picks the stage of a hierarchical
    Hugging Face model (Swin's token outputs ``[B, h*w, C]``)."""
    for module in model.modules():
        patch_embed = getattr(module, "patch_embed", None)
        if hasattr(module, "num_prefix_tokens") and patch_embed is not None:
            if hasattr(patch_embed, "dynamic_feat_size"):
                grid = tuple(patch_embed.dynamic_feat_size(input_hw))
            else:
                grid = tuple(patch_embed.grid_size)
            return int(module.num_prefix_tokens), grid
        # torchvision.models.VisionTransformer: one class token, square patches.
        if hasattr(module, "class_token") and hasattr(module, "patch_size"):
            p = int(module.patch_size)
            return 1, (input_hw[0] // p, input_hw[1] // p)
    layout = config_token_layout(model, input_hw, tokens)
    if layout is not None:
        return layout
    raise ValueError(
        f"Cannot find the token grid of {type(model).__name__}: it has no timm "
        "'num_prefix_tokens'/'patch_embed', torchvision 'class_token'/'patch_size', "
        "Hugging Face config 'patch_size' nor open_clip 'class_embedding'. "
        "Pass reshape_transform=callable(tensor) -> [B, C, h, w]."
    )


def _is_channels_last_model(model: nn.Module) -> bool:
    if getattr(model, "output_fmt", None) == "NHWC":  # timm Swin
        return True
    return any(type(m).__name__ == "SwinTransformer" for m in model.modules())


def make_reshape(
    model: nn.Module, reshape_transform: str | Callable | None
) -> LayerReshape:
    """Build the per-layer reshape for ``reshape_transform`` (``"auto"``, ``None``
    or a pytorch-grad-cam style callable ``fn(tensor) -> tensor``)."""
    if reshape_transform is None:
        return _identity
    if callable(reshape_transform):
        user_fn = reshape_transform

        def _user(activation, module, input_hw):
            return user_fn(activation)

        return _user
    if reshape_transform != "auto":
        raise ValueError(
            f"reshape_transform must be 'auto', None or a callable, got {reshape_transform!r}"
        )
    channels_last = _is_channels_last_model(model)

    def _auto(activation: torch.Tensor, module: nn.Module, input_hw: tuple[int, int]):
        if activation.ndim == 4:
            if channels_last and not isinstance(module, nn.Conv2d):
                return activation.permute(0, 3, 1, 2)
            return activation
        if activation.ndim == 3:
            batch, tokens, channels = activation.shape
            prefix, (h, w) = token_layout(model, input_hw, tokens)
            if tokens != prefix + h * w:
                raise ValueError(
                    f"Layer output has {tokens} tokens but {type(model).__name__} has "
                    f"{prefix} prefix tokens and a {h}x{w} patch grid for a "
                    f"{input_hw[0]}x{input_hw[1]} input. Pass a reshape_transform callable."
                )
            return (
                activation[:, prefix:, :]
                .reshape(batch, h, w, channels)
                .permute(0, 3, 1, 2)
            )
        raise ValueError(
            f"Cannot make a spatial map from a layer output of shape {tuple(activation.shape)}; "
            "pick a layer with [B, C, h, w], [B, tokens, C] or [B, h, w, C] output."
        )

    return _auto


def _identity(activation: torch.Tensor, module: nn.Module, input_hw: tuple[int, int]):
    return activation
