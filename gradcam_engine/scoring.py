"""Score a CAM run's stored heatmaps: focus on the objects, pointing game, spread,
agreement between layers and between runs.

Everything is computed from the maps already stored by ``compute_cams`` (no
model): the maps and the ground truth are read in bulk, chunk by chunk, scored
with numpy, and written back with one ``set_values`` per field. Every field
written is added to the run's ``owned_fields`` so that renaming or deleting the
run takes the scores along.

Fields written, for each heatmap field ``F`` of run ``R`` (see
``docs/ARCHITECTURE.md``):

- ``F_focus`` (float in [0, 1]): fraction of the map's energy (sum of its
  values) inside the ground-truth objects (energy-based pointing game,
  a.k.a. relevance mass accuracy). None without objects or without a map.
- ``F_hit`` (bool): the map's peak lies inside an object (boxes expanded by
  ``hit_tolerance`` of the image size; masks dilated by as much).
- ``F_spread`` (float in (0, 1]): the smallest fraction of the image area that
  holds half of the energy; ground-truth free. Low = concentrated.
- ``R_layer_agreement`` (float in [-1, 1]): mean pairwise Pearson correlation
  between the run's layer maps (resized to the first layer's size), when the
  run has two layers or more.
- ``F_vs_<compare_run>`` (float in [-1, 1]): with ``compare_run``, the Pearson
  correlation between this run's map and ``compare_run``'s map of the same
  layer, one field per layer the two runs share. Owned by ``R``.
"""

from __future__ import annotations

import ast
import zlib
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import fiftyone.core.utils as fou
import numpy as np
from bson import ObjectId
from PIL import Image, ImageDraw
from pymongo import UpdateOne

from . import runs
from .storage import heatmap_to_float, iter_chunks

__all__ = ["GT_TYPES", "score_cams", "focus_field", "hit_field", "spread_field"]

# Label types that can serve as ground truth, by kind.
GT_TYPES: dict[str, type] = {
    "detections": fo.Detections,
    "segmentation": fo.Segmentation,
    "polylines": fo.Polylines,
}


def focus_field(heatmap_field: str) -> str:
    return f"{heatmap_field}_focus"


def hit_field(heatmap_field: str) -> str:
    return f"{heatmap_field}_hit"


def spread_field(heatmap_field: str) -> str:
    return f"{heatmap_field}_spread"


