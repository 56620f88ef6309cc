"""``compute_cams`` on a patches view (``dataset.to_patches("ground_truth")``):
a classifier explained on each object crop, its map placed back onto the
crop's place in the source image.

The run is registered on the source dataset (a patches view's samples are
generated) and stored like a detection run's (runs/detections.py): per source
sample ``{R}_detections``, one ``fo.Detection`` per patch (its label and box,
``gt_id`` the patch's own detection id, ``prediction`` / ``confidence`` the
classifier's top class on the crop) carrying per layer its own map
``<slug>_map`` over the whole source image (zero outside the crop); per layer
one combined heatmap (the max of the sample's patch maps) and its strength;
``{R}_prediction`` (the most confident patch's class: the done marker).
A patch's map lies inside its own box by construction, so no focus is stored.
"""

from __future__ import annotations

import dataclasses
import os

import fiftyone as fo
import numpy as np
from PIL import Image

from ..sources.images import collate, load_rgb
from .batch_fields import (
    _computable_groups,
    _isolate_faults,
    _nonfinite_message,
    _sample_target,
)
from .detections import DETECTION_MAP_SIZE, _Sample, attach_object_maps
from .naming import slug
from .outcome import CamRunSummary
from .record import done_expression
from .storage import make_heatmap, to_uint8_map
from .stream import StreamOptions, _batch_context, _empty_summary, _record, _write

__all__ = ["is_patches", "patches_config", "stream_patches"]


def is_patches(samples) -> bool:
    return bool(getattr(samples, "_is_patches", False))


def patches_config(samples, task: str, target, label_field, options) -> dict:
    """The run config's ``patches`` entry; refuses what a patches run cannot do
    (before any write)."""
    field = samples._patches_field
    if samples._root_dataset.media_type != "image":  # e.g. frames.to_patches()
        raise ValueError(
            f"samples is a patches view of {samples._root_dataset.media_type!r} "
            "media (e.g. patches of a video's frames view): not supported; run "
            "compute_cams on the frames view itself, or on the patches of an "
            "image dataset of the frames (frames.clone().to_patches(...))"
        )
    if task != "classification":
        raise ValueError(
            f"samples is a patches view: compute_cams explains a classifier on "
            f"each crop there; task={task!r} is not supported on patches. Pass "
            "task='classification', or run it on the source images"
        )
    if target == "label" and label_field not in (None, field):
        raise ValueError(
            f"label_field={label_field!r}: on a patches view of {field!r}, "
            f"target='label' explains each patch's own label; pass "
            f"label_field={field!r}"
        )
    if options.get("aug_smooth"):
        raise ValueError("aug_smooth=True is not supported on a patches view")
    return {"field": field, "map_size": DETECTION_MAP_SIZE}


def _patches_by_sample(patches):
    field = patches._patches_field
    paths = ["sample_id", f"{field}.id", f"{field}.bounding_box", f"{field}.label"]
    by_sample: dict[str, list] = {}
    for sid, pid, box, label in zip(*patches.values(paths), strict=True):
        by_sample.setdefault(str(sid), []).append((pid, box, label))
    return by_sample


def _crop(img: Image.Image, box) -> tuple[Image.Image, tuple[int, int]]:
    """The crop of relative ``[x, y, w, h]`` (at least 1 px) and its origin."""
    width, height = img.size
    x0 = min(max(int(round(box[0] * width)), 0), width - 1)
    y0 = min(max(int(round(box[1] * height)), 0), height - 1)
    x1 = min(max(int(round((box[0] + box[2]) * width)), x0 + 1), width)
    y1 = min(max(int(round((box[1] + box[3]) * height)), y0 + 1), height)
    return img.crop((x0, y0, x1, y1)), (x0, y0)


def _decode(plan, path, patches):
    """Per patch ``(tensor, geometry on the source image, error)``."""
    img = load_rgb(path)
    out = []
    for _, box, _ in patches:
        crop, (x0, y0) = _crop(img, box)
        try:
            tensor = plan.transforms(crop)
            g = plan.geometry(crop.size)
        except Exception as exc:  # user transforms: report, never stop the run
            out.append((None, None, f"transforms failed on the crop: {exc!r}"))
            continue
        g = dataclasses.replace(
            g, image_size=img.size, offset=(g.offset[0] + x0, g.offset[1] + y0)
        )
        out.append((tensor, g, None))
    return img.size, out


