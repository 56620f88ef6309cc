"""An overwrite that fails cleans up after itself, and the next overwrite
removes replacements whose process died (but never a live one, whose lease
on its run record is renewed).

Real datasets of real photos and a real (small, untrained) ResNet-18.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import fiftyone as fo
import fiftyone.core.odm as foodm
import numpy as np
import pytest
import torch
import torchvision
from test_runs import write_photos

import gradcam_engine as ge
from gradcam_engine import CamRunFailed, compute_cams, get_cam_run, list_cam_runs
from gradcam_engine.runs import registration
from gradcam_engine.runs.locks import LOCK_COLLECTION
from gradcam_engine.sources.models import ResizeNormalize

PHOTOS = ("chelsea", "coffee", "astronaut")


@pytest.fixture()
def image_dir(tmp_path):
    (tmp_path / "photos").mkdir()
    return write_photos(tmp_path / "photos", PHOTOS)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=3).eval()


@pytest.fixture()
def ds(image_dir):
    dataset = fo.Dataset()
    dataset.add_samples(
        [fo.Sample(filepath=str(image_dir / f"{n}.png")) for n in PHOTOS]
    )
    yield dataset
    dataset.delete()


def run(ds, model, **kwargs):
    kwargs.setdefault("run_key", "cam")
    return compute_cams(
        ds,
        model,
        layers=["layer4"],
        transforms=ResizeNormalize(64),
        classes=["0", "1", "2"],
        batch_size=2,
        num_workers=0,
        progress=False,
        **kwargs,
    )


def _leftovers(ds) -> list[str]:
    return [f for f in ds.get_field_schema() if "replacing" in f] + [
        k for k in ds.list_runs() if "replacing" in k
    ]


def test_a_failed_overwrite_removes_its_temporary_run(ds, model, image_dir, tmp_path):
    out = tmp_path / "maps"
    run(ds, model, storage="disk", output_dir=str(out))
    old = get_cam_run(ds, "cam")
    paths = ds.values("cam_layer4.map_path")
    assert all(os.path.exists(p) for p in paths)

    # Every image is gone: the new run fails (CamRunFailed) ...
    shutil.move(str(image_dir), str(tmp_path / "moved"))
    with pytest.raises(CamRunFailed, match="No sample succeeded"):
        run(
            ds,
            model,
            method="hirescam",
            overwrite=True,
            storage="disk",
            output_dir=str(out),
        )
    # ... and leaves neither a run, nor fields, nor files behind.
    assert _leftovers(ds) == []
    assert list_cam_runs(ds) == ["cam"] and get_cam_run(ds, "cam").method == "gradcam"
    assert sorted(os.listdir(out)) == [os.path.basename(old.config["run_dir"])]
    assert ds.values("cam_layer4.map_path") == paths
    assert (
        foodm.get_db_conn()[LOCK_COLLECTION].count_documents(
            {"_id": {"$regex": f"^{ds._doc.id}:"}}
        )
        == 0
    )
    # an error raised while computing: test_runs.py, test_overwrite_that_fails_...


def _open_replacement(ds) -> registration.OpenedRun:
    """A replacement of ``cam`` registered as compute_cams(overwrite=True) does,
    then left as a process would leave it."""
    stored = get_cam_run(ds, "cam").config
    config = {k: v for k, v in stored.items() if k not in ("cls", "type")}
    return registration.open_run(ds, "cam", config, overwrite=True)


def test_the_next_overwrite_removes_dead_replacements_only(ds, model):
    run(ds, model)
    # Three replacements, all registered while alive; then one still computing
    # (its lease held and renewed), one that released its lease, one whose lease
    # expired (its process stopped renewing it).
    live, gone, expired = (_open_replacement(ds) for _ in range(3))
    gone.live.release()
    expired.live._stop.set()  # as its process left it: a lease, expired
    foodm.get_db_conn()["runs"].update_one(
        {"_id": expired.live.doc_id},
        {"$set": {f"config.live.{expired.live.token}.expires": time.time() - 1}},
    )
    ds.set_values(live.names.heatmaps[0], [fo.Heatmap(map=np.ones((4, 4)))] * len(ds))
    assert len(list_cam_runs(ds)) == 4

    # From another thread, as another process would: only the database says
    # which replacement is alive.
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(
            s=run(ds, model, method="hirescam", overwrite=True)
        )
    )
    worker.start()
    worker.join()
    assert result["s"].run_key == "cam"
    assert sorted(list_cam_runs(ds)) == sorted(["cam", live.run_key])
    for dead in (gone, expired):
        assert not [f for f in ds.get_field_schema() if f.startswith(dead.run_key)]
    assert ds.count(live.names.heatmaps[0]) == len(ds)  # untouched
    assert get_cam_run(ds, "cam").method == "hirescam"

    # The live one finishing (or failing) later is its own business.
    registration.abandon_run(ds, live)
    assert list_cam_runs(ds) == ["cam"] and _leftovers(ds) == []
    assert not live.live.held


def test_a_lease_is_renewed_until_released(ds, model, monkeypatch):
    """A computing process's lease on its run outlives LEASE_SECONDS (renewed
    by a thread), as seen from another thread; once released, the run is no
    longer live."""
    from gradcam_engine.runs import live, record

    run(ds, model)
    monkeypatch.setattr(live, "LEASE_SECONDS", 1.0)  # renewed every 0.1 s
    lease = live.LiveRun(ds, record.find_record(ds, "cam"))
    seen = []
    try:
        time.sleep(1.5)  # longer than the lease

        def look():
            seen.append(live.live_holders(record.find_record(ds, "cam").config))

        worker = threading.Thread(target=look)
        worker.start()
        worker.join()
        with pytest.raises(live.RunIsLive, match=f"pid {os.getpid()}"):
            ge.delete_cam_run(ds, "cam")
    finally:
        lease.release()
    assert seen == [[lease.holder]]
    assert live.live_holders(record.find_record(ds, "cam").config) == []
    ge.delete_cam_run(ds, "cam")
