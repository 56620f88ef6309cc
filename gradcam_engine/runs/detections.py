"""``compute_cams(..., task="detection")``: one decoded batch of a detector ->
the run's field values, keyed by sample id.

Per sample: ``{R}_detections`` (``fo.Detections``), one ``fo.Detection`` per
explained detection, boxes relative to the original image (input pixels
mapped back through the transform's geometry, shared/DESIGN.md contract 4),
carrying per layer ``<slug>_focus`` (float: the share of the detection's own
map inside its own box) and ``<slug>_map`` (``fo.Heatmap``: its own map over
the whole original image, longest side ``DETECTION_MAP_SIZE``); per layer one
combined heatmap (the max of the sample's detection maps) and its strength;
``{R}_prediction`` (the top detection's class and score); ``{R}_seen``.
Why the maps are stored on the detections: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import fiftyone as fo
import numpy as np
import torch
from torchvision.transforms import ToTensor

from ..engine.detection import DetectionCamEngine, ExplainedDetection

# the fault isolation and per-shape grouping of the other tasks, shared as is
from .batch_fields import BatchContext, _computable_groups, _isolate_faults
from .naming import detection_focus_attribute, detection_map_attribute, slug
from .storage import make_heatmap, to_uint8_map

__all__ = [
    "DETECTION_MAP_SIZE",
    "attach_object_maps",
    "detection_config",
    "detection_engine",
    "detection_field_values",
    "detector_input",
    "original_box",
    "input_box",
]

# Longest side of each detection's own map: a detection's map is one of up to
# max_detections per image and layer, kept small in the database (~1-2 KB).
DETECTION_MAP_SIZE = 64


def detector_input() -> ToTensor:
    """The default transforms of a detector: the image as float [0, 1] CHW at
    its own size; torchvision detectors normalise and resize internally."""
    return ToTensor()


def detection_engine(module, layers, method: str, options: dict) -> DetectionCamEngine:
    """The engine of a detection run, from ``compute_cams``' options."""
    if options.get("aug_smooth"):
        raise ValueError(
            "aug_smooth=True is not supported with task='detection' (flipped "
            "images move the boxes); pass aug_smooth=False"
        )
    if options.get("precision", "fp32") != "fp32":
        raise ValueError(
            f"precision={options['precision']!r} is not supported with "
            "task='detection' yet (the detection engine runs in fp32); pass "
            "precision='fp32'"
        )
    return DetectionCamEngine(
        module,
        layers,
        method,
        options["reshape_transform"],
        confidence_thresh=options["confidence_thresh"],
        max_detections=options["max_detections"],
        iou_threshold=options["iou_threshold"],
        eigen_smooth=options["eigen_smooth"],
    )


def detection_config(engine: DetectionCamEngine) -> dict[str, Any]:
    """The run config's ``detection`` entry (part of the run's identity)."""
    return {
        "confidence_thresh": engine.confidence_thresh,
        "max_detections": engine.max_detections,
        "iou_threshold": engine.iou_threshold,
        "map_size": DETECTION_MAP_SIZE,
    }


def _scale_offset(geometry, size, input_hw):
    if geometry is not None:
        return geometry.scale, geometry.offset
    width, height = size  # stretched over the whole image
    return (width / input_hw[1], height / input_hw[0]), (0.0, 0.0)


def original_box(box, size, geometry, input_hw) -> list[float]:
    """xyxy input pixels -> FiftyOne's relative ``[x, y, w, h]`` on the
    original image (clipped to it)."""
    (sx, sy), (ox, oy) = _scale_offset(geometry, size, input_hw)
    width, height = size
    xs = sorted((ox + sx * box[0], ox + sx * box[2]))
    ys = sorted((oy + sy * box[1], oy + sy * box[3]))
    x0, x1 = (min(max(v, 0.0), width) for v in xs)
    y0, y1 = (min(max(v, 0.0), height) for v in ys)
    return [x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height]


def input_box(relative, size, geometry, input_hw) -> list[float]:
    """FiftyOne's relative ``[x, y, w, h]`` on the original -> xyxy input pixels."""
    (sx, sy), (ox, oy) = _scale_offset(geometry, size, input_hw)
    width, height = size
    x, y, w, h = relative
    xs = sorted(((x * width - ox) / sx, ((x + w) * width - ox) / sx))
    ys = sorted(((y * height - oy) / sy, ((y + h) * height - oy) / sy))
    return [xs[0], ys[0], xs[1], ys[1]]


def _class_index(ctx: BatchContext, name) -> int | None:
    if ctx.class_names and name in ctx.class_names:
        return list(ctx.class_names).index(name)
    if not ctx.class_names and str(name).isdigit():
        return int(name)
    return None


def _class_name(ctx: BatchContext, index: int) -> str:
    if ctx.class_names and 0 <= index < len(ctx.class_names):
        return str(ctx.class_names[index])
    return str(index)


def _requests(ctx, label, size, geometry, input_hw):
    """``target="label"``: the boxes to explain of one sample (class index,
    xyxy input pixels) and its ground-truth detections, or an error."""
    if label is None:
        return None, None, "sample has no detections in the label field"
    gts = list(label.detections or [])
    requests = []
    for gt in gts:
        index = _class_index(ctx, gt.label)
        box = input_box(gt.bounding_box, size, geometry, input_hw)
        requests.append(None if index is None else (index, box))
    return requests, gts, None


