"""One decoded batch -> the values of a CAM run's fields, keyed by sample id.

Per sample: the engine target (from the run's target rule and the sample's
label), then the heatmaps, strengths, target and prediction labels, or an
error message. No database access except reading a batch's labels in bulk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import fiftyone as fo
import numpy as np
import torch
from PIL import Image

from ..engine.cam_engine import CamEngine
from ..engine.targets import MaskSumTarget
from .naming import FieldNames, field_names, slug  # re-exported
from .storage import make_heatmap, to_uint8_map
from .writes import heatmap_document, label_document

__all__ = [
    "BatchContext",
    "FieldNames",
    "batch_field_values",
    "field_names",
    "label_reader",
]


@dataclass
class BatchContext:
    engine: CamEngine
    names: FieldNames
    layers: list[str]
    task: str
    target: Any
    fixed_class: int | None
    class_names: list[str] | None
    storage: str
    run_dir: str | None
    max_size: int
    # the sub-batch size that fits after an out-of-memory back-off (None: the
    # whole batch), kept for the rest of the run, and how often it halved
    chunk: int | None = None
    oom_backoffs: int = 0
    # task="multilabel", target="predicted": the sigmoid a class must reach
    threshold: float = 0.5


def label_reader(dataset, task, target, label_field):
    """Reads the label targets of a batch of sample ids in one query."""
    if not label_field or (task == "classification" and target != "label"):
        return None

    def read(batch_ids: list[str]) -> list:
        view = dataset.select(batch_ids, ordered=True)
        return view.values(label_field)

    return read


class _GivenMaskTarget(MaskSumTarget):
    """A ground-truth mask resized (nearest) to the model output on first use."""

    def region(self, model_output: torch.Tensor) -> torch.Tensor:
        if tuple(self.mask.shape) != tuple(model_output.shape[-2:]):
            self.mask = _resize_nearest(self.mask, tuple(model_output.shape[-2:]))
        return super().region(model_output)


def _resize_nearest(mask, hw: tuple[int, int]) -> torch.Tensor:
    arr = np.asarray(mask)
    img = Image.fromarray(arr.astype(np.int32) if arr.dtype != np.uint8 else arr)
    resized = np.asarray(img.resize((hw[1], hw[0]), Image.NEAREST))
    return torch.from_numpy(resized.astype(np.float32))


def _sample_target(ctx: BatchContext, label) -> tuple[Any, str | None]:
    """The engine target for one sample, or an error message."""
    if ctx.task == "classification":
        if ctx.target == "label":
            if label is None or getattr(label, "label", None) is None:
                return None, "sample has no label in the label field"
            name = label.label
            if ctx.class_names and name in ctx.class_names:
                return ctx.class_names.index(name), None
            if not ctx.class_names and str(name).isdigit():
                return int(name), None
            return None, f"label {name!r} is not one of the model's classes"
        return ctx.fixed_class, None
    # segmentation
    if label is None and ctx.target == "label":
        return None, "sample has no segmentation in the label field"
    if label is not None:
        mask = label.get_mask() if hasattr(label, "get_mask") else label.mask
        if mask is None:
            return None, "segmentation label has no mask"
        mask = np.asarray(mask)
        if mask.ndim == 3:
            mask = mask[..., 0]
        category = ctx.fixed_class
        if category is None:
            values, counts = np.unique(mask[mask > 0], return_counts=True)
            if not len(values):
                return None, "segmentation mask has no non-zero class"
            category = int(values[counts.argmax()])
        return _GivenMaskTarget(category, (mask == category).astype(np.float32)), None
    return (None if ctx.fixed_class is None else MaskSumTarget(ctx.fixed_class)), None


def _class_name(ctx: BatchContext, index: int | None) -> str | None:
    if index is None:
        return None
    if ctx.class_names and 0 <= index < len(ctx.class_names):
        return str(ctx.class_names[index])
    return str(index)


def _computable_groups(batch, rows: list[int]):
    """``(rows, [N, C, H, W] input)`` per input shape, keeping only ``rows``:
    mixed sizes run as sub-batches, so that memory stays bounded by the batch
    size. The DataLoader's ``collate`` stacked them already."""
    keep = set(rows)
    for group_rows, stacked in batch.groups:
        kept = [k for k, i in enumerate(group_rows) if i in keep]
        if not kept:
            continue
        if len(kept) < len(group_rows):
            stacked = stacked[kept]
        yield [group_rows[k] for k in kept], stacked


