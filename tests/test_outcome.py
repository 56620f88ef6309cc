"""Run outcomes are honest, and a run's heatmaps are readable in the App.

Real datasets of real photos and a small real model (``plugin_models``).
"""

from __future__ import annotations

import pathlib
import sys

import fiftyone as fo
import pytest

TESTS = pathlib.Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from test_operators import PHOTOS, make_dataset  # noqa: E402

import gradcam_engine as ge  # noqa: E402


@pytest.fixture()
def dataset(tmp_root, request):
    ds = make_dataset(tmp_root / "outcome_images", f"outcome-{request.node.name}")
    yield ds
    ds.delete()


def run(ds, run_key, **kwargs):
    kwargs.setdefault("layers", ["block"])
    return ge.compute_cams(
        ds,
        "plugin_models:build_model",
        run_key=run_key,
        progress=False,
        num_workers=0,
        **kwargs,
    )


def test_unknown_label_classes_are_refused_before_any_write(dataset):
    dataset.set_values("shape", [fo.Classification(label="circle")] * len(dataset))
    before = set(dataset.get_field_schema())
    with pytest.raises(ValueError, match="not classes of the model: 'circle'"):
        run(dataset, "gt", target="label", label_field="shape")
    assert set(dataset.get_field_schema()) == before
    assert "gt" not in dataset.list_runs()


def test_a_run_where_every_sample_fails_raises_with_the_reasons(dataset, tmp_root):
    for sample in dataset:
        sample.filepath = str(tmp_root / "gone" / pathlib.Path(sample.filepath).name)
        sample.save()
    with pytest.raises(ge.CamRunFailed, match="No sample succeeded") as caught:
        run(dataset, "dead")
    summary = caught.value.summary
    assert (summary.num_computed, summary.num_errors) == (0, len(PHOTOS))
    (message, count), *_ = summary.common_errors()
    assert count == len(PHOTOS) and "not found" in message.lower()
    assert str(len(PHOTOS)) + " x" in str(caught.value)


def test_summary_counts_and_fields_written(dataset):
    summary = run(dataset, "ok", layers=["stem", "block"])
    assert (summary.num_computed, summary.num_reused, summary.num_errors) == (
        len(PHOTOS),
        0,
        0,
    )
    assert {"ok_stem", "ok_block", "ok_block_strength", "ok_error"} <= set(
        summary.fields_written
    )
    again = run(dataset, "ok", layers=["stem", "block"])
    assert (again.num_computed, again.num_reused) == (0, len(PHOTOS))
    outcome = ge.get_cam_run(dataset, "ok").config["outcome"]
    assert outcome["reused"] == len(PHOTOS) and "0 failed" in outcome["headline"]


def test_heatmaps_get_a_colorscale_and_the_sidebar_groups_the_run(dataset):
    dataset.app_config.color_scheme = fo.ColorScheme(opacity=0.9)
    dataset.save()
    run(dataset, "look", layers=["stem", "block"])
    ge.score_cams(dataset, "look", gt_field="ground_truth")
    dataset.reload()
    scheme = dataset.app_config.color_scheme
    scales = {c["path"]: c["name"] for c in scheme.colorscales}
    assert scales == {"look_stem": "viridis", "look_block": "viridis"}
    assert scheme.opacity == 0.9  # the user's choice is kept
    assert scheme.color_by == "value"  # the App's colorscales need it
    groups = {g.name: g for g in dataset.app_config.sidebar_groups}
    assert groups["look"].paths[:2] == ["look_stem", "look_block"]
    assert "look_block_focus" in groups["look"].paths
    assert groups["look"].expanded is True
    details = groups["look details"]
    assert details.expanded is False
    assert {"look_target", "look_prediction", "look_error"} <= set(details.paths)
    assert "look_block_strength" in details.paths
    others = [p for n, g in groups.items() if not n.startswith("look") for p in g.paths]
    assert not [p for p in others if p.startswith("look_")]
