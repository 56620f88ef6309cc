"""Deletion and insertion: does the model's score follow the map's ranking?

Petsiuk et al. (BMVC 2018, "RISE"), as Quantus' ``RegionPerturbation`` /
``PixelFlipping`` compute them (``quantus.metrics.faithfulness``): the input's
pixels are ranked by the map (most relevant first) and, in ``steps`` equal
portions,

- deletion: the most relevant pixels are replaced by the baseline; the area
  under the curve of the target class's softmax probability (low = faithful:
  the score falls as soon as what the map points at is gone);
- insertion: starting from the baseline, the most relevant pixels are put
  back; the area under the curve (high = faithful).

Areas are normalised to a unit x axis (the share of pixels changed, 0..1,
trapezoid rule) so that they lie in [0, 1] whatever ``steps`` is.

Baseline: a Gaussian blur of the model input (sigma = longest input side /
20), for both curves. A constant (black) baseline, Petsiuk's for deletion,
draws sharp-edged holes the model never saw in training, so the score drops
with the mask's shape whatever the map says (the "leakage" that ROAD, Rong et
al. 2022, measures); a blur keeps each pixel's colour neighbourhood and
removes its detail, and one baseline for both curves makes them the two ends
of one path between the blurred and the real input. Ties in the map (e.g. its
zero background) are broken by a seeded random order.

The stored map (over the whole original image) is put on the model input
with the same geometry mapping as ROAD (``model_checks.map_to_input``).
Fields, per heatmap field ``F``: ``F_deletion`` and ``F_insertion`` (float).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..engine.hooks import eval_mode
from ..runs import cam_runs as runs
from ..runs.naming import deletion_field, insertion_field
from ..sources.geometry import TransformGeometry
from .metrics import group_by_shape
from .model_checks import (
    _batches,
    _check_batch_size,
    _class_index,
    _mean,
    _model_for_run,
    map_to_input,
)
from .owned import claim_fields
from .raw_reads import raw_heatmap
from .writer_steps import progress_reporter, run_layers, write_columns

__all__ = [
    "deletion_field",
    "deletion_insertion",
    "deletion_insertion_cams",
    "insertion_field",
]


def blur_baseline(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``[B, C, H, W]`` blurred per channel, sigma = max(H, W) / 20
    (reflect padding, separable kernel of +-3 sigma)."""
    sigma = max(x.shape[-2:]) / 20
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    pad_h, pad_w = min(radius, x.shape[-2] - 1), min(radius, x.shape[-1] - 1)
    out = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect")
    kw = k[radius - pad_w : radius + pad_w + 1].view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    out = F.conv2d(out, kw / kw.sum(dim=-1, keepdim=True), groups=c)
    out = F.pad(out, (0, 0, pad_h, pad_h), mode="reflect")
    kh = k[radius - pad_h : radius + pad_h + 1].view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    return F.conv2d(out, kh / kh.sum(dim=-2, keepdim=True), groups=c)


