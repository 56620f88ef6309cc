"""Per-map score arithmetic for ``score_cams``: pure numpy and PIL, no FiftyOne.

Maps are float ``[H, W]`` arrays in [0, 1] (any resolution and aspect);
objects are rasterised at each map's resolution. Scores of many maps of the
same shape are computed in one batch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["GroundTruth", "agreement", "box_coverage", "group_by_shape", "score_layer"]


class GroundTruth:
    """One sample's objects, rasterised on demand at a heatmap's resolution."""

    def __init__(self, boxes=None, mask=None, mask_values=None, polygons=None):
        self.boxes = boxes  # float [N, 4] relative xywh, N >= 1
        self.seg = mask  # int [h, w]
        self.mask_values = mask_values
        self.polygons = polygons  # list of [[x, y], ...] relative
        self._cache: dict[tuple[int, int], np.ndarray | None] = {}

    def mask(self, shape: tuple[int, int]) -> np.ndarray | None:
        """Object weights in [0, 1] at ``shape`` (None: no object)."""
        if shape not in self._cache:
            obj = self._rasterise(shape)
            self._cache[shape] = obj if obj is not None and obj.any() else None
        return self._cache[shape]

    def _rasterise(self, shape: tuple[int, int]) -> np.ndarray | None:
        h, w = shape
        if self.boxes is not None:
            return box_coverage(self.boxes, h, w) if len(self.boxes) else None
        if self.seg is not None:
            mh, mw = self.seg.shape[:2]
            rows = np.minimum(((np.arange(h) + 0.5) * mh / h).astype(int), mh - 1)
            cols = np.minimum(((np.arange(w) + 0.5) * mw / w).astype(int), mw - 1)
            resized = self.seg[rows[:, None], cols[None, :]]
            if self.mask_values is None:
                return (resized != 0).astype(np.float32)
            return np.isin(resized, self.mask_values).astype(np.float32)
        if self.polygons:
            canvas = Image.new("L", (w, h), 0)
            draw = ImageDraw.Draw(canvas)
            for shape_pts in self.polygons:
                xy = [(x * w - 0.5, y * h - 0.5) for x, y in shape_pts]
                draw.polygon(xy, fill=1, outline=1)
            return np.asarray(canvas, dtype=np.float32)
        return None

    def hit_at(
        self,
        peak: tuple[int, int],
        shape: tuple[int, int],
        obj: np.ndarray,
        tol: float,
    ) -> bool:
        """Whether the peak pixel ``(row, col)`` of a map of ``shape`` lies in an
        object, boxes expanded (masks dilated) by ``tol`` of the image size."""
        i, j = peak
        h, w = shape
        if self.boxes is not None:
            x, y = (j + 0.5) / w, (i + 0.5) / h
            b = self.boxes
            inside = (
                (x >= b[:, 0] - tol)
                & (x <= b[:, 0] + b[:, 2] + tol)
                & (y >= b[:, 1] - tol)
                & (y <= b[:, 1] + b[:, 3] + tol)
            )
            return bool(inside.any())
        ry, rx = int(round(tol * h)), int(round(tol * w))
        window = obj[max(0, i - ry) : i + ry + 1, max(0, j - rx) : j + rx + 1]
        return bool((window > 0).any())


def box_coverage(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """Fraction of each pixel covered by the union of ``boxes`` (relative xywh),
    float32 ``[h, w]``; overlapping boxes are merged with ``max``."""

    def axis(start: np.ndarray, length: np.ndarray, n: int) -> np.ndarray:
        edges = np.arange(n + 1) / n
        lo, hi = edges[:-1][None, :], edges[1:][None, :]
        s, e = start[:, None], (start + length)[:, None]
        return np.clip(np.minimum(hi, e) - np.maximum(lo, s), 0.0, None) * n

    cover_x = axis(boxes[:, 0], boxes[:, 2], w)  # [N, w]
    cover_y = axis(boxes[:, 1], boxes[:, 3], h)  # [N, h]
    cover = (cover_y[:, :, None] * cover_x[:, None, :]).max(axis=0)
    return np.clip(cover, 0.0, 1.0).astype(np.float32)


def group_by_shape(arrays, rows=None) -> dict[tuple[int, ...], list[int]]:
    """Indices of ``arrays`` (numpy arrays or tensors; None entries skipped) by
    shape, in order, so that each group can be stacked into one batch. With
    ``rows``, only those indices."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in range(len(arrays)) if rows is None else rows:
        if arrays[i] is not None:
            groups.setdefault(tuple(arrays[i].shape), []).append(i)
    return groups


