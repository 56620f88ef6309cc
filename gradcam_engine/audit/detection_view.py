"""One detection's own map where the App draws it: a sample-level heatmap.

The App draws ``fo.Heatmap`` fields of samples, not heatmaps stored as
attributes of a detection. ``show_detection_maps`` copies the own map
(``<slug>_map``) of the chosen detections of a detection run into the
run-owned field ``{R}_<slug>_detection`` of their samples (one chosen
detection per sample), so that the sample view shows where the model looked
for that detection. The ``show_detection_cam`` operator calls it with the
detections selected in the App.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import fiftyone as fo
import fiftyone.core.collections as foc

from ..runs import cam_runs as runs
from ..runs.frame_fields import writable
from ..runs.naming import chosen_detection_field, detection_map_attribute
from .detection_audit import detection_focus_path, is_detection_run
from .owned import claim_fields
from .writer_steps import resolve_layer

__all__ = ["show_detection_maps"]


def show_detection_maps(
    samples: foc.SampleCollection,
    run_key: str,
    detection_ids: Iterable[str],
    layer: str | None = None,
    overwrite: bool = False,
) -> dict[str, str]:
    """Write each chosen detection's own map of ``layer`` (default: the run's
    last) to ``{run_key}_<slug>_detection`` of its sample; returns ``{sample
    id: detection id}``. ``samples`` scopes the search (e.g. the samples the
    detections were selected on). Raises when ``run_key`` is not a detection
    run or none of ``detection_ids`` is one of its explained detections."""
    info = runs.get_cam_run(samples, run_key)
    # a patches run stores its crops' maps the same way (runs/patch_runs.py)
    if not is_detection_run(info) and info.config.get("task") != "patches":
        raise ValueError(
            f"run_key {run_key!r} is a {info.config.get('task')!r} run; "
            "show_detection_maps needs a run of compute_cams(task='detection') "
            "or of compute_cams on a patches view"
        )
    layer = resolve_layer(info, layer)
    field, _ = detection_focus_path(info, layer)
    attr = detection_map_attribute(layer)
    wanted = set(detection_ids)
    maps: dict[str, fo.Heatmap] = {}
    chosen: dict[str, str] = {}
    for sample_id, detections in zip(*samples.values(["id", field]), strict=True):
        for det in (detections.detections if detections else None) or []:
            if det.id in wanted and det.has_field(attr) and det[attr] is not None:
                maps[sample_id] = det[attr]
                chosen[sample_id] = det.id
    if not maps:
        raise ValueError(
            f"detection_ids {sorted(wanted)[:5]} hold no explained detection of "
            f"run {run_key!r} (field {field!r}) in these samples; select "
            f"detections of {field!r} that have a {attr!r}"
        )
    target = chosen_detection_field(info.fields[layer])
    heatmap_field = functools.partial(fo.EmbeddedDocumentField, fo.Heatmap)
    claim_fields(samples, run_key, {target: heatmap_field}, overwrite)
    writable(samples).set_values(target, maps, key_field="id")
    return chosen