def deletion_insertion(
    model: torch.nn.Module,
    x: torch.Tensor,
    cams: np.ndarray,
    targets: Sequence[int],
    steps: int = 20,
    seed: int = 0,
    chunk: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion areas, float32 ``[B]`` each, of maps ``cams``
    (float ``[B, H, W]`` at the input's size) for inputs ``x`` ``[B, C, H, W]``
    and one target class per input. ``steps + 1`` points per curve (0, 1/steps,
    ..., all pixels); forwards in chunks of ``chunk`` inputs, without grad."""
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3 or cams.shape[0] != x.shape[0] or cams.shape[1:] != x.shape[-2:]:
        raise ValueError(
            f"cams must be [B, H, W] = [{x.shape[0]}, {x.shape[-2]}, {x.shape[-1]}] "
            f"(one map per input, at the input's size), got {tuple(cams.shape)}"
        )
    if len(targets) != len(x):
        raise ValueError(f"{len(targets)} target classes for {len(x)} inputs")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    b, _, h, w = x.shape
    baseline = blur_baseline(x)
    rng = np.random.default_rng(seed)
    # rank[i, p]: the position of pixel p in map i's order, most relevant first
    rank = np.empty((b, h * w), dtype=np.int64)
    for i, cam in enumerate(cams.reshape(b, -1)):
        order = np.lexsort((rng.permutation(h * w), -cam))
        rank[i, order] = np.arange(h * w)
    rank_t = torch.from_numpy(rank).view(b, 1, h, w).to(x.device)
    counts = [round(k * h * w / steps) for k in range(steps + 1)]
    cls = torch.as_tensor([int(t) for t in targets], device=x.device)
    curves = {}
    for name, start, end in (("deletion", x, baseline), ("insertion", baseline, x)):
        probs = torch.empty(b, steps + 1)
        items = [(i, k) for i in range(b) for k in range(steps + 1)]
        for s in range(0, len(items), chunk):
            part = items[s : s + chunk]
            idx = torch.as_tensor([i for i, _ in part], device=x.device)
            n = torch.as_tensor([counts[k] for _, k in part], device=x.device)
            changed = rank_t[idx] < n.view(-1, 1, 1, 1)
            inputs = torch.where(changed, end[idx], start[idx])
            with torch.no_grad():
                p = model(inputs).float().softmax(1)[torch.arange(len(part)), cls[idx]]
            for (i, k), v in zip(part, p.cpu(), strict=True):
                probs[i, k] = v
        curves[name] = np.trapezoid(probs.numpy(), dx=1.0 / steps, axis=1)
    return (
        curves["deletion"].astype(np.float32),
        curves["insertion"].astype(np.float32),
    )


def deletion_insertion_cams(
    samples: foc.SampleCollection,
    run_key: str,
    layer: str | Sequence[str] | None = None,
    model: Any = None,
    *,
    transforms: Callable[[Image.Image], torch.Tensor] | None = None,
    steps: int = 20,
    seed: int = 0,
    overwrite: bool = False,
    batch_size: int = 32,
    progress: bool | Callable[[int, int], Any] = False,
) -> dict[str, Any]:
    """Deletion and insertion areas of each stored map (``F_deletion``,
    ``F_insertion``), for the class the run explained; see the module
    docstring. ``model``: default the run's model source (its transforms must
    match the run's).

    Returns ``{"fields", "mean_deletion": {layer: mean}, "mean_insertion":
    {layer: mean}}``.
    """
    info = runs.get_cam_run(samples, run_key)
    layers = run_layers(info, layer)
    _check_batch_size(batch_size)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    module, tf, classes = _model_for_run(info, model, transforms)
    heat = [info.fields[name] for name in layers]
    names = {f: (deletion_field(f), insertion_field(f)) for f in heat}
    claim_fields(
        samples,
        run_key,
        {n: fo.FloatField for pair in names.values() for n in pair},
        overwrite,
    )
    paths = [*heat, f"{info.target_field}.label"]
    ids = samples.values("id")
    out: dict[str, list] = {n: [None] * len(ids) for p in names.values() for n in p}
    report = progress_reporter(progress, len(ids))
    geometry = TransformGeometry(tf)
    with eval_mode(module):
        for start, columns, images in _batches(samples, ids, paths, batch_size, report):
            x_all = [tf(Image.fromarray(image)) for image in images]
            for f in heat:
                maps = [raw_heatmap(doc) for doc in columns[f]]
                have = [i for i, m in enumerate(maps) if m is not None]
                for rows in group_by_shape(x_all, have).values():
                    x = torch.stack([x_all[i] for i in rows])
                    size = [(images[i].shape[1], images[i].shape[0]) for i in rows]
                    cams = np.stack(
                        [
                            map_to_input(maps[i], geometry(s))
                            for i, s in zip(rows, size, strict=True)
                        ]
                    )
                    targets = [
                        _class_index(columns[paths[-1]][i], classes) for i in rows
                    ]
                    if any(t is None for t in targets):
                        with torch.no_grad():
                            predicted = module(x).argmax(1).tolist()
                        targets = [
                            p if t is None else t
                            for t, p in zip(targets, predicted, strict=True)
                        ]
                    dels, ins = deletion_insertion(
                        module, x, cams, targets, steps, seed + start
                    )
                    for i, d, n in zip(rows, dels, ins, strict=True):
                        out[names[f][0]][start + i] = float(d)
                        out[names[f][1]][start + i] = float(n)
    write_columns(samples, ids, out)
    return {
        "fields": list(out),
        "mean_deletion": {
            name: _mean(out[names[f][0]]) for name, f in zip(layers, heat, strict=True)
        },
        "mean_insertion": {
            name: _mean(out[names[f][1]]) for name, f in zip(layers, heat, strict=True)
        },
    }
