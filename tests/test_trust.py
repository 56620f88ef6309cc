"""The App's trust boundary, through FiftyOne's operator path (what the App
calls): models that are code or files, pickles, output locations and huge run
keys are refused before anything is imported, read or registered; registered
sources, zoo names and the admin's opt-ins work. This process plays the App
server. The delegated side, with a real worker: test_trust_worker.py.
"""

from __future__ import annotations

import os
import pathlib
import sys

import fiftyone as fo
import fiftyone.operators as foo
import pytest
import torch
from bson import ObjectId
from fiftyone.operators.executor import ExecutionContext
from test_operators import APP_MODEL, MODEL, PLUGIN, make_dataset, uri

import gradcam_engine as ge
from gradcam_engine.runs import cam_runs, trust

LAYERS = ["block"]


@pytest.fixture(scope="module")
def dataset(tmp_root):
    ds = make_dataset(tmp_root / "images", "cam-trust")
    yield ds
    ds.delete()


class _Payload:
    """Unpickling it opens (creates) ``marker`` for writing: any code would run."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_checkpoint(directory: pathlib.Path, name: str) -> tuple[str, pathlib.Path]:
    """A model file whose pickle writes a marker file when loaded."""
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / f"{name}.marker"
    path = directory / f"{name}.pt"
    torch.save({"model": _Payload(marker)}, path)
    return str(path), marker


def run_app(ds, run_key, **params):
    """compute_cams as the App sends it: any params, raw."""
    params = dict(dict(model=APP_MODEL, layers=LAYERS, batch_size=2), **params)
    result = foo.execute_operator(
        uri("compute_cams"),
        ctx=dict(view=ds.view(), params=dict(params, run_key=run_key)),
    )
    result.raise_exceptions()
    return result


def nothing_registered(ds, run_key) -> bool:
    ds.reload()
    return run_key not in ds.list_runs() and not any(
        f.startswith(run_key) for f in ds.get_field_schema()
    )


def test_entry_points_from_the_app_are_refused_before_any_import(dataset):
    assert "this" not in sys.modules
    for spec in ("this:x", "os:getpid", "faulthandler:_sigsegv", "os:abort"):
        with pytest.raises(Exception, match="[Vv]alidation"):
            run_app(dataset, "code", model=spec)
        assert nothing_registered(dataset, "code")
    assert "this" not in sys.modules
    # the operator's own check, had the form been skipped (a worker checks too)
    ctx = ExecutionContext(
        request_params=dict(
            dataset_name=dataset.name,
            view=dataset.view()._serialize(),
            params=dict(model="this:x", run_key="code2", layers=LAYERS),
        ),
        operator_uri=uri("compute_cams"),
    )
    with pytest.raises(trust.NotAllowedFromApp, match="allow_code_models"):
        next(foo.get_operator(uri("compute_cams")).execute(ctx))
    assert "this" not in sys.modules and nothing_registered(dataset, "code2")


def test_model_checks_from_the_app_take_no_code_either(dataset):
    run_app(dataset, "base")
    for name in ("background_test", "road_cams"):
        params = dict(run_key="base", model="this:x", gt_field="ground_truth")
        with pytest.raises(Exception, match="[Vv]alidation"):
            foo.execute_operator(
                uri(name), ctx=dict(view=dataset.view(), params=params)
            ).raise_exceptions()
    assert "this" not in sys.modules
    # the run's own (registered) source still works from the App
    foo.execute_operator(
        uri("background_test"),
        ctx=dict(
            view=dataset.view(), params=dict(run_key="base", gt_field="ground_truth")
        ),
    ).raise_exceptions()
    assert dataset.count("base_bg_flip") == len(dataset)


def test_model_files_and_pickles_from_the_app(dataset, tmp_root, monkeypatch):
    path, marker = evil_checkpoint(tmp_root / "evil", "app")
    # the payload is real: loading it with pickles on writes its marker
    probe, probe_marker = evil_checkpoint(tmp_root / "evil", "probe")
    torch.load(probe, weights_only=False)
    assert probe_marker.exists()

    with pytest.raises(Exception, match="[Vv]alidation"):
        run_app(dataset, "pickled", model=path, allow_pickle=True)
    assert not marker.exists() and nothing_registered(dataset, "pickled")
    form = trust.app_model_error(path)
    assert "file path" in form and trust.ALLOW_CODE_ENV in form

    # even where the admin allows files, allow_pickle never comes from the App
    monkeypatch.setenv(trust.ALLOW_CODE_ENV, "true")
    with pytest.raises(Exception, match="allow_pickle=True"):
        run_app(dataset, "pickled", model=path, allow_pickle=True)
    assert not marker.exists() and nothing_registered(dataset, "pickled")


def test_admin_opt_in_lets_entry_points_through_again(dataset, monkeypatch):
    with pytest.raises(Exception, match="[Vv]alidation"):
        run_app(dataset, "opted", model=MODEL)
    settings = dict(fo.app_config.plugins)
    monkeypatch.setattr(
        fo.app_config,
        "plugins",
        dict(settings, **{PLUGIN: {"allow_code_models": True}}),
    )
    run_app(dataset, "opted", model=MODEL)
    assert dataset.count("opted_block") == len(dataset)
    monkeypatch.setattr(fo.app_config, "plugins", settings)
    monkeypatch.setenv(trust.ALLOW_CODE_ENV, "1")
    run_app(dataset, "opted_env", model=MODEL)
    assert dataset.count("opted_env_block") == len(dataset)


def test_sources_the_admin_names_and_zoo_names_work(dataset, monkeypatch, tmp_root):
    settings = dict(fo.app_config.plugins)
    named = {PLUGIN: {"model_sources": {"trust-named-model": MODEL}}}
    monkeypatch.setattr(fo.app_config, "plugins", dict(settings, **named))
    run_app(dataset, "named", model="trust-named-model")
    assert dataset.count("named_block") == len(dataset)
    assert "trust-named-model" in ge.list_model_sources()
    # the bundled and the demo's sources pass the check by name
    for source in ("efficientnet-lite0-imagenet", "demo-shortcut-cnn"):
        assert trust.app_model_error(source) is None
    # zoo names pass the App's check and reach FiftyOne's zoo (a name that no
    # manifest lists: the same offline and online), which refuses it
    assert trust.app_model_error("zoo:resnet18-imagenet-torch") is None
    monkeypatch.setattr(fo.config, "model_zoo_dir", str(tmp_root / "zoo"))
    with pytest.raises(Exception, match="Could not load FiftyOne zoo model"):
        run_app(dataset, "zoo_run", model="zoo:cam-audit-no-such-model", layers=None)
    assert nothing_registered(dataset, "zoo_run")


def test_output_dir_from_the_app_stays_under_the_allowed_roots(
    dataset, tmp_root, monkeypatch
):
    home = pathlib.Path(fo.config.default_dataset_dir)
    home.mkdir(parents=True, exist_ok=True)
    outside = tmp_root / "outside"
    link = home / "link_out"
    link.symlink_to(outside, target_is_directory=True)
    a_file = home / "a_file"
    a_file.write_text("not a directory")
    refused = {
        str(outside): "outside",
        os.path.join(home, "..", "escape"): "outside",
        str(link / "x"): "outside",
        str(a_file): "is a file",
        str(a_file / "below"): "lies under the file",
    }
    for path, reason in refused.items():
        with pytest.raises(Exception, match="[Vv]alidation"):
            run_app(dataset, "disk", storage="disk", output_dir=path)
        with pytest.raises(ValueError, match=reason):
            trust.check_app_output_dir(path)
        assert nothing_registered(dataset, "disk")
    assert not outside.exists() and not (tmp_root / "escape").exists()
    assert a_file.read_text() == "not a directory"

    # under the dataset directory (relative paths resolve there), or an admin root
    run_app(dataset, "disk", storage="disk", output_dir="cam_pngs")
    assert dataset.first()["disk_block"].map_path.startswith(str(home / "cam_pngs"))
    admin_root = tmp_root / "admin_root"
    monkeypatch.setenv(trust.OUTPUT_ROOTS_ENV, str(admin_root))
    run_app(dataset, "disk2", storage="disk", output_dir=str(admin_root / "pngs"))
    assert dataset.first()["disk2_block"].map_path.startswith(str(admin_root))


def test_a_file_as_output_dir_is_refused_from_python_before_registration(
    dataset, tmp_root
):
    a_file = tmp_root / "python_file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="output_dir .* is a file"):
        ge.compute_cams(
            dataset, MODEL, LAYERS, run_key="py_disk", storage="disk", output_dir=a_file
        )
    assert nothing_registered(dataset, "py_disk")
    # from Python, any directory is fine
    ge.compute_cams(
        dataset,
        MODEL,
        LAYERS,
        run_key="py_disk",
        storage="disk",
        output_dir=tmp_root / "python_pngs",
        progress=False,
    )
    assert dataset.count("py_disk_block") == len(dataset)


def test_run_keys_and_layer_slugs_are_bounded(dataset):
    huge = "a" * 100_000
    with pytest.raises(Exception, match="[Vv]alidation"):
        run_app(dataset, huge)
    with pytest.raises(ValueError, match="100000 characters; at most 64"):
        ge.compute_cams(dataset, MODEL, LAYERS, run_key=huge)
    assert not [k for k in dataset.list_runs() if len(k) > 64]
    key = "k" * 64  # the cap itself, and its temporary replacement key, pass
    assert cam_runs.validate_run_key(key) == key
    assert cam_runs.validate_run_key(f"{key}_replacing_0123abcd")
    with pytest.raises(ValueError, match="at most 64"):
        ge.slug("blocks." * 20)
    with pytest.raises(Exception, match="[Vv]alidation"):  # the form says so
        run_app(dataset, "long_layer", layers=["blocks." * 20])
    assert nothing_registered(dataset, "long_layer")
    assert ge.heatmap_field("gradcam", "layer4.1.conv2") == "gradcam_layer4_1_conv2"


def test_a_shard_runs_only_what_its_run_recorded(dataset):
    from fiftyone.operators.delegated import DelegatedOperationService

    from gradcam_engine.runs import shard_worker

    queued = ge.compute_cams(
        dataset.limit(3), MODEL, LAYERS, run_key="rec", delegate=True, shards=1
    )
    try:
        token = queued.token
        good = dict(function="compute_cams", run_key="rec", token=token, shard=0)
        assert shard_worker.check_params(good) == ("compute_cams", "rec", token, 0)
        bad = [
            (dict(good, kwargs={}), "unexpected \\['kwargs'\\]"),
            ({k: v for k, v in good.items() if k != "token"}, "missing \\['token'\\]"),
            (dict(good, function="export_review"), "function must be one of"),
            (dict(good, token="../x"), "token must be"),
            (dict(good, shard=True), "shard must be a shard index"),
            (dict(good, run_key="a" * 100), "at most 64"),
        ]
        for params, message in bad:
            with pytest.raises((ValueError, TypeError), match=message):
                shard_worker.check_params(params)
        with pytest.raises(ValueError, match="does not match shards recorded"):
            shard_worker.run_shard(dataset, "rec", "abc123", 0)
        with pytest.raises(ValueError, match="shard 4 does not exist"):
            shard_worker.run_shard(dataset, "rec", token, 4)
        with pytest.raises(ValueError, match="belongs to compute_cams shards"):
            shard_worker.run_shard(dataset, "rec", token, 0, function="score_cams")
        # the view is the queued one, whatever view the operation names
        shard = shard_worker.recorded_shard(dataset, "rec", token, 0)
        assert shard.view.count() == 3 and shard.kwargs["model"] == MODEL
        assert shard.kwargs["allow_pickle"] is False
        shard_worker.run_shard(dataset, "rec", token, 0)
        assert dataset.count("rec_block") == 3
    finally:
        service = DelegatedOperationService()
        for op_id in queued.operation_ids:  # no later worker picks it up
            service.delete_operation(ObjectId(op_id))