def batch_field_values(ctx: BatchContext, batch, batch_ids, labels) -> dict[str, dict]:
    names = ctx.names
    values: dict[str, dict] = {
        name: {} for name in (*names.heatmaps, *names.strengths, names.target)
    }
    for name in (names.prediction, names.error, names.seen):
        values[name] = {}
    label_values = labels(batch_ids) if labels is not None else [None] * len(batch_ids)
    rows, targets = [], {}
    for i, sid in enumerate(batch_ids):
        if batch.errors[i] is not None:
            values[names.error][sid] = batch.errors[i]
            continue
        try:
            target, message = _sample_target(ctx, label_values[i])
        except Exception as exc:  # a malformed label must not stop the run
            target, message = None, f"cannot read label: {exc}"
        if message is not None:
            values[names.error][sid] = message
            continue
        rows.append(i)
        targets[i] = target
    for group, x in _computable_groups(batch, rows):
        for part, outcome in _isolate_faults(ctx, x, [targets[i] for i in group]):
            if isinstance(outcome, str):  # the model raised on this one sample
                values[names.error][batch_ids[group[part[0]]]] = outcome
                continue
            maps = outcome.maps.numpy()  # uint8, encoded on the model's device
            strengths = outcome.strengths
            strengths = None if strengths is None else strengths.tolist()
            for j, k in enumerate(part):
                i = group[k]
                if outcome.nonfinite and outcome.nonfinite[j] is not None:
                    values[names.error][batch_ids[i]] = _nonfinite_message(
                        outcome.nonfinite[j]
                    )
                    continue
                sample = _Row(batch_ids[i], batch.sizes[i], batch.geometries[i])
                _sample_values(ctx, values, outcome, maps, strengths, j, sample)
    return values


# An exception's message is stored on the sample; a few hundred characters say
# what happened without storing a whole traceback-sized text per sample.
_MAX_MESSAGE = 500


def _isolate_faults(ctx: BatchContext, x: torch.Tensor, targets: list):
    """``(rows of x, CamResult)`` for the parts of ``x`` the engine computes,
    and ``([row], message)`` for each single row on which it raises.

    Out of memory is not a sample's fault: the part is halved and retried,
    and ``ctx.chunk`` keeps the size that fits for the rest of the run
    (one image that does not fit alone is that sample's error).

    A sub-batch whose forward or backward raises is split in halves until the
    failing rows stand alone (bisection: about ``2 log2(B)`` extra passes for
    one bad row in ``B``), so that a model fault costs only the samples that
    cause it and the run goes on. The engine restores hooks, flags and grads
    when it raises, so a retry starts clean.
    """
    parts = [list(range(len(targets)))]
    while parts:
        part = parts.pop()
        if ctx.chunk is not None and len(part) > ctx.chunk:  # backed off before
            size = ctx.chunk
            parts += [part[i : i + size] for i in range(0, len(part), size)][::-1]
            continue
        sub = x if len(part) == len(targets) else x[part]
        try:
            # The engine enables gradients itself, also under a zoo model's no_grad.
            result = ctx.engine.compute(sub, [targets[k] for k in part], uint8=True)
        except torch.OutOfMemoryError as exc:
            _free_device_memory(ctx.engine)
            if len(part) == 1:
                yield part, _fault_message(exc)
                continue
            half = len(part) // 2
            ctx.chunk, ctx.oom_backoffs = half, ctx.oom_backoffs + 1
            parts += [part[half:], part[:half]]
            continue
        except Exception as exc:  # any model fault: isolate it, never stop the run
            if len(part) == 1:
                yield part, _fault_message(exc)
            else:
                half = len(part) // 2
                parts += [part[half:], part[:half]]  # the first half runs first
            continue
        yield part, result


def _free_device_memory(engine: CamEngine) -> None:
    """Give the failed attempt's cached blocks back before the smaller retry."""
    if engine.device.type == "cuda":
        torch.cuda.empty_cache()


def _fault_message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    return f"the model failed on this sample: {text}"


def _nonfinite_message(what: str) -> str:
    if what == "logits":
        return (
            "the model returned NaN/Inf logits for this sample: no class, "
            "probability or map can be derived from them"
        )
    return (
        f"the model returned NaN/Inf activations or gradients for this sample: "
        f"its {what} is not finite"
    )


@dataclass
class _Row:
    """One computed sample: its id, original size and geometry."""

    sid: str
    size: tuple[int, int]
    geometry: Any


def _sample_values(ctx: BatchContext, values, result, maps, strengths, j, row) -> None:
    """Row ``j`` of ``result`` -> this sample's field values."""
    names, sid, geometry = ctx.names, row.sid, row.geometry
    for layer_index, (hm_name, st_name) in enumerate(
        zip(names.heatmaps, names.strengths, strict=True)
    ):
        u8 = to_uint8_map(maps[j, layer_index], row.size, ctx.max_size, geometry)
        path = None
        if ctx.storage == "disk":
            path = os.path.join(
                ctx.run_dir, slug(ctx.layers[layer_index]), f"{sid}.png"
            )
        if ctx.storage == "db":  # the stored document itself (writes.py)
            values[hm_name][sid] = heatmap_document(u8)
        else:
            values[hm_name][sid] = make_heatmap(u8, ctx.storage, path)
        if strengths is not None:
            values[st_name][sid] = float(strengths[j][layer_index])
    # ready documents (writes.label_document): no label object per sample
    cls, pred = result.target_classes[j], result.predicted[j]
    values[names.target][sid] = label_document(
        fo.Classification,
        label=_class_name(ctx, cls),
        confidence=result.target_scores[j],
    )
    values[names.prediction][sid] = label_document(
        fo.Classification,
        label=_class_name(ctx, pred),
        confidence=result.predicted_scores[j],
    )
    if geometry is not None:
        values[names.seen][sid] = label_document(
            fo.Detection, label="seen", bounding_box=geometry.seen_box_relative()
        )
