"""Real handwriting with a planted colour cue: scikit-learn's digits on noisy canvases.

The digits are nobody's here (``sklearn.datasets.load_digits``: 1,797 8x8
digits, the UCI test set written by 13 people, shipped with scikit-learn, no
download). Each is upscaled 3x and drawn at a random spot of a noisy 64x64
canvas; a small patch whose colour encodes a class is drawn elsewhere. In
``"train"`` a fraction ``p_cue`` (default 0.8) of the digits carry the patch
of their own class, so that a model learns the colour as a second, easier
rule. In ``"test"`` every digit carries the patch of another class, drawn
uniformly (cue and digit conflict: a patch of the digit's own class would
make "which one did the model read?" unanswerable, and the counterfactual
below would call a patch-reader digit-reliant). Every sample keeps ``clean``, the same image without the
patch: the prediction is cue-reliant when removing the patch changes it.

Two drawings (:data:`DRAWINGS`) share the digits but not their look: ``"A"``
(grey noise, light ink, a 10x10 square anywhere clear of the digit) and
``"B"`` (coloured noise on a lighter canvas, dark ink, a 12x12 disc of another
palette along the image border), so that a figure chosen on one can be checked
on the other.

The split between train and test digits is fixed by :data:`EVAL_DIGITS`: the
last 297 digits are kept for the final figures only (``"test"`` with
``holdout=True``); the first 1,500 are split by ``seed`` into training and
tuning digits. Pure numpy and PIL; deterministic given the arguments.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

__all__ = ["DRAWINGS", "DigitSample", "Drawing", "digit_indices", "generate_digits"]

SIZE, SCALE = 64, 3
EVAL_DIGITS = 297  # the last digits of load_digits(): final figures only
SPLITS: tuple[str, ...] = ("train", "test")


@dataclass(frozen=True)
class Drawing:
    """How digits and patches look (see the module docstring)."""

    name: str
    canvas: tuple[int, int, int]  # mean RGB of the canvas
    noise: float  # std of the per-pixel noise
    colour_noise: bool  # independent noise per channel (else grey)
    ink: int  # the digit's grey level at full ink
    patch: int  # the patch's side, pixels
    disc: bool  # a disc inscribed in the patch's square (else the square)
    border: bool  # the patch touches the image border (else anywhere)
    palette: tuple[tuple[int, int, int], ...] = field(repr=False)


DRAWINGS: dict[str, Drawing] = {
    "A": Drawing(
        "A", (110, 110, 110), 25.0, False, 250, 10, False, False,
        ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
         (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
         (210, 245, 60), (0, 0, 128)),
    ),
    "B": Drawing(
        "B", (170, 160, 140), 35.0, True, 20, 12, True, True,
        ((128, 0, 0), (170, 110, 40), (128, 128, 0), (0, 128, 128),
         (0, 0, 255), (255, 0, 255), (255, 140, 0), (0, 255, 127),
         (255, 250, 200), (0, 191, 255)),
    ),
}  # fmt: skip


@dataclass(eq=False)
class DigitSample:
    """One drawn digit, the same image without the patch, and the truth.

    image / clean: uint8 ``[64, 64, 3]``; equal where ``cue`` is None.
    label_index: the digit (0-9); ``label``: its string.
    cue: the class whose patch is drawn (None: no patch).
    box: the digit's pixel box ``(x0, y0, x1, y1)``; ``bbox``: the same,
        relative ``[x, y, w, h]`` (FiftyOne's convention).
    """

    image: np.ndarray = field(repr=False)
    clean: np.ndarray = field(repr=False)
    label: str
    label_index: int
    cue: int | None
    box: tuple[int, int, int, int]
    bbox: list[float]
    split: str
    name: str


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def digit_indices(split: str, seed: int = 0, n_train: int = 1200, holdout=False):
    """Indices into ``load_digits()`` of ``split``'s digits.

    ``"train"``: ``n_train`` of the first 1,500 digits (a permutation by
    ``seed``); ``"test"``: the rest of the first 1,500 (tuning), or with
    ``holdout=True`` the last :data:`EVAL_DIGITS` (never used to choose
    anything)."""
    pool = len(_digits()[0]) - EVAL_DIGITS
    if not 0 < n_train < pool:
        raise ValueError(f"n_train must be in 1..{pool - 1}, got {n_train!r}")
    if split == "test" and holdout:
        return np.arange(pool, pool + EVAL_DIGITS)
    order = np.random.default_rng([int(seed), 19]).permutation(pool)
    return np.sort(order[:n_train] if split == "train" else order[n_train:])


def generate_digits(
    split: str = "train",
    seed: int = 0,
    n: int | None = None,
    p_cue: float = 0.8,
    drawing: str = "A",
    n_train: int = 1200,
    holdout: bool = False,
    conflict: bool = True,
) -> list[DigitSample]:
    """Draw ``split``'s digits (:func:`digit_indices`; the first ``n`` of
    them when given) with ``drawing``; see the module docstring.
    ``conflict=False``: test patches of any class, the digit's own included
    (the first version of this benchmark; kept to measure what it changes)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if drawing not in DRAWINGS:
        raise ValueError(f"drawing must be one of {sorted(DRAWINGS)}, got {drawing!r}")
    if not 0.0 <= p_cue <= 1.0:
        raise ValueError(f"p_cue must be in [0, 1], got {p_cue!r}")
    style = DRAWINGS[drawing]
    images, targets = _digits()
    idx = digit_indices(split, seed, n_train, holdout)[:n]
    rng = np.random.default_rng([int(seed), SPLITS.index(split), int(holdout), 7])
    rng = np.random.default_rng([*rng.integers(2**31, size=2), ord(drawing)])
    out = []
    for k, i in enumerate(idx):
        label = int(targets[i])
        if split == "train":
            cue = label if rng.uniform() < p_cue else None
        elif conflict:  # another class than the digit's, uniformly
            cue = int((label + rng.integers(1, 10)) % 10)
        else:
            cue = int(rng.integers(10))
        image, clean, box = _draw(images[i], cue, style, rng)
        x0, y0, x1, y1 = box
        out.append(
            DigitSample(
                image=image,
                clean=clean,
                label=str(label),
                label_index=label,
                cue=cue,
                box=box,
                bbox=[x0 / SIZE, y0 / SIZE, (x1 - x0) / SIZE, (y1 - y0) / SIZE],
                split=split,
                name=f"{split}_{k:05d}",
            )
        )
    return out


