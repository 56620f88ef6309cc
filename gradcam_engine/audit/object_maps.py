"""The objects of a per-object run (detections, patches, multi-label labels):
list them lowest focus first, and put a chosen object's own map where the App
draws it.

Detection, patches and multi-label runs store one map per explained object
the same way (``runs/detections.attach_object_maps``: a ``<slug>_map``
``fo.Heatmap`` and a ``<slug>_focus`` float on the label itself). The App
draws sample heatmap fields, not label attributes, so ``show_object_maps``
copies the chosen objects' maps into the run-owned sample field
``{R}_<slug>_detection`` (detections, patches) or ``{R}_<slug>_label``
(labels), one chosen object per sample. ``object_rows`` is what the review
panel lists.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import fiftyone as fo
import fiftyone.core.collections as foc

from ..runs import cam_runs as runs
from ..runs.evaluations import evaluations_of
from ..runs.frame_fields import writable
from ..runs.naming import (
    chosen_detection_field,
    chosen_label_field,
    detection_focus_attribute,
    detection_map_attribute,
    detections_field,
    labels_field,
)
from .owned import claim_fields
from .writer_steps import resolve_layer

__all__ = ["ObjectStore", "object_rows", "object_store", "show_object_maps"]


@dataclass(frozen=True)
class ObjectStore:
    """Where a run keeps its explained objects."""

    task: str  # "detection", "patches" or "multilabel"
    field: str  # the run's fo.Detections / fo.Classifications sample field
    items: str  # "detections" / "classifications": the list inside it

    def chosen_field(self, heatmap: str) -> str:
        """The sample heatmap field that shows the chosen object's map."""
        if self.task == "multilabel":
            return chosen_label_field(heatmap)
        return chosen_detection_field(heatmap)


def object_store(info: runs.CamRunInfo) -> ObjectStore | None:
    """The run's object storage, None for a run that explains whole images."""
    task = info.config.get("task")
    if task in ("detection", "patches"):
        return ObjectStore(task, detections_field(info.run_key), "detections")
    if task == "multilabel":
        return ObjectStore(task, labels_field(info.run_key), "classifications")
    return None


def _store_of(info: runs.CamRunInfo) -> ObjectStore:
    store = object_store(info)
    if store is None:
        raise ValueError(
            f"run_key {info.run_key!r} is a {info.config.get('task')!r} run: it "
            "has no per-object maps. Pick a run of compute_cams(task='detection'"
            "), compute_cams(task='multilabel') or compute_cams on a patches view"
        )
    return store


def show_object_maps(
    samples: foc.SampleCollection,
    run_key: str,
    object_ids: Iterable[str],
    layer: str | None = None,
    overwrite: bool = False,
) -> dict[str, str]:
    """Write each chosen object's own map of ``layer`` (default: the run's
    last) to the run's chosen-object heatmap of its sample (see
    ``ObjectStore.chosen_field``); returns ``{sample id: object id}``.
    ``samples`` scopes the search. Raises when the run has no per-object maps
    or none of ``object_ids`` is one of its explained objects there."""
    info = runs.get_cam_run(samples, run_key)
    store = _store_of(info)
    layer = resolve_layer(info, layer)
    attr = detection_map_attribute(layer)
    wanted = set(object_ids)
    maps: dict[str, fo.Heatmap] = {}
    chosen: dict[str, str] = {}
    for sample_id, objects in zip(*samples.values(["id", store.field]), strict=True):
        for obj in (objects[store.items] if objects else None) or []:
            if obj.id in wanted and obj.has_field(attr) and obj[attr] is not None:
                maps[sample_id] = obj[attr]
                chosen[sample_id] = obj.id
    if not maps:
        raise ValueError(
            f"object ids {sorted(wanted)[:5]} hold no explained object of run "
            f"{run_key!r} (field {store.field!r}) in these samples; choose "
            f"{store.items} of {store.field!r} that have a {attr!r}"
        )
    target = store.chosen_field(info.fields[layer])
    heatmap_field = functools.partial(fo.EmbeddedDocumentField, fo.Heatmap)
    claim_fields(samples, run_key, {target: heatmap_field}, overwrite)
    writable(samples).set_values(target, maps, key_field="id")
    return chosen


def evaluation_key(samples: foc.SampleCollection, store: ObjectStore) -> str | None:
    """The latest FiftyOne detection evaluation of the run's detections
    (``evaluate_detections(store.field, ...)``): its key marks each one
    ``tp`` / ``fp``. None without one."""
    if store.task != "detection":
        return None
    keys = list(evaluations_of(samples, [store.field], entries=("pred_field",)))
    return keys[-1] if keys else None


def object_rows(
    samples: foc.SampleCollection,
    run_key: str,
    layer: str | None = None,
    label: str | None = None,
    limit: int | None = None,
) -> list[dict]:
    """The run's explained objects in ``samples`` (of class ``label`` when
    given), lowest focus first (objects without a focus last, by confidence):
    dicts of ``sample_id``, ``filepath``, ``object_id``, ``label``,
    ``predicted`` (a patch's classifier output), ``confidence``, ``focus``
    and ``eval`` (``tp`` / ``fp`` of the run's detection evaluation)."""
    info = runs.get_cam_run(samples, run_key)
    store = _store_of(info)
    layer = resolve_layer(info, layer)
    eval_key = evaluation_key(samples, store)
    prefix = f"{store.field}.{store.items}"
    attrs = {
        "object_id": "id",
        "label": "label",
        "confidence": "confidence",
        "focus": detection_focus_attribute(layer),
    }
    if store.task == "patches":
        attrs["predicted"] = "prediction"
    if eval_key:
        attrs["eval"] = eval_key
    view = samples.exists(store.field)
    columns = view.values(
        ["id", "filepath", *(f"{prefix}.{a}" for a in attrs.values())]
    )
    rows = []
    for sample_id, path, *per_object in zip(*columns, strict=True):
        n = len(per_object[0] or [])
        values = [v or [None] * n for v in per_object]
        for parts in zip(*values, strict=True):
            row = dict(zip(attrs, parts, strict=True))
            if label is None or row["label"] == label:
                rows.append(dict(row, sample_id=sample_id, filepath=path))
    rows.sort(key=_lowest_focus_first)
    return rows[:limit] if limit else rows


def _lowest_focus_first(row: dict) -> tuple:
    focus, confidence = row["focus"], row["confidence"]
    unknown = focus is None or (isinstance(focus, float) and math.isnan(focus))
    return (unknown, 0.0 if unknown else focus, confidence or 0.0)
