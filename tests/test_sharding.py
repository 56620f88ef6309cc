"""Sharded, delegated CAM runs without a worker process: queueing, the shard
partition, per-shard resume and ``cam_run_status``.

Shards are executed in this process by FiftyOne's own
``DelegatedOperationService.execute_operation`` (what a worker calls); the
two-worker test with a killed worker is ``test_scale_out.py``.
"""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from bson import ObjectId
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionContext
from plugin_models import build_model
from test_operators import APP_MODEL, MODEL, make_dataset, resolve_form, uri

import gradcam_engine as ge
from gradcam_engine.runs import shard_worker, sharding


@pytest.fixture(scope="module")
def dataset(tmp_root):
    ds = make_dataset(tmp_root / "images", "cam-sharding")
    yield ds
    ds.delete()


@pytest.fixture
def service():
    """FiftyOne's service; deletes what a test queued, so no worker of a later
    test picks it up."""
    svc = DelegatedOperationService()
    before = {op.id for op in svc.list_operations()}
    yield svc
    for op in svc.list_operations():
        if op.id not in before:
            svc.delete_operation(op.id)


def run_op(service, op_id):
    """Execute one queued operation as a worker does; its result dict."""
    result = service.execute_operation(service.get(ObjectId(op_id)))
    assert result.error is None, result.error
    return result.result


def queue(ds, run_key, shards, **kwargs):
    return ge.compute_cams(
        ds,
        MODEL,
        layers=["block"],
        run_key=run_key,
        batch_size=2,
        num_workers=0,
        delegate=True,
        shards=shards,
        **kwargs,
    )


def test_bad_delegation_arguments_are_clear_errors(dataset):
    with pytest.raises(TypeError, match="model must be a model source name"):
        ge.compute_cams(dataset, build_model()[0], delegate=True, shards=2)
    with pytest.raises(ValueError, match="shards=2 needs delegate=True"):
        ge.compute_cams(dataset, MODEL, shards=2)
    with pytest.raises(ValueError, match="shards must be a positive int, got 0"):
        ge.compute_cams(dataset, MODEL, delegate=True, shards=0)
    with pytest.raises(ValueError, match="shards=9 is more than the 5 samples"):
        ge.compute_cams(dataset, MODEL, run_key="too_many", delegate=True, shards=9)
    with pytest.raises(TypeError, match="transforms cannot be sent"):
        ge.compute_cams(dataset, MODEL, transforms=lambda im: im, delegate=True)
    assert "too_many" not in dataset.list_runs()  # refused before any write


def test_shards_partition_the_view_and_keep_their_samples(dataset):
    plan = sharding.plan_shards(dataset, 3)
    parts = [set(sharding.shard_view(dataset, s).values("id")) for s in plan["shards"]]
    assert [len(p) for p in parts] == [1, 2, 2]
    assert set.union(*parts) == set(dataset.values("id"))
    assert sum(map(len, parts)) == len(dataset)  # disjoint
    # a sample added later lands in exactly one shard (the last, open-ended);
    # the samples of every shard stay where they were
    extra = fo.Sample(filepath=dataset.first().filepath)
    dataset.add_sample(extra)
    try:
        again = [
            set(sharding.shard_view(dataset, s).values("id")) for s in plan["shards"]
        ]
        assert again[:2] == parts[:2] and again[2] == parts[2] | {extra.id}
    finally:
        dataset.delete_samples(extra)


def test_queue_returns_ids_computes_nothing_and_shards_resume(dataset, service):
    queued = queue(dataset, "sharded", 2)
    assert isinstance(queued, ge.QueuedRun) and len(queued.operation_ids) == 2
    assert dataset.count("sharded_block") == 0  # nothing computed here
    status = ge.cam_run_status(dataset, "sharded")
    assert (status["total"], status["done"], status["pending"]) == (5, 0, 5)
    assert [s["state"] for s in status["shards"]] == ["queued", "queued"]
    assert status["state"] == "queued"

    first, second = queued.operation_ids
    assert "2 computed, 0 reused" in run_op(service, first)["summary"]
    status = ge.cam_run_status(dataset, "sharded")
    shard0, shard1 = status["shards"]
    assert (shard0["state"], shard0["done"], shard0["pending"]) == ("completed", 2, 0)
    assert (shard1["state"], shard1["done"], shard1["pending"]) == ("queued", 0, 3)
    assert shard0["recover"] is None

    # one sample of shard 0 loses its maps: a rerun of shard 0 computes only it
    lost = sharding.shard_view(dataset, {**shard0}).first()
    lost.clear_field("sharded_prediction")
    lost.save()
    status = ge.cam_run_status(dataset, "sharded")
    assert status["shards"][0]["recover"] == f"fiftyone delegated rerun {first}"
    rerun = service.rerun_operation(ObjectId(first))
    assert "1 computed, 1 reused" in run_op(service, rerun.id)["summary"]
    run_op(service, second)

    status = ge.cam_run_status(dataset, "sharded")
    assert (status["done"], status["errors"], status["pending"]) == (5, 0, 0)
    assert status["state"] == "completed"
    assert [op["state"] for op in status["shards"][0]["operations"]] == [
        "completed",
        "completed",
    ]
    assert status["shards"][0]["operation_id"] == str(rerun.id)
    assert dataset.count("sharded_block") == 5