def score_cams(
    samples: foc.SampleCollection,
    run_key: str,
    gt_field: str | None = None,
    *,
    layers: Sequence[str] | None = None,
    compare_run: str | None = None,
    hit_tolerance: float = 0.05,
    label_classes: Sequence[str] | None = None,
    batch_size: int = 256,
    progress: bool | Callable[[int, int], Any] = False,
) -> dict[str, Any]:
    """Score the heatmaps of run ``run_key`` on ``samples`` (module docstring).

    gt_field: a ``fo.Detections`` (boxes), ``fo.Segmentation`` (mask pixels;
        restricted to the class of ``{run_key}_target`` through the field's mask
        targets when that class is known, else all non-zero pixels) or
        ``fo.Polylines`` (filled) field; None writes only the ground-truth-free
        fields (spread, agreement).
    layers: the run's layers to score (layer names or heatmap field names);
        default all.
    compare_run: another CAM run; writes ``F_vs_<compare_run>`` per shared layer.
    hit_tolerance: how far (a fraction of the image's width/height) a peak may
        lie outside an object and still count as a hit.
    label_classes: only objects with these labels count as ground truth (for
        segmentation: the mask values these labels map to).
    progress: True for a progress bar, or a callable ``(done, total)``.

    Returns a summary: ``fields`` written, ``counts`` (non-None values per
    field), ``mean_focus`` / ``hit_rate`` / ``mean_spread`` per layer,
    ``mean_layer_agreement`` and ``mean_agreement_vs`` per layer.
    """
    info = runs.get_cam_run(samples, run_key)
    dataset = samples._root_dataset
    layers = _resolve_layers(info, layers)
    kind = _gt_kind(samples, gt_field)
    if isinstance(hit_tolerance, bool) or not isinstance(hit_tolerance, (int, float)):
        raise TypeError(
            f"hit_tolerance must be a number, got {type(hit_tolerance).__name__}"
        )
    if not 0.0 <= hit_tolerance < 0.5:
        raise ValueError(
            f"hit_tolerance must be in [0, 0.5) (a fraction of the image size), "
            f"got {hit_tolerance!r}"
        )
    if isinstance(label_classes, str):
        label_classes = [label_classes]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")

    compare_layers: list[str] = []
    compare_fields: dict[str, str] = {}
    if compare_run is not None:
        other = runs.get_cam_run(samples, compare_run)
        if compare_run == run_key:
            raise ValueError("compare_run must differ from run_key")
        compare_layers = [layer for layer in layers if layer in other.layers]
        if not compare_layers:
            raise ValueError(
                f"Runs {run_key!r} (layers {layers}) and {compare_run!r} (layers "
                f"{other.layers}) share no layer to compare"
            )
        compare_fields = {layer: other.fields[layer] for layer in compare_layers}

    schema = dataset.get_field_schema()
    heat_fields = [info.fields[layer] for layer in layers]
    target_path = f"{info.target_field}.label" if info.target_field in schema else None
    seg_classes = (
        _SegClasses(dataset, gt_field, label_classes)
        if kind == "segmentation"
        else None
    )

    # Outputs: field -> list of values, in the order of `ids`.
    out: dict[str, list] = {}
    for f in heat_fields:
        out[spread_field(f)] = []
        if kind is not None:
            out[focus_field(f)] = []
            out[hit_field(f)] = []
    agreement_field = f"{run_key}_layer_agreement" if len(heat_fields) >= 2 else None
    if agreement_field:
        out[agreement_field] = []
    vs_fields = {
        layer: f"{info.fields[layer]}_vs_{compare_run}" for layer in compare_layers
    }
    for name in vs_fields.values():
        out[name] = []

    paths = heat_fields + [compare_fields[layer] for layer in compare_layers]
    if kind == "detections":
        paths += [f"{gt_field}.detections.bounding_box", f"{gt_field}.detections.label"]
    elif kind is not None:
        paths.append(gt_field)
    if target_path:
        paths.append(target_path)

    ids = samples.values("id")
    total = len(ids)
    report = _progress(progress, total)
    done = 0
    for chunk in iter_chunks(ids, batch_size):
        view = samples.select(chunk, ordered=True)
        # Raw documents: decoding maps ourselves is ~10x faster than building
        # fo.Heatmap objects through mongoengine.
        columns = dict(zip(paths, view.values(paths, _raw=True), strict=True))
        n = len(chunk)
        maps = [[_raw_heatmap(doc) for doc in columns[f]] for f in heat_fields]
        gts = [
            _GroundTruth.from_columns(
                kind,
                columns,
                gt_field,
                i,
                label_classes,
                seg_classes,
                columns[target_path][i] if target_path else None,
            )
            for i in range(n)
        ]
        for f, layer_maps in zip(heat_fields, maps, strict=True):
            spread, focus, hit = _score_layer(layer_maps, gts, kind, hit_tolerance)
            out[spread_field(f)] += spread
            if kind is not None:
                out[focus_field(f)] += focus
                out[hit_field(f)] += hit
        if agreement_field:
            out[agreement_field] += _agreement(maps)
        for layer, name in vs_fields.items():
            theirs = [_raw_heatmap(doc) for doc in columns[compare_fields[layer]]]
            out[name] += _agreement([maps[layers.index(layer)], theirs])
        done += len(chunk)
        report(done)

    for name in out:
        ftype = fo.BooleanField if name.endswith("_hit") else fo.FloatField
        if name not in schema:
            dataset.add_sample_field(name, ftype)
    _write(samples, ids, out)

    written = list(out)
    runs._update_config(
        dataset,
        run_key,
        scoring={
            "gt_field": gt_field,
            "gt_kind": kind,
            "layers": layers,
            "compare_run": compare_run,
            "hit_tolerance": float(hit_tolerance),
            "label_classes": list(label_classes) if label_classes else None,
        },
    )
    runs.add_owned_fields(dataset, run_key, written)
    return _summary(run_key, gt_field, layers, info, out, vs_fields, total)


