"""The plugin's operators through FiftyOne's real operator machinery.

A real dataset of real photos (scikit-image, written as PNG), a small model
loaded from the entry point ``plugin_models:build_model`` (named
``plugin-test-model`` for the App by the deployment: see conftest.py), and
``foo.execute_operator`` / ``foo.get_operator(uri)(...)`` as a user would call
them. Delegated execution is run by a real ``fiftyone delegated launch`` worker.
"""

from __future__ import annotations

import pathlib
import sys
import time

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone.operators.executor import ExecutionContext
from PIL import Image
from skimage import data as skdata
from workers import start_worker, stop_worker

TESTS = pathlib.Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

PLUGIN = "@cam-audit/cam-audit"
MODEL = "plugin_models:build_model"
APP_MODEL = "plugin-test-model"  # MODEL, as the admin registers it for the App
LAYERS = ["stem", "block"]

# (name, image, label, box [x, y, w, h] relative)
PHOTOS = [
    ("chelsea", skdata.chelsea, "cat", [0.25, 0.05, 0.5, 0.9]),
    ("coffee", skdata.coffee, "coffee", [0.1, 0.05, 0.8, 0.8]),
    ("rocket", skdata.rocket, "rocket", [0.4, 0.0, 0.25, 1.0]),
    ("astronaut", skdata.astronaut, "cat", [0.2, 0.0, 0.6, 1.0]),
    ("camera", skdata.camera, "coffee", [0.25, 0.1, 0.4, 0.8]),
]


def uri(name: str) -> str:
    return f"{PLUGIN}/{name}"


def make_dataset(root: pathlib.Path, name: str) -> fo.Dataset:
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for photo, loader, label, box in PHOTOS:
        path = root / f"{photo}.png"
        if not path.exists():
            Image.fromarray(np.asarray(loader())).save(path)
        samples.append(
            fo.Sample(
                filepath=str(path),
                label=fo.Classification(label=label),
                ground_truth=fo.Detections(
                    detections=[fo.Detection(label=label, bounding_box=box)]
                ),
            )
        )
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name)
    dataset.add_samples(samples)
    return dataset


@pytest.fixture(scope="module")
def dataset(tmp_root):
    ds = make_dataset(tmp_root / "images", "cam-operators")
    yield ds
    ds.delete()


def compute(ds, run_key, **kwargs):
    kwargs.setdefault("layers", LAYERS)
    kwargs.setdefault("model", APP_MODEL)
    return foo.get_operator(uri("compute_cams"))(
        ds, run_key=run_key, batch_size=2, **kwargs
    )


def resolve_form(name: str, ds: fo.Dataset, params: dict):
    """The operator's form (resolve_input) for ``params``, as the App gets it."""
    ctx = ExecutionContext(
        request_params=dict(
            dataset_name=ds.name, view=ds.view()._serialize(), params=params
        ),
        operator_uri=uri(name),
    )
    return foo.get_operator(uri(name)).resolve_type(ctx, "inputs")


def test_compute_cams_operator_writes_one_heatmap_per_layer(dataset):
    result = compute(dataset, "op_run")
    assert result.error is None, result.error
    schema = dataset.get_field_schema()
    for layer in LAYERS:
        assert f"op_run_{layer}" in schema
    sample = dataset.first()
    heatmap = sample["op_run_block"]
    assert isinstance(heatmap, fo.Heatmap)
    assert heatmap.map.dtype == np.uint8 and heatmap.map.ndim == 2
    assert heatmap.map.shape[1] == 256  # chelsea is landscape: longest side 256
    assert sample["op_run_prediction"].label in {"cat", "coffee", "rocket"}
    assert dataset.count("op_run_block") == len(PHOTOS)


def test_compute_cams_on_selected_samples_only(dataset):
    ids = dataset.limit(2).values("id")
    result = foo.execute_operator(
        uri("compute_cams"),
        ctx=dict(
            view=dataset.view(),
            selected=ids,
            params=dict(
                model=APP_MODEL,
                layers=["block"],
                run_key="sel_run",
                view_target="SELECTED_SAMPLES",
            ),
        ),
    )
    result.raise_exceptions()
    assert dataset.count("sel_run_block") == 2
    assert set(dataset.exists("sel_run_block").values("id")) == set(ids)


def test_compute_form_offers_sources_and_never_loads_while_typing(dataset):
    # an entry point the form must not import: the App refuses it by its text
    spec = "cam_audit_never_imported:build"
    form = resolve_form("compute_cams", dataset, dict(model=spec))
    props = form.type.properties
    assert "cam_audit_never_imported" not in sys.modules
    assert (
        props["model"].invalid and "allow_code_models" in props["model"].error_message
    )
    choices = [c.value for c in props["model"].view.choices]
    assert {"efficientnet-lite0-imagenet", APP_MODEL} <= set(choices)
    assert "gradcam" in [c.value for c in props["method"].view.choices]
    assert "list_layers" not in props  # only registered sources can be listed
    assert "view_target" in props
    # ...and the run is refused, writing nothing
    with pytest.raises(Exception, match="[Vv]alidation"):
        compute(dataset, "never_run", model=spec)
    assert "never_run" not in dataset.list_runs()
    assert "cam_audit_never_imported" not in sys.modules


