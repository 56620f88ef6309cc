"""CamEngine: one CAM per requested layer for any PyTorch vision model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import ttach as tta
from torch import nn

from .cam_images import CAM_IMAGES, GRADIENT_FREE
from .hooks import capture_outputs, eval_mode, frozen_parameters, preserved_grads
from .layers import resolve_layers
from .library_cams import LAYER_FREE, library_maps
from .methods import WRAPPERS, get_method
from .precision import autocast, check_precision, to_uint8
from .reshape import make_reshape
from .targets import (
    ResolvedTargets,
    Target,
    dominant_class,
    resolve_targets,
    select_output,
)

__all__ = ["CamEngine", "CamResult", "nonfinite_rows"]


@dataclass
class CamResult:
    """What one batch was explained for, and where the model looked.

    maps: float32 ``[B, L, H, W]`` on the CPU, as pytorch-grad-cam returns them
        (ReLU, min-max per image, resized to the input).
    raw: float32 ``[B, L, H, W]``: the same maps after ReLU and resizing but
        before min-max, so strength compares across images; None where the
        method does not expose them (aug_smooth with a delegated method).
    target_classes: the class each image was explained for (None if a custom
        target does not say).
    target_scores: the model's probability for that class (segmentation: mean
        over the class's predicted region), None where the class is unknown.
    predicted: the top class (segmentation: the class covering most pixels).
    predicted_scores: the model's probability for the top class (segmentation:
        mean over its predicted region).
    nonfinite: per image, None when its logits and maps are finite, else what
        is not (``"logits"``, or ``"map of layer 'x'"``): such a row's maps,
        classes and scores mean nothing (see :func:`nonfinite_rows`).
    strengths: float32 ``[B, L]``, each raw map's maximum (None without raw).
    """

    maps: torch.Tensor
    raw: torch.Tensor | None
    target_classes: list[int | None]
    target_scores: list[float | None]
    predicted: list[int]
    predicted_scores: list[float]
    nonfinite: list[str | None] = field(default_factory=list)
    strengths: torch.Tensor | None = None


class CamEngine:
    """Compute one CAM per layer, for a batch, in one forward and one backward.

    >>> with CamEngine(model, layers=["layer3", "layer4"], method="gradcam") as engine:
    ...     maps = engine(images, targets=[None] * len(images))  # [B, 2, H, W]

    Gradient methods with a torch implementation (gradcam, gradcam++, hirescam,
    gradcam-elementwise, xgradcam, layercam, eigencam, eigengradcam) share
    the passes across layers; other methods run pytorch-grad-cam itself once
    per layer. Hooks live only inside a call; the model's train/eval flags,
    ``requires_grad`` flags and ``.grad`` buffers are restored afterwards.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str] | None = None,
        method: str = "gradcam",
        reshape_transform: str | Callable | None = "auto",
        *,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
        method_kwargs: dict | None = None,
        precision: str = "fp32",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module, got {type(model).__name__}"
            )
        self.model = model
        self.method = method.strip().lower() if isinstance(method, str) else method
        self.cam_class = get_method(method)
        self.layers = resolve_layers(model, layers)
        self.layer_names = [name for name, _ in self.layers]
        self._reshape = make_reshape(model, reshape_transform)
        self.eigen_smooth = bool(eigen_smooth)
        self.aug_smooth = bool(aug_smooth)
        self.method_kwargs = dict(method_kwargs or {})
        if self.aug_smooth and self.cam_class in WRAPPERS:
            raise ValueError(f"aug_smooth is not supported by method {self.method!r}")
        self.fused = self.cam_class in CAM_IMAGES and not self.method_kwargs
        # "bf16" / "fp16": the forward under torch.autocast (see precision.py)
        self.precision = check_precision(precision, self.fused, self.method)

    def __enter__(self) -> CamEngine:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Hooks are added and removed within each call; nothing is left to release.
        return None

    def __repr__(self) -> str:
        return f"CamEngine(method={self.method!r}, layers={self.layer_names!r})"

    @property
    def device(self) -> torch.device:
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def __call__(
        self, input_tensor: torch.Tensor, targets: Sequence[Target] | None = None
    ) -> torch.Tensor:
        """Normalised maps, float32 ``[B, L, H, W]`` on the CPU."""
        return self.compute(input_tensor, targets).maps

    def compute(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        *,
        uint8: bool = False,
    ) -> CamResult:
        """Maps, raw maps and what each image was explained for (see :class:`CamResult`).

        ``uint8=True``: ``maps`` are encoded to uint8 (0..255) on the model's
        device and ``raw`` is None, so that only those bytes and ``strengths``
        cross to the CPU (``compute_cams``'s path)."""
        if not isinstance(input_tensor, torch.Tensor):
            raise TypeError(
                f"input_tensor must be a torch.Tensor, got {type(input_tensor).__name__}"
            )
        if input_tensor.ndim != 4 or not input_tensor.is_floating_point():
            raise ValueError(
                "input_tensor must be a float tensor [B, C, H, W], got "
                f"{input_tensor.dtype} of shape {tuple(input_tensor.shape)}"
            )
        if targets is not None and (
            isinstance(targets, str | bytes) or not isinstance(targets, Sequence)
        ):
            raise TypeError(
                "targets must be a list with one entry per image (int, None or "
                f"callable), got {type(targets).__name__}"
            )
        if targets is not None and len(targets) != input_tensor.shape[0]:
            raise ValueError(
                f"targets has {len(targets)} entries but the batch has "
                f"{input_tensor.shape[0]} images; pass one target per image."
            )
        x = input_tensor.to(self.device, non_blocking=True)  # pinned: async
        with (
            # Gradients are needed even inside the caller's torch.inference_mode().
            torch.inference_mode(False),
            eval_mode(self.model),
            preserved_grads(self.model),
        ):
            if x.is_inference():
                x = x.clone()
            if self.fused and not self.aug_smooth:
                # Targets are resolved from the fused pass's own outputs: one forward.
                maps, raw, outputs, resolved = self._fused_maps(x, targets)
            else:
                outputs = self._logits(x)
                resolved = resolve_targets(targets, outputs)
                if self.aug_smooth and self.fused:
                    maps, raw = self._aug_smooth_maps(x, targets)
                else:
                    maps, raw = library_maps(
                        self.cam_class,
                        self.model,
                        self.layers,
                        x,
                        resolved.callables,
                        reshape=self._reshape,
                        layer_free=self.method in LAYER_FREE,
                        aug_smooth=self.aug_smooth,
                        eigen_smooth=self.eigen_smooth,
                        **self.method_kwargs,
                    )
        predicted = _predicted_classes(outputs)
        probs = outputs.softmax(dim=1)
        return CamResult(
            maps=to_uint8(maps).cpu() if uint8 else maps.float().cpu(),
            raw=None if raw is None or uint8 else raw.float().cpu(),
            target_classes=resolved.classes,
            target_scores=[
                _class_probability(probs, i, c) for i, c in enumerate(resolved.classes)
            ],
            predicted=predicted,
            predicted_scores=[
                _class_probability(probs, i, c) for i, c in enumerate(predicted)
            ],
            nonfinite=nonfinite_rows(outputs, maps, raw, self.layer_names),
            strengths=None if raw is None else raw.amax(dim=(2, 3)).float().cpu(),
        )

    # -- passes --------------------------------------------------------------

    def _aug_smooth_maps(self, x: torch.Tensor, targets: Sequence[Target] | None):
        """pytorch-grad-cam's test-time augmentation: average of the normalised maps
        over flips and brightness factors; targets given as None are re-resolved
        on each augmented image, as the library does."""
        transforms = tta.Compose(
            [tta.HorizontalFlip(), tta.Multiply(factors=[0.9, 1, 1.1])]
        )
        maps, raws = [], []
        for transform in transforms:
            augmented = transform.augment_image(x)
            aug_maps, aug_raw, _, _ = self._fused_maps(augmented, targets)
            maps.append(transform.deaugment_mask(aug_maps))
            raws.append(transform.deaugment_mask(aug_raw))
        return torch.stack(maps).mean(dim=0), torch.stack(raws).mean(dim=0)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(x.device, self.precision):
            return select_output(self.model(x)).float()

    def _fused_maps(
        self, x: torch.Tensor, targets: Sequence[Target] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, ResolvedTargets]:
        """Maps, raw maps, the detached float outputs and the targets resolved
        from them, all from one forward (and one backward) pass."""
        needs_grad = self.cam_class not in GRADIENT_FREE
        input_hw = (x.shape[-2], x.shape[-1])
        with (
            frozen_parameters(self.model),
            torch.set_grad_enabled(needs_grad),
            capture_outputs(self.layers, track_grad=needs_grad) as captured,
            autocast(x.device, self.precision),
        ):
            outputs = select_output(self.model(x))
        missing = [name for name in self.layer_names if name not in captured]
        if missing:
            raise RuntimeError(
                f"layers {missing} did not run in the model's forward pass"
            )
        resolved = resolve_targets(targets, outputs.detach().float())
        activations = [captured[name] for name in self.layer_names]
        gradients: Sequence[torch.Tensor | None] = [None] * len(activations)
        if needs_grad:
            with torch.enable_grad():  # the caller may be inside torch.no_grad()
                loss = sum(
                    t(o) for t, o in zip(resolved.callables, outputs, strict=True)
                )
                gradients = torch.autograd.grad(loss, activations, allow_unused=True)
            for name, grad in zip(self.layer_names, gradients, strict=True):
                if grad is None:
                    raise RuntimeError(
                        f"The target score is not connected to layer {name!r}: "
                        "its output does not reach the model's logits."
                    )
        cam_image = CAM_IMAGES[self.cam_class]
        cams = []
        for (name, module), act, grad in zip(
            self.layers, activations, gradients, strict=True
        ):
            act = self._reshape(act.detach(), module, input_hw)
            if grad is not None:
                grad = self._reshape(grad, module, input_hw)
            if act.ndim != 4:
                raise ValueError(
                    f"layer {name!r} gives {act.ndim}-D maps after reshape; need 4-D"
                )
            cams.append(
                cam_image(
                    act.float(),
                    None if grad is None else grad.float(),
                    self.eigen_smooth,
                )
            )
        maps, raw = _scale(cams, input_hw)
        return maps, raw, outputs.detach().float(), resolved


