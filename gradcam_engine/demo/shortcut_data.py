"""A Waterbirds-style dataset with a planted shortcut, generated procedurally.

Each image shows one object, a circle or a cross, of random colour, size,
position (and rotation), on a textured background: ``"water"`` (blue wavy stripes) or
``"land"`` (green and brown blotches). The shape is the real signal; the
background is a shortcut. In the ``"train"`` split each class sits on its own
background (circle on water, cross on land) with probability ``p_agree``; in
the ``"control"`` and ``"test"`` splits the background is independent of the
class (half agree, half disagree).

The background covers most pixels and differs in colour, so it is a far easier
cue than the shape: a small CNN trained on ``"train"`` learns the background,
one trained on ``"control"`` has to learn the shape.

Pure numpy and PIL; deterministic given ``seed``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

__all__ = [
    "BACKGROUNDS",
    "CLASSES",
    "SPLITS",
    "TRAIN_BACKGROUND",
    "ShortcutSample",
    "generate",
    "mask_to_bbox",
    "object_colour",
    "shape_mask",
    "write_images",
]

CLASSES: tuple[str, ...] = ("circle", "cross")
BACKGROUNDS: tuple[str, ...] = ("water", "land")
# The background each class sits on in the "train" split.
TRAIN_BACKGROUND: dict[str, str] = {"circle": "water", "cross": "land"}
SPLITS: tuple[str, ...] = ("train", "control", "test")

_OBJECT_SIDE = (0.28, 0.45)  # object extent as a fraction of the image side
_MIN_CONTRAST = 90.0  # min RGB distance between object colour and background mean


@dataclass(eq=False)
class ShortcutSample:
    """One generated image and its ground truth.

    image: uint8 ``[H, W, 3]`` RGB.
    label / label_index: the object's class, ``CLASSES[label_index] == label``.
    background: ``"water"`` or ``"land"``.
    agrees: the background is the one the class sits on in the train split.
    bbox: the object's tight box, relative ``[x, y, w, h]`` (top-left corner,
        width, height; FiftyOne's convention), all in ``[0, 1]``.
    mask: bool ``[H, W]``, True on the object's pixels (all inside ``bbox``).
    split / name: the split and a unique file stem, e.g. ``"test_00042"``.
    """

    image: np.ndarray = field(repr=False)
    label: str
    label_index: int
    background: str
    agrees: bool
    bbox: list[float]
    mask: np.ndarray = field(repr=False)
    split: str
    name: str


def generate(
    n: int,
    split: str = "train",
    seed: int = 0,
    size: int = 64,
    p_agree: float = 0.98,
) -> list[ShortcutSample]:
    """Generate ``n`` samples of ``split`` (``"train"``, ``"control"`` or ``"test"``).

    Classes alternate (balanced). ``p_agree`` is the fraction of background-
    agreeing samples in ``"train"``; ``"control"`` and ``"test"`` use 0.5. The
    agreeing samples are exactly ``round(p * n)``, at random positions. The
    random stream depends on ``(seed, split)``, so splits with the same seed
    differ and each call with the same arguments returns the same images.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16 (pixels), got {size!r}")
    if not 0.0 <= p_agree <= 1.0:
        raise ValueError(f"p_agree must be in [0, 1], got {p_agree!r}")

    rng = np.random.default_rng([int(seed), SPLITS.index(split)])
    p = p_agree if split == "train" else 0.5
    agrees = np.zeros(n, dtype=bool)
    agrees[rng.permutation(n)[: int(round(p * n))]] = True
    first = int(rng.integers(len(CLASSES)))
    grid = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres (y, x)
    samples = []
    for i in range(n):
        label_index = (first + i) % len(CLASSES)
        label = CLASSES[label_index]
        home = TRAIN_BACKGROUND[label]
        background = home if agrees[i] else _other_background(home)
        image = _background(rng, background, grid)
        mask = shape_mask(rng, label, grid)
        image[mask] = object_colour(rng, image)
        samples.append(
            ShortcutSample(
                image=image,
                label=label,
                label_index=label_index,
                background=background,
                agrees=bool(agrees[i]),
                bbox=mask_to_bbox(mask),
                mask=mask,
                split=split,
                name=f"{split}_{i:05d}",
            )
        )
    return samples


