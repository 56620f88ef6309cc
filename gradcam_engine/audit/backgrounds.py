"""Several background counterfactuals, and the flips they agree on.

One fill is one arbitrary counterfactual: a blur can leave a high-contrast mark
readable, a flat colour or noise can push the model off its training
distribution and flip predictions that never depended on the background. The
background test therefore replaces the background in several ways and flags a
sample only when its prediction flips in most of them (``min_flip_rate``).

Fills (see :func:`fill_background`): the four of
:func:`.counterfactual.replace_background` and ``"swap"``, the ImageNet-9
"mixed-rand" counterfactual (Xiao et al., ICLR 2021, "Noise or Signal: The
Role of Image Backgrounds in Object Recognition"): the objects pasted on the
background of another sample of the same batch, whose own objects were
removed first (filled from their nearest background pixels, as ImageNet-9's
"only-BG" images are).

Defaults chosen by measurement on two differently drawn shortcut sets
(``benchmarks/bench_background.py``, BENCHMARKS.md "Background test").
Pure numpy, PIL and torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from .counterfactual import FILLS, prediction_change, replace_background

__all__ = [
    "ALL_FILLS",
    "DEFAULT_FILLS",
    "DEFAULT_MIN_FLIP_RATE",
    "background_flips",
    "check_fills",
    "fill_background",
    "remove_objects",
]

ALL_FILLS: tuple[str, ...] = (*FILLS, "swap")
DEFAULT_FILLS: tuple[str, ...] = ("blur", "mean", "noise", "swap")
DEFAULT_MIN_FLIP_RATE = 0.75


def check_fills(fill: str | Sequence[str]) -> list[str]:
    """``fill`` (one name or several) -> a list of known fills, without repeats."""
    fills = [fill] if isinstance(fill, str) else list(fill)
    bad = [f for f in fills if f not in ALL_FILLS]
    if not fills or bad:
        raise ValueError(
            f"fill must be one of {ALL_FILLS} or a list of them, got {fill!r}; "
            f"e.g. fill={list(DEFAULT_FILLS)} (the default)"
        )
    return list(dict.fromkeys(fills))


def remove_objects(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]``: ``image`` with the pixels of ``keep`` (> 0.5)
    replaced by the nearest pixel outside it (an image of background only)."""
    inside = np.asarray(keep) > 0.5
    if not inside.any() or inside.all():
        return image
    _, (rows, cols) = ndimage.distance_transform_edt(inside, return_indices=True)
    return image[rows, cols]


def fill_background(
    image: np.ndarray,
    keep: np.ndarray,
    fill: str,
    seed: int = 0,
    donor: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """uint8 ``[H, W, 3]``: the objects of ``keep`` on a new background.

    fill: one of ``ALL_FILLS``; ``"swap"`` needs ``donor`` = (its uint8 image,
    its keep mask), resized here to ``image``'s size.
    """
    if fill != "swap":
        return replace_background(image, keep, fill, seed)
    if donor is None:
        raise ValueError('fill "swap" needs donor=(image, keep) of another sample')
    other, other_keep = donor
    h, w = image.shape[:2]
    background = remove_objects(other, other_keep)
    if background.shape[:2] != (h, w):
        background = np.asarray(Image.fromarray(background).resize((w, h)))
    k = np.clip(np.asarray(keep, dtype=np.float32), 0.0, 1.0)[..., None]
    mixed = k * image.astype(np.float32) + (1.0 - k) * background
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def background_flips(
    forward: Callable[[list[torch.Tensor]], torch.Tensor],
    transforms: Callable[[Image.Image], torch.Tensor],
    images: Sequence[np.ndarray],
    keeps: Sequence[np.ndarray],
    targets: Sequence[int | None],
    fills: Sequence[str],
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per image and fill: did the prediction flip, how far did the target's
    probability drop. Returns float ``[N, len(fills)]`` arrays; NaN where a
    fill could not be made (``"swap"`` in a batch of one image).

    forward: input tensors (any sizes) -> logits ``[n, K]``.
    Donors for ``"swap"``: a seeded cycle through the batch, never the image
    itself.
    """
    n = len(images)
    flips = np.full((n, len(fills)), np.nan)
    drops = np.full((n, len(fills)), np.nan)
    if n == 0:
        return flips, drops
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    donor_of = {int(order[i]): int(order[(i + 1) % n]) for i in range(n)}
    before = [transforms(Image.fromarray(im)) for im in images]
    after, where = [], []
    for f, fill in enumerate(fills):
        for i, (im, keep) in enumerate(zip(images, keeps, strict=True)):
            if fill == "swap" and n < 2:
                continue
            donor = (
                (images[donor_of[i]], keeps[donor_of[i]]) if fill == "swap" else None
            )
            new = fill_background(im, keep, fill, seed + i, donor)
            after.append(transforms(Image.fromarray(new)))
            where.append((i, f))
    logits = forward(before + after)
    rows = [i for i, _ in where]
    flip, drop = prediction_change(logits[rows], logits[n:], [targets[i] for i in rows])
    for (i, f), fl, dr in zip(where, flip, drop, strict=True):
        flips[i, f], drops[i, f] = float(fl), dr
    return flips, drops