def _write(samples: foc.SampleCollection, ids: list[str], out: dict[str, list]) -> None:
    """Write all score fields: one bulk update per sample setting every field
    (several times faster than one ``set_values`` per field), or ``set_values``
    per field if this FiftyOne lacks the bulk-write hook."""
    dataset = samples._root_dataset
    if not hasattr(dataset, "_bulk_write"):
        for name, values in out.items():
            by_id = dict(zip(ids, values, strict=True))
            samples.set_values(name, by_id, key_field="id")
        return
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    names = list(out)
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        ops = []
        for k, sample_id in enumerate(chunk, start):
            update = {name: out[name][k] for name in names}
            update["last_modified_at"] = now
            ops.append(UpdateOne({"_id": ObjectId(sample_id)}, {"$set": update}))
        dataset._bulk_write(ops, ids=chunk)


# --------------------------------------------------------------------------- args


def _resolve_layers(info: runs.CamRunInfo, layers: Sequence[str] | None) -> list[str]:
    if layers is None:
        return list(info.layers)
    if isinstance(layers, str):
        layers = [layers]
    by_field = {f: layer for layer, f in info.fields.items()}
    resolved = []
    for layer in layers:
        if layer in info.fields:
            resolved.append(layer)
        elif layer in by_field:
            resolved.append(by_field[layer])
        else:
            raise ValueError(
                f"layers: {layer!r} is not a layer of run {info.run_key!r}; "
                f"its layers are {info.layers} (fields {list(info.fields.values())})"
            )
    return list(dict.fromkeys(resolved))


def _gt_kind(samples: foc.SampleCollection, gt_field: str | None) -> str | None:
    if gt_field is None:
        return None
    suitable = {
        kind: sorted(samples.get_field_schema(embedded_doc_type=cls))
        for kind, cls in GT_TYPES.items()
    }
    for kind, names in suitable.items():
        if gt_field in names:
            return kind
    listed = [name for names in suitable.values() for name in names]
    field = samples.get_field_schema().get(gt_field)
    if field is None:
        problem = "does not exist"
    else:
        doc = getattr(field, "document_type", None)
        problem = f"is a {doc.__name__ if doc else type(field).__name__} field"
    raise ValueError(
        f"gt_field {gt_field!r} {problem}; it must be a Detections, Segmentation or "
        f"Polylines field. Suitable label fields here: {listed or 'none'}"
    )


def _progress(progress, total: int) -> Callable[[int], None]:
    if callable(progress):
        return lambda done: progress(done, total)
    if progress:
        bar = fou.ProgressBar(total=total)
        bar.start()

        def update(done: int) -> None:
            bar.set_iteration(done)
            if done >= total:
                bar.close()

        return update
    return lambda done: None


# --------------------------------------------------------------------------- ground truth


class _SegClasses:
    """Label -> mask values from the field's mask targets (or the defaults)."""

    def __init__(
        self, dataset: fo.Dataset, gt_field: str, label_classes: Sequence[str] | None
    ) -> None:
        targets = dataset.mask_targets.get(gt_field) or dataset.default_mask_targets
        self.by_label: dict[str, list[int]] = {}
        for value, label in (targets or {}).items():
            try:
                self.by_label.setdefault(str(label), []).append(int(value))
            except (TypeError, ValueError):
                continue  # RGB hex targets: not supported for restriction
        self.fixed: list[int] | None = None
        if label_classes:
            missing = [c for c in label_classes if c not in self.by_label]
            if missing:
                raise ValueError(
                    f"label_classes {missing} are not in the mask targets of "
                    f"{gt_field!r}: {sorted(self.by_label) or 'none defined'}"
                )
            self.fixed = sorted({v for c in label_classes for v in self.by_label[c]})

    def values_for(self, target: str | None) -> list[int] | None:
        if self.fixed is not None:
            return self.fixed
        if target is not None and str(target) in self.by_label:
            return self.by_label[str(target)]
        return None  # all non-zero pixels


