"""The labels of a multi-label run (``compute_cams(..., task="multilabel")``):
the map of a chosen label where the App draws it, and each label's focus.

Each explained label of ``{R}_labels`` carries its own map ``<slug>_map``
(the per-object storage of detection runs, docs/ARCHITECTURE.md).
``show_label_maps`` copies the map of one class into the sample-level heatmap
``{R}_<slug>_label`` (the App draws sample fields, not label attributes);
``score_label_maps`` measures each label's focus: the share of its own map
inside the ground-truth objects of the same class, when the sample has them.
"""

from __future__ import annotations

import functools

import fiftyone as fo
import fiftyone.core.collections as foc
import numpy as np

from ..runs import cam_runs as runs
from ..runs.frame_fields import writable
from ..runs.naming import (
    chosen_label_field,
    detection_focus_attribute,
    detection_map_attribute,
    labels_field,
)
from .metrics import box_coverage
from .owned import claim_fields
from .writer_steps import resolve_layer

__all__ = ["chosen_label_field", "score_label_maps", "show_label_maps"]


def _multilabel_run(samples, run_key):
    info = runs.get_cam_run(samples, run_key)
    if info.config.get("task") != "multilabel":
        raise ValueError(
            f"run_key {run_key!r} is a {info.config.get('task')!r} run; this "
            "needs a run of compute_cams(task='multilabel')"
        )
    return info


def show_label_maps(
    samples: foc.SampleCollection,
    run_key: str,
    label: str,
    layer: str | None = None,
    overwrite: bool = False,
) -> int:
    """Write, on every sample of ``samples`` whose run explained ``label``,
    that label's own map of ``layer`` (default: the run's last) to
    ``{run_key}_<slug>_label``; returns how many samples got one. Raises
    when ``run_key`` is not a multi-label run or no sample explained
    ``label``."""
    info = _multilabel_run(samples, run_key)
    layer = resolve_layer(info, layer)
    field, attr = labels_field(info.run_key), detection_map_attribute(layer)
    maps: dict[str, fo.Heatmap] = {}
    for sample_id, labels in zip(*samples.values(["id", field]), strict=True):
        for c in (labels.classifications if labels else None) or []:
            if c.label == label and c.has_field(attr) and c[attr] is not None:
                maps[sample_id] = c[attr]
    if not maps:
        found = sorted(set(samples.distinct(f"{field}.classifications.label")))
        raise ValueError(
            f"label {label!r} was not explained by run {run_key!r} in these "
            f"samples; its explained labels are {found[:20]}"
        )
    target = chosen_label_field(info.fields[layer])
    heatmap_field = functools.partial(fo.EmbeddedDocumentField, fo.Heatmap)
    claim_fields(samples, run_key, {target: heatmap_field}, overwrite)
    writable(samples).set_values(target, maps, key_field="id")
    return len(maps)


def score_label_maps(
    samples: foc.SampleCollection,
    run_key: str,
    gt_field: str,
    layer: str | None = None,
) -> dict[str, float]:
    """Set ``<slug>_focus`` on each explained label of ``{run_key}_labels``:
    the share of its own map's energy inside the boxes of ``gt_field``
    (``fo.Detections``) of the same class (None when the sample has none).
    Returns the mean focus per class."""
    info = _multilabel_run(samples, run_key)
    layer = resolve_layer(info, layer)
    doc_type = getattr(samples.get_field(gt_field), "document_type", None)
    if doc_type is not fo.Detections:
        raise ValueError(
            f"gt_field {gt_field!r} holds {getattr(doc_type, '__name__', doc_type)}; "
            "score_label_maps needs a fo.Detections field of the objects"
        )
    field = labels_field(info.run_key)
    map_attr, focus_attr = (
        detection_map_attribute(layer),
        detection_focus_attribute(layer),
    )
    ids, all_labels, all_gts = samples.values(["id", field, gt_field])
    updated, per_class = {}, {}
    for sid, labels, gts in zip(ids, all_labels, all_gts, strict=True):
        if not labels:
            continue
        for c in labels.classifications or []:
            boxes = [
                d.bounding_box
                for d in (gts.detections if gts else []) or []
                if d.label == c.label
            ]
            focus = None
            if boxes and c.has_field(map_attr) and c[map_attr] is not None:
                focus = _focus(c[map_attr].map, np.asarray(boxes, dtype=np.float64))
                per_class.setdefault(c.label, []).append(focus)
            c[focus_attr] = focus
        updated[sid] = labels
    writable(samples).set_values(field, updated, key_field="id")
    return {k: float(np.mean(v)) for k, v in sorted(per_class.items()) if v}


def _focus(heat: np.ndarray, boxes: np.ndarray) -> float | None:
    """Share of ``heat``'s energy inside the union of ``boxes`` (relative
    xywh), as score_cams measures a map's focus."""
    heat = np.asarray(heat, dtype=np.float64)
    if heat.ndim == 3:
        heat = heat[..., 0]
    total = heat.sum()
    if total <= 0:
        return None
    cover = box_coverage(boxes, *heat.shape)
    return float(np.clip((heat * cover).sum() / total, 0.0, 1.0))
