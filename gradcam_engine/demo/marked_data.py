"""A Clever-Hans dataset: a watermark outside the object predicts one class.

Each image shows a circle or a cross (the real signal, see
:mod:`gradcam_engine.demo.shortcut_data`) on a smooth colour gradient chosen
independently of the class, so the background itself is no cue (and a blurred
background stays in distribution, so that replacing it tests the mark, not
the model's reaction to unfamiliar textures). Some images
carry a small watermark in the top-left corner, away from the object. In the
``"train"`` split only circles are marked (a fraction ``p_mark`` of them), so
the mark alone says "circle": a model learns it as a second, easier rule. In
the ``"test"`` split any image is marked with probability 0.5.

Every sample also keeps ``clean``, the same image drawn without the mark: the
counterfactual truth of "did the mark cause this prediction?".

Pure numpy; deterministic given ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .shortcut_data import (
    CLASSES,
    mask_to_bbox,
    object_colour,
    shape_mask,
)

__all__ = [
    "MARK_CLASS",
    "MARKED_SPLITS",
    "MarkedSample",
    "check_generator_args",
    "generate_marked",
    "mark_box",
]

MARK_CLASS = "circle"  # the class the watermark stands for in training
MARKED_SPLITS: tuple[str, ...] = ("train", "test")
_MARK_SIDE = 0.16  # the mark's side as a fraction of the image side
_MARK_AT = 0.04  # its top-left corner, same unit


@dataclass(eq=False)
class MarkedSample:
    """One generated image, the same image without the mark, and the truth.

    image / clean: uint8 ``[H, W, 3]``; equal where ``marked`` is False.
    label / label_index: the object's class (``CLASSES``).
    marked: the image carries the watermark.
    bbox / mask: the object's tight relative ``[x, y, w, h]`` box and bool mask.
    mark_bbox: the watermark's relative box (whether or not it is drawn).
    """

    image: np.ndarray = field(repr=False)
    clean: np.ndarray = field(repr=False)
    label: str
    label_index: int
    marked: bool
    bbox: list[float]
    mask: np.ndarray = field(repr=False)
    mark_bbox: list[float]
    split: str
    name: str


def mark_box(size: int) -> tuple[int, int, int, int]:
    """The watermark's pixel box ``(x0, y0, x1, y1)`` in a ``size``-pixel image."""
    x0 = int(round(_MARK_AT * size))
    x1 = x0 + max(4, int(round(_MARK_SIDE * size)))
    return x0, x0, x1, x1


def check_generator_args(n: int, split: str, size: int, p_mark: float) -> None:
    """The arguments every Clever-Hans generator takes (``generate_marked``,
    ``textured_marks.generate_textured``), checked the same way."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if split not in MARKED_SPLITS:
        raise ValueError(f"split must be one of {list(MARKED_SPLITS)}, got {split!r}")
    if not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an int >= 32 (pixels), got {size!r}")
    if not 0.0 <= p_mark <= 1.0:
        raise ValueError(f"p_mark must be in [0, 1], got {p_mark!r}")


def generate_marked(
    n: int,
    split: str = "train",
    seed: int = 0,
    size: int = 64,
    p_mark: float = 0.8,
) -> list[MarkedSample]:
    """``n`` samples of ``split`` (classes alternate); in ``"train"`` a fraction
    ``p_mark`` of the circles (on average) is marked; see the module docstring."""
    check_generator_args(n, split, size, p_mark)
    rng = np.random.default_rng([int(seed), 7, MARKED_SPLITS.index(split)])
    grid = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    x0, y0, x1, y1 = mark_box(size)
    samples = []
    for i in range(n):
        label_index = i % len(CLASSES)
        label = CLASSES[label_index]
        clean = _gradient(rng, grid)
        # Redraw until the object keeps clear of the mark (a margin of 2 px).
        while True:
            mask = shape_mask(rng, label, grid)
            if not mask[: y1 + 2, : x1 + 2].any():
                break
        clean[mask] = object_colour(rng, clean)
        p = 0.5 if split == "test" else p_mark if label == MARK_CLASS else 0.0
        marked = bool(rng.uniform() < p)
        image = clean.copy()
        if marked:
            _draw_mark(image, (x0, y0, x1, y1))
        samples.append(
            MarkedSample(
                image=image,
                clean=clean,
                label=label,
                label_index=label_index,
                marked=marked,
                bbox=mask_to_bbox(mask),
                mask=mask,
                mark_bbox=[x0 / size, y0 / size, (x1 - x0) / size, (y1 - y0) / size],
                split=split,
                name=f"marked_{split}_{i:05d}",
            )
        )
    return samples


def _gradient(rng: np.random.Generator, grid: np.ndarray) -> np.ndarray:
    """uint8 ``[size, size, 3]``: a linear ramp between two muted colours at a
    random angle, with faint noise."""
    size = grid.shape[-1]
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * grid[1] + np.sin(angle) * grid[0]) / size
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    a, b = rng.uniform(40, 200, (2, 3))
    rgb = a + t[..., None] * (b - a) + 3 * rng.standard_normal((size, size, 3))
    return rgb.clip(0, 255).astype(np.uint8)


def _draw_mark(image: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """A logo-like watermark: a white square with a black centre, in place."""
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = 255
    inset = max(1, (x1 - x0) // 4)
    image[y0 + inset : y1 - inset, x0 + inset : x1 - inset] = 0
