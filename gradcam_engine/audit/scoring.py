"""Score a CAM run's stored heatmaps: focus on the objects, pointing game, spread,
agreement between layers and between runs.

Everything is computed from the maps already stored by ``compute_cams`` (no
model): the maps and the ground truth are read in bulk, chunk by chunk, scored
with numpy, and written back with one ``set_values`` per field. Every field
written is claimed for the run first (``runs.ownership.claim``: a field the run
does not own is refused unless ``overwrite=True``) and so is in its
``owned_fields``: renaming or deleting the run takes the scores along.

Fields written, for each heatmap field ``F`` of run ``R`` (see
``docs/ARCHITECTURE.md``):

- ``F_focus`` (float in [0, 1]): fraction of the map's energy (sum of its
  values) inside the ground-truth objects (energy-based pointing game,
  a.k.a. relevance mass accuracy). None without objects or without a map.
- ``F_hit`` (bool): the map's peak lies inside an object (boxes expanded by
  ``hit_tolerance`` of the image size; masks dilated by as much).
- ``F_spread`` (float in (0, 1]): the smallest fraction of the image area that
  holds half of the energy; ground-truth free. Low = concentrated.
- ``R_layer_agreement`` (float in [-1, 1]): mean pairwise Pearson correlation
  between the run's layer maps (resized to the first layer's size), when the
  run has two layers or more.
- ``F_vs_<compare_run>`` (float in [-1, 1]): with ``compare_run``, the Pearson
  correlation between this run's map and ``compare_run``'s map of the same
  layer, one field per layer the two runs share. Owned by ``R``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import numpy as np

from ..runs import cam_runs as runs
from ..runs import sharding
from ..runs.app_look import add_to_run_group
from ..runs.arguments import progress_args
from ..runs.frame_fields import declare_run_fields
from ..runs.naming import (
    LAYER_AGREEMENT,
    focus_field,
    hit_field,
    run_field,
    spread_field,
)
from ..runs.ownership import claim
from ..runs.storage import iter_chunks
from .metrics import agreement, score_layer
from .raw_reads import (
    GT_TYPES,
    SegClasses,
    ground_truth,
    gt_kind,
    raw_heatmap,
    raw_levels,
)
from .score_summary import ScoreSummary
from .writer_steps import progress_reporter, run_layers, write_columns

__all__ = [
    "GT_TYPES",
    "ScoreSummary",
    "score_cams",
    "focus_field",
    "hit_field",
    "spread_field",
]


def score_cams(
    samples: foc.SampleCollection,
    run_key: str,
    gt_field: str | None = None,
    *,
    layers: Sequence[str] | None = None,
    compare_run: str | None = None,
    hit_tolerance: float = 0.05,
    label_classes: Sequence[str] | None = None,
    batch_size: int = 256,
    progress: bool | Callable[[int, int], Any] = False,
    delegate: bool = False,
    shards: int | None = None,
    delegation_target: str | None = None,
    overwrite: bool = False,
) -> ScoreSummary | sharding.QueuedRun:
    """Score the heatmaps of run ``run_key`` on ``samples`` (module docstring).

    gt_field: a ``fo.Detections`` (boxes), ``fo.Segmentation`` (mask pixels;
        restricted to the class of ``{run_key}_target`` through the field's mask
        targets when that class is known, else all non-zero pixels) or
        ``fo.Polylines`` (filled) field; None writes only the ground-truth-free
        fields (spread, agreement).
    layers: the run's layers to score (layer names or heatmap field names);
        default all.
    compare_run: another CAM run; writes ``F_vs_<compare_run>`` per shared layer.
    hit_tolerance: how far (a fraction of the image's width/height) a peak may
        lie outside an object and still count as a hit.
    label_classes: only objects with these labels count as ground truth (for
        segmentation: the mask values these labels map to).
    progress: True for a progress bar, or a callable ``(done, total)``.
    overwrite: replace fields of the score names that the run does not own
        (a user's, or another run's); without it they are refused by name.

    Returns a :class:`ScoreSummary` (``as_dict()``, ``str()``): samples
    scored and without maps, ``fields_written``, ``counts`` (non-None values
    per field), ``mean_focus`` / ``hit_rate`` / ``mean_spread`` per layer,
    ``mean_layer_agreement`` and ``mean_agreement_vs`` per layer, and
    ``replaced``: what ``overwrite=True`` replaced. It reads like the dict
    returned before (``summary["mean_focus"]``).

    ``delegate=True``: declare and record the score fields here, queue
    ``shards`` (default 1) delegated operations over disjoint parts of
    ``samples`` and return a ``QueuedRun`` at once (see ``compute_cams``).
    """
    return _score(dict(locals()), shard=None)


def score_shard(samples, kwargs: dict, shard: dict, progress=None) -> ScoreSummary:
    """One queued shard (internal: ``shard_worker.run_shard`` calls it with the
    call the run recorded): scores and writes ``shard``'s samples only."""
    local = sorted(set(kwargs) & sharding.LOCAL_ONLY)
    if local:
        raise ValueError(f"a shard's recorded call cannot set {local}")
    bound = inspect.signature(score_cams).bind(samples, **kwargs)
    bound.apply_defaults()
    return _score(dict(bound.arguments, progress=progress or False), shard)


def _score(call: dict[str, Any], shard: dict[str, Any] | None):
    """``score_cams`` with its arguments in ``call``; ``shard``: one shard of a
    delegated scoring whose caller declared and recorded the fields."""
    samples, run_key, gt_field = call["samples"], call["run_key"], call["gt_field"]
    batch_size = call["batch_size"]
    progress_args(call["progress"])  # checked before any write
    queue = sharding.check_delegation(call["delegate"], call["shards"])
    plan = _plan_scoring(
        samples,
        run_key,
        gt_field,
        call["layers"],
        call["compare_run"],
        call["hit_tolerance"],
        call["label_classes"],
        batch_size,
    )
    replaced = []
    if shard is None:  # shards write what their caller claimed
        # before any work: refuse what the run does not own; record the rest
        replaced = claim(
            samples,
            run_key,
            fields=plan.output_fields(),
            overwrite=call["overwrite"],
            writer="score_cams",
        )
    if queue:
        shard_plan = sharding.plan_shards(samples, queue)
        kwargs = sharding.worker_kwargs("score_cams", call, layers=plan.layers)
        record = sharding.record_call(shard_plan, "score_cams", kwargs, samples)
        _declare_scores(runs.root_dataset(samples), plan)
        _record_scoring(runs.root_dataset(samples), plan, record)
        target = call["delegation_target"]
        return sharding.queue_shards(samples, "score_cams", run_key, record, target)
    if shard is not None:  # the caller declared and recorded the fields
        samples = sharding.shard_view(samples, shard)
    ids = samples.values("id")
    report = progress_reporter(call["progress"], len(ids))
    out = _score_chunks(samples, plan, ids, batch_size, report)
    if shard is None:
        _finish_scoring(samples, plan, ids, out)
    else:
        write_columns(samples, ids, out)
    summary = _summary(
        run_key, gt_field, plan.layers, plan.info, out, plan.vs_fields, len(ids)
    )
    summary.replaced = [str(c) for c in replaced]  # with overwrite=True
    return summary


# -- the three steps: plan (checks, no writes), score (read, compute), finish ----


@dataclass
class _ScorePlan:
    """What to read and which fields to write, checked before any work."""

    run_key: str
    info: runs.CamRunInfo
    layers: list[str]
    gt_field: str | None
    kind: str | None  # a GT_TYPES key, or None without ground truth
    hit_tolerance: float
    label_classes: list[str] | None
    compare_run: str | None
    heat_fields: list[str]
    compare_fields: dict[str, str]  # layer -> the other run's heatmap field
    vs_fields: dict[str, str]  # layer -> F_vs_<compare_run>
    agreement_field: str | None
    target_path: str | None
    seg_classes: SegClasses | None
    paths: list[str] = field(default_factory=list)  # read per chunk

    def output_fields(self) -> list[str]:
        names = []
        for f in self.heat_fields:
            names.append(spread_field(f))
            if self.kind is not None:
                names += [focus_field(f), hit_field(f)]
        if self.agreement_field:
            names.append(self.agreement_field)
        return names + list(self.vs_fields.values())


def _plan_scoring(
    samples,
    run_key,
    gt_field,
    layers,
    compare_run,
    hit_tolerance,
    label_classes,
    batch_size,
) -> _ScorePlan:
    info = runs.get_cam_run(samples, run_key)
    dataset = runs.root_dataset(samples)
    layers = run_layers(info, layers)
    kind = gt_kind(samples, gt_field)
    if isinstance(hit_tolerance, bool) or not isinstance(hit_tolerance, (int, float)):
        raise TypeError(
            f"hit_tolerance must be a number, got {type(hit_tolerance).__name__}"
        )
    if not 0.0 <= hit_tolerance < 0.5:
        raise ValueError(
            f"hit_tolerance must be in [0, 0.5) (a fraction of the image size), "
            f"got {hit_tolerance!r}"
        )
    if isinstance(label_classes, str):
        label_classes = [label_classes]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")

    compare_layers: list[str] = []
    compare_fields: dict[str, str] = {}
    if compare_run is not None:
        other = runs.get_cam_run(samples, compare_run)
        if compare_run == run_key:
            raise ValueError("compare_run must differ from run_key")
        compare_layers = [layer for layer in layers if layer in other.layers]
        if not compare_layers:
            raise ValueError(
                f"Runs {run_key!r} (layers {layers}) and {compare_run!r} (layers "
                f"{other.layers}) share no layer to compare"
            )
        compare_fields = {layer: other.fields[layer] for layer in compare_layers}

    schema = dataset.get_field_schema()
    heat_fields = [info.fields[layer] for layer in layers]
    target_path = f"{info.target_field}.label" if info.target_field in schema else None
    plan = _ScorePlan(
        run_key=run_key,
        info=info,
        layers=layers,
        gt_field=gt_field,
        kind=kind,
        hit_tolerance=float(hit_tolerance),
        label_classes=list(label_classes) if label_classes else None,
        compare_run=compare_run,
        heat_fields=heat_fields,
        compare_fields=compare_fields,
        vs_fields={
            layer: f"{info.fields[layer]}_vs_{compare_run}" for layer in compare_layers
        },
        agreement_field=(
            run_field(run_key, LAYER_AGREEMENT) if len(heat_fields) >= 2 else None
        ),
        target_path=target_path,
        seg_classes=(
            SegClasses(dataset, gt_field, label_classes)
            if kind == "segmentation"
            else None
        ),
    )
    plan.paths = heat_fields + [compare_fields[layer] for layer in compare_layers]
    if kind == "detections":
        plan.paths += [
            f"{gt_field}.detections.bounding_box",
            f"{gt_field}.detections.label",
        ]
    elif kind is not None:
        plan.paths.append(gt_field)
    if target_path:
        plan.paths.append(target_path)
    return plan


def _score_chunks(
    samples, plan: _ScorePlan, ids: list[str], batch_size: int, report
) -> dict[str, list]:
    """Every output field's values, in the order of ``ids``."""
    out: dict[str, list] = {name: [] for name in plan.output_fields()}
    kind, heat_fields = plan.kind, plan.heat_fields
    done = 0
    for chunk in iter_chunks(ids, batch_size):
        view = samples.select(chunk, ordered=True)
        # Raw documents: decoding maps ourselves is ~10x faster than building
        # fo.Heatmap objects through mongoengine.
        columns = dict(zip(plan.paths, view.values(plan.paths, _raw=True), strict=True))
        # uint8 as stored where it can be: every measure here is scale-free
        maps = [[raw_levels(doc) for doc in columns[f]] for f in heat_fields]
        gts = [
            ground_truth(
                kind,
                columns,
                plan.gt_field,
                i,
                plan.label_classes,
                plan.seg_classes,
                columns[plan.target_path][i] if plan.target_path else None,
            )
            for i in range(len(chunk))
        ]
        for f, layer_maps in zip(heat_fields, maps, strict=True):
            spread, focus, hit = score_layer(layer_maps, gts, kind, plan.hit_tolerance)
            out[spread_field(f)] += spread
            if kind is not None:
                out[focus_field(f)] += focus
                out[hit_field(f)] += hit
        if plan.agreement_field:
            out[plan.agreement_field] += agreement(maps)
        for layer, name in plan.vs_fields.items():
            theirs = [raw_heatmap(doc) for doc in columns[plan.compare_fields[layer]]]
            out[name] += agreement([maps[plan.layers.index(layer)], theirs])
        done += len(chunk)
        report(done)
    return out


def _finish_scoring(samples, plan: _ScorePlan, ids, out: dict[str, list]) -> None:
    """Declare and write the score fields; record them and the settings on the run."""
    dataset = runs.root_dataset(samples)
    _declare_scores(dataset, plan)
    write_columns(samples, ids, out)
    _record_scoring(dataset, plan)


def _declare_scores(dataset: fo.Dataset, plan: _ScorePlan) -> None:
    hit_names = {hit_field(f) for f in plan.heat_fields}
    schema = {
        name: fo.BooleanField() if name in hit_names else fo.FloatField()
        for name in plan.output_fields()
    }
    declare_run_fields(dataset, plan.info, schema)


def _record_scoring(dataset: fo.Dataset, plan: _ScorePlan, shard_plan=None) -> None:
    """The settings (and shards, when delegated) on the run; ``claim`` has
    already made the fields the run's."""
    runs.update_run_config(
        dataset,
        plan.run_key,
        scoring={
            "gt_field": plan.gt_field,
            "gt_kind": plan.kind,
            "layers": plan.layers,
            "compare_run": plan.compare_run,
            "hit_tolerance": plan.hit_tolerance,
            "label_classes": plan.label_classes,
            "sharding": shard_plan,
        },
    )
    add_to_run_group(dataset, plan.run_key, plan.output_fields())


# ------------------------------------------------------------------------ summary


def _mean(values: list) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _summary(run_key, gt_field, layers, info, out, vs_fields, total) -> ScoreSummary:
    mean_focus, hit_rate, mean_spread = {}, {}, {}
    for layer in layers:
        f = info.fields[layer]
        mean_spread[layer] = _mean(out[spread_field(f)])
        if focus_field(f) in out:
            mean_focus[layer] = _mean(out[focus_field(f)])
            hit_rate[layer] = _mean(out[hit_field(f)])
    agreement = out.get(run_field(run_key, LAYER_AGREEMENT))
    # every map gets a spread: a sample is scored when one of its layers has one
    spreads = [out[spread_field(info.fields[layer])] for layer in layers]
    scored = sum(any(v is not None for v in row) for row in zip(*spreads, strict=True))
    return ScoreSummary(
        run_key=run_key,
        gt_field=gt_field,
        num_samples=total,
        num_scored=scored,
        fields_written=list(out),
        counts={name: sum(v is not None for v in vals) for name, vals in out.items()},
        mean_focus=mean_focus,
        hit_rate=hit_rate,
        mean_spread=mean_spread,
        mean_layer_agreement=_mean(agreement) if agreement is not None else None,
        mean_agreement_vs={layer: _mean(out[f]) for layer, f in vs_fields.items()},
    )
