"""The sharded side of ``compute_cams`` (``delegate=True, shards=N``): queue
the shards of a registered run, and after each shard decide whether the run is
complete (``compute.py`` plans and opens the run; ``sharding.py`` splits,
records and queues)."""

from __future__ import annotations

from . import cam_runs, registration, sharding
from .app_look import style_run
from .batch_fields import field_names
from .outcome import exact_count
from .record import own_samples

__all__ = ["queue_run", "finish_if_complete"]


def queue_run(plan, samples, call, opened, shard_plan, delegation_target):
    """Queue the shards of ``shard_plan`` that compute the run ``opened``
    (registered here, or its replacement); the last shard to complete swaps
    a replacement in."""
    with registration.replacement(plan.dataset, opened):  # removed if queueing fails
        kwargs = sharding.worker_kwargs(
            "compute_cams",
            call,
            run_key=opened.run_key,  # a replacement's shards write its temporary key
            layers=plan.config["layers"],
            method=plan.config["method"],
            output_dir=plan.config["output_dir"],
        )
        # the shards run this record, never what their operations' params say
        record = sharding.record_call(shard_plan, "compute_cams", kwargs, samples)
        cam_runs.update_run_config(plan.dataset, opened.run_key, sharding=record)
        style_run(
            plan.dataset,
            opened.run_key,
            field_names(opened.run_key, plan.config["layers"], plan.config["task"]),
        )
        queued = sharding.queue_shards(
            samples, "compute_cams", opened.run_key, shard_plan, delegation_target
        )
    registration.hand_over(opened)  # its shards compute it and swap it in
    queued.replaces = None if opened.run_key == opened.final_key else opened.final_key
    return queued


def finish_if_complete(plan, opened, queued_samples) -> None:
    """After a shard: release the run; once no sample of the queued view is
    pending and one has maps, swap a replacement in (the shards finish in any
    order; the swap happens once, under the run's lock)."""
    if opened.run_key == opened.final_key:
        registration.finish_run(plan.dataset, opened)
        return
    own = own_samples(queued_samples, plan.names, opened.instance)
    done = own.count(plan.names.prediction)
    errors = own.count(plan.names.error)
    pending = exact_count(queued_samples) - done - errors
    if done and not pending:
        key = registration.finish_run(plan.dataset, opened)
        names = field_names(key, plan.config["layers"], plan.config["task"])
        style_run(plan.dataset, key, names)
    else:
        registration.hand_over(opened)
