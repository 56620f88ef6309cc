"""A Clever-Hans shortcut found without boxes, and proven.

A small CNN is trained on circles and crosses where 80% of the circles carry a
watermark in the corner (crosses never): it learns the mark as a second rule
for "circle". On test images marked at random, each also drawn without the
mark (the counterfactual truth):

- cluster_cams puts the maps that sit on the mark into one cluster, with high
  purity and recall, without looking at any box;
- background_test (objects kept, the rest blurred) flags the samples whose
  prediction the mark causes, i.e. the prediction differs on the clean image;
- road_cams equals pytorch-grad-cam's ROADCombined on the same map and model.
"""

from __future__ import annotations

from types import SimpleNamespace

import fiftyone as fo
import numpy as np
import pytest
import torch
from marked_run import marked_run

from gradcam_engine.audit.clusters import cluster_cams
from gradcam_engine.audit.counterfactual import road_scores
from gradcam_engine.audit.export import export_review
from gradcam_engine.audit.model_checks import background_test, map_to_input, road_cams
from gradcam_engine.audit.raw_reads import raw_heatmap
from gradcam_engine.audit.report import class_report
from gradcam_engine.audit.scoring import score_cams
from gradcam_engine.demo import marked_data as md
from gradcam_engine.demo import shortcut_data as sd
from gradcam_engine.demo import shortcut_model as sm
from gradcam_engine.runs.cam_runs import delete_cam_run, get_cam_run
from gradcam_engine.sources.geometry import TransformGeometry
from gradcam_engine.sources.models import LoadedModel
from operators import discovery_panel

N_TEST = 200
F = "hans_block4"


@pytest.fixture(scope="module")
def hans(tmp_path_factory):
    ds, model, test = marked_run(tmp_path_factory.mktemp("marked"), N_TEST, "disc")
    with_mark = sm.predict(model, np.stack([s.image for s in test]))
    without = sm.predict(model, np.stack([s.clean for s in test]))
    yield {"ds": ds, "model": model, "test": test, "caused": with_mark != without}
    ds.delete()


def _by_filepath(ds, field):
    """``field``'s values in the order the samples were generated."""
    return ds.sort_by("filepath").values(field)


def test_the_mark_is_a_real_shortcut(hans):
    # The model uses the mark on part of the test set, not on all of it.
    assert 20 <= hans["caused"].sum() <= 120


def test_clusters_find_the_mark_without_boxes(hans):
    ds = hans["ds"]
    result = cluster_cams(ds, "hans", visualization="pca")
    assert result["fields"] == [f"{F}_cluster"]
    names = np.array(_by_filepath(ds, f"{F}_cluster"), dtype=object)
    predicted = np.array(_by_filepath(ds, "hans_prediction.label"))
    marked = np.array([s.marked for s in hans["test"]])
    # Maps that sit on the mark: marked samples predicted "circle".
    on_mark = marked & (predicted == md.MARK_CLASS)
    cue = max(set(names), key=lambda c: (on_mark & (names == c)).sum())
    members = names == cue
    purity = (on_mark & members).sum() / members.sum()
    recall = (on_mark & members).sum() / on_mark.sum()
    print(f"cue cluster {cue}: purity {purity:.3f}, recall {recall:.3f}")
    assert cue.startswith("circle/")
    assert purity >= 0.95 and recall >= 0.9, (purity, recall)
    # The cluster summary: its mean map is hottest where the mark is.
    summary = {c["name"]: c for c in result["clusters"][F]}
    assert summary[cue]["size"] == members.sum()
    assert sum(summary[cue]["class_mix"].values()) == members.sum()
    mean = np.array(summary[cue]["mean_map"])
    row, col = np.unravel_index(mean.argmax(), mean.shape)
    x0, y0, x1, y1 = md.mark_box(16 * 4)
    assert row * 4 < y1 + 4 and col * 4 < x1 + 4, (row, col)
    # The Embeddings panel has the heatmap-space plot, and the run owns it all.
    assert f"{F}_clusters" in ds.list_brain_runs()
    info = get_cam_run(ds, "hans")
    assert f"{F}_cluster" in info.owned_fields
    assert info.config["brain_keys"] == [f"{F}_clusters"]


