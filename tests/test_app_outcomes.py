"""What the App gets from the plugin, through FiftyOne's real operator path
(``foo.execute_operator``) on a real dataset of 17 scikit-image photos (the
size of the session that found the silent operators): every operator reports
its outcome, the discovery writers work on small datasets and leave nothing
half-written, ROAD reports progress, and a run's App settings (sidebar groups,
colours, active fields) follow it through rename and delete.
"""

from __future__ import annotations

import asyncio
import pathlib
import re

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

import gradcam_engine as ge
from gradcam_engine.audit.report import format_report
from gradcam_engine.runs import app_look

PLUGIN = "@cam-audit/cam-audit"
MODEL = "plugin_models:build_model"
RUN = "look"
# 17 photos that ship with scikit-image (grayscale ones are decoded to RGB)
PHOTOS = [
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "colorwheel",
    "camera",
    "coins",
    "moon",
    "page",
    "text",
    "brick",
    "grass",
    "gravel",
    "clock",
]
CLASSES = ("cat", "coffee", "rocket")


def uri(name: str) -> str:
    return f"{PLUGIN}/{name}"


@pytest.fixture(scope="module")
def photos17(tmp_root):
    root = pathlib.Path(tmp_root) / "photos17"
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, name in enumerate(PHOTOS):
        path = root / f"{name}.png"
        if not path.exists():
            Image.fromarray(np.asarray(getattr(skdata, name)())).save(path)
        label = CLASSES[i % 3]
        samples.append(
            fo.Sample(
                filepath=str(path),
                label=fo.Classification(label=label),
                ground_truth=fo.Detections(
                    detections=[
                        fo.Detection(label=label, bounding_box=[0.2, 0.2, 0.5, 0.5])
                    ]
                ),
            )
        )
    ds = fo.Dataset("cam-app-outcomes", overwrite=True)
    ds.add_samples(samples)
    ge.compute_cams(ds, MODEL, layers=["block", "stem"], run_key=RUN, progress=False)
    yield ds
    ds.delete()


def _run(ds, name: str, run_key: str = RUN, **params):
    """``foo.execute_operator`` without raising: the result keeps the executor,
    i.e. what the operator asked the App to show, also when it failed."""
    from fiftyone.operators.executor import (
        _parse_ctx,
        execute_or_delegate_operator,
    )

    request = _parse_ctx(
        ctx=dict(view=ds.view(), params=dict(run_key=run_key, **params))
    )
    return asyncio.run(execute_or_delegate_operator(uri(name), request, exhaust=True))


def _messages(result) -> list[tuple[str, dict]]:
    """What the operator asked the App to do (notifications, dialogs...)."""
    return [(r.operator_uri, r.params or {}) for r in result.executor._requests]


def _notes(result, variant: str) -> list[str]:
    return [
        p["message"]
        for op, p in _messages(result)
        if op.split("/")[-1] == "notify" and p.get("variant") == variant
    ]


def test_a_failing_operator_shows_its_error_in_the_app(photos17):
    result = _run(photos17, "road_cams", layer="block", model="broken-test-model")
    assert result.error is not None  # Python callers still get the exception
    errors = _notes(result, "error")
    assert errors and "broken-test-model" in errors[0], _messages(result)
    assert errors[0].startswith("CAM faithfulness (ROAD) failed: ")
    dialogs = [p for op, p in _messages(result) if op.split("/")[-1] == "show_output"]
    assert dialogs, "no error dialog"
    assert "look_block_road" not in photos17.get_field_schema()


def test_a_successful_score_confirms_with_counts(photos17):
    result = _run(photos17, "score_cams", gt_field="ground_truth")
    assert result.error is None, result.error
    done = _notes(result, "success")
    assert len(done) == 1, _messages(result)
    assert done[0].startswith(
        f"Score CAMs: {len(PHOTOS)} samples of {RUN} scored; mean focus block "
    ), done
    assert done[0].endswith("fields written"), done
    # the session takes the dataset's colour scheme (js/open_cam_sample.js)
    looks = [p for op, p in _messages(result) if op.split("/")[-1] == "apply_cam_look"]
    assert looks and looks[0]["color_scheme"]["colorBy"] == "value"
    scales = {c["path"]: c["name"] for c in looks[0]["color_scheme"]["colorscales"]}
    assert scales == {"look_block": "viridis", "look_stem": "viridis"}