def test_compute_form_lists_a_sources_layers_on_request(dataset):
    source = "efficientnet-lite0-imagenet"
    form = resolve_form("compute_cams", dataset, dict(model=source))
    assert not form.type.properties["layers"].view.choices
    form = resolve_form("compute_cams", dataset, dict(model=source, list_layers=True))
    layers = [c.value for c in form.type.properties["layers"].view.choices]
    assert {"_conv_head", "_blocks.15", "_blocks.10"} <= set(layers)
    assert not [x for x in layers if "static_padding" in x or "_bn" in x]


def test_compute_form_defaults_say_what_it_writes(dataset):
    compute(dataset, "gradcam", layers=["block"])
    form = resolve_form("compute_cams", dataset, dict(model=APP_MODEL))
    props = form.type.properties
    key = props["run_key"].default
    assert key != "gradcam" and key.startswith("gradcam")
    assert not props["run_key"].invalid and not props["overwrite"].invalid
    form = resolve_form(
        "compute_cams", dataset, dict(model=APP_MODEL, run_key="x", layers=["block"])
    )
    writes = form.type.properties["writes"].view.description
    for name in ("x_block", "x_block_strength", "x_prediction", "x_error"):
        assert f"`{name}`" in writes
    desc = form.type.properties["run_key"].view.description
    assert "`_`" in desc and "'_'" not in desc  # no markdown italics
    form = resolve_form("compute_cams", dataset, dict(model=APP_MODEL, score=True))
    gt = form.type.properties["gt_field"]
    assert "ground_truth" in [c.value for c in gt.view.choices]


def test_invalid_run_key_is_a_form_error(dataset):
    form = resolve_form("compute_cams", dataset, dict(model=APP_MODEL, run_key="9 bad"))
    prop = form.type.properties["run_key"]
    assert prop.invalid
    assert "'9 bad'" in prop.error_message and "field-name prefix" in prop.error_message
    with pytest.raises(Exception, match="[Vv]alidation"):
        compute(dataset, "9 bad")


def test_existing_run_key_resumes_or_needs_overwrite(dataset):
    compute(dataset, "dup_run", layers=["block"])
    same = dict(model=APP_MODEL, run_key="dup_run", layers=["block"])
    form = resolve_form("compute_cams", dataset, same)
    props = form.type.properties
    assert "resumes" in props and not props["overwrite"].invalid
    result = compute(dataset, "dup_run", layers=["block"])
    assert result.result["reused"] == len(PHOTOS), result.result

    other = dict(same, method="hirescam")
    prop = resolve_form("compute_cams", dataset, other).type.properties["overwrite"]
    assert prop.invalid and "hirescam" in prop.error_message
    form = resolve_form("compute_cams", dataset, dict(other, overwrite=True))
    assert not form.type.properties["overwrite"].invalid
    result = compute(
        dataset, "dup_run", layers=["block"], method="hirescam", overwrite=True
    )
    assert result.result["computed"] == len(PHOTOS)


def test_compute_reports_its_outcome_and_refuses_what_cannot_work(dataset):
    result = compute(dataset, "outc", layers=["block"])
    out = result.result
    assert (out["computed"], out["reused"], out["failed"]) == (len(PHOTOS), 0, 0)
    assert "outc_block" in out["fields"] and "outc_error" in out["fields"]
    # labels the model does not know: refused before anything is written
    dataset.set_values("shape", [fo.Classification(label="circle")] * len(dataset))
    with pytest.raises(Exception, match="not classes of the model: 'circle'"):
        compute(dataset, "bad_labels", target="label_field", label_field="shape")
    assert "bad_labels" not in dataset.list_runs()
    assert not [f for f in dataset.get_field_schema() if f.startswith("bad_labels")]


def test_compute_then_score_in_one_go(dataset):
    result = compute(
        dataset, "both", layers=["block"], score=True, gt_field="ground_truth"
    )
    assert result.error is None, result.error
    assert dataset.count("both_block_focus") == len(PHOTOS)