def test_background_test_flags_what_the_mark_causes(hans):
    ds = hans["ds"]
    summary = background_test(
        ds, "hans", "objects", hans["model"], transforms=sm.transforms()
    )
    assert summary["num_tested"] == N_TEST
    flips = np.array(_by_filepath(ds, "hans_bg_flip"))
    caused = hans["caused"]
    agreement = (flips == caused).mean()
    precision = (flips & caused).sum() / flips.sum()
    recall = (flips & caused).sum() / caused.sum()
    print(
        f"bg_flip vs counterfactual truth: agreement {agreement:.3f}, precision "
        f"{precision:.3f}, recall {recall:.3f} ({caused.sum()} caused)"
    )
    assert agreement >= 0.97 and precision >= 0.9 and recall >= 0.9, (
        agreement,
        precision,
        recall,
    )
    drops = np.array(_by_filepath(ds, "hans_bg_drop"))
    assert drops[flips].mean() > 0.3 > abs(drops[~flips].mean())
    # The run's own fields are recomputed without overwrite=True.
    again = background_test(
        ds, "hans", "objects", hans["model"], transforms=sm.transforms()
    )
    assert again["flip_rate"] == pytest.approx(flips.mean())


def test_report_and_review_show_flips_and_clusters(hans, tmp_path):
    # Runs after the cluster and background tests (module order): no focus
    # scores (no score_cams), yet the report has the discovery columns.
    ds = hans["ds"]
    report = class_report(ds, "hans", label_field="ground_truth")
    assert list(report.columns[-3:]) == ["bg_flip_rate", "mean_bg_drop", "cluster_mix"]
    flips = np.array(_by_filepath(ds, "hans_bg_flip"))
    labels = np.array([s.label for s in hans["test"]])
    for cls in sd.CLASSES:
        expected = flips[labels == cls].mean()
        assert report.loc[cls, "bg_flip_rate"] == pytest.approx(expected)
    assert report.loc["(all)", "bg_flip_rate"] == pytest.approx(flips.mean())
    assert "circle/" in report.loc["cross", "cluster_mix"]
    assert report["mean_focus"].isna().all()
    with open(export_review(ds, "hans", tmp_path / "review.html")) as f:
        page = f.read()
    assert 'id="clusters"' in page and "flips w/o background" in page
    clusters = get_cam_run(ds, "hans").config["clusters"][F]["clusters"]
    assert page.count('class="card cluster"') == len(clusters)


def test_operators_cluster_and_test_through_fiftyone(hans):
    import fiftyone.operators as foo

    ds = hans["ds"].clone()
    try:
        plugin = "@cam-audit/cam-audit"
        result = foo.get_operator(f"{plugin}/cluster_cams")(
            ds, "hans", by="none", n_clusters=3
        )
        result.raise_exceptions()
        names = ds.values(f"{F}_cluster")
        assert set(names) == {"all/0", "all/1", "all/2"}
        # The review panel: a cluster table for the chosen run/layer, a click
        # filters to a cluster, a button shows the background flips.
        score_cams(ds, "hans", "objects")
        background_test(
            ds, "hans", "objects", hans["model"], transforms=sm.transforms()
        )
        src = dict(run_key="hans", heatmap=F)
        rows = discovery_panel.cluster_rows(SimpleNamespace(dataset=ds, view=ds), src)
        assert [r["cluster"] for r in rows] == ["all/0", "all/1", "all/2"]
        assert sum(r["size"] for r in rows) == len(ds)
        flips = np.array(ds.values("hans_bg_flip"))
        names = np.array(names)
        for r in rows:
            assert r["flip_rate"] == f"{flips[names == r['cluster']].mean():.0%}"
        state = dict(source="hans/block4", clusters=rows)
        for method, params in (
            ("on_load", {}),
            ("on_click_cluster", {"row": 1}),
            ("show_flips", {}),
        ):
            foo.execute_operator(
                f"{plugin}/cam_review",
                ctx=dict(
                    view=ds.view(),
                    params=dict(
                        panel_id="p1", __method__=method, state=state, **params
                    ),
                ),
            ).raise_exceptions()
        # The model is no registered source: the operator's error says so.
        with pytest.raises(Exception, match=r"model: run 'hans' was computed with"):
            foo.get_operator(f"{plugin}/background_test")(
                ds, "hans", gt_field="objects"
            ).raise_exceptions()
    finally:
        ds.delete()


