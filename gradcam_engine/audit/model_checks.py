"""Evidence that needs the model again: the background counterfactual
(``background_test``) and the faithfulness of each map (``road_cams``).

Both rerun the run's model (its model source by default) on the samples'
images, batch by batch, with the run's transforms, and write their fields in
bulk through the run's ownership rules (:mod:`.owned`).

Fields, for run ``R`` and each heatmap field ``F``:

- ``R_bg_flip_rate`` (float in [0, 1]): the share of the fills (``fill``,
  several by default: :mod:`.backgrounds`) under which the predicted class
  changes when everything outside the objects of ``gt_field`` is replaced.
- ``R_bg_flip`` (bool): ``R_bg_flip_rate >= min_flip_rate`` (a consistent flip).
- ``R_bg_drop`` (float in [-1, 1]): how much the probability of the run's
  target class falls (negative: rises) when the background is replaced,
  averaged over the fills.
- ``F_road`` (float in [-1, 1]): ROAD of the map (pytorch-grad-cam's
  ``ROADCombined``); near 0 or negative: the map does not point at what the
  model needs, so its focus score says little.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import numpy as np
import torch
from PIL import Image, ImageOps
from scipy import ndimage

from ..engine.errors import AdvisedError
from ..engine.hooks import eval_mode
from ..runs import cam_runs as runs
from ..runs.arguments import progress_args
from ..runs.fingerprint import describe
from ..runs.naming import BG_DROP, BG_FLIP, BG_FLIP_RATE, road_field, run_field
from ..sources.geometry import Geometry, TransformGeometry
from ..sources.models import ResizeNormalize, load_model
from .backgrounds import (
    DEFAULT_FILLS,
    DEFAULT_MIN_FLIP_RATE,
    background_flips,
    check_fills,
)
from .counterfactual import road_scores
from .metrics import group_by_shape
from .owned import claim_fields
from .raw_reads import SegClasses, ground_truth, gt_kind, raw_heatmap
from .writer_steps import progress_reporter, run_layers, write_columns

__all__ = ["background_test", "map_to_input", "road_cams", "road_field"]


def background_test(
    samples: foc.SampleCollection,
    run_key: str,
    gt_field: str,
    model: Any = None,
    *,
    fill: str | Sequence[str] = DEFAULT_FILLS,
    min_flip_rate: float = DEFAULT_MIN_FLIP_RATE,
    seed: int = 0,
    transforms: Callable[[Image.Image], torch.Tensor] | None = None,
    label_classes: Sequence[str] | None = None,
    overwrite: bool = False,
    batch_size: int = 32,
    progress: bool | Callable[[int, int], Any] = False,
) -> dict[str, Any]:
    """Keep the objects of ``gt_field``, replace the rest, rerun the model.

    gt_field: ``fo.Detections`` (boxes), ``fo.Segmentation`` or
        ``fo.Polylines``; samples without objects get None.
    model: anything ``load_model`` accepts; default: the run's model source.
    fill: one fill or several (``backgrounds.ALL_FILLS``; ``"swap"`` pastes
        the objects on another sample's background, ImageNet-9 "mixed-rand").
    min_flip_rate: a sample is flagged (``R_bg_flip``) when its prediction
        flips under at least this share of the fills (``R_bg_flip_rate``);
        defaults measured in BENCHMARKS.md ("Background test").
    seed: the noise fill's and the swap donors' seed.
    transforms: default: the model source's (must match the run's).

    Returns ``{"fields", "num_tested", "flip_rate", "mean_drop", "fills",
    "fill_flip_rates"}``.
    """
    progress_args(progress)  # checked before any write
    info = runs.get_cam_run(samples, run_key)
    kind = gt_kind(samples, gt_field)
    fills = check_fills(fill)
    if not 0.0 < float(min_flip_rate) <= 1.0:
        raise ValueError(
            f"min_flip_rate must be in (0, 1] (a share of the fills), got "
            f"{min_flip_rate!r}"
        )
    _check_batch_size(batch_size)
    module, tf, classes = _model_for_run(info, model, transforms)
    flip, drop = run_field(run_key, BG_FLIP), run_field(run_key, BG_DROP)
    rate = run_field(run_key, BG_FLIP_RATE)
    claim_fields(
        samples,
        run_key,
        {flip: fo.BooleanField, drop: fo.FloatField, rate: fo.FloatField},
        overwrite,
    )
    label_classes = [label_classes] if isinstance(label_classes, str) else label_classes
    seg = (
        SegClasses(runs.root_dataset(samples), gt_field, label_classes)
        if kind == "segmentation"
        else None
    )
    paths = _gt_paths(kind, gt_field) + [f"{info.target_field}.label"]
    ids = samples.values("id")
    out: dict[str, list] = {name: [None] * len(ids) for name in (flip, drop, rate)}
    per_fill: list[np.ndarray] = []
    report = progress_reporter(progress, len(ids))

    def keep_mask(columns, i, image) -> np.ndarray | None:
        target = columns[paths[-1]][i]
        gt = ground_truth(kind, columns, gt_field, i, label_classes, seg, target)
        return gt.mask((image.shape[0], image.shape[1]))

    with eval_mode(module):
        for start, columns, images in _batches(samples, ids, paths, batch_size, report):
            rows, kept, keeps, targets = [], [], [], []
            for i, image in enumerate(images):
                keep = keep_mask(columns, i, image)
                if keep is None:  # no object: nothing to keep, no test
                    continue
                rows.append(start + i)
                kept.append(image)
                keeps.append(keep)
                targets.append(_class_index(columns[paths[-1]][i], classes))
            if not rows:
                continue
            flips, drops = background_flips(
                lambda xs: _forward(module, xs),
                tf,
                kept,
                keeps,
                targets,
                fills,
                seed + start,
            )
            per_fill.append(flips)
            for j, row in enumerate(rows):
                share = float(np.nanmean(flips[j]))
                out[rate][row], out[drop][row] = share, float(np.nanmean(drops[j]))
                out[flip][row] = share >= min_flip_rate
    write_columns(samples, ids, out)
    tested = [v for v in out[flip] if v is not None]
    by_fill = np.concatenate(per_fill) if per_fill else np.empty((0, len(fills)))
    return {
        "fields": [flip, drop, rate],
        "num_tested": len(tested),
        "flip_rate": _mean(tested),
        "mean_drop": _mean(out[drop]),
        "fills": fills,
        "fill_flip_rates": {
            f: (float(np.nanmean(by_fill[:, j])) if len(by_fill) else None)
            for j, f in enumerate(fills)
        },
    }


def road_cams(
    samples: foc.SampleCollection,
    run_key: str,
    layer: str | Sequence[str] | None = None,
    model: Any = None,
    *,
    transforms: Callable[[Image.Image], torch.Tensor] | None = None,
    percentiles: Sequence[int] = (20, 40, 60, 80),
    seed: int = 0,
    overwrite: bool = False,
    batch_size: int = 32,
    progress: bool | Callable[[int, int], Any] = False,
) -> dict[str, Any]:
    """ROAD of each stored map (``F_road``), for the class the run explained.

    The stored map (which covers the whole original image) is sampled back
    onto the model input through the transforms' probed geometry (crops,
    padding and letterboxes included). The noise of ROAD's imputation is seeded per batch with ``seed``.

    Returns ``{"fields", "mean_road": {layer: mean}}``.
    """
    progress_args(progress)  # checked before any write
    info = runs.get_cam_run(samples, run_key)
    layers = run_layers(info, layer)
    _check_batch_size(batch_size)
    module, tf, classes = _model_for_run(info, model, transforms)
    heat = [info.fields[name] for name in layers]
    claim_fields(
        samples, run_key, {road_field(f): fo.FloatField for f in heat}, overwrite
    )
    paths = [*heat, f"{info.target_field}.label"]
    ids = samples.values("id")
    out: dict[str, list] = {road_field(f): [None] * len(ids) for f in heat}
    # Progress per map measured (ROAD reruns the model 8 times per map: a
    # report per batch left the App silent for minutes).
    report = progress_reporter(progress, len(ids) * len(heat))
    measured = [0]

    def advance(n: int) -> None:
        measured[0] += n
        report(measured[0])

    geometry = TransformGeometry(tf)  # where each input pixel came from
    with eval_mode(module):
        for batch in _batches(samples, ids, paths, batch_size, lambda done: None):
            model = (module, tf, geometry, classes)
            _road_batch(batch, model, heat, percentiles, seed, out, advance)
    write_columns(samples, ids, out)
    return {
        "fields": list(out),
        "mean_road": {
            name: _mean(out[road_field(f)])
            for name, f in zip(layers, heat, strict=True)
        },
    }


# Maps per ROAD call: progress after each (the noise is seeded per call).
ROAD_CHUNK = 8


def _road_batch(batch, model, heat, percentiles, seed, out, advance):
    start, columns, images = batch
    module, tf, geometry, classes = model
    target_path = list(columns)[-1]
    x_all = [tf(Image.fromarray(image)) for image in images]
    for f in heat:
        maps = [raw_heatmap(doc) for doc in columns[f]]
        have = [i for i, m in enumerate(maps) if m is not None]
        advance(len(maps) - len(have))  # nothing to measure
        # one ROAD call per input size (transforms may keep the image's size)
        # and per ROAD_CHUNK maps
        for rows in _chunks(list(group_by_shape(x_all, have).values()), ROAD_CHUNK):
            x = torch.stack([x_all[i] for i in rows])
            cams = np.stack(
                [
                    map_to_input(
                        maps[i], geometry((images[i].shape[1], images[i].shape[0]))
                    )
                    for i in rows
                ]
            )
            targets = [_class_index(columns[target_path][i], classes) for i in rows]
            if any(t is None for t in targets):
                with torch.no_grad():
                    predicted = module(x).argmax(1).tolist()
                targets = [
                    p if t is None else t
                    for t, p in zip(targets, predicted, strict=True)
                ]
            scores = road_scores(module, x, cams, targets, percentiles, seed)
            for i, score in zip(rows, scores, strict=True):
                out[road_field(f)][start + i] = float(score)
            advance(len(rows))


def _chunks(groups: list[list[int]], n: int) -> list[list[int]]:
    return [g[i : i + n] for g in groups for i in range(0, len(g), n)]


def _forward(module, tensors: list[torch.Tensor]) -> torch.Tensor:
    """Logits ``[N, K]`` for inputs that may differ in size (batched per size)."""
    out: list = [None] * len(tensors)
    with torch.no_grad():
        for rows in group_by_shape(tensors).values():
            logits = module(torch.stack([tensors[i] for i in rows]))
            for j, i in enumerate(rows):
                out[i] = logits[j]
    return torch.stack(out)


def map_to_input(m: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A stored map (covering the whole original image, any resolution) on the
    model input's grid: each input pixel reads the map where it came from in
    the original (0 where it came from outside it, e.g. letterbox padding)."""
    h_m, w_m = m.shape
    axes = []
    for axis in (1, 0):
        n_in = geometry.input_size[axis]
        orig = geometry.scale[axis] * (np.arange(n_in) + 0.5) + geometry.offset[axis]
        axes.append(orig / geometry.image_size[axis])  # relative position
    rel_y, rel_x = np.meshgrid(*axes, indexing="ij")
    coords = [rel_y * h_m - 0.5, rel_x * w_m - 0.5]
    # The probed geometry is a least-squares fit: snap positions within 1e-3 of
    # a map pixel onto it, so that an identity or integer crop reads exact values.
    coords = [np.where(np.abs(c - np.rint(c)) < 1e-3, np.rint(c), c) for c in coords]
    out = ndimage.map_coordinates(m, coords, order=1, mode="nearest")
    inside = (rel_y >= 0) & (rel_y < 1) & (rel_x >= 0) & (rel_x < 1)
    return np.where(inside, out, 0.0).astype(np.float32)


