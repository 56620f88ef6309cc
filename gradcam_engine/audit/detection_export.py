"""The HTML review of a detection run: per class, the explained detections
with the lowest focus, each drawn as the image under the detection's own map
(``<slug>_map``) with its box, so that a review meeting sees where the model
looked for that detection."""

from __future__ import annotations

import html
import os

import fiftyone.core.collections as foc
import fiftyone.core.labels as fol
import pandas as pd
from PIL import Image

from ..runs import cam_runs as runs
from ..runs.naming import detection_map_attribute
from ..runs.storage import heatmap_to_float
from ..sources.images import load_rgb
from .detection_audit import detection_focus_path, detection_rows
from .overlays import data_uri, draw_boxes, overlay_heatmap, placeholder

__all__ = ["detection_cards"]


def detection_cards(
    samples: foc.SampleCollection,
    info: runs.CamRunInfo,
    layer: str,
    label_field: str | None,
    top_k: int,
    alpha: float,
    size: int,
) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """``(picks, cards)``: per class the ``top_k`` lowest-focus detections (a
    frame whose ``id`` is the detection id) and each one's card by id."""
    data = detection_rows(samples, info, layer, label_field)
    data = data[data["class"].notna() & data["focus"].notna()]
    picks = {
        cls: group.sort_values("focus", kind="stable")
        .head(top_k)
        .assign(sample_id=lambda g: g["id"], id=lambda g: g["detection_id"])
        for cls, group in data.groupby("class", sort=True)
    }
    wanted = {
        det_id: sample_id
        for frame in picks.values()
        for det_id, sample_id in zip(frame["id"], frame["sample_id"], strict=True)
    }
    cards: dict[str, str] = {}
    if not wanted:
        return picks, cards
    field, attr = detection_focus_path(info, layer)
    view = samples.select(sorted(set(wanted.values())))
    for sample in view.iter_samples():
        for det in sample[field].detections if sample[field] else []:
            if det.id in wanted:
                cards[det.id] = _card(sample, det, layer, attr, alpha, size)
    return picks, cards


def _card(sample, det, layer: str, attr: str, alpha: float, size: int) -> str:
    e = lambda v: html.escape(str(v), quote=True)  # noqa: E731
    heatmap = (
        det[detection_map_attribute(layer)]
        if det.has_field(detection_map_attribute(layer))
        else None
    )
    try:
        image = load_rgb(sample.filepath)
    except OSError as exc:
        image, over = None, placeholder(size, f"image unreadable: {type(exc).__name__}")
    if image is not None:
        scale = size / max(image.size)
        thumb = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
            Image.BILINEAR if scale < 1 else Image.NEAREST,
        )
        maps = heatmap_to_float(heatmap) if isinstance(heatmap, fol.Heatmap) else None
        over = thumb if maps is None else overlay_heatmap(thumb, maps, alpha)
        over = draw_boxes(over, fol.Detections(detections=[det]))
    rows = [
        ("class", det.label),
        ("focus", f"{det[attr]:.2f}"),
        ("score", "–" if det.confidence is None else f"{det.confidence:.2f}"),
    ]
    dl = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in rows)
    name = os.path.basename(sample.filepath)
    return (
        f'<figure class="card" data-id="{e(sample.id)}" data-detection="{e(det.id)}">'
        f'<div class="pair"><img class="overlay" alt="detection map {e(name)}" '
        f'src="{data_uri(over)}"></div>'
        f"<figcaption><b>{e(name)}</b><dl>{dl}</dl></figcaption></figure>"
    )