def test_cluster_cams_on_17_samples_through_the_operator(photos17):
    result = _run(photos17, "cluster_cams", layer="block", by="none")
    assert result.error is None, result.error
    names = photos17.values("look_block_cluster")
    assert len(names) == 17 and all(n and n.startswith("all/") for n in names)
    plot = photos17.load_brain_results("look_block_clusters")
    assert plot is not None and plot.points.shape == (17, 2)
    done = _notes(result, "success")
    assert done and "17 samples of look_block in" in done[0], _messages(result)


def test_a_failed_cluster_run_leaves_nothing_half_written(photos17):
    from gradcam_engine.runs import cam_runs

    before = set(photos17.list_brain_runs())
    # UMAP is an optional extra (umap-learn): without it the plot step fails
    # after the cluster field was claimed and declared
    try:
        import umap  # noqa: F401

        pytest.fail("umap-learn is installed: this failure path needs it absent")
    except ImportError:
        pass
    with pytest.raises(Exception, match="umap"):
        ge.cluster_cams(photos17, RUN, layer="stem", visualization="umap")
    photos17.reload()
    assert "look_stem_cluster" not in photos17.get_field_schema()
    assert set(photos17.list_brain_runs()) == before
    info = cam_runs.get_cam_run(photos17, RUN)
    assert "look_stem_cluster" not in info.owned_fields
    assert "look_stem_clusters" not in (info.config.get("brain_keys") or [])


def test_road_reports_progress_during_the_run(photos17):
    calls: list[tuple[int, int]] = []
    ge.road_cams(
        photos17, RUN, layer="block", progress=lambda d, t: calls.append((d, t))
    )
    # 17 maps, one batch of 32 samples: reports while ROAD runs, not only at
    # the end (ROAD_CHUNK maps per report)
    assert len(calls) >= 3, calls
    assert calls[-1] == (17, 17) and calls[0][0] < 17
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_tiles_show_the_main_heatmap_not_the_bookkeeping(photos17):
    active = photos17.app_config.active_fields
    assert not active.exclude
    assert "look_block" in active.paths and "ground_truth" in active.paths
    for quiet in ("look_target", "look_prediction", "look_seen", "look_stem"):
        assert quiet not in active.paths, quiet
    # a newer run's main heatmap replaces it (two overlaid heatmaps hide each
    # other); deleting that run takes its heatmap out of the defaults
    ge.compute_cams(photos17, MODEL, layers=["stem"], run_key="look2", progress=False)
    paths = photos17.app_config.active_fields.paths
    assert "look2_stem" in paths and "look_block" not in paths
    photos17.delete_run("look2")
    assert "look2_stem" not in photos17.app_config.active_fields.paths


def test_rename_and_delete_leave_the_app_settings_clean(tmp_root):
    from test_operators import make_dataset

    ds = make_dataset(pathlib.Path(tmp_root) / "look_images", "cam-look-rename")
    ge.compute_cams(ds, MODEL, layers=["block"], run_key="old", progress=False)
    ge.score_cams(ds, "old", gt_field="ground_truth")
    ds.rename_run("old", "new")
    config = ds.app_config
    groups = {g.name: g.paths for g in config.sidebar_groups}
    assert "old" not in groups and "old details" not in groups
    assert "new_block" in groups["new"] and "new_block_focus" in groups["new"]
    assert "new_target" in groups["new details"]
    paths = {c["path"] for c in config.color_scheme.colorscales}
    assert paths == {"new_block"}
    assert "new_block" in config.active_fields.paths
    assert not [p for p in config.active_fields.paths if p.startswith("old_")]

    ds.delete_run("new")
    config = ds.app_config
    names = [g.name for g in config.sidebar_groups]
    assert "new" not in names and "new details" not in names
    assert all(g.paths or g.name not in ("new",) for g in config.sidebar_groups)
    assert not config.color_scheme.colorscales
    assert not [p for p in config.active_fields.paths if p.startswith("new_")]
    assert "ground_truth" in config.active_fields.paths
    ds.delete()


