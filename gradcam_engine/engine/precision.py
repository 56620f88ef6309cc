"""The GPU path's numerics: autocast precision, and maps encoded on the device.

``precision="bf16"`` / ``"fp16"`` run the model's forward (and so the backward
to the hooked layers) under ``torch.autocast``; the CAM arithmetic then runs in
fp32 on the autocast activations and gradients (``CamEngine`` casts them).
Encoding the maps to uint8 on the device means that only one byte per pixel
crosses to the CPU.
"""

from __future__ import annotations

import contextlib

import torch

from .cam_images import CAM_IMAGES
from .methods import METHODS

__all__ = ["PRECISIONS", "autocast", "check_precision", "to_uint8"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, fused: bool, method: str) -> str:
    """The precision's canonical name; raises naming the valid ones.

    Methods run by pytorch-grad-cam's own classes (not fused) turn activations
    into numpy arrays, which have no bf16: they run in fp32 only.
    """
    if not isinstance(precision, str) or precision.lower() not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}"
        )
    precision = precision.lower()
    if precision != "fp32" and not fused:
        torch_methods = sorted(n for n, c in METHODS.items() if c in CAM_IMAGES)
        raise ValueError(
            f"precision={precision!r} needs a method the engine computes in torch "
            f"({', '.join(torch_methods)}; without method_kwargs); method "
            f"{method!r} runs pytorch-grad-cam's numpy code: pass precision='fp32'."
        )
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` for ``precision`` (fp32: nothing)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_uint8(maps: torch.Tensor) -> torch.Tensor:
    """Maps in [0, 1] -> uint8 (round to nearest) on their device; NaN -> 0."""
    scaled = torch.nan_to_num(maps.float(), nan=0.0) * 255.0
    return scaled.round_().clamp_(0, 255).to(torch.uint8)