def detection_field_values(
    ctx: BatchContext, batch, batch_ids, labels
) -> dict[str, dict]:
    """``{field: {sample id: value}}`` of one batch of a detection run."""
    names = ctx.names
    values: dict[str, dict] = {
        name: {}
        for name in (
            *names.heatmaps,
            *names.strengths,
            names.prediction,
            names.error,
            names.seen,
            names.detections,
        )
    }
    label_values = labels(batch_ids) if labels is not None else [None] * len(batch_ids)
    rows, targets, gts = [], {}, {}
    for i, sid in enumerate(batch_ids):
        if batch.errors[i] is not None:
            values[names.error][sid] = batch.errors[i]
            continue
        target = None
        if ctx.target == "label":
            input_hw = tuple(batch.tensors[i].shape[-2:])
            try:
                requests, gts[i], message = _requests(
                    ctx, label_values[i], batch.sizes[i], batch.geometries[i], input_hw
                )
            except Exception as exc:  # a malformed label must not stop the run
                requests, message = None, f"cannot read label: {exc}"
            if message is not None:
                values[names.error][sid] = message
                continue
            target = [r for r in requests if r is not None]
            gts[i] = (gts[i], requests)
        rows.append(i)
        targets[i] = target
    for group, x in _computable_groups(batch, rows):
        for part, outcome in _isolate_faults(ctx, x, [targets[i] for i in group]):
            if isinstance(outcome, str):  # the model raised on this one sample
                values[names.error][batch_ids[group[part[0]]]] = outcome
                continue
            for j, k in enumerate(part):
                i = group[k]
                sid = batch_ids[i]
                if outcome.nonfinite[j] is not None:
                    values[names.error][sid] = (
                        "the model returned NaN/Inf "
                        f"{outcome.nonfinite[j]} for this sample"
                    )
                    continue
                sample = _Sample(
                    sid, batch.sizes[i], batch.geometries[i], tuple(x.shape[-2:])
                )
                _sample_values(
                    ctx,
                    values,
                    sample,
                    outcome.detections[j],
                    outcome.explained[j],
                    gts.get(i),
                )
    return values


@dataclass
class _Sample:
    """One computed sample: id, original size, geometry, input (H, W)."""

    sid: str
    size: tuple[int, int]
    geometry: Any
    input_hw: tuple[int, int]


def _sample_values(ctx, values, sample, detections, explained, gts) -> None:
    names, sid = ctx.names, sample.sid
    labels = []
    if gts is None:  # target="predicted"
        for e in explained:
            labels.append(_explained(ctx, sample, e, label=_class_name(ctx, e.label)))
    else:  # one per ground-truth box, in order, matched or not
        found = iter(explained)
        for gt, request in zip(*gts, strict=True):
            labels.append(_ground_truth(ctx, sample, gt, request, found))
    values[names.detections][sid] = fo.Detections(detections=labels)
    done = [e for e in explained if e.maps is not None]
    for k, (hm_name, st_name) in enumerate(
        zip(names.heatmaps, names.strengths, strict=True)
    ):
        if done:
            combined = torch.stack([e.maps[k] for e in done]).amax(dim=0).numpy()
            strength = max(e.strengths[k] for e in done)
        else:  # nothing explained: an empty map, so the sample reads as done
            combined = np.zeros(sample.input_hw, dtype=np.float32)
            strength = 0.0
        u8 = to_uint8_map(combined, sample.size, ctx.max_size, sample.geometry)
        path = None
        if ctx.storage == "disk":
            path = os.path.join(ctx.run_dir, slug(ctx.layers[k]), f"{sid}.png")
        values[hm_name][sid] = make_heatmap(u8, ctx.storage, path)
        values[st_name][sid] = float(strength)
    scores = detections["scores"]
    top = int(scores.argmax()) if len(scores) else None
    values[names.prediction][sid] = fo.Classification(
        label=None if top is None else _class_name(ctx, int(detections["labels"][top])),
        confidence=None if top is None else float(scores[top]),
    )
    if sample.geometry is not None:
        values[names.seen][sid] = fo.Detection(
            label="seen", bounding_box=sample.geometry.seen_box_relative()
        )


def _explained(ctx, sample, e: ExplainedDetection, **fields) -> fo.Detection:
    """One explained detection, its focus and own map per layer."""
    fields.setdefault(
        "bounding_box",
        original_box(e.box, sample.size, sample.geometry, sample.input_hw),
    )
    det = fo.Detection(confidence=e.score, **fields)
    if e.maps is None:
        return det
    maps = [m.numpy() for m in e.maps]
    return attach_object_maps(det, ctx.layers, maps, sample, focus=e.focus)


def attach_object_maps(label, layers, maps, sample, focus=None):
    """Store on ``label`` (an fo.Detection or fo.Classification), per layer,
    its own map ``<slug>_map`` over the whole original image (longest side
    ``DETECTION_MAP_SIZE``) and, given ``focus``, ``<slug>_focus``: the
    per-object storage that detection and multi-label runs share."""
    for k, layer in enumerate(layers):
        if focus is not None:
            label[detection_focus_attribute(layer)] = float(focus[k])
        u8 = to_uint8_map(maps[k], sample.size, DETECTION_MAP_SIZE, sample.geometry)
        label[detection_map_attribute(layer)] = make_heatmap(u8, "db")
    return label


def _ground_truth(ctx, sample, gt, request, found) -> fo.Detection:
    """A ground-truth box of ``target="label"``: explained through the model's
    matching detection, or carrying ``error`` when there is none."""
    fields = {
        "label": gt.label,
        "bounding_box": list(gt.bounding_box),
        "gt_id": gt.id,
    }
    if request is None:
        return fo.Detection(
            **fields, error=f"label {gt.label!r} is not one of the model's classes"
        )
    e = next(found)
    if e.index is None:
        return fo.Detection(
            **fields,
            error=(
                f"the model has no detection of class {gt.label!r} overlapping "
                f"this box with IoU >= {ctx.engine.iou_threshold}"
            ),
        )
    return _explained(ctx, sample, e, **fields)