def stream_patches(plan, patches, options: StreamOptions) -> CamRunSummary:
    """Compute the source samples of ``patches`` not done yet, a few source
    samples (all their patches) per bulk write."""
    names, instance = plan.names, plan.config.get("instance")
    by_sample = _patches_by_sample(patches)
    pending = plan.dataset.select(list(by_sample)).match(
        ~done_expression(names, instance, options.retry_errors)
    )
    ids, paths, old_errors = pending.values(["id", "filepath", names.error])
    retried = {sid for sid, err in zip(ids, old_errors, strict=True) if err}
    summary = _empty_summary(plan, len(by_sample), len(ids))
    # each crop is explained as a classification sample
    ctx = dataclasses.replace(_batch_context(plan), task="classification")
    done, chunk = 0, []
    for k, sid in enumerate(ids):
        chunk.append((sid, paths[k]))
        count = sum(len(by_sample[s]) for s, _ in chunk)
        if count < options.batch_size and k < len(ids) - 1:
            continue
        values = _chunk_values(plan, ctx, chunk, by_sample)
        batch_ids = [s for s, _ in chunk]
        _record(summary, values[names.error], batch_ids, retried)
        if plan.live is not None:
            plan.live.check()
        values[names.instance] = dict.fromkeys(batch_ids, instance)
        _write(plan.dataset, values)
        done += len(chunk)
        if options.progress_callback is not None:
            options.progress_callback(done, len(ids))
        chunk = []
    summary.batch_size, summary.oom_backoffs = options.batch_size, ctx.oom_backoffs
    summary.batch_size_used = ctx.chunk or options.batch_size
    return summary


def _chunk_values(plan, ctx, chunk, by_sample) -> dict[str, dict]:
    names = plan.names
    values: dict[str, dict] = {
        name: {}
        for name in (
            *names.heatmaps,
            *names.strengths,
            names.prediction,
            names.error,
            names.detections,
        )
    }
    items, owners, sizes, targets = [], [], {}, []
    for sid, path in chunk:
        try:
            sizes[sid], decoded = _decode(plan, path, by_sample[sid])
        except (OSError, ValueError) as exc:
            values[names.error][sid] = f"{type(exc).__name__}: {exc}"
            continue
        for (pid, box, label), (tensor, g, error) in zip(
            by_sample[sid], decoded, strict=True
        ):
            target, message = None, error
            if message is None:
                target, message = _sample_target(ctx, fo.Classification(label=label))
            items.append(
                (
                    len(items),
                    tensor if message is None else None,
                    sizes[sid],
                    message,
                    g,
                )
            )
            owners.append((sid, pid, box, label))
            targets.append(target)
    results: dict[int, object] = {}
    if items:
        batch = collate(items)
        rows = [i for i, item in enumerate(items) if item[3] is None]
        for group, x in _computable_groups(batch, rows):
            for part, outcome in _isolate_faults(ctx, x, [targets[i] for i in group]):
                for j, k in enumerate(part):
                    i = group[k]
                    if isinstance(outcome, str):
                        results[i] = outcome
                    elif outcome.nonfinite and outcome.nonfinite[j] is not None:
                        results[i] = _nonfinite_message(outcome.nonfinite[j])
                    else:
                        results[i] = (
                            outcome.maps[j].numpy(),
                            outcome.strengths[j].tolist(),
                            outcome.predicted[j],
                            outcome.predicted_scores[j],
                            tuple(x.shape[-2:]),
                        )
    per_sample: dict[str, list] = {sid: [] for sid, _ in chunk if sid in sizes}
    for i, (sid, pid, box, label) in enumerate(owners):
        det = fo.Detection(label=label, bounding_box=list(box), gt_id=str(pid))
        result = results.get(i, items[i][3])
        if isinstance(result, str):
            det["error"] = result
            per_sample[sid].append((det, None))
            continue
        maps, strengths, pred, score, input_hw = result
        det["prediction"], det.confidence = _name(ctx, pred), score
        sample = _Sample(sid, sizes[sid], items[i][4], input_hw)
        attach_object_maps(det, ctx.layers, list(maps), sample)
        per_sample[sid].append((det, (maps, strengths, sample)))
    for sid, dets in per_sample.items():
        _sample_values(ctx, values, sid, sizes[sid], dets)
    return values


def _name(ctx, index) -> str:
    if ctx.class_names and 0 <= index < len(ctx.class_names):
        return str(ctx.class_names[index])
    return str(index)


def _sample_values(ctx, values, sid, size, dets) -> None:
    names = ctx.names
    values[names.detections][sid] = fo.Detections(detections=[d for d, _ in dets])
    done = [(d, r) for d, r in dets if r is not None]
    for k, (hm_name, st_name) in enumerate(
        zip(names.heatmaps, names.strengths, strict=True)
    ):
        scale = min(1.0, ctx.max_size / max(size))
        combined = np.zeros(
            (max(1, round(size[1] * scale)), max(1, round(size[0] * scale))), np.uint8
        )
        for _, (maps, _, sample) in done:
            u8 = to_uint8_map(maps[k], size, ctx.max_size, sample.geometry)
            combined = np.maximum(combined, u8)
        path = None
        if ctx.storage == "disk":
            path = os.path.join(ctx.run_dir, slug(ctx.layers[k]), f"{sid}.png")
        values[hm_name][sid] = make_heatmap(combined, ctx.storage, path)
        values[st_name][sid] = max((r[1][k] for _, r in done), default=0.0)
    if dets and not done:  # every patch failed: the sample failed
        values[names.error][sid] = f"every patch failed: {dets[0][0]['error']}"
        return
    top = max(done, key=lambda d: d[0].confidence or 0.0, default=None)
    values[names.prediction][sid] = fo.Classification(
        label=None if top is None else top[0]["prediction"],
        confidence=None if top is None else top[0].confidence,
    )
