"""``cam_run_status``: how far a CAM run is, per shard when it was delegated."""

from __future__ import annotations

from typing import Any

import fiftyone.core.collections as foc
from fiftyone import ViewField as VF

from . import cam_runs
from .frame_fields import is_frames
from .live import live_holders
from .naming import field_names, frame_path, spread_field
from .outcome import exact_count
from .record import own_samples
from .sharding import shard_operations, shard_view

__all__ = ["cam_run_status"]

_ACTIVE = ("queued", "scheduled", "running")


def cam_run_status(samples: foc.SampleCollection, run_key: str) -> dict[str, Any]:
    """Counts of the run ``run_key`` on ``samples`` and the state of its shards.

    Returns ``total``, ``done`` (samples with maps), ``errors`` (samples whose
    ``{run_key}_error`` is set), ``pending`` (neither), ``live`` (the
    processes computing the run now, e.g. ``["pid 12 on host"]``) and
    ``shards``: for a
    delegated run, one dict per shard with its id range, the same counts within
    ``samples``, ``state`` and ``operation_id`` of its latest delegated
    operation, every ``operations`` entry (a rerun adds one) and ``recover``:
    the FiftyOne CLI commands that bring a dead or failed shard back. When
    ``score_cams`` was delegated, ``scoring_shards`` lists its shards likewise.
    """
    info = cam_runs.get_cam_run(samples, run_key)
    status: dict[str, Any] = {"run_key": run_key, **_counts(samples, info)}
    status["live"] = live_holders(info.config)  # processes computing it now
    status["shards"] = _shards(samples, info, info.config.get("sharding"), _counts)
    scoring = info.config.get("scoring") or {}
    if scoring.get("sharding"):
        status["scoring_shards"] = _shards(
            samples, info, scoring["sharding"], _scored_counts(scoring)
        )
    states = [s["state"] for s in status["shards"]]
    status["state"] = _overall(status["pending"], states)
    return status


def _counts(samples, info: cam_runs.CamRunInfo) -> dict[str, int]:
    if info.config.get("frames") and not is_frames(samples):
        return _frame_counts(samples, info)
    total = exact_count(samples)
    # samples of this run instance only (not of a deleted run of the same key)
    own = own_samples(
        samples,
        field_names(info.run_key, info.layers, info.config.get("task")),
        info.instance,
    )
    done = own.count(info.prediction_field)
    errors = own.count(info.error_field)
    return {
        "total": total,
        "done": done,
        "errors": errors,
        "pending": max(0, total - done - errors),
    }


def _frame_counts(samples, info: cam_runs.CamRunInfo) -> dict[str, int]:
    """A frames run read on its video collection: the frames with an image
    file (those a frames view holds) are its samples."""
    total = samples.count("frames.filepath")
    instance = field_names(info.run_key, [], info.config.get("task")).instance
    own = samples.match_frames(VF(instance) == info.instance)
    done = own.count(frame_path(info.prediction_field))
    errors = own.count(frame_path(info.error_field))
    pending = max(0, total - done - errors)
    return {"total": total, "done": done, "errors": errors, "pending": pending}


def _scored_counts(scoring: dict[str, Any]):
    def counts(samples, info: cam_runs.CamRunInfo) -> dict[str, int]:
        # every scored sample with a map gets F_spread of the first scored layer
        first = info.fields[scoring["layers"][0]]
        total, done = exact_count(samples), samples.count(spread_field(first))
        return {"total": total, "done": done, "pending": max(0, total - done)}

    return counts


def _shards(samples, info, sharding, counts) -> list[dict[str, Any]]:
    if not sharding:
        return []
    dataset = cam_runs.root_dataset(samples)
    by_shard = shard_operations(dataset, sharding["token"], sharding)
    rows = []
    for shard in sharding["shards"]:
        ops = by_shard.get(shard["index"], [])
        latest = ops[-1] if ops else None
        row = {
            "index": shard["index"],
            "start": shard["start"],
            "stop": shard["stop"],
            **counts(shard_view(samples, shard), info),
            "state": latest.run_state if latest else "missing",
            "operation_id": str(latest.id) if latest else None,
            "progress": getattr(latest.status, "progress", None) if latest else None,
            "operations": [
                {"id": str(op.id), "state": op.run_state, "label": op.label}
                for op in ops
            ],
        }
        row["recover"] = _recover(row)
        rows.append(row)
    return rows


def _recover(row: dict[str, Any]) -> str | None:
    """The FiftyOne CLI commands that resume this shard, if it needs them."""
    op_id, state = row["operation_id"], row["state"]
    if op_id is None:
        return None
    if state == "running":
        return (
            f"if its worker died: fiftyone delegated fail {op_id} && "
            f"fiftyone delegated rerun {op_id}"
        )
    if state == "failed" or (state == "completed" and row["pending"]):
        return f"fiftyone delegated rerun {op_id}"
    return None


def _overall(pending: int, states: list[str]) -> str:
    if any(state in _ACTIVE for state in states):
        return "running" if "running" in states else "queued"
    if "failed" in states:
        return "failed"
    return "completed" if pending == 0 else "incomplete"
