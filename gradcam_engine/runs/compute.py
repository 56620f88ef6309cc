"""``compute_cams``: run a CAM method over a FiftyOne collection and store heatmaps.

Streams the collection: ids and filepaths are read in bulk, images are decoded
in DataLoader workers while the engine computes, and each batch's fields are
written with one bulk ``set_values`` per field. Runs resume: calling again with
the same run key and config computes only the samples not yet done.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import types
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import fiftyone.core.utils as fou
import numpy as np
import torch
from fiftyone import ViewField as VF
from PIL import Image
from torch import nn

from ..engine.cam_engine import CamEngine
from ..engine.layers import default_layers
from ..engine.methods import get_method
from ..sources.geometry import TransformGeometry
from ..sources.images import ImageFiles, collate, default_num_workers
from ..sources.models import ResizeNormalize, load_model
from . import cam_runs, sharding
from .app_look import style_run
from .batch_fields import (
    BatchContext,
    FieldNames,
    batch_field_values,
    field_names,
    label_reader,
)
from .outcome import CamRunFailed, CamRunSummary, check_label_classes
from .storage import STORAGE_MODES

__all__ = ["CamRunFailed", "CamRunSummary", "compute_cams"]

TASKS = ("classification", "segmentation")
# Config keys that must match for a run to be resumed.
_RESUME_KEYS = (
    "model",
    "layers",
    "method",
    "task",
    "target",
    "label_field",
    "classes",
    "transforms",
    "storage",
    "max_size",
    "eigen_smooth",
    "aug_smooth",
)


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
    transforms: Callable[[Image.Image], torch.Tensor] | None = None,
    batch_size: int = 16,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    storage: str = "db",
    output_dir: str | None = None,
    max_size: int = 256,
    overwrite: bool = False,
    progress: bool = True,
    eigen_smooth: bool = False,
    aug_smooth: bool = False,
    reshape_transform: str | Callable | None = "auto",
    progress_callback: Callable[[int, int], Any] | None = None,
    delegate: bool = False,
    shards: int | None = None,
    delegation_target: str | None = None,
    shard: dict[str, Any] | None = None,
) -> CamRunSummary | sharding.QueuedRun:
    """Compute ``method`` maps for ``layers`` on every sample of ``samples``.

    Writes, per layer, a ``fo.Heatmap`` field ``f"{run_key}_{slug(layer)}"``
    covering the whole original image and a float ``..._strength`` field, plus
    ``{run_key}_target``/``{run_key}_prediction`` (``fo.Classification``) and
    ``{run_key}_error`` (str, on failed samples). See docs/ARCHITECTURE.md.

    ``target``: ``"predicted"``, ``"label"`` (the class in ``label_field``), an
    int class index or a class name. Segmentation explains the mask-sum of a
    class over the predicted region, or over ``label_field``'s mask.

    ``delegate=True``: register the run here, then queue ``shards`` (default 1)
    FiftyOne delegated operations over disjoint parts of ``samples`` and return
    a ``QueuedRun`` with their ids at once, computing nothing here. ``model``
    must then be a model source name (workers rebuild the model). Follow with
    ``cam_run_status``. ``shard`` is set by a queued shard's operation.

    Everything that can be checked before the run (model, layers, method,
    label field type, label classes vs the model's classes) is, and raises
    before anything is written. Returns a :class:`CamRunSummary`; raises
    :class:`CamRunFailed` when no attempted sample succeeded.
    """
    call = dict(locals())  # the arguments as given, for delegated workers
    queue = sharding.check_delegation(delegate, shards)
    if queue or shard is not None:
        sharding.check_remote_args(
            model, transforms=transforms, reshape_transform=reshape_transform
        )
    plan = _plan_run(
        samples,
        model,
        layers,
        method,
        run_key,
        task=task,
        target=target,
        label_field=label_field,
        classes=classes,
        transforms=transforms,
        storage=storage,
        output_dir=output_dir,
        max_size=max_size,
        eigen_smooth=eigen_smooth,
        aug_smooth=aug_smooth,
        reshape_transform=reshape_transform,
        batch_size=batch_size,
    )
    if shard is not None:  # one shard of a run its caller registered
        _open_run(plan, overwrite=False, join=True)
        samples = sharding.shard_view(samples, shard)
    elif queue:
        shard_plan = sharding.plan_shards(samples, queue)
        kwargs = sharding.worker_kwargs(
            "compute_cams",
            call,
            layers=plan.config["layers"],
            method=plan.config["method"],
            output_dir=plan.config["output_dir"],
            progress=False,  # workers report through the operation instead
        )
        plan.config["sharding"] = shard_plan
        _open_run(plan, overwrite)  # the run exists before any shard runs
        style_run(plan.dataset, plan.run_key, plan.names)
        return sharding.queue_shards(
            samples, "compute_cams", kwargs, shard_plan, delegation_target
        )
    else:
        _open_run(plan, overwrite)
        style_run(plan.dataset, plan.run_key, plan.names)
    summary = _stream_run(
        plan, samples, batch_size, num_workers, device, progress, progress_callback
    )
    # recorded on the run, so that listings and the App can tell how it went
    # (not by shards: they run at once and report through cam_run_status)
    if shard is None:
        cam_runs._update_config(plan.dataset, plan.run_key, outcome=summary.as_dict())
    if summary.failed:
        raise CamRunFailed(summary)
    return summary


# -- the three steps: plan (no writes), open (register), stream (compute, write) --


@dataclass
class _RunPlan:
    """Everything a run needs, checked before anything is written."""

    dataset: fo.Dataset
    run_key: str
    engine: CamEngine
    transforms: Callable[[Image.Image], torch.Tensor]
    geometry: TransformGeometry
    class_names: list[str] | None
    fixed_class: int | None
    names: FieldNames
    config: dict[str, Any]


def _plan_run(
    samples, model, layers, method, run_key, *, batch_size, **options
) -> _RunPlan:
    """Check the arguments, load the model and build the engine and the config."""
    task, target = options["task"], options["target"]
    label_field, storage = options["label_field"], options["storage"]
    max_size, output_dir = options["max_size"], options["output_dir"]
    cam_runs.validate_run_key(run_key)
    dataset = cam_runs._dataset(samples)
    _check_args(task, target, label_field, storage, batch_size, max_size)
    method_name = method.strip().lower() if isinstance(method, str) else method
    get_method(method_name)  # unknown method: raises listing close names

    loaded = load_model(model)
    module = loaded.module
    transforms = options["transforms"] or loaded.transforms or ResizeNormalize(224)
    # Probes the transforms; random or rotating ones are refused here, before
    # anything is written.
    geometry = TransformGeometry(transforms)
    classes = options["classes"]
    class_names = list(classes) if classes is not None else loaded.classes
    if layers is None:
        layers = loaded.default_layers or default_layers(module)
    engine = CamEngine(
        module,
        layers,
        method_name,
        options["reshape_transform"],
        eigen_smooth=options["eigen_smooth"],
        aug_smooth=options["aug_smooth"],
    )
    layer_list = engine.layer_names
    fixed_class = _fixed_class(target, class_names)
    _check_label_field(samples, task, target, label_field)
    if task == "classification" and target == "label":
        check_label_classes(samples, label_field, class_names)

    names = field_names(run_key, layer_list)
    if storage == "disk" and output_dir is None:
        output_dir = os.path.join(
            fo.config.default_dataset_dir, "cam_runs", dataset.name
        )
    config = {
        "model": loaded.description or type(module).__name__,
        # the name to load it again by (the App reruns and lists runs by it)
        "model_source": model if isinstance(model, str) else None,
        "num_samples": len(samples),
        "layers": layer_list,
        "method": method_name,
        "task": task,
        "target": target,
        "label_field": label_field,
        "classes": _describe_classes(class_names),
        "transforms": _describe(transforms),
        "geometry": geometry.reference(),
        "storage": storage,
        "output_dir": None if output_dir is None else os.path.abspath(output_dir),
        "max_size": int(max_size),
        "eigen_smooth": bool(options["eigen_smooth"]),
        "aug_smooth": bool(options["aug_smooth"]),
        "owned_fields": names.owned,
    }
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


def _open_run(plan: _RunPlan, overwrite: bool, join: bool = False) -> None:
    """Register the run (new, resumed or replaced) and declare its fields.

    ``join``: a shard joins the run its caller registered; it neither creates,
    replaces nor re-registers it, so concurrent shards never race on it.
    """
    config, names = plan.config, plan.names
    resumed = cam_runs.prepare_run(
        plan.dataset,
        plan.run_key,
        config,
        names.owned,
        overwrite,
        (*_RESUME_KEYS, "output_dir"),
    )
    if join:
        if resumed is None:
            raise ValueError(
                f"Run {plan.run_key!r} does not exist on {plan.dataset.name!r}: a "
                "shard only resumes a run registered by compute_cams(delegate=True)"
            )
        config["run_dir"] = resumed.get("run_dir")
        return
    run_dir = None
    if resumed is not None:
        run_dir = resumed.get("run_dir")
        # keep fields added on the run's behalf since (e.g. by score_cams)
        extra = [f for f in resumed.get("owned_fields", []) if f not in names.owned]
        config["owned_fields"] = names.owned + extra
        # and what later steps recorded (scoring settings, saved views, clusters
        # and their brain runs), so that delete_cam_run still finds them
        for key in ("scoring", "saved_views", "clusters", "brain_keys"):
            if key in resumed:
                config.setdefault(key, resumed[key])
    if config["storage"] == "disk" and run_dir is None:
        run_dir = os.path.join(
            config["output_dir"], f"{plan.run_key}-{uuid.uuid4().hex[:12]}"
        )
    config["run_dir"] = run_dir
    cam_runs.register_cam_run(plan.dataset, plan.run_key, **config)
    _declare_fields(plan.dataset, names)


def _stream_run(
    plan: _RunPlan,
    samples,
    batch_size,
    num_workers,
    device,
    progress,
    progress_callback,
) -> CamRunSummary:
    """Compute the samples not done yet, batch by batch, writing each batch in bulk."""
    dataset, names, config = plan.dataset, plan.names, plan.config
    num_samples = len(samples)
    pending = samples.match(~(VF(names.prediction).exists() | VF(names.error).exists()))
    ids, filepaths = pending.values(["id", "filepath"])
    summary = CamRunSummary(
        run_key=plan.run_key,
        fields=dict(zip(config["layers"], names.heatmaps, strict=True)),
        num_samples=num_samples,
        num_computed=0,
        num_skipped=num_samples - len(ids),
        num_errors=0,
        run_dir=config["run_dir"],
        fields_written=list(names.owned),
    )
    labels = label_reader(
        dataset, config["task"], config["target"], config["label_field"]
    )
    workers = default_num_workers() if num_workers is None else int(num_workers)
    loader = torch.utils.data.DataLoader(
        ImageFiles(filepaths, plan.transforms, plan.geometry),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        shuffle=False,
    )
    context = BatchContext(
        engine=plan.engine,
        names=names,
        layers=config["layers"],
        task=config["task"],
        target=config["target"],
        fixed_class=plan.fixed_class,
        class_names=plan.class_names,
        storage=config["storage"],
        run_dir=config["run_dir"],
        max_size=config["max_size"],
    )
    total = len(ids)
    with contextlib.ExitStack() as stack:
        if device is not None:
            stack.enter_context(_on_device(plan.engine.model, torch.device(device)))
        bar = stack.enter_context(fou.ProgressBar(total=total, progress=progress))
        done = 0
        for batch in loader:
            batch_ids = ids[batch.indices[0] : batch.indices[-1] + 1]
            values = batch_field_values(context, batch, batch_ids, labels)
            _write(dataset, values, last=(names.prediction, names.error))
            for sid, message in values[names.error].items():
                summary.add_error(sid, message)
            summary.num_computed += len(batch_ids) - len(values[names.error])
            done += len(batch_ids)
            bar.update(len(batch_ids))
            if progress_callback is not None:
                progress_callback(done, total)
    return summary


# -- arguments -------------------------------------------------------------------


def _check_args(task, target, label_field, storage, batch_size, max_size) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if storage not in STORAGE_MODES:
        raise ValueError(f"storage must be one of {STORAGE_MODES}, got {storage!r}")
    if isinstance(target, bool) or not isinstance(target, str | int | np.integer):
        raise TypeError(
            "target must be 'predicted', 'label', an int class index or a class name, "
            f"got {type(target).__name__}: {target!r}"
        )
    if target == "label" and not label_field:
        raise ValueError("target='label' needs label_field=<name of the label field>")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"max_size must be a positive int, got {max_size!r}")


def _fixed_class(target, class_names) -> int | None:
    """The class index when ``target`` names one class for every sample."""
    if isinstance(target, int | np.integer):
        return int(target)
    if target in ("predicted", "label"):
        return None
    if not class_names or target not in class_names:
        known = "the model has no class names" if not class_names else ""
        import difflib

        close = difflib.get_close_matches(target, class_names or [], n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"target {target!r} is not 'predicted', 'label', an int or a known class "
            f"name{'; ' + known if known else ''}.{hint} Pass classes=[...] to name "
            "the model's classes."
        )
    return list(class_names).index(target)


def _check_label_field(samples, task, target, label_field) -> None:
    if not label_field:
        return
    schema = samples.get_field_schema()
    expected = fo.Classification if task == "classification" else fo.Segmentation
    if label_field not in schema:
        raise ValueError(
            f"label_field {label_field!r} does not exist on this collection; "
            f"{expected.__name__} fields: "
            f"{sorted(samples.get_field_schema(embedded_doc_type=expected))}"
        )
    doc_type = getattr(schema[label_field], "document_type", None)
    if doc_type is not expected:
        raise ValueError(
            f"label_field {label_field!r} holds {getattr(doc_type, '__name__', doc_type)}; "
            f"task={task!r} needs a fo.{expected.__name__} field"
        )
    if task == "classification" and target != "label":
        raise ValueError(
            f"label_field={label_field!r} is only used with target='label' for "
            f"classification (got target={target!r})"
        )


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _describe(obj) -> str:
    """A stable description (no memory addresses), so that a rerun compares equal."""
    if isinstance(obj, types.FunctionType | types.BuiltinFunctionType | type):
        return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    return _ADDRESS.sub("", repr(obj))


def _describe_classes(class_names) -> list[str] | str | None:
    if class_names is None:
        return None
    if len(class_names) <= 50:
        return list(class_names)
    digest = hashlib.sha1("\n".join(map(str, class_names)).encode()).hexdigest()[:12]
    return f"{len(class_names)} classes (sha1 {digest})"


# -- fields and runs ---------------------------------------------------------------


def _declare_fields(dataset, names: FieldNames) -> None:
    schema = dataset.get_field_schema()

    def add(name, ftype, **kwargs):
        if name not in schema:
            dataset.add_sample_field(name, ftype, **kwargs)

    for name in names.heatmaps:
        add(name, fo.EmbeddedDocumentField, embedded_doc_type=fo.Heatmap)
    for name in names.strengths:
        add(name, fo.FloatField)
    for name in (names.target, names.prediction):
        add(name, fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification)
    add(names.error, fo.StringField)
    add(names.seen, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detection)


@contextlib.contextmanager
def _on_device(module: nn.Module, device: torch.device):
    param = next(module.parameters(), None)
    original = param.device if param is not None else torch.device("cpu")
    module.to(device)
    try:
        yield
    finally:
        module.to(original)


def _write(dataset, values: dict[str, dict[str, Any]], last=()) -> None:
    """One bulk write per field for this batch; the fields in ``last`` (those
    that mark a sample done) after all others, so that a batch cut short by a
    dead worker is computed again on resume."""
    order = [n for n in values if n not in last] + [n for n in last if n in values]
    for name in order:
        if values[name]:
            dataset.set_values(name, values[name], key_field="id", validate=False)