def test_app_look_keeps_a_users_own_groups(tmp_root):
    """A field the user put in the run's group keeps the group on delete."""
    from test_operators import make_dataset

    ds = make_dataset(pathlib.Path(tmp_root) / "look_images2", "cam-look-user")
    ge.compute_cams(ds, MODEL, layers=["block"], run_key="mine", progress=False)
    ds.add_sample_field("note", fo.StringField)
    groups = ds.app_config.sidebar_groups
    next(g for g in groups if g.name == "mine").paths.append("note")
    ds.app_config.sidebar_groups = groups
    ds.save()
    ds.delete_run("mine")
    kept = {g.name: g.paths for g in ds.app_config.sidebar_groups}
    assert kept.get("mine") == ["note"]
    assert app_look.details_group("mine") not in kept
    ds.delete()


def test_dialogs_show_rounded_numbers_and_no_empty_tables(photos17):
    """The class report's numbers are rounded; the status of a run computed in
    one process has no (empty) "Delegated shards" table."""
    from fiftyone.operators.executor import ExecutionContext

    if "look_block_focus" not in photos17.get_field_schema():  # run alone (-k)
        ge.score_cams(photos17, RUN, gt_field="ground_truth")
    report = foo_call(photos17, "cam_class_report", layer="block")
    floats = [v for row in report["rows"] for v in row.values() if type(v) is float]
    assert floats and all(round(v, 3) == v for v in floats), report["rows"]

    status = foo_call(photos17, "cam_run_status")
    assert status["shards"] == []
    ctx = ExecutionContext(
        request_params=dict(
            dataset_name=photos17.name,
            view=photos17.view()._serialize(),
            params={"run_key": RUN},
            results=status,
        ),
        operator_uri=uri("cam_run_status"),
    )
    import fiftyone.operators as foo

    outputs = foo.get_operator(uri("cam_run_status")).resolve_type(ctx, "outputs")
    assert "shards" not in outputs.type.properties
    assert outputs.type.properties["done"] is not None


def foo_call(ds, name: str, **params):
    result = _run(ds, name, **params)
    assert result.error is None, result.error
    return result.result


# ---------------------------------------------------------------- dialog details


def test_app_errors_say_what_to_do_in_the_app(photos17):
    """The same refusal: Python advice for Python callers, the form's field
    for the App."""
    app = {"model": "plugin-test-model", "run_key": "advice"}
    cases = [
        (dict(target="class", target_class="no-such-class"), "'Class'", "classes=["),
        (dict(layers=["nope"]), "Suggest this model's layers", "layer_names(model)"),
    ]
    for params, app_advice, python_advice in cases:
        result = _run(photos17, "compute_cams", **app, **params)
        assert result.error is not None
        (error,) = _notes(result, "error")
        assert app_advice in error and python_advice not in error, error
        dialog = [p for op, p in _messages(result) if op.endswith("show_output")]
        assert app_advice in str(dialog) and python_advice not in str(dialog)
        kwargs = dict(params)
        if "target_class" in kwargs:
            kwargs = {"target": kwargs["target_class"]}
        with pytest.raises(ValueError, match=re.escape(python_advice)):
            ge.compute_cams(photos17, MODEL, run_key="advice", progress=False, **kwargs)
    assert "advice" not in photos17.list_runs()


def test_progress_ends_on_the_last_count_and_lists_every_field(photos17):
    """The last progress notice is the final count; "Fields written" holds
    what the form said the run would write, score fields included."""
    from test_operators import resolve_form

    params = dict(
        model="plugin-test-model",
        layers=["block", "stem"],
        batch_size=2,
        score=True,
        gt_field="ground_truth",
    )
    form = resolve_form("compute_cams", photos17, dict(params, run_key="fields"))
    notice = form.type.properties["writes"].view.description
    promised = set(re.findall(r"`([^`]+)`", notice))
    result = _run(photos17, "compute_cams", run_key="fields", **params)
    try:
        assert result.error is None, result.error
        progress = [n for n in _notes(result, "info") if n.startswith("Computing")]
        assert progress and progress[-1] == f"Computing CAMs: {len(PHOTOS)}/17"
        (shown,) = [p for op, p in _messages(result) if op.endswith("show_output")]
        assert "Most common errors" not in str(shown["outputs"])  # none here
        written = set(shown["results"]["fields"])
        assert "fields_seen" in written and "fields_block_focus" in written
        assert written == promised, written ^ promised
    finally:
        photos17.delete_run("fields")