class _GroundTruth:
    """One sample's objects, rasterised on demand at a heatmap's resolution."""

    def __init__(self, boxes=None, mask=None, mask_values=None, polygons=None):
        self.boxes = boxes  # float [N, 4] relative xywh, N >= 1
        self.seg = mask  # int [h, w]
        self.mask_values = mask_values
        self.polygons = polygons  # list of [[x, y], ...] relative
        self._cache: dict[tuple[int, int], np.ndarray | None] = {}

    @classmethod
    def from_columns(cls, kind, columns, gt_field, i, label_classes, seg, target):
        if kind is None:
            return cls()
        if kind == "detections":
            boxes = columns[f"{gt_field}.detections.bounding_box"][i] or []
            labels = columns[f"{gt_field}.detections.label"][i] or []
            keep = [
                b
                for b, lab in zip(boxes, labels, strict=True)
                if b is not None and (not label_classes or lab in label_classes)
            ]
            return cls(boxes=np.asarray(keep, dtype=np.float64).reshape(-1, 4))
        label = columns[gt_field][i]
        if label is None:
            return cls()
        if kind == "segmentation":
            if label.get("mask") is not None:
                mask = _decode_array(label["mask"])
            elif label.get("mask_path"):
                mask = np.asarray(Image.open(label["mask_path"]))
            else:
                return cls()
            if mask.ndim == 3:  # RGB masks: any colour is an object
                mask = mask.any(axis=-1).astype(np.uint8)
            return cls(mask=mask, mask_values=seg.values_for(target))
        polygons = [
            shape
            for poly in label.get("polylines") or []
            if not label_classes or poly.get("label") in label_classes
            for shape in poly.get("points") or []
            if len(shape) >= 3
        ]
        return cls(polygons=polygons)

    def mask(self, shape: tuple[int, int]) -> np.ndarray | None:
        """Object weights in [0, 1] at ``shape`` (None: no object)."""
        if shape not in self._cache:
            obj = self._rasterise(shape)
            self._cache[shape] = obj if obj is not None and obj.any() else None
        return self._cache[shape]

    def _rasterise(self, shape: tuple[int, int]) -> np.ndarray | None:
        h, w = shape
        if self.boxes is not None:
            return _box_coverage(self.boxes, h, w) if len(self.boxes) else None
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


def _box_coverage(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
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


# --------------------------------------------------------------------------- decoding

_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] = {}


def _decode_array(data: bytes) -> np.ndarray:
    """A numpy array stored by FiftyOne (zlib-compressed ``.npy`` bytes). Same as
    ``fou.deserialize_numpy_array`` but parses each distinct header only once."""
    raw = zlib.decompress(data)
    if raw[:6] != b"\x93NUMPY":
        return fou.deserialize_numpy_array(data)
    major = raw[6]
    size_len = 2 if major == 1 else 4
    header_len = int.from_bytes(raw[8 : 8 + size_len], "little")
    start = 8 + size_len
    header = raw[start : start + header_len]
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        d = ast.literal_eval(header.decode("latin1"))
        parsed = (np.dtype(d["descr"]), tuple(d["shape"]), bool(d["fortran_order"]))
        if len(_NPY_HEADERS) < 1024:
            _NPY_HEADERS[header] = parsed
    dtype, shape, fortran = parsed
    arr = np.frombuffer(raw, dtype=dtype, offset=start + header_len)
    return arr.reshape(shape, order="F" if fortran else "C")


def _raw_heatmap(doc: dict | None) -> np.ndarray | None:
    """float32 map in [0, 1] from a raw ``fo.Heatmap`` document (None if absent)."""
    if doc is None:
        return None
    if isinstance(doc.get("map"), bytes):
        doc = {**doc, "map": _decode_array(doc["map"])}
    return heatmap_to_float(doc)


# --------------------------------------------------------------------------- scores