# --------------------------------------------------------------------------- helpers


def _model_for_run(info: runs.CamRunInfo, model, transforms):
    """(eval module, transforms, class names) for rerunning the run's model."""
    loaded = load_model(model) if model is not None else _run_model(info)
    tf = transforms or loaded.transforms or ResizeNormalize(224)
    ran_with = info.config.get("transforms")
    if ran_with is not None and describe(tf) != ran_with:
        raise ValueError(
            f"transforms: {describe(tf)} differ from the run's ({ran_with}); pass "
            "transforms=<the transforms used for the run>"
        )
    classes = loaded.classes or _run_classes(info)
    return loaded.module, tf, classes


def _run_model(info: runs.CamRunInfo):
    """The run's model source, loaded again. The config keeps the source's
    description, which starts with the source name for registered sources."""
    source = str(info.config.get("model"))
    for spec in dict.fromkeys([source, source.split(" (")[0]]):
        try:
            return load_model(spec)
        except (ValueError, TypeError, OSError):
            continue
    raise AdvisedError(
        f"model: run {info.run_key!r} was computed with {source!r}, which is not a "
        "model source that can be loaded again;",
        python="pass model=<the nn.Module or model source used for the run>",
        app="type the registered model source of that model in 'Model source'",
    )


def _run_classes(info: runs.CamRunInfo) -> list[str] | None:
    classes = info.config.get("classes")
    return list(classes) if isinstance(classes, list) else None


def _class_index(label: str | None, classes: list[str] | None) -> int | None:
    """The model's index of class ``label`` (None: use the prediction)."""
    if label is None:
        return None
    if classes and label in classes:
        return list(classes).index(label)
    return int(label) if str(label).isdigit() else None


def _gt_paths(kind: str, gt_field: str) -> list[str]:
    if kind == "detections":
        return [f"{gt_field}.detections.bounding_box", f"{gt_field}.detections.label"]
    return [gt_field]


def _batches(samples, ids, paths, batch_size, report):
    """``(offset, raw columns by path, uint8 RGB images)`` per chunk of ``ids``."""
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        view = samples.select(chunk, ordered=True)
        values = view.values(["filepath", *paths], _raw=True)
        columns = dict(zip(paths, values[1:], strict=True))
        images = [_load_rgb(path) for path in values[0]]
        yield start, columns, images
        report(start + len(chunk))


def _load_rgb(path: str) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


def _check_batch_size(batch_size) -> None:
    if (
        not isinstance(batch_size, int)
        or isinstance(batch_size, bool)
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None
