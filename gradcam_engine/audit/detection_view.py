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

from collections.abc import Iterable

import fiftyone.core.collections as foc

from ..runs import cam_runs as runs
from .detection_audit import is_detection_run
from .object_maps import show_object_maps

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
    run or none of ``detection_ids`` is one of its explained detections.
    (``object_maps.show_object_maps`` does this for labels of multi-label
    runs too.)"""
    info = runs.get_cam_run(samples, run_key)
    # a patches run stores its crops' maps the same way (runs/patch_runs.py)
    if not is_detection_run(info) and info.config.get("task") != "patches":
        raise ValueError(
            f"run_key {run_key!r} is a {info.config.get('task')!r} run; "
            "show_detection_maps needs a run of compute_cams(task='detection') "
            "or of compute_cams on a patches view"
        )
    return show_object_maps(samples, run_key, detection_ids, layer, overwrite)
