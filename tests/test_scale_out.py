"""One CAM run sharded over two real ``fiftyone delegated launch`` workers on the
test database; one worker is SIGKILLed mid-shard and its shard is recovered with
FiftyOne's CLI (``fiftyone delegated fail`` then ``rerun``).

Every process this test starts is stopped by its id in ``finally``.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import time

import fiftyone as fo
import numpy as np
import pytest
from bson import ObjectId
from fiftyone.operators.delegated import DelegatedOperationService
from PIL import Image
from workers import FIFTYONE, start_worker, stop_worker, worker_env

import gradcam_engine as ge

MODEL = "scale_out_models:build_slow_model"
NUM_SAMPLES, SHARDS, BATCH = 48, 4, 2  # 12 samples = 6 batches of ~1 s per shard


@pytest.fixture(scope="module")
def dataset(tmp_root):
    root = tmp_root / "scale_out"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(NUM_SAMPLES):
        path = root / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
        samples.append(fo.Sample(filepath=str(path)))
    ds = fo.Dataset("cam-scale-out")
    ds.add_samples(samples)
    yield ds
    ds.delete()


def _cli(*args: str) -> str:
    done = subprocess.run(
        [FIFTYONE, "delegated", *args],
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _wait_for(predicate, timeout: float, what: str, logs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    tails = "\n".join(p.read_text()[-2000:] for p in logs)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tails}")


def _current_operation(log_path: pathlib.Path) -> str | None:
    """The operation a worker is running, from its own log."""
    found = re.findall(r"Running operation (\w+)", log_path.read_text())
    return found[-1] if found else None


def test_two_workers_share_a_run_and_a_killed_shard_resumes(dataset, tmp_root):
    service = DelegatedOperationService()
    started = time.monotonic()
    logs = [tmp_root / "scale_out_worker_a.log", tmp_root / "scale_out_worker_b.log"]
    # two workers share 2 cores: one torch thread each; unbuffered logs, read below
    workers = [
        start_worker(path, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1") for path in logs
    ]
    try:
        # both workers up before queueing, so that a slow start (loaded machine)
        # cannot let one worker take every shard
        _wait_for(
            lambda: all("service running" in p.read_text() for p in logs),
            180,
            "both workers to start",
            logs,
        )
        queued = ge.compute_cams(
            dataset,
            MODEL,
            layers=["block"],
            run_key="scaled",
            batch_size=BATCH,
            num_workers=0,
            delegate=True,
            shards=SHARDS,
        )
        assert len(queued.operation_ids) == SHARDS

        def running():
            status = ge.cam_run_status(dataset, "scaled")
            ids = [
                s["operation_id"] for s in status["shards"] if s["state"] == "running"
            ]
            return ids if len(ids) >= 2 else None

        _wait_for(running, 240, "two shards running at the same time", logs)

        def worker_a_mid_shard():
            """Worker A's operation once it has written a batch but at most half
            of its shard (several batches left: the kill lands mid-shard)."""
            op_id = _current_operation(logs[0])
            op = service.get(ObjectId(op_id)) if op_id else None
            if op is None or op.run_state != "running" or op.status is None:
                return None
            return op_id if 0 < op.status.progress <= 0.5 else None

        victim_op = _wait_for(worker_a_mid_shard, 120, "worker A mid-shard", logs)
        os.killpg(workers[0].pid, signal.SIGKILL)
        workers[0].wait()

        status = ge.cam_run_status(dataset, "scaled")
        shard = next(s for s in status["shards"] if s["operation_id"] == victim_op)
        done_at_kill = shard["done"]
        assert 0 < done_at_kill < shard["total"]
        assert shard["state"] == "running"  # stuck: its worker is gone
        assert f"fiftyone delegated fail {victim_op}" in shard["recover"]

        _cli("fail", victim_op)
        out = _cli("rerun", victim_op)
        rerun_op = re.search(r"ID '(\w+)'", out).group(1)

        final = _wait_for(
            lambda: (
                (s := ge.cam_run_status(dataset, "scaled"))["state"] == "completed"
                and s
            ),
            300,
            "every shard to complete",
            logs,
        )
    finally:
        for worker in workers:
            stop_worker(worker)
    elapsed = time.monotonic() - started

    assert (final["total"], final["done"], final["errors"], final["pending"]) == (
        NUM_SAMPLES,
        NUM_SAMPLES,
        0,
        0,
    )
    assert dataset.count("scaled_block") == NUM_SAMPLES
    assert dataset.count("scaled_error") == 0
    assert [s["state"] for s in final["shards"]] == ["completed"] * SHARDS
    killed = next(s for s in final["shards"] if s["operation_id"] == rerun_op)
    assert [op["state"] for op in killed["operations"]] == ["failed", "completed"]
    # the rerun computed only what the killed worker had not finished
    summary = service.get(ObjectId(rerun_op)).result.result["summary"]
    todo = killed["total"] - done_at_kill
    assert f"{todo} computed, {done_at_kill} reused" in summary, summary
    print(f"scale-out test: {elapsed:.0f} s")
