"""One self-contained HTML page for a bias-review meeting.

The page holds the class report and, per class, the top suspects (lowest
focus) as small thumbnails: the image, the heatmap over it (matplotlib's jet
colormap) with the ground-truth boxes and, when the preprocessing cropped, the
box the model saw (dashed yellow), and the scores. Every image is inlined
as base64; the file has no external URL and opens offline.
"""

from __future__ import annotations

import datetime
import html
import math
import os
from typing import Any

import fiftyone.core.collections as foc
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from ..runs import cam_runs as runs
from ..runs.storage import heatmap_to_float
from ..sources.images import load_rgb
from .detection_audit import is_detection_run
from .detection_export import detection_cards
from .overlays import data_uri as _data_uri
from .overlays import draw_boxes as _draw_boxes
from .overlays import overlay_heatmap
from .overlays import placeholder as _placeholder
from .report import ALL_CLASSES, class_report, class_rows
from .sanity_line import sanity_line
from .scoring import hit_field, spread_field
from .writer_steps import resolve_layer

__all__ = ["export_review", "overlay_heatmap"]

THUMB_SIZE = 160


def export_review(
    samples: foc.SampleCollection,
    run_key: str,
    path: str | os.PathLike,
    *,
    layer: str | None = None,
    label_field: str | None = None,
    top_k: int = 5,
    alpha: float = 0.5,
    low_focus: float = 0.3,
    thumb_size: int = THUMB_SIZE,
) -> str:
    """Write the review page of scored run ``run_key`` to ``path``; return its
    absolute path.

    Per class (see ``class_report``; ``label_field`` as there), the ``top_k``
    samples with the lowest focus of ``layer`` (default: the run's last layer),
    each as the image and the heatmap overlay (``alpha`` = heatmap opacity),
    thumbnails at most ``thumb_size`` pixels, with focus, hit, spread, label
    and prediction. Ground-truth boxes are drawn when the run was scored
    against a Detections field.
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if not isinstance(thumb_size, int) or thumb_size < 16:
        raise ValueError(f"thumb_size must be an int >= 16, got {thumb_size!r}")
    info = runs.get_cam_run(samples, run_key)
    layer = resolve_layer(info, layer)
    report = class_report(
        samples, run_key, layer, label_field=label_field, low_focus=low_focus
    )
    focus = report.attrs["focus_field"]
    if is_detection_run(info):  # a card per detection: its own map and box
        picks, cards = detection_cards(
            samples, info, layer, label_field, top_k, alpha, thumb_size
        )
    else:
        picks, cards = _sample_cards(
            samples, info, layer, focus, label_field, top_k, alpha, thumb_size
        )

    sections = []
    for cls in [c for c in report.index if c != ALL_CLASSES]:
        frame = picks.get(cls)
        body = (
            "".join(cards[sid] for sid in frame["id"])
            if frame is not None and len(frame)
            else '<p class="none">No scored samples.</p>'
        )
        sections.append(
            f'<section class="cls"><h2>{_e(cls)}</h2>'
            f'<p class="meta">{_class_line(report.loc[cls])}</p>'
            f'<div class="cards">{body}</div></section>'
        )
    page = _PAGE.format(
        title=_e(f"CAM review: {run_key} / {layer}"),
        subtitle=_e(_subtitle(samples, info, layer, label_field, low_focus, top_k)),
        table=_table(report),
        sections="\n".join([*sections, _clusters_section(info, layer, thumb_size)]),
        css=_CSS,
    )
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


def _sample_cards(samples, info, layer, focus, label_field, top_k, alpha, size):
    """Per class the ``top_k`` lowest-focus samples, and their cards by id."""
    data = class_rows(samples, info, focus, label_field, None, {})
    data = data[data["class"].notna() & data["focus"].notna()]
    picks = {
        cls: group.sort_values("focus", kind="stable").head(top_k)
        for cls, group in data.groupby("class", sort=True)
    }
    scoring = info.config.get("scoring") or {}
    boxes_field = (
        scoring.get("gt_field") if scoring.get("gt_kind") == "detections" else None
    )
    chosen = [sid for frame in picks.values() for sid in frame["id"]]
    cards: dict[str, str] = {}
    if chosen:
        view = samples.select(chosen, ordered=True)
        for sample in view.iter_samples():
            cards[sample.id] = _card(
                sample, info, layer, focus, label_field, boxes_field, alpha, size
            )
    return picks, cards


# --------------------------------------------------------------------------- pieces


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, kind: str = "num") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if kind == "text":
        return _e(value)
    if kind == "int" or isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{100 * value:.0f}%" if kind == "pct" else f"{value:.2f}"


def _subtitle(samples, info, layer, label_field, low_focus, top_k) -> str:
    dataset = runs.root_dataset(samples)
    parts = [
        f"dataset {dataset.name}",
        f"{len(samples)} samples",
        f"method {info.method}",
        f"layer {layer}",
        f"classes from {label_field or info.target_field}",
        f"low focus < {low_focus}",
        f"top {top_k} suspects per class",
        f"sanity check {sanity_line(info.config.get('sanity'))}",
    ]
    model = info.config.get("model")
    if model:
        parts.insert(2, f"model {model}")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return " · ".join(parts) + f" · generated {stamp}"


# (column, header, kind): kind "int", "pct" (shown as %) or "num".
_COLUMNS = [
    ("count", "samples", "int"),
    ("scored", "scored", "int"),
    ("accuracy", "accuracy", "pct"),
    ("mean_focus", "mean focus", "num"),
    ("median_focus", "median focus", "num"),
    ("low_focus_share", "low-focus share", "pct"),
    ("accuracy_high_focus", "acc. high focus", "pct"),
    ("accuracy_low_focus", "acc. low focus", "pct"),
    ("accuracy_gap", "accuracy gap", "pct"),
]
# Shown when the run has them (background_test, cluster_cams).
_DISCOVERY = [
    ("bg_flip_rate", "flips w/o background", "pct"),
    ("mean_bg_drop", "mean prob. drop", "num"),
    ("cluster_mix", "heatmap clusters", "text"),
]


def _table(report: pd.DataFrame) -> str:
    columns = _COLUMNS + [c for c in _DISCOVERY if c[0] in report.columns]
    head = "".join(f"<th>{_e(label)}</th>" for _, label, _ in columns)
    rows = []
    for cls, row in report.iterrows():
        cells = "".join(f"<td>{_fmt(row[col], kind)}</td>" for col, _, kind in columns)
        cls_attr = ' class="all"' if cls == ALL_CLASSES else ""
        rows.append(f"<tr{cls_attr}><th>{_e(cls)}</th>{cells}</tr>")
    return (
        f'<table id="class-report"><thead><tr><th>class</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _class_line(row: pd.Series) -> str:
    return _e(
        f"{_fmt(row['count'], 'int')} samples · mean focus "
        f"{_fmt(row['mean_focus'])} · low-focus share "
        f"{_fmt(row['low_focus_share'], 'pct')} · accuracy gap "
        f"{_fmt(row['accuracy_gap'], 'pct')}"
    )


def _clusters_section(info: runs.CamRunInfo, layer: str, size: int) -> str:
    """The heatmap clusters of ``cluster_cams`` (stored on the run): per
    cluster its mean map, size and class mix; empty without clusters."""
    stored = (info.config.get("clusters") or {}).get(info.fields[layer])
    if not stored:
        return ""
    cards = []
    for c in stored["clusters"]:
        mean = np.asarray(c["mean_map"], dtype=np.float32)
        picture = overlay_heatmap(Image.new("RGB", (size, size), (0, 0, 0)), mean, 1.0)
        mix = ", ".join(f"{k}: {v}" for k, v in c["class_mix"].items())
        cards.append(
            f'<figure class="card cluster"><img src="{_data_uri(picture, "PNG")}" '
            f'alt="mean map of {_e(c["name"])}" width="{size}">'
            f"<figcaption><b>{_e(c['name'])}</b> · {c['size']} samples"
            f"<br>{_e(mix)}</figcaption></figure>"
        )
    return (
        '<section id="clusters"><h2>Heatmap clusters</h2><p class="meta">'
        f"Maps clustered by {_e(stored.get('by'))} (cluster_cams): a small "
        "cluster whose mean map sits off the objects is a strategy to check.</p>"
        f'<div class="cards">{"".join(cards)}</div></section>'
    )


def _card(sample, info, layer, focus, label_field, boxes_field, alpha, size) -> str:
    heat_field = info.fields[layer]
    seen = _cropped_seen_box(sample, info.seen_field)
    notes = []
    try:
        image = load_rgb(sample.filepath)
    except OSError as exc:  # FileNotFoundError included: show it, keep the page
        image = None
        notes.append(f"image unreadable: {type(exc).__name__}")
    heatmap = (
        heatmap_to_float(sample[heat_field]) if sample.has_field(heat_field) else None
    )
    if image is None:
        thumb = _placeholder(size, "image missing")
        over = thumb
    else:
        scale = size / max(image.size)  # small images are enlarged (crisp) too
        thumb = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
            Image.BILINEAR if scale < 1 else Image.NEAREST,
        )
        if heatmap is None:
            over = _placeholder(size, "no heatmap")
            notes.append("no heatmap")
        else:
            over = overlay_heatmap(thumb, heatmap, alpha)
        if boxes_field and sample.has_field(boxes_field) and sample[boxes_field]:
            over = _draw_boxes(over, sample[boxes_field])
        if seen is not None:
            over = _draw_seen_box(over, seen)

    def get(field: str) -> Any:
        return sample[field] if sample.has_field(field) else None

    def label_of(field: str | None) -> str:
        value = get(field) if field else None
        return getattr(value, "label", None) or "–"

    truth = label_of(label_field) if label_field else "–"
    scores = [
        ("focus", _fmt(get(focus))),
        ("hit", _fmt(get(hit_field(heat_field)))),
        ("spread", _fmt(get(spread_field(heat_field)))),
        ("target", label_of(info.target_field)),
        ("prediction", label_of(info.prediction_field)),
    ]
    if label_field:
        scores.insert(3, ("label", truth))
    if seen is not None:  # the preprocessing cropped: say how much was seen
        scores.append(("seen", f"{_seen_share(seen)} (yellow box)"))
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in scores)
    name = os.path.basename(sample.filepath)
    note = f'<p class="note">{_e("; ".join(notes))}</p>' if notes else ""
    return (
        f'<figure class="card" data-id="{_e(sample.id)}">'
        f'<div class="pair"><img class="image" alt="image {_e(name)}" '
        f'src="{_data_uri(thumb)}"><img class="overlay" alt="heatmap {_e(name)}" '
        f'src="{_data_uri(over)}"></div>'
        f"<figcaption><b>{_e(name)}</b><dl>{dl}</dl>{note}</figcaption></figure>"
    )


def _cropped_seen_box(sample, field: str) -> list[float] | None:
    """The seen box ``[x, y, w, h]`` (relative) when the model missed part of the
    image, else None."""
    seen = sample[field] if sample.has_field(field) else None
    box = getattr(seen, "bounding_box", None)
    if not box or (box[2] >= 0.999 and box[3] >= 0.999):
        return None
    return list(box)


def _seen_share(box: list[float]) -> str:
    return f"{100 * box[2] * box[3]:.0f}%"


def _draw_seen_box(image: Image.Image, box: list[float]) -> Image.Image:
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    x0, y0 = box[0] * w, box[1] * h
    x1, y1 = (box[0] + box[2]) * w - 1, (box[1] + box[3]) * h - 1
    dash = 6  # dashed, so that it reads apart from the white object boxes
    for start in np.arange(x0, x1, 2 * dash):
        end = min(start + dash, x1)
        draw.line([(start, y0), (end, y0)], fill=(255, 220, 0), width=2)
        draw.line([(start, y1), (end, y1)], fill=(255, 220, 0), width=2)
    for start in np.arange(y0, y1, 2 * dash):
        end = min(start + dash, y1)
        draw.line([(x0, start), (x0, end)], fill=(255, 220, 0), width=2)
        draw.line([(x1, start), (x1, end)], fill=(255, 220, 0), width=2)
    return out


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;
color:#222;background:#fafafa}
h1{margin:0 0 4px;font-size:22px}h2{margin:24px 0 4px;font-size:18px}
.sub,.meta{color:#666;font-size:13px;margin:2px 0 12px}
table{border-collapse:collapse;font-size:13px;background:#fff}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
thead th{background:#eee}tbody th{text-align:left}tr.all{font-weight:600;background:#f3f3f3}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px}
.pair{display:flex;gap:4px}.pair img{display:block}
figcaption{font-size:12px;margin-top:4px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:0 8px;margin:4px 0 0}
dt{color:#666}dd{margin:0}.note{color:#b00;margin:4px 0 0}.none{color:#666}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body><h1>{title}</h1><p class="sub">{subtitle}</p>
<p class="sub">Focus: the share of the heatmap's energy inside the objects
(1 = all on the object). Suspects: lowest focus first. Accuracy gap: accuracy on
high-focus minus low-focus samples; a large gap means the class leans on context.</p>
{table}
{sections}
</body></html>
"""
