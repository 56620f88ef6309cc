"""One queued shard of a delegated run, rebuilt from what its run recorded.

Anyone who can queue an operation (an App user, through
``foo.execute_operator``) can queue ``run_cam_shard`` with any parameters, and
``fiftyone delegated rerun`` copies them. So a shard's parameters only say
which shard it is (``sharding.SHARD_PARAMS``): the run must exist, its
recorded token must match, and the call (function, keyword arguments, view)
comes from the run's config, all checked before anything is loaded. The
recorded call was made by a trusted caller (Python, or an operator that
applied ``trust``'s checks), so it keeps that caller's ``allow_pickle``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fiftyone.core.collections as foc
import fiftyone.core.view as fov
from bson import json_util

from . import cam_runs
from .sharding import FUNCTIONS, SHARD_PARAMS
from .trust import register_admin_sources

__all__ = ["RecordedShard", "check_params", "recorded_shard", "run_shard"]

_TOKEN = re.compile(r"[0-9a-f]{1,32}")
# function -> (module, its shard entry point); score_cams lives in audit/,
# above runs/, so it is imported by name when a shard needs it
_RUNNERS = {
    "compute_cams": ("gradcam_engine.runs.compute", "compute_shard"),
    "score_cams": ("gradcam_engine.audit.scoring", "score_shard"),
}


@dataclass
class RecordedShard:
    """What a verified shard runs: ``function(view, **kwargs)`` on ``shard``."""

    function: str
    run_key: str
    kwargs: dict[str, Any]
    view: foc.SampleCollection
    shard: dict[str, Any]


def check_params(params: dict[str, Any]) -> tuple[str, str, str, int]:
    """A shard operation's parameters, exactly ``SHARD_PARAMS`` with plain
    values: ``(function, run_key, token, index)``."""
    if not isinstance(params, dict):
        raise TypeError(f"shard params must be a dict, got {type(params).__name__}")
    extra, missing = set(params) - SHARD_PARAMS, SHARD_PARAMS - set(params)
    if extra or missing:
        raise ValueError(
            f"a shard operation takes exactly the params {sorted(SHARD_PARAMS)}; "
            f"got unexpected {sorted(extra)} and missing {sorted(missing)}. Shards "
            "are queued by compute_cams / score_cams with delegate=True and run "
            "what their run recorded"
        )
    function, run_key = params["function"], params["run_key"]
    token, index = params["token"], params["shard"]
    if function not in FUNCTIONS:
        raise ValueError(f"function must be one of {FUNCTIONS}, got {function!r}")
    cam_runs.validate_run_key(run_key)
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise ValueError(f"token must be a shard token (hex), got {token!r}")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"shard must be a shard index (int >= 0), got {index!r}")
    return function, run_key, token, index


def recorded_shard(
    samples: foc.SampleCollection,
    run_key: str,
    token: str,
    index: int,
    function: str | None = None,
) -> RecordedShard:
    """Verify that run ``run_key`` exists on ``samples``' dataset and recorded
    shards under ``token`` (for ``function`` when given), and return its
    recorded call for shard ``index``. Loads nothing."""
    dataset = cam_runs.root_dataset(samples)
    dataset.reload()  # the run's latest config (queued by another process)
    if run_key not in cam_runs.list_cam_runs(dataset):
        raise ValueError(
            f"Run {run_key!r} does not exist on {dataset.name!r}: a shard only "
            "resumes a run registered by compute_cams(delegate=True)"
        )
    config = cam_runs.get_cam_run(dataset, run_key).config
    records = {
        "compute_cams": config.get("sharding"),
        "score_cams": (config.get("scoring") or {}).get("sharding"),
    }
    found = [
        (name, record)
        for name, record in records.items()
        if isinstance(record, dict) and record.get("token") == token
    ]
    if not found:
        raise ValueError(
            f"token {token!r} does not match shards recorded on run {run_key!r}: "
            "it was queued for another run, or the run was queued again since"
        )
    name, record = found[0]
    call = record.get("call")
    if function is not None and function != name:
        raise ValueError(
            f"token {token!r} belongs to {name} shards of run {run_key!r}, not "
            f"{function}"
        )
    if not isinstance(call, dict) or call.get("function") != name:
        raise ValueError(
            f"run {run_key!r} recorded no {name} call for its shards (queued by an "
            "older version?): queue it again with delegate=True"
        )
    shards = record.get("shards") or []
    if index >= len(shards):
        raise ValueError(
            f"shard {index} does not exist: run {run_key!r} was queued in "
            f"{len(shards)} shard(s)"
        )
    view = fov.DatasetView._build(dataset, json_util.loads(call.get("view") or "[]"))
    return RecordedShard(name, run_key, dict(call["kwargs"]), view, shards[index])


def run_shard(
    samples: foc.SampleCollection,
    run_key: str,
    token: str,
    index: int,
    progress: Callable[[int, int], Any] | None = None,
    function: str | None = None,
):
    """Run shard ``index`` of the shards run ``run_key`` recorded under
    ``token`` (see the module docstring); ``progress(done, total)``."""
    shard = recorded_shard(samples, run_key, token, index, function)
    register_admin_sources()  # the run may name a source the admin registers
    module, entry = _RUNNERS[shard.function]
    runner = getattr(importlib.import_module(module), entry)
    return runner(shard.view, shard.kwargs, shard.shard, progress)