def test_shard_refuses_a_run_it_did_not_find(dataset):
    token = sharding.plan_shards(dataset, 1)["token"]
    with pytest.raises(ValueError, match="shard only resumes a run registered"):
        shard_worker.run_shard(dataset, "nope", token, 0)


def test_sharded_score_cams_and_operators(dataset, service):
    foo.get_operator(uri("compute_cams"))(
        dataset, model=APP_MODEL, layers=["block"], run_key="opshard", shards=2
    ).raise_exceptions()
    status = foo.get_operator(uri("cam_run_status"))(dataset, run_key="opshard")
    assert [s["state"] for s in status["shards"]] == ["queued", "queued"]
    assert dataset.count("opshard_block") == 0  # only queued
    for shard in status["shards"]:
        run_op(service, shard["operation_id"])
    foo.get_operator(uri("score_cams"))(
        dataset, run_key="opshard", gt_field="ground_truth", shards=2
    ).raise_exceptions()
    assert "opshard_block_focus" in dataset.get_field_schema()  # declared up front
    status = foo.get_operator(uri("cam_run_status"))(dataset, run_key="opshard")
    assert [s["state"] for s in status["scoring_shards"]] == ["queued", "queued"]
    for shard in status["scoring_shards"]:
        run_op(service, shard["operation_id"])
    assert dataset.count("opshard_block_focus") == 5
    status = ge.cam_run_status(dataset, "opshard")
    assert [s["pending"] for s in status["scoring_shards"]] == [0, 0]
    assert status["state"] == "completed" and status["pending"] == 0
    assert "opshard_block_focus" in ge.get_cam_run(dataset, "opshard").owned_fields


def test_forms_offer_shards_and_the_status_operator_resolves(dataset):
    for name in ("compute_cams", "score_cams"):
        form = resolve_form(name, dataset, dict(model=MODEL))
        assert form.type.properties["shards"].default == 1
    ge.compute_cams(dataset, MODEL, layers=["block"], run_key="form_run")
    form = resolve_form("cam_run_status", dataset, dict(run_key="form_run"))
    assert "form_run" in [c.value for c in form.type.properties["run_key"].view.choices]
    ctx = ExecutionContext(
        request_params=dict(
            dataset_name=dataset.name,
            view=dataset.view()._serialize(),
            params=dict(run_key="form_run"),
        ),
        operator_uri=uri("cam_run_status"),
    )
    outputs = foo.get_operator(uri("cam_run_status")).resolve_type(ctx, "outputs")
    # a run computed in one process: counts, and no empty "Delegated shards" table
    assert {"done", "pending"} <= set(outputs.type.properties)
    assert "shards" not in outputs.type.properties
    status = foo.get_operator(uri("cam_run_status"))(dataset, run_key="form_run")
    assert (status["done"], status["pending"], status["shards"]) == (5, 0, [])


def test_numpy_and_torch_arguments_reach_the_workers_as_plain_values(dataset, service):
    import numpy as np
    import torch

    queued = ge.compute_cams(
        dataset,
        MODEL,
        layers=("block",),
        run_key="plain_args",
        target=np.int64(1),
        device=torch.device("cpu"),
        num_workers=0,
        delegate=True,
    )
    (op_id,) = queued.operation_ids
    params = service.get(ObjectId(op_id)).context.request_params["params"]
    assert set(params) == {"function", "run_key", "token", "shard"}  # no call
    record = ge.get_cam_run(dataset, "plain_args").config["sharding"]
    assert record["token"] == params["token"]
    kwargs = record["call"]["kwargs"]  # what the shard runs
    assert (kwargs["target"], kwargs["device"], kwargs["layers"]) == (
        1,
        "cpu",
        ["block"],
    )
    assert "transforms" not in kwargs and "overwrite" not in kwargs
    run_op(service, op_id)
    assert set(dataset.values("plain_args_target.label")) == {"coffee"}  # class 1


