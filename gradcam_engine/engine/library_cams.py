"""Maps from pytorch-grad-cam's own method classes, one layer at a time: the
methods the fused pass of ``CamEngine`` does not compute itself (ScoreCAM,
AblationCAM, FullGrad, ...) and ``aug_smooth`` for them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .methods import WRAPPERS
from .targets import select_output

__all__ = ["LAYER_FREE", "library_maps"]

# Methods whose map does not depend on the target layer: computed once per batch.
LAYER_FREE = frozenset({"fullgrad"})


def library_maps(
    cam_class: type,
    model: nn.Module,
    layers: Sequence[tuple[str, nn.Module]],
    x: torch.Tensor,
    targets: list,
    *,
    reshape: Callable[[torch.Tensor, nn.Module, tuple[int, int]], torch.Tensor],
    layer_free: bool,
    aug_smooth: bool,
    eigen_smooth: bool,
    **method_kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalised maps ``[B, L, H, W]`` and the raw ones (None when the class
    computes no single map per image), running ``cam_class`` on each of
    ``layers`` (named modules); ``reshape(t, module, input_hw)`` turns a
    layer's output into ``[B, C, h, w]``."""
    input_hw = (x.shape[-2], x.shape[-1])
    wrapped = _LogitsModule(model)
    maps, raws = [], []
    for _name, module in layers[:1] if layer_free else layers:
        raw_cams: list = []
        cam = cam_class(
            model=wrapped,
            # FullGrad uses every bias layer and prints a warning when given one.
            target_layers=[] if layer_free else [module],
            reshape_transform=lambda t, m=module: reshape(t, m, input_hw),
            **method_kwargs,
        )
        base = getattr(cam, "base_cam", cam)
        _spy_on_cam_images(base, raw_cams)
        try:
            with torch.enable_grad():
                if cam_class in WRAPPERS:
                    out = cam(x, targets=targets, eigen_smooth=eigen_smooth)
                else:
                    out = cam(
                        x, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth
                    )
        finally:
            base.activations_and_grads.release()
        maps.append(torch.as_tensor(out))
        if len(raw_cams) == 1 and raw_cams[0].shape[0] == x.shape[0]:
            cam_t = torch.as_tensor(raw_cams[0]).clamp(min=0)[:, None]
            raws.append(
                F.interpolate(
                    cam_t, size=input_hw, mode="bilinear", align_corners=False
                )[:, 0]
            )
    if layer_free:
        maps, raws = maps * len(layers), raws * len(layers)
    raw = torch.stack(raws, dim=1) if len(raws) == len(maps) else None
    return torch.stack(maps, dim=1), raw


class _LogitsModule(nn.Module):
    """Presents a model whose output is a dict (torchvision ``"out"``) as one
    returning the logits tensor, which pytorch-grad-cam iterates per image."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return select_output(self.model(x))


def _spy_on_cam_images(cam, sink: list) -> None:
    """Keep each unnormalised map the library computes (for ``CamResult.raw``).

    pytorch-grad-cam normalises inside ``forward``; shadowing the bound
    ``get_cam_image`` on this one instance is the only way to see the map before.
    """
    original = cam.get_cam_image

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        sink.append(result)
        return result

    cam.get_cam_image = spy