def _by_shape(maps: list[np.ndarray | None]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(maps):
        if m is not None:
            groups.setdefault(m.shape, []).append(i)
    return groups


def _score_layer(
    maps: list[np.ndarray | None],
    gts: list[_GroundTruth],
    kind: str | None,
    tol: float,
) -> tuple[list, list, list]:
    """Spread, focus and hit of one layer's maps, batched per map shape."""
    n = len(maps)
    spread: list = [None] * n
    focus: list = [None] * n
    hit: list = [None] * n
    for shape, idx in _by_shape(maps).items():
        stack = np.stack([maps[i] for i in idx])  # [B, H, W] float32
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
    """``_spread`` of each ``[H, W]`` map of ``stack`` (None where unusable)."""
    b = len(stack)
    q = np.rint(np.clip(stack, 0.0, 1.0) * 255.0).astype(np.int64).reshape(b, -1)
    size = q.shape[1]
    counts = np.bincount((q + 256 * np.arange(b)[:, None]).ravel(), minlength=256 * b)
    counts = counts.reshape(b, 256)[:, ::-1].astype(np.float64)  # brightest first
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
            result.append(_spread(stack[k]))
        else:
            result.append(float((pixels_before[k] + needed[k]) / size))
    return result


def _agreement(layer_maps: list[list[np.ndarray | None]]) -> list[float | None]:
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
    n_layers = len(layer_maps)
    iu = np.triu_indices(n_layers, k=1)
    for idx in groups.values():
        z = np.stack(
            [np.stack([lm[i].ravel() for lm in layer_maps]) for i in idx]
        ).astype(np.float64)  # [B, L, N]
        z -= z.mean(axis=2, keepdims=True)
        norms = np.linalg.norm(z, axis=2)  # [B, L]
        ok = norms > 1e-12
        z /= np.where(ok, norms, 1.0)[:, :, None]
        corr = np.einsum("bln,bmn->blm", z, z)[:, iu[0], iu[1]]  # [B, pairs]
        valid = ok[:, iu[0]] & ok[:, iu[1]]
        for k, i in enumerate(idx):
            if valid[k].any():
                value = corr[k][valid[k]].mean()
                result[i] = float(np.clip(value, -1.0, 1.0))
    return result


def _spread(m: np.ndarray) -> float:
    """Smallest fraction of pixels holding half of the energy. Exact for maps
    quantised to 256 levels (as stored), within 1/255 otherwise."""
    q = np.rint(np.clip(m, 0.0, 1.0) * 255.0).astype(np.int64).ravel()
    counts = np.bincount(q, minlength=256)[::-1]  # brightest level first
    levels = np.arange(255, -1, -1, dtype=np.float64)
    energy = counts * levels
    half = energy.sum() / 2.0
    if half <= 0:
        # All energy below the quantisation step: fall back to the float map.
        s = np.sort(m.ravel())[::-1]
        k = int(np.searchsorted(np.cumsum(s), s.sum() / 2.0 * (1 - 1e-9))) + 1
        return k / m.size
    cum = np.cumsum(energy)
    level = int(np.searchsorted(cum, half * (1 - 1e-12)))
    before = cum[level - 1] if level > 0 else 0.0
    pixels_before = counts[:level].sum()
    needed = int(np.ceil((half - before) / levels[level] - 1e-9))
    return float((pixels_before + max(needed, 0)) / q.size)


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
    z = np.stack([_resize(m, shape).ravel() for m in present]).astype(np.float64)
    z -= z.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(z, axis=1)
    ok = norms > 1e-12
    if ok.sum() < 2:
        return None
    z = z[ok] / norms[ok, None]
    corr = z @ z.T
    iu = np.triu_indices(len(z), k=1)
    return float(np.clip(corr[iu].mean(), -1.0, 1.0))


def _mean(values: list) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _summary(run_key, gt_field, layers, info, out, vs_fields, total) -> dict[str, Any]:
    mean_focus, hit_rate, mean_spread = {}, {}, {}
    for layer in layers:
        f = info.fields[layer]
        mean_spread[layer] = _mean(out[spread_field(f)])
        if focus_field(f) in out:
            mean_focus[layer] = _mean(out[focus_field(f)])
            hit_rate[layer] = _mean(out[hit_field(f)])
    agreement = out.get(f"{run_key}_layer_agreement")
    return {
        "run_key": run_key,
        "gt_field": gt_field,
        "num_samples": total,
        "fields": list(out),
        "counts": {
            name: sum(v is not None for v in vals) for name, vals in out.items()
        },
        "mean_focus": mean_focus,
        "hit_rate": hit_rate,
        "mean_spread": mean_spread,
        "mean_layer_agreement": _mean(agreement) if agreement is not None else None,
        "mean_agreement_vs": {layer: _mean(out[f]) for layer, f in vs_fields.items()},
    }
