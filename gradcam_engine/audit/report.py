"""Per-class audit of a scored CAM run, and saved views for a bias review.

``class_report`` answers "which classes does the model get right by looking at
the context?": per class, the mean focus of the heatmaps on the objects, the
share of low-focus samples, and how much more accurate the model is on
high-focus than on low-focus samples. ``save_review_views`` saves the two
lists a reviewer walks through in the App.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import numpy as np
import pandas as pd
from fiftyone import ViewField as F

from ..engine.errors import AdvisedError
from ..runs import cam_runs as runs
from ..runs.naming import BG_DROP, BG_FLIP, cluster_field, run_field
from ..runs.ownership import claim
from .class_names import foreign_labels, foreign_note
from .detection_audit import (
    detection_focus_path,
    detection_review_views,
    detection_rows,
    is_detection_run,
)
from .scoring import focus_field
from .writer_steps import resolve_layer

__all__ = [
    "ALL_CLASSES",
    "REPORT_COLUMNS",
    "class_report",
    "class_rows",
    "format_report",
    "resolve_layer",
    "review_view_names",
    "save_review_views",
]

ALL_CLASSES = "(all)"  # the summary row's class
REPORT_COLUMNS = (
    "count",
    "scored",
    "accuracy",
    "mean_focus",
    "median_focus",
    "low_focus_share",
    "n_low_focus",
    "accuracy_high_focus",
    "accuracy_low_focus",
    "accuracy_gap",
)
# Added when the run has them (cluster_cams, background_test): per class, the
# share of samples whose prediction flips without the background, the mean
# drop of the target's probability, and the mix of heatmap clusters.
DISCOVERY_COLUMNS = ("bg_flip_rate", "mean_bg_drop", "cluster_mix")
_LABEL_TYPES = (fo.Classification, fo.Detections)


def _focus_field(
    samples: foc.SampleCollection, info: runs.CamRunInfo, layer, required: bool = True
) -> str | None:
    field = focus_field(info.fields[resolve_layer(info, layer)])
    if field not in samples.get_field_schema():
        if not required:
            return None
        raise AdvisedError(
            f"No focus scores {field!r} for run {info.run_key!r}:",
            python=f"run score_cams(samples, {info.run_key!r}, gt_field=...) first",
            app="run 'Score CAMs' on this run first",
        )
    return field


def _label_kind(samples: foc.SampleCollection, label_field: str) -> str:
    schema = samples.get_field_schema(embedded_doc_type=_LABEL_TYPES)
    field = schema.get(label_field)
    if field is None:
        raise ValueError(
            f"label_field {label_field!r} must be a Classification or Detections "
            f"field; suitable fields here: {sorted(schema) or 'none'}"
        )
    return "detections" if field.document_type is fo.Detections else "classification"


def class_rows(
    samples: foc.SampleCollection,
    info: runs.CamRunInfo,
    focus: str | None,
    label_field: str | None,
    prediction_field: str | None,
    extra: dict[str, str],
) -> pd.DataFrame:
    """One row per sample: id, class, focus, correct (NaN when unknown), and a
    column per ``extra`` name (its field path)."""
    schema = samples.get_field_schema()
    pred = prediction_field or info.prediction_field
    paths = ["id", *([focus] if focus else []), *extra.values()]
    has_pred = pred in schema
    if has_pred:
        paths.append(f"{pred}.label")
    if label_field is None:
        target = info.target_field
        if target not in schema:
            raise AdvisedError(
                f"Run {info.run_key!r} has no target field {target!r}:",
                python=(
                    "pass label_field (a Classification or Detections field) "
                    "to group by"
                ),
                app="pick a 'Class field' to group by",
            )
        paths.append(f"{target}.label")
    else:
        kind = _label_kind(samples, label_field)
        paths.append(
            f"{label_field}.label"
            if kind == "classification"
            else f"{label_field}.detections.label"
        )
    columns = dict(zip(paths, samples.values(paths), strict=True))
    classes = columns[paths[-1]]
    preds = columns[f"{pred}.label"] if has_pred else [None] * len(classes)
    focus_values = columns[focus] if focus else [None] * len(classes)
    rows = []
    for n, (sample_id, f, p, c) in enumerate(
        zip(columns["id"], focus_values, preds, classes, strict=True)
    ):
        labels = [c] if isinstance(c, str) else [x for x in (c or []) if x is not None]
        cls = Counter(labels).most_common(1)[0][0] if labels else None
        correct = math.nan
        if label_field is not None and p is not None and labels:
            correct = float(p in labels)
        rows.append(
            {
                "id": sample_id,
                "class": cls,
                "focus": math.nan if f is None else float(f),
                "correct": correct,
                **{name: columns[path][n] for name, path in extra.items()},
            }
        )
    return pd.DataFrame(rows, columns=["id", "class", "focus", "correct", *extra])


def _summarise(group: pd.DataFrame, low_focus: float) -> dict[str, Any]:
    scored = group[group["focus"].notna()]
    low = scored["focus"] < low_focus
    known = group["correct"].notna()

    def acc(frame: pd.DataFrame) -> float:
        vals = frame["correct"].dropna()
        return float(vals.mean()) if len(vals) else math.nan

    acc_high, acc_low = acc(scored[~low]), acc(scored[low])
    return {
        "count": len(group),
        "scored": len(scored),
        "accuracy": acc(group) if known.any() else math.nan,
        "mean_focus": float(scored["focus"].mean()) if len(scored) else math.nan,
        "median_focus": float(scored["focus"].median()) if len(scored) else math.nan,
        "low_focus_share": float(low.mean()) if len(scored) else math.nan,
        "n_low_focus": int(low.sum()),
        "accuracy_high_focus": acc_high,
        "accuracy_low_focus": acc_low,
        "accuracy_gap": acc_high - acc_low,
        **_discovery_summary(group),
    }


def _discovery_summary(group: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "bg_flip" in group:
        flips = group["bg_flip"].dropna().astype(float)
        drops = group["bg_drop"].dropna().astype(float)
        out["bg_flip_rate"] = float(flips.mean()) if len(flips) else math.nan
        out["mean_bg_drop"] = float(drops.mean()) if len(drops) else math.nan
    if "cluster" in group:
        counts = group["cluster"].dropna().value_counts()
        total = counts.sum()
        out["cluster_mix"] = ", ".join(
            f"{name} {count / total:.0%}" for name, count in counts.head(4).items()
        )
    return out


def _discovery_paths(
    samples: foc.SampleCollection, info: runs.CamRunInfo, layer: str
) -> dict[str, str]:
    """Column -> field of the discovery results this run has on ``samples``."""
    schema = samples.get_field_schema()
    heat = info.fields[layer]
    paths = {
        "cluster": cluster_field(heat),
        "bg_flip": run_field(info.run_key, BG_FLIP),
        "bg_drop": run_field(info.run_key, BG_DROP),
    }
    return {name: path for name, path in paths.items() if path in schema}


def class_report(
    samples: foc.SampleCollection,
    run_key: str,
    layer: str | None = None,
    *,
    label_field: str | None = None,
    low_focus: float = 0.3,
    prediction_field: str | None = None,
    as_dataframe: bool = True,
) -> pd.DataFrame | list[dict[str, Any]]:
    """Per-class focus and accuracy of a scored run (see ``score_cams``).

    Classes are those of ``label_field`` (a Classification, or the most frequent
    label of a Detections field) or, without it, the run's explained target
    class ``{run_key}_target``. With ``label_field``, a sample is correct when
    the run's prediction (``{run_key}_prediction``, or ``prediction_field``)
    equals its label (or one of its objects' labels).

    Columns: ``count``, ``scored`` (samples with a focus score), ``accuracy``,
    ``mean_focus``, ``median_focus``, ``low_focus_share`` (focus < ``low_focus``
    among scored), ``n_low_focus``, ``accuracy_high_focus``,
    ``accuracy_low_focus`` and ``accuracy_gap`` (high minus low: a large gap
    means the model is right on this class mostly when it looks at the object,
    i.e. what it gets from the context is unreliable). Accuracies are NaN without
    ``label_field``. Rows sorted by mean focus (most suspect first), then an
    ``"(all)"`` row. The DataFrame is indexed by ``class``; ``attrs`` hold
    ``run_key``, ``layer``, ``focus_field``, ``low_focus`` and ``note``.
    Labels of ``label_field`` that are not the model's class names (the run's
    recorded classes) get no accuracy: ``note`` says so, and a
    ``UserWarning`` too.

    When the run has them, ``bg_flip_rate`` and ``mean_bg_drop``
    (``background_test``) and ``cluster_mix`` (``cluster_cams``: the class's
    clusters and their shares) follow; then focus scores are optional.
    """
    info = runs.get_cam_run(samples, run_key)
    if not 0.0 <= low_focus <= 1.0:
        raise ValueError(f"low_focus must be in [0, 1], got {low_focus!r}")
    layer = resolve_layer(info, layer)
    if is_detection_run(info):  # one row per explained detection, own focus
        data = detection_rows(samples, info, layer, label_field)
        field, attr = detection_focus_path(info, layer)
        focus = f"{field}.detections.{attr}"
    else:
        extra = _discovery_paths(samples, info, layer)
        # Without boxes a report of clusters and flips is still worth having.
        focus = _focus_field(samples, info, layer, required=not extra)
        data = class_rows(samples, info, focus, label_field, prediction_field, extra)
    data = data[data["class"].notna()]
    note = None
    # accuracy needs labels the model can predict (a detection run's right/wrong
    # comes from FiftyOne's evaluate_detections instead)
    if label_field is not None and not is_detection_run(info):
        pred = prediction_field or info.prediction_field
        foreign, basis = foreign_labels(samples, info, data["class"].unique(), pred)
        if foreign:
            note = foreign_note(label_field, foreign, basis)
            data = data.assign(
                correct=data["correct"].where(~data["class"].isin(foreign))
            )
            warnings.warn(note, UserWarning, stacklevel=2)
    rows = [
        {"class": cls, **_summarise(group, low_focus)}
        for cls, group in data.groupby("class", sort=True)
    ]
    rows.sort(key=lambda r: (math.isnan(r["mean_focus"]), r["mean_focus"]))
    rows.append({"class": ALL_CLASSES, **_summarise(data, low_focus)})
    attrs = {
        "run_key": run_key,
        "layer": layer,
        "focus_field": focus,
        "low_focus": low_focus,
        "label_field": label_field,
        "note": note,
    }
    if not as_dataframe:
        return rows
    found = [c for c in DISCOVERY_COLUMNS if c in rows[-1]]
    frame = pd.DataFrame(rows, columns=["class", *REPORT_COLUMNS, *found])
    frame = frame.set_index("class")
    frame.attrs.update(attrs)
    return frame


def format_report(report: pd.DataFrame | Sequence[dict[str, Any]]) -> str:
    """A plain-text table of a ``class_report`` (DataFrame or list of dicts)."""
    if isinstance(report, pd.DataFrame):
        frame, attrs = report, report.attrs
    else:
        frame = pd.DataFrame(list(report)).set_index("class")
        attrs = {}
    shown = frame.copy()
    for col in shown.columns:
        if col in ("count", "scored", "n_low_focus"):
            shown[col] = shown[col].map(lambda v: f"{int(v)}")
        elif col == "cluster_mix":
            continue
        else:
            shown[col] = shown[col].map(lambda v: "-" if _isnan(v) else f"{v:.2f}")
    title = "CAM class report"
    if attrs:
        title += (
            f": run {attrs.get('run_key')!r}, layer {attrs.get('layer')!r}, "
            f"low focus < {attrs.get('low_focus')}"
        )
    note = f"\n{attrs['note']}" if attrs.get("note") else ""
    return f"{title}\n{shown.to_string()}{note}"


def _isnan(value: Any) -> bool:
    try:
        return value is None or bool(np.isnan(value))
    except TypeError:
        return False


def review_view_names(run_key: str) -> tuple[str, str]:
    """Names of the saved views of ``save_review_views``. Both slugify to
    distinct FiftyOne view slugs (``[A-Za-z0-9_-]`` only)."""
    return f"{run_key}-suspects", f"{run_key}-misfocus-errors"


def save_review_views(
    samples: foc.SampleCollection,
    run_key: str,
    layer: str | None = None,
    *,
    label_field: str | None = None,
    low_focus: float = 0.3,
    prediction_field: str | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Save ``"<run_key>-suspects"`` (correct predictions with focus <
    ``low_focus``: right for the wrong reason) and ``"<run_key>-misfocus-errors"``
    (wrong predictions with low focus) on the dataset, both sorted by focus
    ascending; return their names. Replaces the run's earlier views of these
    names; a view of these names that the run does not own (a user's) is
    refused unless ``overwrite=True``.

    ``label_field`` defaults to the run's ``label_field`` config; the views are
    recorded in the run config (``saved_views``) and deleted with the run.
    """
    info = runs.get_cam_run(samples, run_key)
    if not 0.0 <= low_focus <= 1.0:
        raise ValueError(f"low_focus must be in [0, 1], got {low_focus!r}")
    dataset = runs.root_dataset(samples)
    if is_detection_run(info):
        views = detection_review_views(
            samples, info, resolve_layer(info, layer), label_field, low_focus
        )
        return _save_views(dataset, run_key, views, overwrite)
    focus = _focus_field(samples, info, layer)
    label_field = label_field or info.config.get("label_field")
    if label_field is None:
        raise ValueError(
            "save_review_views needs label_field (the ground-truth Classification "
            "or Detections field) to tell correct predictions from errors"
        )
    kind = _label_kind(samples, label_field)
    pred = prediction_field or info.prediction_field
    if pred not in samples.get_field_schema():
        raise ValueError(
            f"No prediction field {pred!r} on the dataset: pass prediction_field"
        )
    pred_label = F(f"{pred}.label")
    if kind == "classification":
        correct = pred_label == F(f"{label_field}.label")
    else:
        objects = F(f"{label_field}.detections").filter(
            F("label") == F(f"${pred}.label")
        )
        correct = objects.length() > 0
    low = (F(focus) != None) & (F(focus) < low_focus)  # noqa: E711
    known = (pred_label != None) & (F(f"{label_field}") != None)  # noqa: E711
    base = samples.view() if isinstance(samples, fo.Dataset) else samples
    described = f"focus {focus} < {low_focus}, label {label_field}, prediction {pred}"
    views = (
        base.match(known & low & correct).sort_by(focus),
        base.match(known & low & ~correct).sort_by(focus),
        described,
    )
    return _save_views(dataset, run_key, views, overwrite)


def _save_views(dataset, run_key: str, views, overwrite: bool) -> list[str]:
    """Claim and save ``(suspects, errors, description)`` under the run's names."""
    suspects, errors, described = views
    suspects_name, errors_name = review_view_names(run_key)
    claim(
        dataset,
        run_key,
        saved_views=[suspects_name, errors_name],
        overwrite=overwrite,
        writer="save_review_views",
    )
    dataset.save_view(
        suspects_name,
        suspects,
        description=f"Correct with low focus (right for the wrong reason?): {described}",
        overwrite=True,
    )
    dataset.save_view(
        errors_name,
        errors,
        description=f"Wrong with low focus: {described}",
        overwrite=True,
    )
    return [suspects_name, errors_name]