def score_layer(
    maps: list[np.ndarray | None],
    gts: list[GroundTruth],
    kind: str | None,
    tol: float,
) -> tuple[list, list, list]:
    """Spread, focus and hit of one layer's maps, batched per map shape.

    Maps are float in [0, 1] or uint8 levels 0..255 (``raw_levels``): the
    three measures do not depend on the scale, and a group of uint8 maps is
    stacked and counted as it is stored."""
    n = len(maps)
    spread: list = [None] * n
    focus: list = [None] * n
    hit: list = [None] * n
    for shape, idx in group_by_shape(maps).items():
        group = [maps[i] for i in idx]
        if any(m.dtype != np.uint8 for m in group):  # one scale per stack
            group = [_as_unit_float(m) for m in group]
        stack = np.stack(group)  # [B, H, W], uint8 levels or float32
        totals = stack.reshape(len(idx), -1).sum(axis=1, dtype=np.float64)
        usable = totals > 0
        for i, value in zip(idx, _spread_batch(stack, usable), strict=True):
            spread[i] = value
        if kind is None:
            continue
        objs = [
            gts[i].mask(shape) if ok else None
            for i, ok in zip(idx, usable, strict=True)
        ]
        rows = [k for k, obj in enumerate(objs) if obj is not None]
        if not rows:
            continue
        sub = stack[rows]
        obj_stack = np.stack([objs[k] for k in rows])
        inside = (sub * obj_stack).reshape(len(rows), -1).sum(axis=1, dtype=np.float64)
        fractions = np.clip(inside / totals[rows], 0.0, 1.0)
        peaks = sub.reshape(len(rows), -1).argmax(axis=1)
        for k, fraction, peak in zip(rows, fractions, peaks, strict=True):
            i = idx[k]
            focus[i] = float(fraction)
            hit[i] = gts[i].hit_at(divmod(int(peak), shape[1]), shape, objs[k], tol)
    return spread, focus, hit


def _spread_batch(stack: np.ndarray, usable: np.ndarray) -> list[float | None]:
    """Smallest fraction of pixels holding half of the energy, for each
    ``[H, W]`` map of ``stack`` (None where unusable). Exact for maps quantised
    to 256 levels (as stored), within 1/255 otherwise."""
    b = len(stack)
    if stack.dtype == np.uint8:  # the stored levels themselves
        q = stack.reshape(b, -1)
    else:
        # the same levels as rint(clip(m) * 255), in place and as uint8,
        # counted per map: int64 levels offset per map were ~100 MB per batch
        q = np.clip(stack, 0.0, 1.0).reshape(b, -1)
        q *= 255.0
        np.rint(q, out=q)
        q = q.astype(np.uint8)
    size = q.shape[1]
    counts = np.stack([np.bincount(row, minlength=256) for row in q])
    counts = counts[:, ::-1].astype(np.float64)  # brightest first
    levels = np.arange(255, -1, -1, dtype=np.float64)
    energy = counts * levels
    half = energy.sum(axis=1) / 2.0
    cum = np.cumsum(energy, axis=1)
    level = np.argmax(cum >= (half * (1 - 1e-12))[:, None], axis=1)
    rows = np.arange(b)
    prev = np.maximum(level - 1, 0)
    before = np.where(level > 0, cum[rows, prev], 0.0)
    pixels_before = np.where(level > 0, np.cumsum(counts, axis=1)[rows, prev], 0.0)
    step = np.maximum(levels[level], 1.0)
    needed = np.maximum(np.ceil((half - before) / step - 1e-9), 0.0)
    result: list[float | None] = []
    for k in range(b):
        if not usable[k]:
            result.append(None)
        elif half[k] <= 0:  # energy below one quantisation step: exact path
            result.append(_spread_float(stack[k]))
        else:
            result.append(float((pixels_before[k] + needed[k]) / size))
    return result


