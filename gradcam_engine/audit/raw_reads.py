"""Reading stored maps and ground truth from raw FiftyOne documents, for every
audit writer (``score_cams``, clusters, background test, ROAD).

Raw documents (``values(..., _raw=True)``) decoded here are about 10x faster
than building ``fo.Heatmap`` / label objects through mongoengine.
"""

from __future__ import annotations

import ast
import zlib
from collections.abc import Sequence

import fiftyone as fo
import fiftyone.core.collections as foc
import fiftyone.core.utils as fou
import numpy as np
from PIL import Image

from ..runs.storage import heatmap_to_float
from .metrics import GroundTruth

__all__ = [
    "GT_TYPES",
    "SegClasses",
    "decode_array",
    "ground_truth",
    "gt_kind",
    "raw_heatmap",
    "raw_levels",
]

# Label types that can serve as ground truth, by kind.
GT_TYPES: dict[str, type] = {
    "detections": fo.Detections,
    "segmentation": fo.Segmentation,
    "polylines": fo.Polylines,
}


def gt_kind(samples: foc.SampleCollection, gt_field: str | None) -> str | None:
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


class SegClasses:
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


def ground_truth(kind, columns, gt_field, i, label_classes, seg, target) -> GroundTruth:
    """Sample ``i``'s objects from the raw columns read by ``score_cams``."""
    if kind is None:
        return GroundTruth()
    if kind == "detections":
        boxes = columns[f"{gt_field}.detections.bounding_box"][i] or []
        labels = columns[f"{gt_field}.detections.label"][i] or []
        keep = [
            b
            for b, lab in zip(boxes, labels, strict=True)
            if b is not None and (not label_classes or lab in label_classes)
        ]
        return GroundTruth(boxes=np.asarray(keep, dtype=np.float64).reshape(-1, 4))
    label = columns[gt_field][i]
    if label is None:
        return GroundTruth()
    if kind == "segmentation":
        if label.get("mask") is not None:
            mask = decode_array(label["mask"])
        elif label.get("mask_path"):
            mask = np.asarray(Image.open(label["mask_path"]))
        else:
            return GroundTruth()
        if mask.ndim == 3:  # RGB masks: any colour is an object
            mask = mask.any(axis=-1).astype(np.uint8)
        return GroundTruth(mask=mask, mask_values=seg.values_for(target))
    polygons = [
        shape
        for poly in label.get("polylines") or []
        if not label_classes or poly.get("label") in label_classes
        for shape in poly.get("points") or []
        if len(shape) >= 3
    ]
    return GroundTruth(polygons=polygons)


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


def decode_array(data: bytes) -> np.ndarray:
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


def raw_levels(doc: dict | None) -> np.ndarray | None:
    """The map of a raw ``fo.Heatmap`` document as stored when that is uint8
    over the range [0, 255] (the levels compute_cams writes: no float copy),
    else as :func:`raw_heatmap` gives it (float32 in [0, 1]). For measures
    that do not depend on the map's scale (focus, hit, spread, Pearson)."""
    if doc is None:
        return None
    data = doc.get("map")
    if isinstance(data, bytes) and list(doc.get("range") or ()) == [0, 255]:
        levels = decode_array(data)
        if levels.dtype == np.uint8 and levels.ndim == 2:
            return levels
    return raw_heatmap(doc)


def raw_heatmap(doc: dict | None) -> np.ndarray | None:
    """float32 map in [0, 1] from a raw ``fo.Heatmap`` document (None if absent)."""
    if doc is None:
        return None
    if isinstance(doc.get("map"), bytes):
        doc = {**doc, "map": decode_array(doc["map"])}
    return heatmap_to_float(doc)