def _scale(
    cams: list[torch.Tensor], input_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """pytorch-grad-cam's post-processing in torch: ReLU, min-max per image, bilinear
    resize (cv2.INTER_LINEAR == align_corners=False), then min-max again.

    Bilinear resizing is affine, so min-max before it equals rescaling the
    resized map by the small map's min and max: one resize gives both outputs.
    """
    maps, raws = [], []
    for cam in cams:
        cam = cam.clamp(min=0)
        raw = F.interpolate(
            cam[:, None], size=input_hw, mode="bilinear", align_corners=False
        )[:, 0]
        lo = cam.amin(dim=(1, 2), keepdim=True)
        hi = cam.amax(dim=(1, 2), keepdim=True)
        first = (raw - lo) / (1e-7 + hi - lo)
        first = first - first.amin(dim=(1, 2), keepdim=True)
        maps.append(first / (1e-7 + first.amax(dim=(1, 2), keepdim=True)))
        raws.append(raw)
    return torch.stack(maps, dim=1), torch.stack(raws, dim=1)


def nonfinite_rows(
    outputs: torch.Tensor,
    maps: torch.Tensor,
    raw: torch.Tensor | None,
    layer_names: Sequence[str],
) -> list[str | None]:
    """Per image: None when its logits ``outputs[i]`` and its maps are finite,
    else what is not (``"logits"``, or ``"map of layer 'x'"``).

    A NaN/Inf logit makes the softmax, the argmax and the gradients of that
    image meaningless (its map comes out NaN, stored as all zeros): the caller
    must not record such a row as a result. One reduction per tensor.
    """
    bad_logits = ~torch.isfinite(outputs.flatten(1)).all(dim=1)
    bad_maps = ~torch.isfinite(maps.flatten(2)).all(dim=2)  # [B, L]
    if raw is not None:
        bad_maps |= ~torch.isfinite(raw.flatten(2)).all(dim=2)
    rows: list[str | None] = []
    for i in range(outputs.shape[0]):
        if bad_logits[i]:
            rows.append("logits")
        elif bad_maps[i].any():
            layer = layer_names[int(bad_maps[i].nonzero()[0])]
            rows.append(f"map of layer {layer!r}")
        else:
            rows.append(None)
    return rows


def _predicted_classes(outputs: torch.Tensor) -> list[int]:
    """Top class per image (segmentation: the class covering most pixels)."""
    if outputs.ndim == 2:
        return [int(c) for c in outputs.argmax(dim=1)]
    return [dominant_class(o) for o in outputs]


def _class_probability(probs: torch.Tensor, i: int, cls: int | None) -> float | None:
    """Probability of class ``cls`` for image ``i``; for segmentation, its mean
    over the pixels predicted as ``cls`` (the whole image if there are none)."""
    if cls is None:
        return None
    if probs.ndim == 2:
        return float(probs[i, cls])
    region = probs[i].argmax(dim=0) == cls
    class_probs = probs[i, cls]
    return float(class_probs[region].mean() if region.any() else class_probs.mean())
