"""Evidence that needs the model again: the background counterfactual
(``background_test``) and the faithfulness of each map (``road_cams``).

Both rerun the run's model (its model source by default) on the samples'
images, batch by batch, with the run's transforms, and write their fields in
bulk through the run's ownership rules (:mod:`.owned`).

Fields, for run ``R`` and each heatmap field ``F``:

- ``R_bg_flip`` (bool): the predicted class changes when everything outside
  the objects of ``gt_field`` is replaced (``fill``).
- ``R_bg_drop`` (float in [-1, 1]): how much the probability of the run's
  target class falls (negative: rises) when the background is replaced.
- ``F_road`` (float in [-1, 1]): ROAD of the map (pytorch-grad-cam's
  ``ROADCombined``); near 0 or negative: the map does not point at what the
  model needs, so its focus score says little.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import numpy as np
import torch
from PIL import Image, ImageOps
from scipy import ndimage

from ..runs import cam_runs as runs
from ..runs.fingerprint import describe
from ..sources.geometry import Geometry, TransformGeometry
from ..sources.models import ResizeNormalize, load_model
from .counterfactual import FILLS, prediction_change, replace_background, road_scores
from .owned import claim_fields
from .raw_reads import SegClasses, ground_truth, gt_kind, raw_heatmap
from .writer_steps import progress_reporter, run_layers, write_columns

__all__ = ["background_test", "map_to_input", "road_cams", "road_field"]


def road_field(heatmap_field: str) -> str:
    return f"{heatmap_field}_road"


def background_test(
    samples: foc.SampleCollection,
    run_key: str,
    gt_field: str,
    model: Any = None,
    *,
    fill: str = "blur",
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
    fill: see :func:`replace_background` (``FILLS``).
    transforms: default: the model source's (must match the run's).

    Returns ``{"fields", "num_tested", "flip_rate", "mean_drop"}``.
    """
    info = runs.get_cam_run(samples, run_key)
    kind = gt_kind(samples, gt_field)
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    _check_batch_size(batch_size)
    module, tf, classes = _model_for_run(info, model, transforms)
    flip, drop = f"{run_key}_bg_flip", f"{run_key}_bg_drop"
    claim_fields(
        samples, run_key, {flip: fo.BooleanField, drop: fo.FloatField}, overwrite
    )
    label_classes = [label_classes] if isinstance(label_classes, str) else label_classes
    seg = (
        SegClasses(samples._root_dataset, gt_field, label_classes)
        if kind == "segmentation"
        else None
    )
    paths = _gt_paths(kind, gt_field) + [f"{info.target_field}.label"]
    ids = samples.values("id")
    out: dict[str, list] = {flip: [None] * len(ids), drop: [None] * len(ids)}
    report = progress_reporter(progress, len(ids))

    def keep_mask(columns, i, image) -> np.ndarray | None:
        target = columns[paths[-1]][i]
        gt = ground_truth(kind, columns, gt_field, i, label_classes, seg, target)
        return gt.mask((image.shape[0], image.shape[1]))

    with _eval(module):
        for start, columns, images in _batches(samples, ids, paths, batch_size, report):
            rows, before, after, targets = [], [], [], []
            for i, image in enumerate(images):
                keep = keep_mask(columns, i, image)
                if keep is None:  # no object: nothing to keep, no test
                    continue
                rows.append(start + i)
                before.append(tf(Image.fromarray(image)))
                after.append(tf(Image.fromarray(replace_background(image, keep, fill))))
                targets.append(_class_index(columns[paths[-1]][i], classes))
            if not rows:
                continue
            logits = _forward(module, before + after)
            flips, drops = prediction_change(
                logits[: len(rows)], logits[len(rows) :], targets
            )
            for j, row in enumerate(rows):
                out[flip][row], out[drop][row] = flips[j], drops[j]
    write_columns(samples, ids, out)
    tested = [v for v in out[flip] if v is not None]
    return {
        "fields": [flip, drop],
        "num_tested": len(tested),
        "flip_rate": _mean(tested),
        "mean_drop": _mean(out[drop]),
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
    with _eval(module):
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
        for rows in _chunks(_by_shape(have, x_all), ROAD_CHUNK):
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


def _by_shape(rows: list[int], tensors: list[torch.Tensor]) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i in rows:
        groups.setdefault(tuple(tensors[i].shape), []).append(i)
    return list(groups.values())


def _forward(module, tensors: list[torch.Tensor]) -> torch.Tensor:
    """Logits ``[N, K]`` for inputs that may differ in size (batched per size)."""
    out: list = [None] * len(tensors)
    with torch.no_grad():
        for rows in _by_shape(list(range(len(tensors))), tensors):
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
    raise ValueError(
        f"model: run {info.run_key!r} was computed with {source!r}, which is not a "
        "model source that can be loaded again; pass model=<the nn.Module or model "
        "source used for the run>"
    )


@contextlib.contextmanager
def _eval(module: torch.nn.Module):
    """Eval mode for the duration, the caller's train/eval flags restored after."""
    flags = [m.training for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in zip(module.modules(), flags, strict=True):
            m.training = flag


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
