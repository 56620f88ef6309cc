"""What the ``cam_review`` panel shows, read from the dataset in few queries.

A *source* is one scored layer of one run (``"run/layer"``). The table's
columns are declared once in ``COLUMNS``: add a column there and in
``table_rows`` (e.g. a cluster or background-flip field).
"""

from __future__ import annotations

from collections import defaultdict

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from gradcam_engine.audit.sanity_line import sanity_line
from gradcam_engine.runs import cam_runs as runs
from gradcam_engine.runs import naming
from gradcam_engine.runs.naming import detections_field

ALL_CLASSES = "(all classes)"
CHART_LIMIT = 300  # bars in the ranking chart (the lowest focus first)
TABLE_LIMIT = 25

# key -> header. Rows are built by ``table_rows``.
COLUMNS = {
    "rank": "#",
    "file": "sample",
    "truth": "true class",
    "predicted": "predicted",
    "focus": "focus",
}


def sources(dataset) -> dict[str, dict]:
    """``"run/layer"`` -> fields, for every scored layer; one schema read."""
    schema = dataset.get_field_schema()
    classification = [
        name
        for name, f in schema.items()
        if getattr(f, "document_type", None) is fo.Classification
    ]
    owned = set()
    infos = {key: runs.get_cam_run(dataset, key) for key in runs.list_cam_runs(dataset)}
    for info in infos.values():
        owned.update(info.owned_fields)
    out = {}
    for key, info in infos.items():
        scoring = info.config.get("scoring") or {}
        truth = info.config.get("label_field") or next(
            (f for f in classification if f not in owned), None
        )
        for layer, field in info.fields.items():
            focus = f"{field}_focus"
            if focus not in schema:
                continue
            out[f"{key}/{layer}"] = dict(
                run_key=key,
                layer=layer,
                heatmap=field,
                focus=focus,
                boxes=scoring.get("gt_field"),
                # a detection run's explained detections, with their focus
                detections=(
                    detections_field(key)
                    if detections_field(key) in schema
                    and info.config.get("task") == "detection"
                    else None
                ),
                truth=truth if truth in schema else None,
                predicted=(
                    info.prediction_field if info.prediction_field in schema else None
                ),
                sanity=sanity_line(info.config.get("sanity")),
            )
    return out


def default_source(all_sources: dict[str, dict]) -> str | None:
    """The last run's first layer (the one a run lists first is its main one)."""
    if not all_sources:
        return None
    last = sorted({s["run_key"] for s in all_sources.values()})[-1]
    return next(k for k, s in all_sources.items() if s["run_key"] == last)


def class_path(src: dict) -> str | None:
    """The label that the class filter and the per-class chart group by."""
    field = src["truth"] or src["predicted"]
    return f"{field}.label" if field else None


def class_view(view, src: dict, klass: str | None):
    """``view`` narrowed to the samples of ``klass`` (all of them without)."""
    path = class_path(src)
    if klass and klass != ALL_CLASSES and path:
        view = view.match(F(path) == klass)
    return view


def ranked_view(view, src: dict, klass: str | None):
    return class_view(view, src, klass).exists(src["focus"]).sort_by(src["focus"])


def unscored(view, src: dict, klass: str | None) -> str:
    """Why samples of the view have no focus score, with counts ("" when all
    have one): failed (the run's error field), no map (not computed), an
    all-zero map (strength 0: nothing supports the explained class), no
    objects to score against, or not scored yet (computed after scoring)."""
    missing = class_view(view, src, klass).exists(src["focus"], False)
    total = missing.count()
    if not total:
        return ""
    error = naming.run_field(src["run_key"], naming.ERROR)
    strength = naming.strength_field(src["heatmap"])
    failed = missing.exists(error)
    mapped = missing.exists(error, False).exists(strength)
    zero = mapped.match(F(strength) == 0)
    rest = mapped.match(F(strength) != 0)
    reasons = [
        (failed.count(), f"failed (their `{error}` says why)"),
        (missing.exists(error, False).exists(strength, False).count(), "no map"),
        (zero.count(), "an all-zero map (nothing supports the explained class)"),
    ]
    boxes = src.get("boxes")
    if boxes:
        empty = (F(boxes) == None) | (  # noqa: E711
            F(f"{boxes}.detections").length() == 0
        )
        none = rest.match(empty).count() if _is_detections(view, boxes) else 0
        reasons.append((none, f"no objects in `{boxes}` to score against"))
        reasons.append(
            (
                rest.count() - none,
                "no objects of the scored classes, or computed after the last "
                "scoring (Score CAMs again)",
            )
        )
    else:
        reasons.append((rest.count(), "not scored against objects"))
    parts = [f"{n} {text}" for n, text in reasons if n]
    return f"{total} without a score: " + "; ".join(parts)


