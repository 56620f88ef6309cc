"""Counterfactual inputs and faithfulness scores: pure numpy, PIL and torch.

- :func:`replace_background`: keep the objects, replace everything else (the
  background counterfactual of ``background_test``).
- :func:`prediction_change`: did the class flip, how far did the target's
  probability drop, from logits before and after.
- :func:`road_scores`: ROAD (Rong et al., ICML 2022) of maps, computed by
  pytorch-grad-cam's own ``ROADCombined`` with a fixed noise seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from ..engine.hooks import eval_mode

__all__ = ["FILLS", "prediction_change", "replace_background", "road_scores"]

FILLS = ("blur", "mean", "gray", "noise")


def replace_background(
    image: np.ndarray, keep: np.ndarray, fill: str = "blur", seed: int = 0
) -> np.ndarray:
    """uint8 ``[H, W, 3]`` image with everything outside ``keep`` replaced.

    keep: float ``[H, W]`` in [0, 1] (1 = object; fractional at box edges) or bool.
    fill: ``"blur"`` (a Gaussian blur of radius a tenth of the longer side:
        the scene's colours stay, its details - marks, text, texture - go),
        ``"mean"`` (the image's mean colour), ``"gray"`` (mid-gray) or
        ``"noise"`` (uniform noise, seeded).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}"
        )
    keep = np.asarray(keep, dtype=np.float32)
    if keep.shape != image.shape[:2]:
        raise ValueError(
            f"keep must be [H, W] = {image.shape[:2]}, got {tuple(keep.shape)}"
        )
    if fill == "blur":
        radius = max(image.shape[:2]) / 10
        other = np.asarray(
            Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)),
            dtype=np.float32,
        )
    elif fill == "mean":
        other = np.broadcast_to(image.reshape(-1, 3).mean(axis=0), image.shape)
    elif fill == "gray":
        other = np.full(image.shape, 127.5, dtype=np.float32)
    elif fill == "noise":
        other = np.random.default_rng(seed).uniform(0, 255, image.shape)
    else:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    k = np.clip(keep, 0.0, 1.0)[..., None]
    mixed = k * image.astype(np.float32) + (1.0 - k) * other
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def prediction_change(
    before: torch.Tensor, after: torch.Tensor, targets: Sequence[int | None]
) -> tuple[list[bool], list[float]]:
    """From logits ``[B, K]`` before and after a change: whether the predicted
    class flipped, and the drop in softmax probability of each sample's target
    class (its predicted class before, where the target is None)."""
    if before.shape != after.shape or before.ndim != 2:
        raise ValueError(
            f"before and after must be logits of one shape [B, K], got "
            f"{tuple(before.shape)} and {tuple(after.shape)}"
        )
    if len(targets) != len(before):
        raise ValueError(f"{len(targets)} targets for {len(before)} samples")
    p0, p1 = before.softmax(1), after.softmax(1)
    pred0 = p0.argmax(1)
    cls = torch.tensor(
        [int(pred0[i]) if t is None else int(t) for i, t in enumerate(targets)]
    )
    rows = torch.arange(len(cls))
    flips = (pred0 != p1.argmax(1)).tolist()
    drops = (p0[rows, cls] - p1[rows, cls]).tolist()
    return [bool(f) for f in flips], [float(d) for d in drops]


def road_scores(
    model: torch.nn.Module,
    x: torch.Tensor,
    cams: np.ndarray,
    target_classes: Sequence[int],
    percentiles: Sequence[int] = (20, 40, 60, 80),
    seed: int = 0,
) -> np.ndarray:
    """float32 ``[B]`` ROAD scores of ``cams`` (float ``[B, H, W]`` at the
    input's size) for ``x`` ``[B, C, H, W]``: the mean over ``percentiles``
    of (softmax of the target class after removing the least relevant pixels
    minus after removing the most relevant), halved, as ``ROADCombined``.
    Higher: the map points at what the model needs. The imputation noise is
    seeded with ``seed`` (torch's global generator is restored afterwards)."""
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3 or cams.shape[0] != x.shape[0] or cams.shape[1:] != x.shape[-2:]:
        raise ValueError(
            f"cams must be [B, H, W] = [{x.shape[0]}, {x.shape[-2]}, {x.shape[-1]}] "
            f"(one map per input, at the input's size), got {tuple(cams.shape)}"
        )
    if len(target_classes) != len(x):
        raise ValueError(f"{len(target_classes)} target classes for {len(x)} inputs")
    bad = [p for p in percentiles if not 0 < p < 100]
    if not percentiles or bad:
        raise ValueError(f"percentiles must be in (0, 100), got {list(percentiles)}")
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in target_classes]
    with eval_mode(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scores = ROADCombined(percentiles=list(percentiles))(x, cams, targets, model)
    return np.asarray(scores, dtype=np.float32).reshape(-1)