def test_score_list_report_rename_delete(dataset):
    compute(dataset, "life", layers=LAYERS)
    foo.get_operator(uri("score_cams"))(
        dataset, run_key="life", gt_field="ground_truth"
    ).raise_exceptions()
    focus = dataset.values("life_block_focus")
    assert len(focus) == len(PHOTOS)
    assert all(0.0 <= f <= 1.0 for f in focus)

    listed = foo.get_operator(uri("list_cam_runs"))(dataset)
    keys = [r["run_key"] for r in listed["runs"]]
    assert "life" in keys
    row = next(r for r in listed["runs"] if r["run_key"] == "life")
    assert row["layers"] == "stem, block"
    assert (row["model"], row["target"], row["method"]) == (
        APP_MODEL,
        "predicted",
        "gradcam",
    )
    assert row["status"] == f"complete ({len(PHOTOS)})"

    foo.get_operator(uri("rename_cam_run"))(
        dataset, run_key="life", new_run_key="life2"
    ).raise_exceptions()
    schema = dataset.get_field_schema()
    assert "life2_block" in schema and "life2_block_focus" in schema
    assert "life_block" not in schema

    foo.get_operator(uri("delete_cam_run"))(dataset, run_key="life2").raise_exceptions()
    schema = dataset.get_field_schema()
    assert not [f for f in schema if f.startswith("life2_")]
    assert "life2" not in dataset.list_runs()


def test_class_report_operator(dataset):
    compute(dataset, "rep", layers=["block"])
    foo.get_operator(uri("score_cams"))(
        dataset, run_key="rep", gt_field="ground_truth"
    ).raise_exceptions()
    report = foo.get_operator(uri("cam_class_report"))(
        dataset, run_key="rep", layer="block", label_field="label"
    )
    assert report["rows"], report
    assert "cat" in str(report["rows"])


def test_rename_to_invalid_key_is_a_form_error(dataset):
    compute(dataset, "ren", layers=["block"])
    form = resolve_form(
        "rename_cam_run", dataset, dict(run_key="ren", new_run_key="bad-key")
    )
    prop = form.type.properties["new_run_key"]
    assert prop.invalid and "bad-key" in prop.error_message


def test_disk_storage_through_the_operator(dataset):
    # under FiftyOne's dataset directory: where the App may write
    out = pathlib.Path(fo.config.default_dataset_dir) / "cam_pngs"
    compute(dataset, "disk_run", layers=["block"], storage="disk", output_dir=str(out))
    heatmap = dataset.first()["disk_run_block"]
    assert heatmap.map is None and heatmap.map_path
    assert pathlib.Path(heatmap.map_path).is_file()
    assert str(out) in heatmap.map_path


def _wait_for(predicate, timeout, interval=1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def test_delegated_compute_and_score_run_on_a_worker(dataset, tmp_root):
    from fiftyone.operators.delegated import DelegatedOperationService

    service = DelegatedOperationService()
    queued = compute(dataset, "deleg", layers=["block"], delegate=True)
    assert queued.delegated
    assert "deleg_block" not in dataset.get_field_schema()  # only queued

    log_path = tmp_root / "worker.log"
    worker = start_worker(log_path)

    def finished(op_id):
        state = service.get(op_id).run_state
        return state if state in ("completed", "failed") else None

    try:
        state = _wait_for(lambda: finished(queued.result["id"]), timeout=240)
        op = service.get(queued.result["id"])
        assert state == "completed", (state, op.result, log_path.read_text()[-3000:])
        # the run exists now, so score_cams can be queued against it
        scored = foo.get_operator(uri("score_cams"))(
            dataset, run_key="deleg", gt_field="ground_truth", delegate=True
        )
        assert scored.delegated
        state = _wait_for(lambda: finished(scored.result["id"]), timeout=240)
        assert state == "completed", log_path.read_text()[-3000:]
    finally:
        stop_worker(worker)
    dataset.reload()
    assert dataset.count("deleg_block") == len(PHOTOS)
    assert dataset.count("deleg_block_focus") == len(PHOTOS)
    # progress was reported on the run document through ctx.set_progress
    assert op.status is not None and op.status.progress == pytest.approx(1.0)


def _panel_event(ds, method, state=None, selected=None, **params):
    """One panel event through the operator machinery, as the App sends it."""
    result = foo.execute_operator(
        uri("cam_review"),
        ctx=dict(
            view=ds.view(),
            selected=selected or [],
            params=dict(panel_id="p1", __method__=method, state=state or {}, **params),
        ),
    )
    result.raise_exceptions()
    return result


def test_review_panel_events_tag_and_compare(dataset):
    compute(dataset, "pan", layers=LAYERS)
    foo.get_operator(uri("score_cams"))(
        dataset, run_key="pan", gt_field="ground_truth"
    ).raise_exceptions()
    state = dict(source="pan/block", compare="pan/stem", tags="spurious,ok")
    _panel_event(dataset, "on_load", state=state)
    _panel_event(dataset, "on_change_compare", state=state, value="pan/stem")
    _panel_event(dataset, "show_lowest", state=dict(state, lowest_n=2))
    ids = dataset.sort_by("pan_block_focus").limit(2).values("id")
    _panel_event(dataset, "tag_selected", state=state, selected=ids, tag="spurious")
    assert set(dataset.match_tags("spurious").values("id")) == set(ids)
    _panel_event(
        dataset, "on_click_bar", state=dict(state, ranked_ids=ids), pointIndex=0
    )