def test_discovery_forms_show_run_layer_and_their_own_inputs(hans):
    """Each discovery form: view, CAM run (a layer where it takes one), its own
    inputs, Delegate; the objects default to the only object field."""
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ds, plugin = hans["ds"], "@cam-audit/cam-audit"
    expected = {
        "cluster_cams": ["run_key", "layer", "by", "n_clusters", "delegate"],
        "background_test": ["run_key", "gt_field", "fill", "model", "delegate"],
        "road_cams": ["run_key", "layer", "model", "delegate"],
    }
    for name, inputs in expected.items():
        ctx = ExecutionContext(
            request_params=dict(
                dataset_name=ds.name,
                view=ds.view()._serialize(),
                params={"run_key": "hans"},
            ),
            operator_uri=f"{plugin}/{name}",
        )
        form = foo.get_operator(f"{plugin}/{name}").resolve_type(ctx, "inputs")
        props = form.type.properties
        assert [p for p in props if p != "view_target"] == inputs, name
        if "layer" in props:
            assert props["layer"].default == "block4"
    assert props["model"].type is not None
    ctx = ExecutionContext(
        request_params=dict(
            dataset_name=ds.name, view=ds.view()._serialize(), params={}
        ),
        operator_uri=f"{plugin}/background_test",
    )
    form = foo.get_operator(f"{plugin}/background_test").resolve_type(ctx, "inputs")
    assert form.type.properties["gt_field"].default == "objects"


def test_road_equals_pytorch_grad_cam(hans):
    ds, model = hans["ds"], hans["model"]
    view = ds.sort_by("filepath").limit(6)
    result = road_cams(view, "hans", model=model, transforms=sm.transforms(), seed=3)
    ours = np.array(view.values(f"{F}_road"))
    x = torch.stack([sm.transforms()(_img(p)) for p in view.values("filepath")])
    # The stored maps on the input grid, as road_cams reads them through the
    # transforms' probed geometry (here an identity up to the probe's fit).
    stored = np.stack([raw_heatmap(h.to_dict()) for h in view.values(F)])
    geometry = TransformGeometry(sm.transforms())((64, 64))
    cams = np.stack([map_to_input(m, geometry) for m in stored])
    assert cams.shape == (6, 64, 64) and np.abs(cams - stored).max() < 0.05
    targets = [sd.CLASSES.index(t) for t in view.values("hans_target.label")]
    theirs = road_scores(model, x, cams, targets, (20, 40, 60, 80), seed=3)
    assert np.array_equal(ours.astype(np.float32), theirs)
    assert result["mean_road"]["block4"] == pytest.approx(float(ours.mean()))
    # Faithful maps beat their own inverse: removing what the map says matters
    # hurts the model more than removing what it says does not.
    inverse = road_scores(model, x, 1 - cams, targets, (20, 40, 60, 80), seed=3)
    assert ours.mean() > inverse.mean() + 0.1


