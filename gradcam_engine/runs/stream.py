"""The streaming step of ``compute_cams``: the samples not done yet -> decoded
batches -> the engine -> one bulk write per batch.

Images are decoded by a torch DataLoader: in worker processes when there are
cores to spare, else in this process (see :func:`loader_workers`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fiftyone.core.utils as fou
import torch
from torch import nn

from ..sources.images import ImageFiles, collate
from .batch_fields import BatchContext, batch_field_values, label_reader
from .detections import detection_field_values
from .frame_fields import is_frames
from .multilabel import multilabel_field_values
from .outcome import CamRunSummary, exact_count
from .plan import RunPlan as _RunPlan
from .record import done_expression
from .writes import set_fields

__all__ = ["StreamOptions", "loader_workers", "stream_run"]


@dataclass
class StreamOptions:
    """How ``compute_cams`` streams: its arguments of the same names."""

    batch_size: int = 16
    num_workers: int | None = None
    device: str | torch.device | None = None
    progress: bool = True
    progress_callback: Callable[[int, int], Any] | None = None
    retry_errors: bool = True


def loader_workers(model: nn.Module, requested: int | None = None) -> int:
    """DataLoader worker processes: ``requested``, or by default up to 2 on the
    cores that torch's CPU threads leave free.

    A CPU engine runs ``torch.get_num_threads()`` OpenMP threads; a worker that
    takes one of their cores makes the others wait at every barrier. On 2
    cores with 2 torch threads, 2 workers made the engine ~1.3x slower for
    ~0.4 s of decoding they did (ResNet-50, 48 photos), while decoding here
    costs ~6 ms an image. A GPU engine leaves the CPU to the workers.
    """
    if requested is not None:
        return int(requested)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    param = next(model.parameters(), None)
    on_cpu = param is None or param.device.type == "cpu"
    free = cpus - torch.get_num_threads() if on_cpu else cpus
    return max(0, min(2, free))


def stream_run(plan: _RunPlan, samples, options: StreamOptions) -> CamRunSummary:
    """Compute the samples not done yet (and, with ``retry_errors``, the failed
    ones), batch by batch, writing each batch in bulk."""
    names = plan.names
    instance = plan.config.get("instance")
    pending = samples.match(~done_expression(names, instance, options.retry_errors))
    ids, filepaths, old_errors = pending.values(["id", "filepath", names.error])
    retried = {sid for sid, err in zip(ids, old_errors, strict=True) if err}
    summary = _empty_summary(plan, exact_count(samples), len(ids))
    with contextlib.ExitStack() as stack:
        if options.device is not None:
            device = torch.device(options.device)
            stack.enter_context(_on_device(plan.engine.model, device))
        loader = torch.utils.data.DataLoader(
            ImageFiles(filepaths, plan.transforms, plan.geometry),
            batch_size=options.batch_size,
            num_workers=loader_workers(plan.engine.model, options.num_workers),
            collate_fn=collate,
            shuffle=False,
            # page-locked batches: the copy to the GPU runs asynchronously
            pin_memory=plan.engine.device.type == "cuda",
        )
        total = len(ids)
        bar = stack.enter_context(
            fou.ProgressBar(total=total, progress=options.progress)
        )
        # a frames view's samples are generated: read and write through it
        target = samples if is_frames(samples) else plan.dataset
        context, labels = _batch_context(plan), _labels(plan, target)
        field_values = {
            "detection": detection_field_values,
            "multilabel": multilabel_field_values,
        }.get(plan.config["task"], batch_field_values)
        done = 0
        for batch in loader:
            batch_ids = ids[batch.indices[0] : batch.indices[-1] + 1]
            values = field_values(context, batch, batch_ids, labels)
            _record(summary, values[names.error], batch_ids, retried)
            if plan.live is not None:  # deleted or renamed meanwhile: stop
                plan.live.check()
            values[names.instance] = {sid: instance for sid in batch_ids}
            _write(target, values)
            done += len(batch_ids)
            bar.update(len(batch_ids))
            if options.progress_callback is not None:
                options.progress_callback(done, total)
    summary.batch_size, summary.oom_backoffs = options.batch_size, context.oom_backoffs
    summary.batch_size_used = context.chunk or options.batch_size
    return summary


def _empty_summary(plan: _RunPlan, num_samples: int, pending: int) -> CamRunSummary:
    config, names = plan.config, plan.names
    # samples added between the two reads are pending, never "-n reused"
    num_samples = max(num_samples, pending)
    return CamRunSummary(
        run_key=plan.run_key,
        fields=dict(zip(config["layers"], names.heatmaps, strict=True)),
        num_samples=num_samples,
        num_computed=0,
        num_skipped=num_samples - pending,
        num_errors=0,
        run_dir=config["run_dir"],
        fields_written=list(names.owned),
    )


def _batch_context(plan: _RunPlan) -> BatchContext:
    config = plan.config
    return BatchContext(
        engine=plan.engine,
        names=plan.names,
        layers=config["layers"],
        task=config["task"],
        target=config["target"],
        fixed_class=plan.fixed_class,
        class_names=plan.class_names,
        storage=config["storage"],
        run_dir=config["run_dir"],
        max_size=config["max_size"],
        threshold=(config.get("multilabel") or {}).get("threshold", 0.5),
    )


def _labels(plan: _RunPlan, samples):
    config = plan.config
    return label_reader(
        samples, config["task"], config["target"], config["label_field"]
    )


def _record(summary: CamRunSummary, errors: dict, batch_ids, retried: set) -> None:
    """Count the batch; a retried sample that now succeeds loses its old error
    (``errors`` gets ``None`` for it, so that the write clears the field)."""
    errors.update({s: None for s in retried.intersection(batch_ids) - set(errors)})
    for sid, message in errors.items():
        if message is not None:
            summary.add_error(sid, message)
    summary.num_computed += sum(errors.get(sid) is None for sid in batch_ids)


@contextlib.contextmanager
def _on_device(module: nn.Module, device: torch.device):
    param = next(module.parameters(), None)
    original = param.device if param is not None else torch.device("cpu")
    module.to(device)
    try:
        yield
    finally:
        module.to(original)


def _write(dataset, values: dict[str, dict[str, Any]]) -> None:
    """One bulk write for this batch: every field of a sample in one update, so
    that a batch cut short by a dead worker leaves each sample either done
    (prediction or error set, with its maps) or to be computed again."""
    updates: dict[str, dict[str, Any]] = {}
    for name, by_id in values.items():
        for sid, value in by_id.items():
            updates.setdefault(sid, {})[name] = value
    if updates:
        set_fields(dataset, updates)
