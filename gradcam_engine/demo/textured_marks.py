"""A second Clever-Hans set, drawn unlike :mod:`.marked_data`, to check that
the background test's defaults hold on data they were not tuned to.

Differences from ``marked_data``: the backgrounds are natural textures
(tinted random crops of scikit-image's brick, grass, gravel and camera
photos), not smooth gradients; the mark is a small red-and-yellow striped
triangle (no white square), drawn at a random place along the bottom or right
edge (not a fixed corner). Objects are the same two classes (circles and
crosses), so that the same small CNN learns from either set.

As in ``marked_data``: in ``"train"`` only circles carry the mark (a fraction
``p_mark`` of them); in ``"test"`` any image does with probability 0.5; every
sample keeps ``clean``, the same image drawn without the mark (the
counterfactual truth). Returns :class:`.marked_data.MarkedSample` objects.
Deterministic given ``seed``; needs scikit-image (no download).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from .marked_data import MARKED_SPLITS, MarkedSample, check_generator_args
from .shortcut_data import CLASSES, mask_to_bbox, object_colour, shape_mask

__all__ = ["generate_textured", "TEXTURES"]

TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel", "camera")
_MARK_SIDE = 0.18  # the mark's side as a fraction of the image side
MARK_CLASS = "circle"


@functools.cache
def _texture(name: str) -> np.ndarray:
    from skimage import data

    image = getattr(data, name)()
    return image if image.ndim == 2 else image.mean(axis=2)


def generate_textured(
    n: int, split: str = "train", seed: int = 0, size: int = 64, p_mark: float = 0.8
) -> list[MarkedSample]:
    """``n`` samples of ``split`` (classes alternate); see the module docstring."""
    check_generator_args(n, split, size, p_mark)
    rng = np.random.default_rng([int(seed), 11, MARKED_SPLITS.index(split)])
    grid = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    side = max(6, int(round(_MARK_SIDE * size)))
    out = []
    for i in range(n):
        label_index = i % len(CLASSES)
        label = CLASSES[label_index]
        clean = _background(rng, size)
        x0, y0 = _mark_place(rng, size, side)
        mark = _triangle(side)
        near = np.zeros((size, size), bool)
        near[max(0, y0 - 2) : y0 + side + 2, max(0, x0 - 2) : x0 + side + 2] = True
        while True:  # the object keeps clear of the mark
            mask = shape_mask(rng, label, grid)
            if not (mask & near).any():
                break
        clean[mask] = object_colour(rng, clean)
        p = 0.5 if split == "test" else p_mark if label == MARK_CLASS else 0.0
        marked = bool(rng.uniform() < p)
        image = clean.copy()
        if marked:
            stripes = (np.add.outer(np.arange(side), np.arange(side)) // 2) % 2 == 0
            colours = np.where(stripes[..., None], [230, 30, 30], [250, 220, 0])
            region = image[y0 : y0 + side, x0 : x0 + side]
            region[mark] = colours[mark]
        out.append(
            MarkedSample(
                image=image,
                clean=clean,
                label=label,
                label_index=label_index,
                marked=marked,
                bbox=mask_to_bbox(mask),
                mask=mask,
                mark_bbox=[x0 / size, y0 / size, side / size, side / size],
                split=split,
                name=f"textured_{split}_{i:05d}",
            )
        )
    return out


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 ``[size, size, 3]``: a random crop (1-3x the image side) of a
    texture photo, resized, contrast-normalised and tinted."""
    tex = _texture(TEXTURES[rng.integers(len(TEXTURES))])
    crop = int(rng.uniform(1, 3) * size)
    crop = min(crop, *tex.shape)
    y, x = (
        rng.integers(0, tex.shape[0] - crop + 1),
        rng.integers(0, tex.shape[1] - crop + 1),
    )
    patch = Image.fromarray(tex[y : y + crop, x : x + crop].astype(np.uint8))
    gray = np.asarray(patch.resize((size, size), Image.BILINEAR), dtype=np.float32)
    gray = (gray - gray.mean()) / max(float(gray.std()), 1.0)
    base, tint = rng.uniform(70, 180, 3), rng.uniform(15, 35)
    return (base + tint * gray[..., None]).clip(0, 255).astype(np.uint8)


def _mark_place(rng: np.random.Generator, size: int, side: int) -> tuple[int, int]:
    """Top-left corner of the mark: anywhere along the bottom or right edge."""
    margin = max(1, size // 32)
    along = int(rng.integers(margin, size - side - margin + 1))
    edge = size - side - margin
    return (along, edge) if rng.uniform() < 0.5 else (edge, along)


def _triangle(side: int) -> np.ndarray:
    """bool ``[side, side]``: a right triangle (lower-left half)."""
    r, c = np.mgrid[0:side, 0:side]
    return c <= r