def _img(path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def test_bad_arguments_are_named(hans):
    ds = hans["ds"]
    with pytest.raises(ValueError, match=r"by must be one of .*got 'colour'"):
        cluster_cams(ds, "hans", by="colour")
    with pytest.raises(ValueError, match=r"n_clusters must be a positive int .*got 0"):
        cluster_cams(ds, "hans", n_clusters=0)
    with pytest.raises(ValueError, match=r"size must be an int >= 2, got 1"):
        cluster_cams(ds, "hans", size=1)
    with pytest.raises(ValueError, match=r"visualization must be one of .*'3d'"):
        cluster_cams(ds, "hans", visualization="3d")
    with pytest.raises(ValueError, match=r"layers: 'block9' is not a layer"):
        cluster_cams(ds, "hans", "block9")
    with pytest.raises(ValueError, match=r"by='label' needs a class field"):
        cluster_cams(ds, "hans", by="label")
    with pytest.raises(ValueError, match=r"fill must be one of .*got 'sepia'"):
        background_test(ds, "hans", "objects", hans["model"], fill="sepia")
    with pytest.raises(ValueError, match=r"model: run 'hans' was computed with"):
        background_test(ds, "hans", "objects", transforms=sm.transforms())
    with pytest.raises(ValueError, match=r"transforms: .* differ from the run's"):
        background_test(ds, "hans", "objects", LoadedModel(hans["model"]))
    with pytest.raises(ValueError, match=r"gt_field 'nothing' does not exist"):
        background_test(ds, "hans", "nothing", hans["model"])


def test_foreign_fields_and_brain_keys_are_refused(hans):
    import fiftyone.brain as fob

    ds = hans["ds"].clone()
    try:
        # A field of the same name that the run does not own.
        if "hans_bg_flip" not in ds.get_field_schema():
            ds.add_sample_field("hans_bg_flip", fo.BooleanField)
        _drop_owned(ds, ["hans_bg_flip", "hans_bg_drop"])
        with pytest.raises(
            ValueError,
            match=r"field 'hans_bg_flip'.*field 'hans_bg_drop'.*does not own",
        ):
            background_test(
                ds, "hans", "objects", hans["model"], transforms=sm.transforms()
            )
        background_test(
            ds.limit(4),
            "hans",
            "objects",
            hans["model"],
            transforms=sm.transforms(),
            overwrite=True,
        )
        assert ds.limit(4).values("hans_bg_flip").count(None) == 0
        fob.compute_visualization(
            ds, embeddings=np.random.rand(len(ds), 4), brain_key="mine", method="pca"
        )
        with pytest.raises(ValueError, match=r"brain_key 'mine' already exists"):
            cluster_cams(ds, "hans", brain_key="mine", visualization="pca")
        # Deleting the run takes its cluster fields and plots along.
        cluster_cams(ds, "hans", visualization="pca", overwrite=True)
        assert f"{F}_clusters" in ds.list_brain_runs()
        delete_cam_run(ds, "hans")
        assert not [f for f in ds.get_field_schema() if f.startswith("hans_")]
        assert ds.list_brain_runs() == ["mine"]
    finally:
        ds.delete()


def _drop_owned(ds, fields):
    from gradcam_engine.runs import cam_runs

    info = get_cam_run(ds, "hans")
    cam_runs.update_run_config(
        ds, "hans", owned_fields=[f for f in info.owned_fields if f not in fields]
    )


def test_renaming_a_run_moves_its_cluster_plots(hans):
    """FiftyOne's rename_run moves the brain runs cluster_cams made for the run
    (``F_clusters`` -> the new prefix; a key the user chose keeps its name) and
    the cluster summaries; a foreign brain run in the way refuses the rename
    before anything moves; delete_run removes the moved plots."""
    import fiftyone.brain as fob

    from gradcam_engine.runs.cam_runs import rename_cam_run

    ds = hans["ds"].clone()
    try:
        cluster_cams(ds, "hans", by=None, n_clusters=2, visualization="pca")
        cluster_cams(
            ds, "hans", by=None, n_clusters=2, visualization="pca", brain_key="plot"
        )
        assert sorted(ds.list_brain_runs()) == [f"{F}_clusters", "plot"]
        names = ds.values(f"{F}_cluster")

        # Something else in the way: refused, nothing moved.
        fob.compute_visualization(
            ds,
            embeddings=np.random.rand(len(ds), 4),
            brain_key="next_block4_clusters",
            method="pca",
        )
        with pytest.raises(ValueError, match=r"'next_block4_clusters'.* already"):
            rename_cam_run(ds, "hans", "next")
        assert "hans" in ds.list_runs() and f"{F}_clusters" in ds.list_brain_runs()
        ds.delete_brain_run("next_block4_clusters")

        ds.rename_run("hans", "next")  # FiftyOne's own command
        assert sorted(ds.list_brain_runs()) == ["next_block4_clusters", "plot"]
        info = get_cam_run(ds, "next")
        assert sorted(info.config["brain_keys"]) == ["next_block4_clusters", "plot"]
        assert list(info.config["clusters"]) == ["next_block4"]
        assert ds.values("next_block4_cluster") == names
        results = ds.load_brain_results("next_block4_clusters")
        assert len(results.points) == len(ds)
        assert ds.get_brain_info("next_block4_clusters").key == "next_block4_clusters"

        delete_cam_run(ds, "next")
        assert ds.list_brain_runs() == []
    finally:
        ds.delete()