def test_delegated_overwrite_replaces_the_run_only_when_every_shard_completed(
    dataset, service
):
    ge.compute_cams(
        dataset, MODEL, layers=["block"], run_key="swap", num_workers=0, progress=False
    )
    old_maps = dataset.values("swap_block.map")

    queued = queue(dataset, "swap", 2, method="hirescam", overwrite=True)
    assert queued.replaces == "swap" and queued.run_key.startswith("swap_replacing_")
    assert "replaces 'swap' once every shard has completed" in str(queued)
    temp = queued.run_key

    def old_run_intact():
        dataset.reload()
        assert ge.get_cam_run(dataset, "swap").config["method"] == "gradcam"
        maps = dataset.values("swap_block.map")
        assert all((a == b).all() for a, b in zip(maps, old_maps, strict=True))

    old_run_intact()  # queued: nothing replaced yet
    first, second = queued.operation_ids
    run_op(service, first)
    old_run_intact()  # one shard done (or the other killed): still the old run
    status = ge.cam_run_status(dataset, temp)
    assert (status["done"], status["pending"]) == (2, 3)

    run_op(service, second)  # the last shard swaps the replacement in
    dataset.reload()
    assert temp not in dataset.list_runs()
    assert ge.get_cam_run(dataset, "swap").config["method"] == "hirescam"
    assert dataset.count("swap_block") == 5
    assert not [f for f in dataset.get_field_schema() if f.startswith(temp)]
    status = ge.cam_run_status(dataset, "swap")  # its shards follow it
    assert status["state"] == "completed" and len(status["shards"]) == 2


def test_a_queued_replacement_is_its_shards_not_a_dead_one(dataset, service):
    """The caller hands a delegated replacement over to its shards (it holds no
    lease on it), and a later overwrite of the key does not take it for a dead
    replacement (tests/test_replacement.py): only its shards swap it in."""
    from gradcam_engine.runs.live import live_holders
    from gradcam_engine.runs.record import find_record

    ge.compute_cams(
        dataset, MODEL, layers=["block"], run_key="hand", num_workers=0, progress=False
    )
    queued = queue(dataset, "hand", 2, method="hirescam", overwrite=True)
    temp = queued.run_key
    assert live_holders(find_record(dataset, temp).config) == []
    ge.compute_cams(
        dataset,
        MODEL,
        layers=["block"],
        run_key="hand",
        method="layercam",
        overwrite=True,
        num_workers=0,
        progress=False,
    )
    dataset.reload()
    assert temp in dataset.list_runs()
    assert ge.get_cam_run(dataset, "hand").config["method"] == "layercam"
    dataset.delete_run(temp)
    assert not [f for f in dataset.get_field_schema() if f.startswith(temp)]


def test_delegated_replacement_is_swapped_in_when_its_last_shard_fails_everywhere(
    dataset, service
):
    """As in one process: a replacement with maps on some samples and errors
    on the others replaces the old run, also when the shard that completes it
    failed on every one of its samples."""
    ge.compute_cams(
        dataset, MODEL, layers=["block"], run_key="swap2", num_workers=0, progress=False
    )
    queued = queue(dataset, "swap2", 2, method="hirescam", overwrite=True)
    first, second = queued.operation_ids
    run_op(service, first)
    shard1 = ge.get_cam_run(dataset, queued.run_key).config["sharding"]["shards"][1]
    broken = sharding.shard_view(dataset, shard1)
    paths = broken.values("filepath")
    broken.set_values("filepath", [p + ".missing" for p in paths])
    try:
        result = service.execute_operation(service.get(ObjectId(second)))
    finally:
        broken.set_values("filepath", paths)
    assert "No sample succeeded" in str(result.error)  # the shard itself failed
    dataset.reload()
    assert queued.run_key not in dataset.list_runs()
    assert ge.get_cam_run(dataset, "swap2").config["method"] == "hirescam"
    assert (dataset.count("swap2_block"), dataset.count("swap2_error")) == (2, 3)
