"""``compute_cams(..., task="multilabel")``: one decoded batch of a
multi-label classifier (sigmoid outputs) -> the run's field values, keyed by
sample id.

Per sample: ``{R}_labels`` (``fo.Classifications``), one ``fo.Classification``
per explained label (``target="label"``: each label of ``label_field``;
``target="predicted"``: each class whose sigmoid reaches ``confidence_thresh``),
its ``confidence`` the model's sigmoid for it, carrying per layer its own map
``<slug>_map`` over the whole original image: the per-object storage of
detection runs (``detections.attach_object_maps``), so that the App and the
panel show the map of a chosen label the same way. Per layer one combined
heatmap (the max of the sample's label maps) and its strength;
``{R}_prediction`` (the top class and its sigmoid); ``{R}_seen``.
"""

from __future__ import annotations

import os
from typing import Any

import fiftyone as fo
import numpy as np
import torch

from ..engine.hooks import eval_mode
from .batch_fields import (
    BatchContext,
    _computable_groups,
    _fault_message,
    _isolate_faults,
    _nonfinite_message,
)
from .detections import DETECTION_MAP_SIZE, _Sample, attach_object_maps
from .naming import slug
from .storage import make_heatmap, to_uint8_map

__all__ = ["multilabel_config", "multilabel_field_values"]


def multilabel_config(options: dict) -> dict[str, Any]:
    """The run config's ``multilabel`` entry (part of the run's identity)."""
    threshold = options["confidence_thresh"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise TypeError(
            "confidence_thresh must be a number in [0, 1] (the sigmoid a class "
            f"must reach to be explained), got {threshold!r}"
        )
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(
            f"confidence_thresh must be in [0, 1] (a sigmoid), got {threshold!r}"
        )
    return {"threshold": float(threshold), "map_size": DETECTION_MAP_SIZE}


def _class_name(ctx: BatchContext, index: int) -> str:
    if ctx.class_names and 0 <= index < len(ctx.class_names):
        return str(ctx.class_names[index])
    return str(index)


def _requested(ctx: BatchContext, label) -> tuple[list[int] | None, str | None]:
    """``target="label"``: the class indices of a sample's labels, or an error."""
    if label is None or not label.classifications:
        return None, "sample has no labels in the label field"
    indices = []
    for c in label.classifications:
        if ctx.class_names and c.label in ctx.class_names:
            indices.append(list(ctx.class_names).index(c.label))
        elif not ctx.class_names and str(c.label).isdigit():
            indices.append(int(c.label))
        else:
            return None, f"label {c.label!r} is not one of the model's classes"
    return list(dict.fromkeys(indices)), None


def _sigmoids(ctx: BatchContext, x: torch.Tensor) -> torch.Tensor:
    """Per image, the sigmoid of every class ``[B, K]``: which labels to
    explain and their confidences. The engine's own result carries softmax
    scores (single-label), hence this one extra forward without gradients."""
    with eval_mode(ctx.engine.model):
        return ctx.engine._logits(x.to(ctx.engine.device)).sigmoid().cpu()


def multilabel_field_values(
    ctx: BatchContext, batch, batch_ids, labels
) -> dict[str, dict]:
    """``{field: {sample id: value}}`` of one batch of a multi-label run."""
    names = ctx.names
    values: dict[str, dict] = {
        name: {}
        for name in (
            *names.heatmaps,
            *names.strengths,
            names.prediction,
            names.error,
            names.seen,
            names.labels,
        )
    }
    label_values = labels(batch_ids) if labels is not None else [None] * len(batch_ids)
    rows, requested = [], {}
    for i, sid in enumerate(batch_ids):
        if batch.errors[i] is not None:
            values[names.error][sid] = batch.errors[i]
            continue
        if ctx.target == "label":
            try:
                requested[i], message = _requested(ctx, label_values[i])
            except Exception as exc:  # a malformed label must not stop the run
                message = f"cannot read label: {exc}"
            if message is not None:
                values[names.error][sid] = message
                continue
        rows.append(i)
    for group, x in _computable_groups(batch, rows):
        try:
            probs = _sigmoids(ctx, x)
        except Exception as exc:  # the maps' pass below isolates the faulty row
            probs, fault = None, _fault_message(exc)
        # one row per (image, label): the engine explains one target per row
        pairs = []
        for k, i in enumerate(group):
            if probs is not None and ctx.target == "predicted":
                chosen = torch.nonzero(probs[k] >= ctx.threshold).flatten().tolist()
            else:
                chosen = requested.get(i, [])
            pairs += [(k, cls) for cls in chosen]
        per_sample: dict[int, list] = {k: [] for k in range(len(group))}
        failed: dict[int, str] = {}
        if probs is None and not pairs:  # nothing to explain: the fault stands
            failed = dict.fromkeys(range(len(group)), fault)
        if pairs:
            x_pairs = x[[k for k, _ in pairs]]
            targets = [cls for _, cls in pairs]
            for part, outcome in _isolate_faults(ctx, x_pairs, targets):
                if isinstance(outcome, str):
                    failed[pairs[part[0]][0]] = outcome
                    continue
                strengths = outcome.strengths.tolist()
                for j, p in enumerate(part):
                    k, cls = pairs[p]
                    if outcome.nonfinite and outcome.nonfinite[j] is not None:
                        failed[k] = _nonfinite_message(outcome.nonfinite[j])
                        continue
                    per_sample[k].append((cls, outcome.maps[j].numpy(), strengths[j]))
        for k, i in enumerate(group):
            sid = batch_ids[i]
            if k in failed:
                values[names.error][sid] = failed[k]
                continue
            if probs is None:  # the maps' pass ran; the sigmoid pass did not
                values[names.error][sid] = fault
                continue
            sample = _Sample(
                sid, batch.sizes[i], batch.geometries[i], tuple(x.shape[-2:])
            )
            _sample_values(ctx, values, sample, probs[k], sorted(per_sample[k]))
    return values


def _sample_values(ctx, values, sample, probs, explained) -> None:
    """One sample's labels (each with its own maps), combined heatmaps,
    strengths and prediction."""
    names, sid = ctx.names, sample.sid
    labels = []
    for cls, maps, _ in explained:
        label = fo.Classification(
            label=_class_name(ctx, cls), confidence=float(probs[cls])
        )
        labels.append(attach_object_maps(label, ctx.layers, list(maps), sample))
    values[names.labels][sid] = fo.Classifications(classifications=labels)
    for k, (hm_name, st_name) in enumerate(
        zip(names.heatmaps, names.strengths, strict=True)
    ):
        if explained:
            combined = np.max(np.stack([maps[k] for _, maps, _ in explained]), 0)
            strength = max(s[k] for _, _, s in explained)
        else:  # nothing explained: an empty map, so the sample reads as done
            combined = np.zeros(sample.input_hw, dtype=np.uint8)
            strength = 0.0
        u8 = to_uint8_map(combined, sample.size, ctx.max_size, sample.geometry)
        path = None
        if ctx.storage == "disk":
            path = os.path.join(ctx.run_dir, slug(ctx.layers[k]), f"{sid}.png")
        values[hm_name][sid] = make_heatmap(u8, ctx.storage, path)
        values[st_name][sid] = float(strength)
    top = int(probs.argmax())
    values[names.prediction][sid] = fo.Classification(
        label=_class_name(ctx, top), confidence=float(probs[top])
    )
    if sample.geometry is not None:
        values[names.seen][sid] = fo.Detection(
            label="seen", bounding_box=sample.geometry.seen_box_relative()
        )
