"""CAM targets: tiny callables scoring one image's model output, as in pytorch-grad-cam."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

__all__ = [
    "Target",
    "MaskSumTarget",
    "ResolvedTargets",
    "resolve_targets",
    "select_output",
    "dominant_class",
]

# int class index, None (the predicted class) or a callable on one image's output.
Target = int | None | Callable[[torch.Tensor], torch.Tensor]


class MaskSumTarget:
    """Sum of class ``category``'s logits over a mask of a ``[K, H, W]`` output.

    With ``mask=None`` the mask is the region the model predicts as ``category``
    (argmax over classes), recomputed from each output. A given mask (numpy or
    torch, ``[H, W]``) must match the output's spatial size.
    """

    def __init__(self, category: int, mask: np.ndarray | torch.Tensor | None = None):
        self.category = int(category)
        if mask is not None and not isinstance(mask, torch.Tensor):
            mask = torch.from_numpy(np.asarray(mask))
        self.mask = mask

    def region(self, model_output: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return (model_output.argmax(dim=0) == self.category).to(model_output.dtype)
        if tuple(self.mask.shape) != tuple(model_output.shape[-2:]):
            raise ValueError(
                f"MaskSumTarget mask has shape {tuple(self.mask.shape)} but the model "
                f"output is {tuple(model_output.shape[-2:])}; resize the mask to match."
            )
        return self.mask.to(device=model_output.device, dtype=model_output.dtype)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if model_output.ndim != 3:
            raise ValueError(
                "MaskSumTarget expects one image's segmentation output [K, H, W], got "
                f"shape {tuple(model_output.shape)}"
            )
        return (model_output[self.category] * self.region(model_output)).sum()

    def __repr__(self) -> str:
        where = "predicted region" if self.mask is None else "given mask"
        return f"MaskSumTarget(category={self.category}, {where})"


def select_output(output) -> torch.Tensor:
    """The logits tensor of a model's output (torchvision segmentation: ``"out"``,
    a Hugging Face output object: ``.logits``)."""
    if isinstance(output, torch.Tensor):
        return output
    # before the dict case: a Hugging Face ModelOutput is an OrderedDict
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits
    if isinstance(output, dict):
        if "out" in output:
            return output["out"]
        raise ValueError(
            f"Model returned a dict without an 'out' entry (keys: {sorted(output)}); "
            "wrap the model so that it returns the logits tensor."
        )
    raise TypeError(
        f"Model returned {type(output).__name__}; expected a tensor of logits, "
        "an output object with .logits (Hugging Face) or a dict with 'out' "
        "(torchvision segmentation)."
    )


def dominant_class(seg_output: torch.Tensor) -> int:
    """The predicted class covering most pixels of ``[K, H, W]``, ignoring class 0
    (background by torchvision's convention) unless nothing else is predicted."""
    counts = torch.bincount(
        seg_output.argmax(dim=0).flatten(), minlength=seg_output.shape[0]
    )
    if counts[1:].sum() > 0:
        return int(counts[1:].argmax()) + 1
    return 0


@dataclass
class ResolvedTargets:
    """Callables for the library plus what each image was explained for."""

    callables: list[Callable[[torch.Tensor], torch.Tensor]]
    classes: list[int | None]  # class index each target explains, None if unknown


def resolve_targets(
    targets: Sequence[Target] | None, outputs: torch.Tensor
) -> ResolvedTargets:
    """Turn ``int``/``None``/callable targets into callables, one per image.

    Classification outputs ``[B, K]``: ``ClassifierOutputTarget``. Segmentation
    outputs ``[B, K, H, W]``: :class:`MaskSumTarget` over the predicted region.
    """
    batch = outputs.shape[0]
    if targets is None:
        targets = [None] * batch
    if isinstance(targets, str | bytes) or not isinstance(targets, Sequence):
        raise TypeError(
            f"targets must be a list with one entry per image, got {type(targets).__name__}"
        )
    if len(targets) != batch:
        raise ValueError(
            f"targets has {len(targets)} entries but the batch has {batch} images; "
            "pass exactly one target (int, None or callable) per image."
        )
    if outputs.ndim not in (2, 4):
        raise ValueError(
            f"Model output has shape {tuple(outputs.shape)}; expected [B, K] logits "
            "or [B, K, H, W] segmentation logits."
        )
    segmentation = outputs.ndim == 4
    num_classes = outputs.shape[1]
    callables, classes = [], []
    for i, target in enumerate(targets):
        if target is None:
            target = (
                dominant_class(outputs[i]) if segmentation else int(outputs[i].argmax())
            )
        if isinstance(target, bool) or not (
            isinstance(target, int | np.integer) or callable(target)
        ):
            raise TypeError(
                f"targets[{i}] must be an int class index, None or a callable, "
                f"got {type(target).__name__}: {target!r}"
            )
        if callable(target):
            callables.append(target)
            category = getattr(target, "category", None)
            classes.append(
                int(category) if isinstance(category, int | np.integer) else None
            )
            continue
        target = int(target)
        if not 0 <= target < num_classes:
            raise ValueError(
                f"targets[{i}] = {target} is not a class of this model (0..{num_classes - 1})"
            )
        callables.append(
            MaskSumTarget(target) if segmentation else ClassifierOutputTarget(target)
        )
        classes.append(target)
    return ResolvedTargets(callables, classes)
