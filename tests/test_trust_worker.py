"""The trust boundary on a real ``fiftyone delegated launch`` worker: operations
an App user queues by hand (``foo.execute_operator`` with delegation, or
straight into the queue) run nothing they name: no import (a module that
writes a marker when imported), no pickle payload, no run. What the App queues
legitimately (a sharded run of a registered source, disk storage under the
dataset directory) completes.
"""

from __future__ import annotations

import os
import pathlib
import time

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from bson import ObjectId
from fiftyone.operators.delegated import DelegatedOperationService
from test_operators import APP_MODEL, make_dataset, uri
from test_trust import evil_checkpoint, nothing_registered
from workers import TESTS, start_worker, stop_worker

import gradcam_engine as ge

MARKER_MODULE = "cam_trust_marker"


@pytest.fixture(scope="module")
def dataset(tmp_root):
    ds = make_dataset(tmp_root / "images", "cam-trust-worker")
    yield ds
    ds.delete()


@pytest.fixture(scope="module")
def marker_module(tmp_root) -> pathlib.Path:
    """A module on the worker's path that leaves a file when it is imported."""
    directory = tmp_root / "marker_module"
    directory.mkdir()
    marker = directory / "imported.marker"
    (directory / f"{MARKER_MODULE}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\ndef build():\n    return None\n"
    )
    return marker


@pytest.fixture(scope="module")
def worker(tmp_root, marker_module):
    log = tmp_root / "trust_worker.log"
    path = [str(marker_module.parent), str(TESTS), os.environ.get("PYTHONPATH", "")]
    process = start_worker(log, PYTHONPATH=os.pathsep.join(path))
    try:
        yield log
    finally:
        stop_worker(process)


def _finished(op_ids, log: pathlib.Path, timeout: float = 300) -> dict:
    """Wait for the operations to end; {id: operation}."""
    service = DelegatedOperationService()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ops = {i: service.get(ObjectId(i)) for i in op_ids}
        if all(op.run_state in ("completed", "failed") for op in ops.values()):
            return ops
        time.sleep(0.5)
    raise AssertionError(f"operations still running\n{log.read_text()[-3000:]}")


def _queue_raw(ds, operator: str, params: dict) -> str:
    """An operation put straight into the queue, as a client that skips the
    App's form validation could (a worker must still refuse it)."""
    op = DelegatedOperationService().queue_operation(
        operator=uri(operator),
        context=dict(
            request_params=dict(
                dataset_name=ds.name,
                view=ds.view()._serialize(),
                params=params,
                delegated=True,
            )
        ),
    )
    return str(op.id)


def _queue_app(ds, operator: str, params: dict) -> str:
    result = foo.execute_operator(
        uri(operator),
        ctx=dict(view=ds.view(), params=params),
        request_delegation=True,
    )
    result.raise_exceptions()
    return str(result.result["id"])


def test_hostile_operations_run_nothing_on_the_worker(
    dataset, tmp_root, worker, marker_module
):
    path, pickle_marker = evil_checkpoint(tmp_root / "evil_worker", "worker")
    outside = tmp_root / "worker_outside"
    disk = dict(model=APP_MODEL, layers=["block"], storage="disk")
    huge = "a" * 100_000
    # the App's own path refuses them at queue time: nothing is queued
    for params in (
        dict(model=f"{MARKER_MODULE}:build"),
        dict(disk, run_key="outside", output_dir=str(outside)),
        dict(model=APP_MODEL, run_key=huge),
    ):
        with pytest.raises(Exception, match="[Vv]alidation"):
            _queue_app(dataset, "compute_cams", params)

    # a legitimate sharded run, queued from the App with a hostile extra param
    foo.execute_operator(
        uri("compute_cams"),
        ctx=dict(
            view=dataset.view(),
            params=dict(
                model=APP_MODEL,
                layers=["block"],
                run_key="legit",
                batch_size=2,
                shards=2,
                allow_pickle=True,
            ),
        ),
    ).raise_exceptions()
    record = ge.get_cam_run(dataset, "legit").config["sharding"]
    assert record["call"]["kwargs"]["allow_pickle"] is False
    token = record["token"]

    shard = dict(function="compute_cams", run_key="legit", token=token, shard=0)
    hostile = [
        _queue_raw(dataset, "compute_cams", dict(model=f"{MARKER_MODULE}:build")),
        _queue_raw(dataset, "compute_cams", dict(model="this:x", run_key="zen")),
        _queue_raw(
            dataset, "compute_cams", dict(disk, run_key="out", output_dir=str(outside))
        ),
        _queue_raw(dataset, "compute_cams", dict(model=APP_MODEL, run_key=huge)),
        # the old shard format: kwargs straight into compute_cams
        _queue_app(
            dataset,
            "run_cam_shard",
            dict(
                function="compute_cams",
                run_key="ghost",
                token="0" * 12,
                shard=dict(index=0, count=1, start=None, stop=None),
                kwargs=dict(model=path, allow_pickle=True, run_key="ghost"),
            ),
        ),
        # a real run and token, with a call of its own
        _queue_app(
            dataset,
            "run_cam_shard",
            dict(shard, kwargs=dict(model=path, allow_pickle=True)),
        ),
        _queue_app(dataset, "run_cam_shard", dict(shard, token="1" * 12)),
        _queue_app(dataset, "run_cam_shard", dict(shard, run_key="ghost")),
    ]
    ops = _finished(hostile, worker)
    states = {
        i: (op.run_state, str(op.result and op.result.error)) for i, op in ops.items()
    }
    assert all(state == "failed" for state, _ in states.values()), states
    errors = [error for _, error in states.values()][4:]  # the shard operations
    assert "unexpected ['kwargs']" in errors[0] and "unexpected ['kwargs']" in errors[1]
    assert "does not match shards recorded" in errors[2]
    assert "does not exist" in errors[3]
    assert not marker_module.exists() and not pickle_marker.exists()
    assert not outside.exists()
    assert not [key for key in dataset.list_runs() if len(key) > 64]
    assert "Beautiful is better than ugly" not in worker.read_text()
    for key in ("ghost", "zen", "out"):
        assert nothing_registered(dataset, key)
    # operations that quote the run's token are not its shards' operations
    status = ge.cam_run_status(dataset, "legit")
    listed = {o["id"] for s in status["shards"] for o in s["operations"]}
    assert len(listed) == 2 and not listed & set(hostile)


def test_legitimate_app_operations_complete_on_the_worker(dataset, worker):
    # the legitimate run's shards (queued by the App in the test above)
    ops = [op["operation_id"] for op in ge.cam_run_status(dataset, "legit")["shards"]]
    home = pathlib.Path(fo.config.default_dataset_dir)
    ops.append(
        _queue_app(
            dataset,
            "compute_cams",
            dict(
                model=APP_MODEL,
                layers=["block"],
                run_key="disk_worker",
                batch_size=2,
                storage="disk",
                output_dir=str(home / "worker_pngs"),
            ),
        )
    )
    done = _finished(ops, worker)
    assert {op.run_state for op in done.values()} == {"completed"}, [
        op.result and op.result.error for op in done.values()
    ]
    dataset.reload()
    assert dataset.count("legit_block") == len(dataset)
    assert ge.cam_run_status(dataset, "legit")["state"] == "completed"
    paths = dataset.values("disk_worker_block.map_path")
    assert all(p.startswith(str(home / "worker_pngs")) for p in paths)