def write_images(
    samples: Sequence[ShortcutSample], directory: str | os.PathLike
) -> list[str]:
    """Save each image as ``directory/<name>.png``; return the absolute paths in order."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for sample in samples:
        path = os.path.abspath(os.path.join(directory, f"{sample.name}.png"))
        Image.fromarray(sample.image).save(path)
        paths.append(path)
    return paths


def _other_background(background: str) -> str:
    return next(b for b in BACKGROUNDS if b != background)


def _background(rng: np.random.Generator, kind: str, grid: np.ndarray) -> np.ndarray:
    """A uint8 ``[size, size, 3]`` texture of ``kind``; ``grid``: pixel centres
    float32 ``[2, size, size]`` (y, x)."""
    size = grid.shape[-1]
    yy, xx = grid / size
    if kind == "water":
        # Wavy horizontal stripes between a deep and a light blue.
        period = rng.uniform(0.12, 0.22)
        wobble = rng.uniform(0.03, 0.08) * np.sin(
            2 * np.pi * (xx / rng.uniform(0.3, 0.6) + rng.uniform())
        )
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * ((yy + wobble) / period + rng.uniform()))
        deep = np.array([20, 60, 150]) + rng.uniform(-20, 20, 3)
        light = np.array([90, 160, 230]) + rng.uniform(-20, 20, 3)
        rgb = deep + wave[..., None] * (light - deep)
    elif kind == "land":
        # Low-frequency blotches between green grass and brown soil.
        grid = rng.uniform(size=(6, 6)).astype(np.float32)
        blotch = np.asarray(
            Image.fromarray(grid).resize((size, size), Image.BICUBIC)
        ).clip(0, 1)
        green = np.array([60, 130, 40]) + rng.uniform(-20, 20, 3)
        brown = np.array([130, 90, 45]) + rng.uniform(-20, 20, 3)
        rgb = green + blotch[..., None] * (brown - green)
    else:
        raise ValueError(f"background must be one of {list(BACKGROUNDS)}, got {kind!r}")
    rgb = rgb + 12 * rng.standard_normal((size, size, 3), dtype=np.float32)
    return rgb.clip(0, 255).astype(np.uint8)


def shape_mask(rng: np.random.Generator, label: str, grid: np.ndarray) -> np.ndarray:
    """A bool ``[size, size]`` mask of the object, fully inside the image.

    ``"circle"``: a disk; ``"cross"``: a plus sign with arms a third as wide
    as long, rotated by up to 22.5 degrees.
    """
    size = grid.shape[-1]
    half = rng.uniform(*_OBJECT_SIDE) * size / 2  # half the diameter / arm span
    angle = rng.uniform(-np.pi / 8, np.pi / 8)
    reach = half * (np.sqrt(10) / 3 if label == "cross" else 1.0)  # farthest pixel
    cx, cy = rng.uniform(reach + 1, size - reach - 1, 2)
    dy, dx = grid[0] - cy, grid[1] - cx
    if label == "circle":
        return dx**2 + dy**2 <= half**2
    if label == "cross":
        c, s = np.cos(angle), np.sin(angle)
        u, v = abs(c * dx + s * dy), abs(-s * dx + c * dy)
        return (np.maximum(u, v) <= half) & (np.minimum(u, v) <= half / 3)
    raise ValueError(f"label must be one of {list(CLASSES)}, got {label!r}")


def object_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random uint8 RGB colour that stands out from ``background``'s mean."""
    mean = background.mean(axis=(0, 1))
    for _ in range(100):
        colour = rng.integers(0, 256, 3)
        if np.linalg.norm(colour - mean) >= _MIN_CONTRAST:
            break
    return colour.astype(np.uint8)


def mask_to_bbox(mask: np.ndarray) -> list[float]:
    """Tight relative ``[x, y, w, h]`` box of a non-empty bool ``[H, W]`` mask."""
    h, w = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    return [float(x0 / w), float(y0 / h), float((x1 - x0) / w), float((y1 - y0) / h)]