def test_suggest_layers_names_the_default_layer(photos17):
    from test_operators import resolve_form

    form = resolve_form(
        "compute_cams",
        photos17,
        {"model": "plugin-test-model", "list_layers": True, "run_key": "x"},
    )
    notice = form.type.properties["default_layers"].view
    assert notice.label == "Default layer of plugin-test-model: block", notice.label
    choices = form.type.properties["layers"].view.choices
    labels = {c.value: c.label for c in choices}
    assert labels["block"] == "block (default)" and labels["stem"] == "stem"


def test_class_report_says_when_labels_are_not_the_models_classes(photos17):
    if "look_block_focus" not in photos17.get_field_schema():  # run alone (-k)
        ge.score_cams(photos17, RUN, gt_field="ground_truth")
    other = {"cat": "feline", "coffee": "drink", "rocket": "spacecraft"}
    photos17.set_values(
        "kind",
        [fo.Classification(label=other[c.label]) for c in photos17.values("label")],
    )
    try:
        report = foo_call(photos17, "cam_class_report", label_field="kind")
        assert "not among the model's class names" in report["note"], report
        assert "'feline'" in report["note"]
        assert all(row["accuracy"] is None for row in report["rows"]), report
        dialog = _report_dialog(photos17, report)
        assert "note" in dialog.type.properties  # the dialog says it too
        with pytest.warns(UserWarning, match="not among the model's class names"):
            frame = ge.class_report(photos17, RUN, "block", label_field="kind")
        assert "not among" in format_report(frame)
        # the model's own class names: accuracy measured, nothing said
        fine = foo_call(photos17, "cam_class_report", label_field="label")
        assert fine["note"] is None
        assert any(row["accuracy"] is not None for row in fine["rows"])
    finally:
        photos17.delete_sample_field("kind")


def test_cluster_help_names_the_runs_own_brain_key(photos17):
    from fiftyone.operators.executor import ExecutionContext

    from operators import discovery_panel, review_data

    if "look_block_cluster" not in photos17.get_field_schema():  # run alone (-k)
        test_cluster_cams_on_17_samples_through_the_operator(photos17)
    if "look_block_focus" not in photos17.get_field_schema():
        ge.score_cams(photos17, RUN, gt_field="ground_truth")
    ctx = ExecutionContext(request_params=dict(dataset_name=photos17.name))
    src = review_data.sources(photos17)[f"{RUN}/block"]
    text = discovery_panel.cluster_help(ctx, src)
    assert "brain key `look_block_clusters`" in text, text
    assert "colour by `look_block_cluster`" in text and "<" not in text


def test_the_panel_says_why_samples_have_no_score(tmp_root):
    """A sample whose image cannot be read and one without boxes: the panel's
    summary counts each reason instead of leaving them out silently."""
    from test_operators import make_dataset

    from operators import review_data

    ds = make_dataset(pathlib.Path(tmp_root) / "reason_images", "cam-reasons")
    try:
        broken = pathlib.Path(tmp_root) / "reason_images" / "broken.png"
        broken.write_bytes(b"not a png")
        ds.add_sample(fo.Sample(filepath=str(broken)))
        ge.compute_cams(ds, MODEL, layers=["block"], run_key="why", progress=False)
        first = ds.first()
        first.ground_truth = fo.Detections()
        first.save()
        ge.score_cams(ds, "why", gt_field="ground_truth")
        src = review_data.sources(ds)["why/block"]
        text = review_data.unscored(ds.view(), src, None)
        assert text.startswith("2 without a score: "), text
        assert "1 failed (their `why_error` says why)" in text
        assert "1 no objects in `ground_truth` to score against" in text
        assert review_data.unscored(ds.exists("why_block_focus"), src, None) == ""
    finally:
        ds.delete()


def _report_dialog(ds, results: dict):
    """The class report's dialog (resolve_output) for ``results``."""
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(
        request_params=dict(
            dataset_name=ds.name,
            view=ds.view()._serialize(),
            params={"run_key": RUN},
            results=results,
        ),
        operator_uri=uri("cam_class_report"),
    )
    return foo.get_operator(uri("cam_class_report")).resolve_type(ctx, "outputs")
