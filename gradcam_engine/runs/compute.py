"""``compute_cams``: run a CAM method over a FiftyOne collection and store heatmaps.

Streams the collection (``stream.py``): ids and filepaths are read in bulk,
images are decoded by a DataLoader (in worker processes on cores the engine
leaves free), and each batch is written with one bulk update (every field of a
sample in one update). Runs resume: calling again with the same run key and
config computes only the samples not yet done.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import torch
from PIL import Image
from torch import nn

from ..engine.cam_engine import CamEngine
from ..engine.layers import default_layers
from ..engine.methods import get_method
from ..sources.geometry_cache import cached_geometry
from ..sources.models import ResizeNormalize, load_model
from . import (
    arguments,
    cam_runs,
    patch_runs,
    registration,
    shard_runs,
    sharding,
    trust,
)
from .app_look import style_run
from .batch_fields import field_names
from .detections import detection_config, detection_engine, detector_input
from .fingerprint import describe, description_fingerprint, weights_fingerprint
from .frame_fields import is_frames, view_schema
from .multilabel import multilabel_config
from .outcome import CamRunFailed, CamRunSummary, check_label_classes, exact_count
from .plan import RunPlan as _RunPlan
from .probe import probe_model
from .stream import StreamOptions, stream_run

__all__ = ["CamRunFailed", "CamRunSummary", "compute_cams"]


def compute_cams(
    samples: foc.SampleCollection,
    model: nn.Module | str | Any,
    layers: str | Sequence[str] | None = None,
    method: str = "gradcam",
    run_key: str = "gradcam",
    *,
    task: str = "classification",
    target: str | int = "predicted",
    label_field: str | None = None,
    classes: Sequence[str] | None = None,
    confidence_thresh: float = 0.5,
    max_detections: int = 20,
    iou_threshold: float = 0.5,
    transforms: Callable[[Image.Image], torch.Tensor] | None = None,
    batch_size: int = 16,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    storage: str = "db",
    output_dir: str | None = None,
    max_size: int = 256,
    overwrite: bool = False,
    retry_errors: bool = True,
    allow_pickle: bool = False,
    progress: bool | Callable[[int, int], Any] = True,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
    reshape_transform: str | Callable | None = "auto",
    precision: str = "fp32",
    progress_callback: Callable[[int, int], Any] | None = None,
    delegate: bool = False,
    shards: int | None = None,
    delegation_target: str | None = None,
) -> CamRunSummary | sharding.QueuedRun:
    """Compute ``method`` maps for ``layers`` on every sample of ``samples``.

    Writes, per layer, a ``fo.Heatmap`` field ``f"{run_key}_{slug(layer)}"``
    covering the whole original image and a float ``..._strength`` field, plus
    ``{run_key}_target``/``{run_key}_prediction`` (``fo.Classification``) and
    ``{run_key}_error`` (str, on failed samples). See docs/ARCHITECTURE.md.

    ``target``: ``"predicted"``, ``"label"`` (the class in ``label_field``), an
    int class index or a class name. Segmentation explains the mask-sum of a
    class over the predicted region, or over ``label_field``'s mask.

    ``task="detection"`` (a detector in torchvision's convention): explains
    each detection scoring at least ``confidence_thresh`` (at most
    ``max_detections`` per image; ``target="predicted"``) or each box of
    ``label_field`` (``fo.Detections``) through the model's detection of its
    class overlapping it most (IoU >= ``iou_threshold``; ``target="label"``);
    writes ``{run_key}_detections`` whose detections carry, per layer, their
    ``<slug(layer)>_focus`` and own map ``<slug(layer)>_map``, and per layer
    one combined heatmap per sample (see runs/detections.py).

    ``task="multilabel"`` (sigmoid outputs, ``fo.Classifications`` labels):
    explains each label of ``label_field`` (``target="label"``) or each class
    whose sigmoid reaches ``confidence_thresh``; writes ``{run_key}_labels``,
    each label with its own ``<slug(layer)>_map`` (see runs/multilabel.py).
    On a patches view (``to_patches(field)``) each crop is explained and its
    map placed on the source sample's ``{run_key}_detections`` (runs/patch_runs.py).
    On a frames view (``video.to_frames()``) each frame is explained and the
    fields are frame fields of the video dataset (``frames.{run_key}_...``;
    runs/frame_fields.py).

    ``delegate=True``: register the run here, then queue ``shards`` (default 1)
    FiftyOne delegated operations over disjoint parts of ``samples`` and return
    a ``QueuedRun`` with their ids at once, computing nothing here. ``model``
    must then be a model source name (workers rebuild the model). Follow with
    ``cam_run_status``. Each shard runs the call recorded on the run
    (``shard_worker.run_shard``), nothing its operation's parameters say.

    ``progress``: True draws a progress bar, False nothing, a callable is
    called as ``progress(done, total)`` after each batch (the same argument as
    ``score_cams``, ``cluster_cams``, ``background_test`` and ``road_cams``);
    ``progress_callback=`` is its deprecated former name for the callable.

    ``precision``: ``"fp32"``, or ``"bf16"`` / ``"fp16"`` to run the model
    under ``torch.autocast`` (maps still computed in fp32). On out of memory
    the batch is halved and retried; the summary records the size that fit.

    ``num_workers``: DataLoader worker processes decoding images; by default
    up to 2 on the cores a CPU engine's torch threads leave free (none when
    torch uses every core), up to 2 for an engine on a GPU.

    Everything that can be checked before the run (model, layers, method,
    label field type, label classes vs the model's classes) is, and raises
    before anything is written. Returns a :class:`CamRunSummary`; raises
    :class:`CamRunFailed` when no attempted sample succeeded.

    An existing run ``run_key`` resumes (samples not done yet, and failed ones
    with ``retry_errors``) if its model weights, transforms and settings match;
    otherwise it raises unless ``overwrite``, which replaces it only once the
    new run has succeeded. ``allow_pickle=True`` lets a model file run the
    Python code pickled in it (``torch.load(weights_only=False)``): only for
    files you trust.
    """
    return _compute(dict(locals()), shard=None)


def compute_shard(
    samples: foc.SampleCollection,
    kwargs: dict[str, Any],
    shard: dict[str, Any],
    progress: Callable[[int, int], Any] | None = None,
) -> CamRunSummary:
    """One queued shard (internal: ``shard_worker.run_shard`` calls it with the
    call its run recorded): ``compute_cams(samples, **kwargs)`` on ``shard``'s
    samples, joining the registered run; never registers or queues."""
    local = sorted(set(kwargs) & sharding.LOCAL_ONLY)
    if local:
        raise ValueError(f"a shard's recorded call cannot set {local}")
    bound = inspect.signature(compute_cams).bind(samples, **kwargs)
    bound.apply_defaults()
    call = dict(bound.arguments, progress=progress or False, progress_callback=None)
    return _compute(call, shard)


_PLAN_OPTIONS = (
    *("task", "target", "label_field", "classes", "transforms", "storage"),
    *("output_dir", "max_size", "eigen_smooth", "aug_smooth", "reshape_transform"),
    *("batch_size", "allow_pickle", "precision"),
    *("confidence_thresh", "max_detections", "iou_threshold"),
)


def _compute(call: dict[str, Any], shard: dict[str, Any] | None):
    """``compute_cams`` with its arguments in ``call``; ``shard``: one shard of
    a run its caller registered (``compute_shard``)."""
    samples, model, run_key = call["samples"], call["model"], call["run_key"]
    call["progress"], call["progress_callback"] = arguments.progress_args(
        call["progress"], call["progress_callback"]
    )  # checked before any write
    queue = sharding.check_delegation(call["delegate"], call["shards"])
    if queue and patch_runs.is_patches(samples):
        raise ValueError("delegate=True is not supported on a patches view yet")
    if queue and is_frames(samples):
        raise ValueError("delegate=True is not supported on a frames view yet")
    if queue or shard is not None:
        sharding.check_remote_args(
            model,
            transforms=call["transforms"],
            reshape_transform=call["reshape_transform"],
        )
    options = {name: call[name] for name in _PLAN_OPTIONS}
    plan = _plan_run(samples, model, call["layers"], call["method"], run_key, **options)
    queued_samples = samples
    overwrite = call["overwrite"]
    if shard is not None:  # one shard of a run its caller registered
        opened = _open_run(plan, overwrite=False, join=True)
        samples = sharding.shard_view(samples, shard)
    elif queue:
        shard_plan = sharding.plan_shards(samples, queue)  # checks before any write
        opened = _open_run(plan, overwrite)
        target = call["delegation_target"]
        return shard_runs.queue_run(plan, samples, call, opened, shard_plan, target)
    else:
        opened = _open_run(plan, overwrite)
    if plan.config.get("frames"):  # the view reads the fields declared on the video
        view_schema(samples, plan.names.owned)
    options = StreamOptions(
        batch_size=call["batch_size"],
        num_workers=call["num_workers"],
        device=call["device"],
        progress=call["progress"],
        progress_callback=call["progress_callback"],
        retry_errors=call["retry_errors"],
    )
    with registration.replacement(plan.dataset, opened):  # a failed one is removed
        patched = plan.config["task"] == "patches"
        summary = (patch_runs.stream_patches if patched else stream_run)(
            plan, samples, options
        )
        if shard is not None:  # reports through cam_run_status, not the run config
            # the run as a whole decides the swap, as in one process: a shard
            # whose samples all failed may still complete a run that has maps
            shard_runs.finish_if_complete(plan, opened, queued_samples)
            if summary.failed:
                raise CamRunFailed(summary)
            return summary
        opened.live.check()  # not deleted or renamed meanwhile
        # recorded on the run, so that listings and the App can tell how it went
        cam_runs.update_run_config(
            plan.dataset, opened.run_key, outcome=summary.as_dict()
        )
        if summary.failed:  # an overwrite that failed replaces nothing
            raise CamRunFailed(summary)
    summary = _finish_run(plan, opened, summary)
    layers, task = plan.config["layers"], plan.config["task"]
    if not plan.config.get("frames"):  # the App styles sample fields only
        names = field_names(summary.run_key, layers, task)
        style_run(plan.dataset, summary.run_key, names)
    return summary


# -- the steps: plan (no writes), open (register), stream (stream.py), finish --


def _plan_run(
    samples, model, layers, method, run_key, *, batch_size, **options
) -> _RunPlan:
    """Check the arguments, load the model and build the engine and the config."""
    task, target = options["task"], options["target"]
    label_field, storage = options["label_field"], options["storage"]
    max_size, output_dir = options["max_size"], options["output_dir"]
    cam_runs.validate_run_key(run_key)
    arguments.check_collection(samples)
    dataset = cam_runs.root_dataset(samples)
    arguments.check_args(task, target, label_field, storage, batch_size, max_size)
    if storage == "disk" and output_dir is not None:  # a file: refused up front
        trust.check_output_dir(output_dir)
    method_name = method.strip().lower() if isinstance(method, str) else method
    get_method(method_name)  # unknown method: raises listing close names

    loaded = load_model(model, allow_pickle=options["allow_pickle"])
    module = loaded.module
    default_input = detector_input() if task == "detection" else ResizeNormalize(224)
    transforms = options["transforms"] or loaded.transforms or default_input
    # Probes the transforms (once per process); random or rotating ones are
    # refused here, before anything is written.
    described = describe(transforms, deep=True)  # the probe's key, the fingerprint's
    geometry = cached_geometry(transforms, described)
    classes = options["classes"]
    class_names = list(classes) if classes is not None else loaded.classes
    if layers is None and task != "detection":  # detectors: their own default
        layers = loaded.default_layers or default_layers(module)
    if task == "detection":
        engine = detection_engine(module, layers, method_name, options)
    else:
        engine = CamEngine(
            module,
            layers,
            method_name,
            options["reshape_transform"],
            eigen_smooth=options["eigen_smooth"],
            aug_smooth=options["aug_smooth"],
            precision=options["precision"],
        )
    layer_list = engine.layer_names
    fixed_class = arguments.fixed_class(target, class_names)
    patches, frames = None, is_frames(samples)
    if patch_runs.is_patches(samples):  # the crops' own labels are the targets
        patches = patch_runs.patches_config(samples, task, target, label_field, options)
        label_field = patches["field"] if target == "label" else None
    else:
        arguments.check_label_field(samples, task, target, label_field)
    if task in ("classification", "multilabel") and target == "label":
        path = f"{label_field}.classifications.label" if task == "multilabel" else None
        check_label_classes(samples, label_field, class_names, path)
    names = field_names(run_key, layer_list, "patches" if patches else task, frames)
    weights = weights_fingerprint(module)
    # One forward on one sample: an unusable output or an out-of-range target
    # is refused now, not by every sample of a registered run.
    probe_model(
        samples,
        engine,
        transforms,
        geometry,
        task=task,
        target=target,
        fixed_class=fixed_class,
        class_names=class_names,
        label_field=label_field,
        prediction_field=names.prediction,
        weights=weights,
    )
    if storage == "disk" and output_dir is None:
        output_dir = os.path.join(
            fo.config.default_dataset_dir, "cam_runs", dataset.name
        )
    config = {
        "model": loaded.description or type(module).__name__,
        # the name to load it again by (the App reruns and lists runs by it)
        "model_source": model if isinstance(model, str) else None,
        "num_samples": exact_count(samples),
        "weights": weights,
        "layers": layer_list,
        "method": method_name,
        "task": "patches" if patches else task,  # patches: a classifier on crops
        "target": target,
        "label_field": label_field,
        "classes": arguments.describe_classes(class_names),
        "transforms": describe(transforms),
        "geometry": geometry.reference(),
        "storage": storage,
        "output_dir": None if output_dir is None else os.path.abspath(output_dir),
        "max_size": int(max_size),
        "eigen_smooth": bool(options["eigen_smooth"]),
        "aug_smooth": bool(options["aug_smooth"]),
        "precision": getattr(engine, "precision", "fp32"),
        "owned_fields": names.owned,
        "detection": detection_config(engine) if task == "detection" else None,
        "multilabel": multilabel_config(options) if task == "multilabel" else None,
        "patches": patches,
        "frames": frames,
    }
    config["transforms_fingerprint"] = description_fingerprint(
        described, config["geometry"]
    )
    return _RunPlan(
        dataset=dataset,
        run_key=run_key,
        engine=engine,
        transforms=transforms,
        geometry=geometry,
        class_names=class_names,
        fixed_class=fixed_class,
        names=names,
        config=config,
    )


def _open_run(
    plan: _RunPlan, overwrite: bool, join: bool = False
) -> registration.OpenedRun:
    """Register, resume or (overwrite) start a replacement of the run, atomically;
    the plan then writes the fields of the key that was opened.

    ``join``: a shard joins the run its caller registered; it never creates or
    replaces it.
    """
    if join and plan.run_key not in cam_runs.list_cam_runs(plan.dataset):
        raise ValueError(
            f"Run {plan.run_key!r} does not exist on {plan.dataset.name!r}: a "
            "shard only resumes a run registered by compute_cams(delegate=True)"
        )
    opened = registration.open_run(plan.dataset, plan.run_key, plan.config, overwrite)
    plan.names, plan.config, plan.live = opened.names, opened.config, opened.live
    return opened


def _finish_run(
    plan: _RunPlan, opened: registration.OpenedRun, summary: CamRunSummary
) -> CamRunSummary:
    """Swap a replacement in under the final key; the summary names its fields."""
    summary.run_key = registration.finish_run(plan.dataset, opened)
    info = cam_runs.get_cam_run(plan.dataset, summary.run_key)
    summary.fields = dict(info.fields)
    task, frames = info.config.get("task"), info.config.get("frames")
    summary.fields_written = list(
        field_names(summary.run_key, info.layers, task, frames).owned
    )
    summary.run_dir = info.config.get("run_dir")
    return summary
