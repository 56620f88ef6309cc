"""Scale-out: one run split into shards, each a FiftyOne delegated operation.

The caller plans and registers the run once, records on it the call its
shards make (``record_call``: function, plain keyword arguments, view), then
queues one delegated operation per shard (operator ``run_cam_shard`` of this
plugin) with FiftyOne's own ``DelegatedOperationService``. An operation's
parameters only say which shard of which recorded call it is
(``SHARD_PARAMS``); ``shard_worker.run_shard`` verifies them against the run
and rebuilds the call from the record. Any ``fiftyone delegated launch`` worker (or
an Enterprise orchestrator) on the same database picks them up. A shard is the
view's samples whose id lies in a half-open range of sorted ids fixed at queue
time, so the shards cover the view exactly once and a rerun
(``fiftyone delegated rerun <id>``) gets the same samples; as runs resume, it
computes only those not done yet.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fiftyone.core.collections as foc
from bson import ObjectId, json_util

from .cam_runs import root_dataset
from .outcome import exact_count

__all__ = [
    "PLUGIN_NAME",
    "SHARD_OPERATOR",
    "QueuedRun",
    "check_delegation",
    "check_remote_args",
    "plan_shards",
    "record_call",
    "shard_view",
    "worker_kwargs",
    "queue_shards",
    "shard_operations",
]

PLUGIN_NAME = "@cam-audit/cam-audit"
SHARD_OPERATOR = f"{PLUGIN_NAME}/run_cam_shard"
FUNCTIONS = ("compute_cams", "score_cams")
# A queued shard operation's parameters: exactly these, nothing else.
SHARD_PARAMS = frozenset({"function", "run_key", "token", "shard"})
# Arguments that only concern the queueing process, never sent to workers.
LOCAL_ONLY = frozenset(
    {
        "samples",
        "overwrite",
        "progress",
        "progress_callback",
        "delegate",
        "shards",
        "delegation_target",
        "transforms",
    }
)
_EPOCH = datetime(1970, 1, 1)


@dataclass
class QueuedRun:
    """What ``compute_cams`` / ``score_cams`` with ``delegate=True`` queued."""

    run_key: str
    function: str
    token: str  # identifies this queueing's shards among the run's operations
    operation_ids: list[str]
    # overwrite: the run that ``run_key`` (a temporary key) replaces once every
    # shard has completed; until then the old run stays as it was
    replaces: str | None = None

    def __str__(self) -> str:
        replacing = (
            f" (replaces {self.replaces!r} once every shard has completed)"
            if self.replaces
            else ""
        )
        return (
            f"{self.function} {self.run_key!r}{replacing}: {len(self.operation_ids)} "
            f"delegated shard(s) queued ({', '.join(self.operation_ids)}); run "
            "workers with `fiftyone delegated launch` and follow with "
            f"cam_run_status(samples, {self.run_key!r})"
        )


def check_delegation(delegate: bool, shards: int | None) -> int:
    """The number of delegated shards to queue; 0 means compute here."""
    if not isinstance(delegate, bool):
        raise TypeError(f"delegate must be True or False, got {delegate!r}")
    if shards is not None and (
        isinstance(shards, bool) or not isinstance(shards, int) or shards < 1
    ):
        raise ValueError(f"shards must be a positive int, got {shards!r}")
    if shards is not None and not delegate:
        raise ValueError(
            f"shards={shards} needs delegate=True: shards are delegated operations "
            "run by `fiftyone delegated launch` workers"
        )
    return (shards or 1) if delegate else 0


def check_remote_args(model: Any, **callables: Any) -> None:
    """Workers rebuild everything from the queued parameters: refuse objects."""
    if not isinstance(model, str):
        raise TypeError(
            f"model must be a model source name with delegate=True (workers rebuild "
            f"the model from it), got {type(model).__name__}; register the model "
            "with register_model_source(name, loader) or pass "
            "'package.module:function'"
        )
    for name, value in callables.items():
        if value is not None and not isinstance(value, str):
            raise TypeError(
                f"{name} cannot be sent to delegated workers (got "
                f"{type(value).__name__}); let the model source provide it, or "
                "pass delegate=False"
            )


def plan_shards(samples: foc.SampleCollection, count: int) -> dict[str, Any]:
    """``count`` shards of ``samples`` by sorted sample id, plus a fresh token.

    Shard ``i`` holds the ids in ``[start, stop)``; the first shard is open
    below and the last above, so the shards cover every sample of the view,
    also samples added later.
    """
    total = exact_count(samples)  # not the fast count: see outcome.exact_count
    if total == 0:
        raise ValueError("samples is empty: there is nothing to shard")
    if count > total:
        raise ValueError(
            f"shards={count} is more than the {total} samples of the view; "
            f"use shards <= {total}"
        )
    # count - 1 indexed lookups instead of reading every id (10^7 samples)
    by_id = samples.sort_by("_id")
    starts = [None] + [
        by_id.skip(total * i // count).limit(1).values("id")[0] for i in range(1, count)
    ]
    starts.append(None)
    return {
        "token": uuid.uuid4().hex[:12],
        "count": count,
        "shards": [
            {
                "index": i,
                "count": count,
                "start": starts[i],
                "stop": starts[i + 1],
            }
            for i in range(count)
        ],
    }


def shard_view(samples: foc.SampleCollection, shard: dict[str, Any]):
    """The samples of ``samples`` that belong to ``shard``."""
    if not isinstance(shard, dict) or not {"index", "start", "stop"} <= set(shard):
        raise ValueError(
            f"shard must be a dict with 'index', 'start' and 'stop' as made by "
            f"plan_shards, got {shard!r}"
        )
    bounds = {}
    if shard["start"]:
        bounds["$gte"] = ObjectId(shard["start"])
    if shard["stop"]:
        bounds["$lt"] = ObjectId(shard["stop"])
    # a $match on _id uses the _id index
    return samples.mongo([{"$match": {"_id": bounds}}]) if bounds else samples.view()


def worker_kwargs(function: str, call: dict[str, Any], **resolved: Any) -> dict:
    """The arguments each shard calls ``function`` with: those of ``call`` (the
    caller's arguments) that workers need, JSON-safe, updated with ``resolved``
    (values the caller's plan fixed, e.g. the default layers it picked)."""
    if function not in FUNCTIONS:
        raise ValueError(f"function must be one of {FUNCTIONS}, got {function!r}")
    kwargs = {k: _plain(v) for k, v in call.items() if k not in LOCAL_ONLY}
    kwargs.update(resolved)
    try:
        json.dumps(kwargs)
    except TypeError as exc:
        raise TypeError(
            f"{function} arguments must be plain values to queue them for "
            f"delegated workers: {exc}"
        ) from exc
    return kwargs


def record_call(
    plan: dict[str, Any],
    function: str,
    kwargs: dict[str, Any],
    samples: foc.SampleCollection,
) -> dict[str, Any]:
    """``plan`` plus the call its shards make: ``function(view, **kwargs)``
    (``kwargs`` from ``worker_kwargs``) over the serialized ``samples`` view.
    The caller stores it on the run before queueing (``queue_shards``)."""
    if function not in FUNCTIONS:
        raise ValueError(f"function must be one of {FUNCTIONS}, got {function!r}")
    # a JSON string: stored as dicts, the stages' "_cls" keys would be read
    # back as document classes by the run config's loader
    view = json_util.dumps(samples.view()._serialize())
    return dict(plan, call=dict(function=function, kwargs=kwargs, view=view))


def queue_shards(
    samples: foc.SampleCollection,
    function: str,
    run_key: str,
    plan: dict[str, Any],
    delegation_target: str | None = None,
) -> QueuedRun:
    """Queue one delegated ``run_cam_shard`` operation per shard of ``plan``,
    whose call is already recorded on run ``run_key`` (``record_call``); an
    operation's parameters only name its shard (``SHARD_PARAMS``)."""
    from fiftyone.operators.delegated import DelegatedOperationService

    dataset = root_dataset(samples)
    view = samples.view()._serialize()
    service = DelegatedOperationService()
    ids = []
    for shard in plan["shards"]:
        params = dict(
            function=function,
            run_key=run_key,
            token=plan["token"],
            shard=shard["index"],
        )
        # Queued directly (not through foo.execute_operator): works inside a
        # running event loop (notebooks) and returns the ids at once.
        op = service.queue_operation(
            operator=SHARD_OPERATOR,
            label=f"{function} {run_key} shard {shard['index'] + 1}/{shard['count']}",
            delegation_target=delegation_target,
            context=dict(
                request_params=dict(
                    dataset_name=dataset.name,
                    view=view,
                    params=params,
                    delegated=True,
                    delegation_target=delegation_target,
                )
            ),
        )
        ids.append(str(op.id))
    return QueuedRun(
        run_key=run_key, function=function, token=plan["token"], operation_ids=ids
    )


def _plain(value: Any) -> Any:
    """JSON-safe form of an argument: numpy scalars, tuples, torch devices."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()  # numpy scalar
    if type(value).__name__ == "device":
        return str(value)  # torch.device
    return value  # json.dumps names what cannot be sent


def shard_operations(dataset, token: str, record: dict | None = None) -> dict:
    """The delegated operations of each shard of one queueing, oldest first
    (a rerun adds a new operation for the same shard). With the queueing's
    ``record`` (``record_call``), only operations for its recorded call count:
    anyone can queue an operation that quotes a token."""
    from fiftyone.operators.delegated import DelegatedOperationService

    match = {"context.request_params.params.token": token}
    call = (record or {}).get("call")
    if call:
        match["context.request_params.params.function"] = call["function"]
        match["context.request_params.params.run_key"] = call["kwargs"]["run_key"]
    ops = DelegatedOperationService().list_operations(
        operator=SHARD_OPERATOR, dataset_name=dataset.name, **match
    )
    by_shard: dict[int, list] = {}
    for op in sorted(ops, key=lambda op: (op.queued_at or _EPOCH, str(op.id))):
        params = op.context.request_params["params"]
        if call and set(params) != SHARD_PARAMS:
            continue  # not one the shard operator would run
        index = params["shard"]
        if isinstance(index, dict):  # queued before shards named only their index
            index = index.get("index")
        by_shard.setdefault(index, []).append(op)
    return by_shard