def agreement(layer_maps: list[list[np.ndarray | None]]) -> list[float | None]:
    """Per sample, the mean pairwise Pearson correlation of its maps across
    ``layer_maps`` (one list per layer), batched where all maps share a shape."""
    n = len(layer_maps[0])
    result: list[float | None] = [None] * n
    groups: dict[tuple[int, int], list[int]] = {}
    for i in range(n):
        maps = [lm[i] for lm in layer_maps]
        shapes = {m.shape for m in maps if m is not None}
        if len(shapes) == 1 and all(m is not None for m in maps):
            groups.setdefault(shapes.pop(), []).append(i)
        else:
            result[i] = _mean_pairwise_corr(maps)
    for shape, idx in groups.items():
        # A few samples at a time: 256 samples of four 256x192 maps in float64
        # are 400 MB, and passes over that were most of score_cams' time.
        for start in range(0, len(idx), _AGREEMENT_CHUNK):
            part = idx[start : start + _AGREEMENT_CHUNK]
            z = np.empty((len(part), len(layer_maps), shape[0] * shape[1]))
            for k, i in enumerate(part):
                for layer, lm in enumerate(layer_maps):
                    z[k, layer] = lm[i].ravel()
            for i, value in zip(part, _mean_pairwise_pearson(z), strict=True):
                result[i] = value
    return result


_AGREEMENT_CHUNK = 16


def _as_unit_float(m: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]: uint8 levels / 255, float maps as they are."""
    if m.dtype == np.uint8:
        return m.astype(np.float32) / np.float32(255.0)
    return m


def _spread_float(m: np.ndarray) -> float:
    """Spread of a map whose energy lies below one quantisation step, from the
    float values themselves."""
    s = np.sort(m.ravel())[::-1]
    k = int(np.searchsorted(np.cumsum(s), s.sum() / 2.0 * (1 - 1e-9))) + 1
    return k / m.size


def _resize(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if m.shape == shape:
        return m
    img = Image.fromarray(m.astype(np.float32), mode="F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.BILINEAR))


def _mean_pairwise_corr(maps: list[np.ndarray | None]) -> float | None:
    """Mean Pearson correlation over pairs of maps (resized to the first one's
    shape); pairs with a missing or constant map are left out."""
    present = [m for m in maps if m is not None]
    if len(present) < 2:
        return None
    shape = present[0].shape
    return _mean_pairwise_pearson(
        np.stack([_resize(m, shape).ravel() for m in present])[None]
    )[0]


def _mean_pairwise_pearson(z: np.ndarray) -> list[float | None]:
    """For each of ``B`` groups of ``L`` flat maps (``z``: ``[B, L, N]``), the mean
    Pearson correlation over pairs of maps, leaving out pairs with a constant
    map (None when no pair is left), clipped to [-1, 1]."""
    z = z.astype(np.float64)  # a copy: the caller's array is left as it was
    z -= z.mean(axis=2, keepdims=True)
    gram = z @ z.transpose(0, 2, 1)  # [B, L, L] centred dot products (BLAS)
    norms = np.sqrt(np.maximum(np.diagonal(gram, axis1=1, axis2=2), 0.0))  # [B, L]
    ok = norms > 1e-12
    unit = np.where(ok, norms, 1.0)
    iu = np.triu_indices(z.shape[1], k=1)
    corr = gram[:, iu[0], iu[1]] / (unit[:, iu[0]] * unit[:, iu[1]])  # [B, pairs]
    valid = ok[:, iu[0]] & ok[:, iu[1]]
    return [
        float(np.clip(corr[k][valid[k]].mean(), -1.0, 1.0)) if valid[k].any() else None
        for k in range(len(z))
    ]
