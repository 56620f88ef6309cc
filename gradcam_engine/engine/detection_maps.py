"""The maps of a detection run's detections (pure torch): per image and
layer, the CAM of one detection's gradients (or EigenCAM's activations) on
the detector's feature grid, cut to the image's part of the detector's
internal canvas, resized to the input, ReLU and min-max."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F

from .cam_images import CAM_IMAGES

__all__ = ["MapMaker", "detached", "gradients_like", "tensors_of"]


class MapMaker:
    """Per-image CAMs of every layer, at the input size: ReLU, min-max."""

    def __init__(self, engine, acts, canvas, input_hw) -> None:
        self.engine, self.canvas, self.input_hw = engine, canvas, input_hw
        self.acts = self.grids([detached(act) for act in acts])
        self.cam_image = CAM_IMAGES[engine.cam_class]

    def grids(self, tensors) -> list[torch.Tensor]:
        """Each layer's activations (or gradients) as ``[B, C, h, w]``."""
        hw = self.canvas.padded if self.canvas.padded else self.input_hw
        out = []
        for t, (_, module) in zip(tensors, self.engine.layers, strict=True):
            merged = _merge_levels(t) if isinstance(t, Mapping) else t
            out.append(self.engine._reshape(merged, module, hw))
        return out

    def image_maps(self, i: int, grads) -> tuple[torch.Tensor, list[float]]:
        """Image ``i``'s maps ``[L, H, W]`` and strengths, from ``grads`` (the
        layers' gradient grids of one round; None for EigenCAM)."""
        maps, strengths = [], []
        for k, act in enumerate(self.acts):
            grad = None if grads is None else grads[k][i : i + 1].float()
            cam = self.cam_image(act[i : i + 1].float(), grad, self.engine.eigen_smooth)
            raw = self._to_input(cam.clamp(min=0), i)[0]
            lo, hi = raw.min(), raw.max()
            # min-max without pytorch-grad-cam's absolute 1e-7 in the divisor:
            # a detection's raw map can be ~1e-11 (a score near its prior),
            # which that epsilon would flatten to zero
            span = hi - lo
            maps.append((raw - lo) / span if span > 0 else torch.zeros_like(raw))
            strengths.append(float(hi))
        return torch.stack(maps).float().cpu(), strengths

    def _to_input(self, cam: torch.Tensor, i: int) -> torch.Tensor:
        """``[1, h, w]`` map over the model's internal canvas -> ``[1, H, W]``
        over the input tensor: torchvision detectors resize each image and
        pad the batch (GeneralizedRCNNTransform), so the map is cut to the
        image's part of the canvas before it is resized to the input."""
        cam = cam[:, None]
        if self.canvas.padded:
            (ph, pw), (ih, iw) = self.canvas.padded, self.canvas.sizes[i]
            cam = F.interpolate(
                cam, size=(ph, pw), mode="bilinear", align_corners=False
            )
            cam = cam[:, :, :ih, :iw]
        return F.interpolate(
            cam, size=self.input_hw, mode="bilinear", align_corners=False
        )[:, 0]


def _merge_levels(levels: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """An FPN's levels as one ``[B, sum C, h, w]`` grid at the finest level's
    size (pytorch-grad-cam's ``fasterrcnn_reshape_transform`` resizes to the
    coarsest, ``pool``, and takes ``abs``: the finest keeps small objects
    apart, and signed values keep gradient x activation products right)."""
    tensors = [t for t in levels.values() if isinstance(t, torch.Tensor)]
    size = max((tuple(t.shape[-2:]) for t in tensors), key=lambda s: s[0] * s[1])
    return torch.cat(
        [
            t
            if tuple(t.shape[-2:]) == size
            else F.interpolate(t, size=size, mode="bilinear", align_corners=False)
            for t in tensors
        ],
        dim=1,
    )


def detached(act):
    if isinstance(act, Mapping):
        return {k: v.detach() for k, v in act.items()}
    return act.detach()


def tensors_of(act) -> list[torch.Tensor]:
    return list(act.values()) if isinstance(act, Mapping) else [act]


def gradients_like(act, grads: Iterator):
    """The gradients of ``act``'s tensors, in ``act``'s shape (tensor or dict);
    None when the scores do not reach it. A level of a dict that the scores
    do not use (an FPN's ``pool`` feeds only the RPN, whose proposals
    torchvision detaches) gets zeros."""
    if isinstance(act, Mapping):
        parts = {k: next(grads) for k in act}
        if all(g is None for g in parts.values()):
            return None
        return {
            k: torch.zeros_like(act[k]) if g is None else g for k, g in parts.items()
        }
    return next(grads)