def _is_detections(view, field: str) -> bool:
    kind = view.get_field(field)
    return getattr(kind, "document_type", None) is fo.Detections


def ranking(view, src: dict, klass: str | None) -> dict:
    """Ids, names, classes and focus of the lowest-focus samples, in one query."""
    ranked = ranked_view(view, src, klass)
    paths = {"id": "id", "file": "filepath", "focus": src["focus"]}
    for col in ("truth", "predicted"):
        if src[col]:
            paths[col] = f"{src[col]}.label"
    values = dict(
        zip(paths, ranked.limit(CHART_LIMIT).values(list(paths.values())), strict=True)
    )
    n = len(values["id"])
    values["file"] = [p.rsplit("/", 1)[-1] for p in values["file"]]
    for col in ("truth", "predicted"):
        values.setdefault(col, [None] * n)
    stats = ranked.aggregate([fo.Count(), fo.Mean(src["focus"])])
    values["total"], values["mean"] = stats
    return values


def table_rows(values: dict) -> list[dict]:
    rows = []
    for i in range(min(TABLE_LIMIT, len(values["id"]))):
        rows.append(
            dict(
                rank=i + 1,
                id=values["id"][i],
                file=values["file"][i],
                truth=values["truth"][i] or "",
                predicted=values["predicted"][i] or "",
                focus=round(values["focus"][i], 4),
            )
        )
    return rows


def bar_text(values: dict) -> list[str]:
    out = []
    for name, truth, pred in zip(
        values["file"], values["truth"], values["predicted"], strict=True
    ):
        parts = [f"true {truth}" if truth else "", f"predicted {pred}" if pred else ""]
        detail = ", ".join(p for p in parts if p)
        out.append(f"{name} ({detail})" if detail else name)
    return out


# Low focus (suspect) red, high focus (looks at the objects) green. An
# explicit list: Plotly.js has no "RdYlGn" (it fell back to its own default,
# darkest red at focus 1, the opposite of the meaning).
FOCUS_COLORSCALE = [[0.0, "#d73027"], [0.5, "#fee08b"], [1.0, "#1a9850"]]


def _focus_colors(values: list[float]) -> dict:
    return dict(color=values, colorscale=FOCUS_COLORSCALE, cmin=0, cmax=1)


def ranking_chart(values: dict) -> list[dict]:
    """The ranking chart's Plotly traces: one bar per sample, lowest first,
    the sample id on each bar (a click opens it)."""
    return [
        dict(
            type="bar",
            name="focus",
            x=list(range(1, len(values["id"]) + 1)),
            y=values["focus"],
            ids=values["id"],
            text=bar_text(values),
            textposition="none",
            hovertemplate="%{text}<br>focus %{y:.3f}<extra></extra>",
            marker=_focus_colors(values["focus"]),
        )
    ]


def per_class_chart(order: list[str], means: list[float], counts: list[int]):
    """The per-class chart's Plotly traces (none without classes)."""
    if not order:
        return []
    return [
        dict(
            type="bar",
            name="mean focus",
            x=order,
            y=means,
            text=[f"n={n}" for n in counts],
            marker=_focus_colors(means),
        )
    ]


def per_class(view, src: dict) -> tuple[list[str], list[float], list[int]]:
    """Classes ordered by mean focus (lowest first), their means and counts."""
    path = class_path(src)
    if not path:
        return [], [], []
    labels, focus = view.exists(src["focus"]).values([path, src["focus"]])
    groups: dict[str, list[float]] = defaultdict(list)
    for lab, f in zip(labels, focus, strict=True):
        groups[str(lab)].append(f)
    order = sorted(groups, key=lambda k: np.mean(groups[k]))
    return (
        order,
        [float(np.mean(groups[k])) for k in order],
        [len(groups[k]) for k in order],
    )


def comparison(view, a: dict, b: dict, name_a: str, name_b: str) -> str:
    both = view.exists(a["focus"]).exists(b["focus"])
    fa, fb = both.values([a["focus"], b["focus"]])
    if not fa:
        return "No samples have both scores."
    xa, xb = np.asarray(fa, float), np.asarray(fb, float)
    agree = float(np.mean((xa < 0.5) == (xb < 0.5)))
    if len(xa) > 1 and xa.std() > 0 and xb.std() > 0:
        corr = f"correlation {float(np.corrcoef(xa, xb)[0, 1]):.2f}"
    else:  # a constant score has no correlation: say so instead of "nan"
        corr = "correlation undefined (a score is constant)"
    return (
        f"| | mean focus |\n|---|---|\n"
        f"| {name_a} | {xa.mean():.3f} |\n"
        f"| {name_b} | {xb.mean():.3f} |\n\n"
        f"{len(xa)} samples; agreement on focus < 0.5: {agree:.0%}; {corr}"
    )
