"""Context managers that touch the caller's model only for the duration of a call."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["eval_mode", "frozen_parameters", "preserved_grads", "capture_outputs"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode; restore each module's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Stop autograd from tracking weights: backward then reaches only as far
    as the hooked activations and computes no weight gradients."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def preserved_grads(model: nn.Module) -> Iterator[None]:
    """Keep the caller's ``.grad`` buffers: pytorch-grad-cam calls ``zero_grad``."""
    saved = [(p, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for p, grad in saved:
            p.grad = grad


@contextmanager
def capture_outputs(
    named_modules: Sequence[tuple[str, nn.Module]], track_grad: bool
) -> Iterator[dict[str, torch.Tensor]]:
    """Record each module's output of one forward pass, keyed by name.

    With ``track_grad`` each output becomes a leaf that requires grad (when it
    does not already depend on one), and the forward always continues on a
    clone, so that in-place ops downstream (``ReLU(inplace=True)``, ``+=``)
    cannot alter or invalidate what was captured, whichever other layers are
    hooked. Without it each output is stored as a detached copy, for the same
    reason. Hooks are removed on exit, even on error.
    """
    captured: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"layer {name!r} returns {type(output).__name__}, not a tensor; "
                    "pick one of its submodules instead"
                )
            if name in captured:
                raise RuntimeError(
                    f"layer {name!r} ran more than once in one forward pass (a shared "
                    "module); pick a layer that runs once"
                )
            if not track_grad:
                captured[name] = output.detach().clone()
                return None
            if output.requires_grad:  # downstream of another hooked layer
                captured[name] = output
                return output.clone()
            leaf = output.detach().requires_grad_(True)
            captured[name] = leaf
            return leaf.clone()

        return hook

    handles = [m.register_forward_hook(make_hook(name)) for name, m in named_modules]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