def _draw(digit: np.ndarray, cue: int | None, style: Drawing, rng):
    shape = (SIZE, SIZE, 3) if style.colour_noise else (SIZE, SIZE, 1)
    noise = style.noise * rng.standard_normal(shape)
    canvas = np.clip(np.array(style.canvas, dtype=np.float64) + noise, 0, 255)
    side = 8 * SCALE
    big = Image.fromarray((digit / 16 * 255).astype(np.uint8)).resize((side, side))
    ink = np.asarray(big, dtype=np.float64)[..., None] / 255
    x0, y0 = (int(v) for v in rng.integers(0, SIZE - side + 1, 2))
    region = canvas[y0 : y0 + side, x0 : x0 + side]
    canvas[y0 : y0 + side, x0 : x0 + side] = (1 - ink) * region + ink * style.ink
    clean = canvas.astype(np.uint8)
    image = clean.copy()
    if cue is not None:
        px, py = _patch_place(rng, style, (x0, y0, x0 + side, y0 + side))
        p = style.patch
        square = image[py : py + p, px : px + p]
        if style.disc:
            yy, xx = np.mgrid[0:p, 0:p] + 0.5
            inside = (yy - p / 2) ** 2 + (xx - p / 2) ** 2 <= (p / 2) ** 2
            square[inside] = style.palette[cue]
        else:
            square[:] = style.palette[cue]
    return image, clean, (x0, y0, x0 + side, y0 + side)


def _patch_place(rng, style: Drawing, box) -> tuple[int, int]:
    """A patch position clear of the digit's box (touching the border when
    ``style.border``)."""
    p, last = style.patch, SIZE - style.patch
    x0, y0, x1, y1 = box
    while True:
        px, py = (int(v) for v in rng.integers(0, last + 1, 2))
        if style.border:  # snap one coordinate to an edge
            if rng.uniform() < 0.5:
                px = 0 if rng.uniform() < 0.5 else last
            else:
                py = 0 if rng.uniform() < 0.5 else last
        if px + p <= x0 or px >= x1 or py + p <= y0 or py >= y1:
            return px, py
