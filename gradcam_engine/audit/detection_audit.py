"""The audit of a detection run (``compute_cams(..., task="detection")``): one
row per explained detection instead of one per sample.

Each explained detection of ``{R}_detections`` carries its own focus
(``<slug>_focus``, computed with its map), so nothing needs scoring. Whether
a detection is right comes from FiftyOne's own detection evaluation of the
run's detections against ground truth
(``dataset.evaluate_detections("{R}_detections", gt_field=..., eval_key=...)``
marks each detection ``tp`` / ``fp``), so that a reviewer can ask "which false
positives did the model find by looking at the background?".
"""

from __future__ import annotations

import math
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import pandas as pd
from fiftyone import ViewField as F

from ..runs import cam_runs as runs
from ..runs.naming import detection_focus_attribute, detections_field

__all__ = [
    "detection_eval_key",
    "detection_focus_path",
    "detection_rows",
    "detection_review_views",
    "is_detection_run",
]


def is_detection_run(info: runs.CamRunInfo) -> bool:
    return info.config.get("task") == "detection"


def detection_focus_path(info: runs.CamRunInfo, layer: str) -> tuple[str, str]:
    """``(detections field, focus attribute)`` of ``layer``."""
    return detections_field(info.run_key), detection_focus_attribute(layer)


def detection_eval_key(
    samples: foc.SampleCollection, info: runs.CamRunInfo, label_field: str | None
) -> str | None:
    """The key of FiftyOne's detection evaluation of the run's detections
    against ``label_field`` (the latest one), None without ``label_field``;
    raises when there is none, saying how to make one."""
    if label_field is None:
        return None
    field = detections_field(info.run_key)
    found = []
    for key in samples.list_evaluations():
        config = samples.get_evaluation_info(key).config
        if (
            getattr(config, "pred_field", None) == field
            and getattr(config, "gt_field", None) == label_field
        ):
            found.append(key)
    if not found:
        raise ValueError(
            f"label_field={label_field!r}: no evaluation of {field!r} against it "
            f"on this dataset. Run dataset.evaluate_detections({field!r}, "
            f"gt_field={label_field!r}, eval_key='eval') first: it marks each "
            "explained detection tp / fp, which tells right from wrong here"
        )
    return found[-1]


def detection_rows(
    samples: foc.SampleCollection,
    info: runs.CamRunInfo,
    layer: str,
    label_field: str | None,
) -> pd.DataFrame:
    """One row per explained detection: sample id, detection id, class,
    focus, correct (1 for ``tp``, 0 for ``fp``, NaN without an evaluation)."""
    field, attr = detection_focus_path(info, layer)
    eval_key = detection_eval_key(samples, info, label_field)
    paths = ["id", f"{field}.detections.id", f"{field}.detections.label"]
    paths.append(f"{field}.detections.{attr}")
    if eval_key:
        paths.append(f"{field}.detections.{eval_key}")
    columns = samples.values(paths)
    evals = columns[4] if eval_key else [None] * len(columns[0])
    rows: list[dict[str, Any]] = []
    for sample_id, ids, labels, focus, outcome in zip(*columns[:4], evals, strict=True):
        n = len(ids or [])
        for det_id, label, value, result in zip(
            ids or [],
            labels or [],
            focus or [None] * n,
            outcome or [None] * n,
            strict=True,
        ):
            correct = math.nan
            if result in ("tp", "fp"):
                correct = float(result == "tp")
            rows.append(
                {
                    "id": sample_id,
                    "detection_id": det_id,
                    "class": label,
                    "focus": math.nan if value is None else float(value),
                    "correct": correct,
                }
            )
    names = ["id", "detection_id", "class", "focus", "correct"]
    return pd.DataFrame(rows, columns=names)


def detection_review_views(
    samples: foc.SampleCollection,
    info: runs.CamRunInfo,
    layer: str,
    label_field: str | None,
    low_focus: float,
) -> tuple[fo.DatasetView, fo.DatasetView, str]:
    """``(suspects, errors, description)``: the samples with explained
    detections of focus < ``low_focus``, filtered to those detections
    (``filter_labels``), sorted by their lowest focus. With an evaluation,
    suspects are true positives and errors false positives; without (a
    ``target="label"`` run explains ground truth), errors are the boxes the
    model did not detect (their ``error`` attribute)."""
    field, attr = detection_focus_path(info, layer)
    eval_key = detection_eval_key(samples, info, label_field)
    low = (F(attr) != None) & (F(attr) < low_focus)  # noqa: E711
    base = samples.view() if isinstance(samples, fo.Dataset) else samples
    lowest = F(f"{field}.detections").map(F(attr)).min()
    if eval_key:
        suspects = base.filter_labels(field, low & (F(eval_key) == "tp"))
        errors = base.filter_labels(field, low & (F(eval_key) == "fp"))
        how = f"evaluation {eval_key!r} against {label_field!r}"
    else:
        suspects = base.filter_labels(field, low)
        errors = base.filter_labels(field, F("error") != None)  # noqa: E711
        how = "no evaluation: all explained detections; errors = unmatched boxes"
    described = f"detections {field}, {attr} < {low_focus}, {how}"
    return suspects.sort_by(lowest), errors.sort_by(lowest), described
