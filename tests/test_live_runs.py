"""A run being computed is live: two real processes on one real dataset.

One process computes a CAM run (``live_compute.py``: it holds still after a
given batch write, its lease renewed, until this process opens a gate file, so
the run is live for as long as the test needs and not longer); this process
deletes, renames, scores or overwrites it meanwhile, through this library and through
FiftyOne's own ``delete_run`` / ``rename_run``. Every process a test starts is
stopped by its id.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

import fiftyone as fo
import fiftyone.core.odm as fodb
import numpy as np
import pytest
from live_compute import compute, slow_model
from PIL import Image
from workers import TESTS, worker_env

import gradcam_engine as ge
from gradcam_engine.runs.live import RunIsLive, live_holders
from gradcam_engine.runs.record import find_record

NUM_SAMPLES = 12  # 6 batches of 2 in the computing process


@pytest.fixture()
def ds(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(NUM_SAMPLES):
        path = tmp_path / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
        box = fo.Detection(label="a", bounding_box=[0.1, 0.1, 0.5, 0.5])
        samples.append(
            fo.Sample(filepath=str(path), gt=fo.Detections(detections=[box]))
        )
    dataset = fo.Dataset(f"live-{uuid.uuid4().hex[:8]}", persistent=True)
    dataset.add_samples(samples)
    yield dataset
    dataset.delete()


class Computing:
    """``live_compute.py`` computing run ``run_key`` on ``ds`` in another process,
    held live after its ``hold``-th batch write until :meth:`go`."""

    def __init__(self, ds, run_key, log: pathlib.Path, seed, pause, hold, **env):
        self.log, self.gate = log, log.with_suffix(".go")
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(TESTS / "live_compute.py"), ds.name, run_key]
                + [str(seed), str(pause), str(hold), str(self.gate)],
                env=worker_env(**env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text()

    def wait_for_batches(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.text().count("batch ") >= count:
                return
            assert self.proc.poll() is None, self.text()
            time.sleep(0.1)
        raise AssertionError(f"no {count} batches after {timeout} s:\n{self.text()}")

    def go(self) -> None:
        """Open the gate: the held computation goes on."""
        self.gate.touch()

    def result(self, timeout: float = 120) -> str:
        """The outcome (after opening the gate): from the last line starting
        "ok " or "error " on."""
        self.go()
        self.proc.wait(timeout=timeout)
        lines = self.text().splitlines()
        last = max(i for i, x in enumerate(lines) if x.startswith(("ok ", "error ")))
        return "\n".join(lines[last:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture()
def computing(tmp_path):
    started = []

    def start(ds, run_key, seed=0, pause=0.1, hold=1, **env):
        log = tmp_path / f"{run_key}.log"
        started.append(Computing(ds, run_key, log, seed, pause, hold, **env))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


def _fields(ds, prefix):
    return [f for f in ds.get_field_schema() if f.startswith(prefix)]


def test_delete_rename_and_overwrite_of_a_live_run_are_refused_until_it_dies(
    ds, computing
):
    child = computing(ds, "live", GRADCAM_ENGINE_LEASE_SECONDS="3")
    child.wait_for_batches(1)
    holder = f"pid {child.proc.pid} on "
    ds.reload()  # the fields declared by the other process
    assert ge.cam_run_status(ds, "live")["live"][0].startswith(holder)
    with pytest.raises(RunIsLive, match=f"Cannot delete CAM run 'live'.*{holder}"):
        ge.delete_cam_run(ds, "live")
    with pytest.raises(RunIsLive, match=f"Cannot rename .*{holder}"):
        ge.rename_cam_run(ds, "live", "other")
    with pytest.raises(RunIsLive, match=f"Cannot overwrite .*{holder}"):
        compute(ds, "live", slow_model(1, 0.0), overwrite=True)
    assert ge.list_cam_runs(ds) == ["live"]

    child.stop()  # killed: it never releases its lease
    # on this machine its process is known to be gone
    assert live_holders(find_record(ds, "live").config) == []
    # from another machine, its lease holds until it expires (3 s)
    record = find_record(ds, "live")
    elsewhere = {f"config.live.{t}.host": "elsewhere" for t in record.config["live"]}
    fodb.get_db_conn()["runs"].update_one({"_id": record.id}, {"$set": elsewhere})
    assert live_holders(find_record(ds, "live").config) != []
    expires = max(lease["expires"] for lease in record.config["live"].values())
    deadline = time.monotonic() + 30
    while live_holders(find_record(ds, "live").config) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_holders(find_record(ds, "live").config) == []
    assert time.time() >= expires  # it held until it expired, not before
    ge.delete_cam_run(ds, "live")
    assert ge.list_cam_runs(ds) == [] and _fields(ds, "live_") == []


def test_a_refused_overwrite_leaves_the_live_run_to_complete(ds, computing):
    """An overwrite refused while live leaves the computation whole."""
    child = computing(ds, "live")
    child.wait_for_batches(1)
    with pytest.raises(RunIsLive):
        compute(ds, "live", slow_model(1, 0.0), method="hirescam", overwrite=True)
    assert child.result().startswith("ok "), child.text()
    ds.reload()  # fields declared by the other process
    info = ge.get_cam_run(ds, "live")
    assert info.method == "gradcam" and ge.list_cam_runs(ds) == ["live"]
    assert ge.cam_run_status(ds, "live")["done"] == NUM_SAMPLES


def test_score_during_a_compute_keeps_its_fields_owned(ds, computing):
    child = computing(ds, "live")
    child.wait_for_batches(1)
    ds.reload()  # fields declared by the other process
    ge.score_cams(ds, "live", gt_field="gt")
    assert child.proc.poll() is None, "the compute must still be running"
    assert child.result().startswith("ok "), child.text()
    ds.reload()  # what is stored, as any other process sees it
    owned = ge.get_cam_run(ds, "live").owned_fields
    assert {"live_block_focus", "live_block_hit", "live_block_spread"} <= set(owned)
    ge.delete_cam_run(ds, "live")
    assert _fields(ds, "live_") == []


def test_fiftyone_delete_during_a_compute_stops_it_and_a_new_model_reuses_nothing(
    ds, computing
):
    child = computing(ds, "live", seed=0, hold=2)
    child.wait_for_batches(2)
    ds.reload()  # the run registered by the other process
    ds.delete_run("live")  # FiftyOne's own command: it deletes the run anyway
    # another model under the same key, at once, while the first process still
    # stops (its fields are there until it has: overwrite=True replaces them)
    other = slow_model(1, 0.0)
    first = compute(ds, "live", other, overwrite=True)
    assert first.num_reused == 0 and first.num_computed == NUM_SAMPLES
    last = child.result()
    assert last.startswith("error RunGone") and "was deleted" in last, child.text()

    again = compute(ds, "live", other)  # whatever the first process wrote last
    reference = compute(ds, "ref", other)
    assert again.num_computed + again.num_reused == NUM_SAMPLES
    maps = ds.values("live_block.map")
    for got, want in zip(maps, ds.values("ref_block.map"), strict=True):
        assert np.array_equal(got, want)
    status = ge.cam_run_status(ds, "live")
    assert (status["done"], status["pending"]) == (NUM_SAMPLES, 0)
    assert reference.num_computed == NUM_SAMPLES
    ge.delete_cam_run(ds, "live")
    assert _fields(ds, "live_") == [] and _hidden(ds, ("live_",)) == []


def test_fiftyone_rename_during_a_compute_is_carried_out_when_it_stops(ds, computing):
    child = computing(ds, "live", hold=2)
    child.wait_for_batches(2)
    ds.reload()
    ds.rename_run("live", "moved")  # FiftyOne's own command
    last = child.result()
    assert last.startswith("error RunGone") and "run_key='moved'" in last, last
    ds.reload()
    assert ge.list_cam_runs(ds) == ["moved"]
    assert _fields(ds, "live_") == []
    info = ge.get_cam_run(ds, "moved")
    assert info.fields == {"block": "moved_block"}
    assert "moved_block" in ds.get_field_schema()
    done = ge.cam_run_status(ds, "moved")["done"]
    assert 0 < done < NUM_SAMPLES

    resumed = compute(ds, "moved", slow_model(0, 0.0))
    assert (resumed.num_reused, resumed.num_computed) == (done, NUM_SAMPLES - done)
    ds.delete_run("moved")
    assert _fields(ds, "moved_") == [] and _fields(ds, "live_") == []
    assert _hidden(ds, ("live_", "moved_")) == []


def _hidden(ds, prefixes) -> list[str]:
    """Keys of the raw sample documents with these prefixes (data of fields
    that are not declared is hidden from FiftyOne but still stored)."""
    keys = {k for doc in ds._sample_collection.find({}) for k in doc}
    return sorted(k for k in keys if k.startswith(prefixes))


def test_a_run_stored_before_instances_resumes_and_gets_one(ds):
    """A run stored by an older version (no instance, no done markers, fewer
    config entries) loads, resumes reusing its maps, and then has an instance
    that its samples' markers carry."""
    model = slow_model(0, 0.0)
    compute(ds, "old", model)
    runs = ds._doc.runs["old"]._get_collection()
    doc = runs.find_one({"_dataset_id": ds._doc.id, "key": "old"})
    old_config = {
        k: v
        for k, v in doc["config"].items()
        if k not in ("instance", "live", "removal", "brain_keys", "owned_paths")
    }
    old_config["owned_fields"].remove("old_instance")
    runs.update_one({"_id": doc["_id"]}, {"$set": {"config": old_config}})
    ds.delete_sample_field("old_instance")
    assert ge.get_cam_run(ds, "old").instance is None

    again = compute(ds, "old", model)
    assert (again.num_reused, again.num_computed) == (NUM_SAMPLES, 0)
    info = ge.get_cam_run(ds, "old")
    assert info.instance and "old_instance" in info.owned_fields
    assert ds.values("old_instance") == [info.instance] * NUM_SAMPLES
    ge.delete_cam_run(ds, "old")
    assert _fields(ds, "old_") == [] and _hidden(ds, ("old_",)) == []
