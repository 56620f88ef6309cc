"""Hooks of the detection engine, live only inside a ``with``: each layer's
output (a tensor or a dict of tensors, such as an FPN's levels) as leaves,
and the detector's internal canvas (torchvision's ``GeneralizedRCNNTransform``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Canvas", "capture_layers", "detector_canvas"]


@dataclass
class Canvas:
    """The detector's internal canvas: padded ``(H, W)`` and each image's
    resized ``(h, w)`` on it; empty when the model has no such transform."""

    padded: tuple[int, int] | None = None
    sizes: list[tuple[int, int]] | None = None


@contextlib.contextmanager
def detector_canvas(model: nn.Module) -> Iterator[Canvas]:
    """Record the canvas of a model whose ``transform`` returns an
    ``ImageList`` (torchvision's ``GeneralizedRCNNTransform``: Faster R-CNN,
    RetinaNet, FCOS, SSD)."""
    canvas = Canvas()
    transform = getattr(model, "transform", None)
    if not isinstance(transform, nn.Module):
        yield canvas
        return

    def hook(module, inputs, output):
        images = output[0] if isinstance(output, tuple) else output
        if hasattr(images, "image_sizes") and hasattr(images, "tensors"):
            canvas.padded = tuple(int(v) for v in images.tensors.shape[-2:])
            canvas.sizes = [tuple(int(v) for v in s) for s in images.image_sizes]

    handle = transform.register_forward_hook(hook)
    try:
        yield canvas
    finally:
        handle.remove()


@contextlib.contextmanager
def capture_layers(named_modules, track_grad: bool) -> Iterator[dict]:
    """Each layer's output (a tensor, or a dict of tensors such as an FPN's
    levels) of one forward, as leaves that require grad when ``track_grad``;
    the forward continues on clones (as ``hooks.capture_outputs``)."""
    captured: dict = {}

    def leaf(t: torch.Tensor):
        if not track_grad:
            return t.detach().clone(), t
        if t.requires_grad:  # downstream of another hooked layer
            return t, t.clone()
        held = t.detach().requires_grad_(True)
        return held, held.clone()

    def make_hook(name: str):
        def hook(module, inputs, output):
            if name in captured:
                raise RuntimeError(
                    f"layer {name!r} ran more than once in one forward pass; pick "
                    "a layer that runs once per batch"
                )
            if isinstance(output, torch.Tensor):
                captured[name], passed = leaf(output)
                return passed
            if isinstance(output, Mapping) and all(
                isinstance(v, torch.Tensor) for v in output.values()
            ):
                pairs = {k: leaf(v) for k, v in output.items()}
                captured[name] = {k: p[0] for k, p in pairs.items()}
                return type(output)((k, p[1]) for k, p in pairs.items())
            raise TypeError(
                f"layer {name!r} returns {type(output).__name__}, not a tensor or "
                "a dict of tensors; pick one of its submodules instead"
            )

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in named_modules]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
