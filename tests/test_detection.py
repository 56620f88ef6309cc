"""Object detectors (issue 20, DESIGN contract 10): one map per detection,
focus per detection against its own box, on real FiftyOne datasets.

The known-truth detector follows torchvision's convention; its score for
box A depends only on the pixels inside A, its score for box B only on a
patch P elsewhere: a faithful per-detection map has high focus for A and low
for B. A real torchvision Faster R-CNN runs end to end too.
"""

from __future__ import annotations

import logging
import pathlib

import fiftyone as fo
import pytest
import torch
import torchvision
from detection_models import CLASSES, KnownTruthDetector, known_truth_image, regions
from fiftyone import ViewField as F
from fiftyone.operators.executor import ExecutionError
from PIL import Image
from torch import nn

from gradcam_engine import (
    class_report,
    compute_cams,
    get_cam_run,
    rename_cam_run,
    save_review_views,
    score_cams,
)
from gradcam_engine.audit.export import export_review
from gradcam_engine.audit.object_maps import object_rows
from gradcam_engine.engine.detection import DetectionCamEngine
from gradcam_engine.engine.detection_targets import DetectionScoreTarget
from gradcam_engine.runs.detections import input_box, original_box
from gradcam_engine.sources.geometry import TransformGeometry
from operators import review_data, review_panel

# one torch thread: on 2 shared cores the thread pools spin against each other
# (the Faster R-CNN run took 7.6 s with two threads, 2.2 s with one)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("method", ["layercam", "hirescam", "gradcam"])
def test_engine_known_truth_focus(method):
    x = torch.from_numpy(known_truth_image(48, 64)).permute(2, 0, 1)[None] / 255.0
    x = x.repeat(2, 1, 1, 1)
    engine = DetectionCamEngine(
        KnownTruthDetector(), ["features"], method, confidence_thresh=0.0
    )
    result = engine.compute(x)
    for explained in result.explained:  # both images, both detections
        by_label = {e.label: e for e in explained}
        assert by_label[1].focus[0] > 0.9, by_label[1].focus
        assert by_label[2].focus[0] < 0.1, by_label[2].focus
        assert by_label[1].maps.shape == (1, 48, 64)
    # target boxes: the given box is explained through the matching detection
    a = regions(48, 64)["A"]
    result = engine.compute(x[:1], [[(1, a), (2, [0, 0, 5, 5])]])
    matched, unmatched = result.explained[0]
    assert matched.index == 0 and matched.focus[0] > 0.9
    assert unmatched.index is None and unmatched.maps is None


def test_engine_scores_without_gradient_need_eigencam():
    x = torch.from_numpy(known_truth_image(48, 64)).permute(2, 0, 1)[None] / 255.0
    model = KnownTruthDetector(detach_scores=True)
    engine = DetectionCamEngine(model, ["features"], "gradcam", confidence_thresh=0.0)
    with pytest.raises(RuntimeError, match="no gradient.*method='eigencam'"):
        engine.compute(x)
    result = DetectionCamEngine(
        model, ["features"], "eigencam", confidence_thresh=0.0
    ).compute(x)
    first, second = result.explained[0]
    assert torch.equal(first.maps, second.maps)  # one map per image
    with pytest.raises(ValueError, match="method 'scorecam' cannot explain"):
        DetectionCamEngine(model, ["features"], "scorecam")


def test_detection_score_target_matches_label_then_iou():
    outputs = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]]),
        "labels": torch.tensor([2, 1, 1]),
        "scores": torch.tensor([0.9, 0.6, 0.3]),
    }
    # pytorch-grad-cam's target takes the best-IoU box of any label (the
    # label-2 one) and then drops it; this one picks the label-1 detection
    assert float(DetectionScoreTarget(1, [0, 0, 10, 10])(outputs)) == pytest.approx(0.6)
    assert float(DetectionScoreTarget(1, [40, 40, 50, 50])(outputs)) == 0.0


def test_boxes_round_trip_through_the_geometry():
    T = torchvision.transforms
    resize = T.Compose([T.Resize((32, 48)), T.ToTensor()])
    geometry = TransformGeometry(resize)((96, 64))
    box = original_box([12, 8, 24, 16], (96, 64), geometry, (32, 48))
    assert box == pytest.approx([0.25] * 4, abs=5e-3)  # a fitted geometry
    back = input_box(box, (96, 64), geometry, (32, 48))
    assert back == pytest.approx([12, 8, 24, 16], abs=1e-3)


@pytest.fixture(scope="module")
def known_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("detection")
    ds = fo.Dataset()
    samples = []
    for k, (h, w) in enumerate([(48, 64), (48, 64), (60, 80)]):
        path = root / f"img{k}.png"
        Image.fromarray(known_truth_image(h, w)).save(path)
        r = regions(h, w)
        gts = [
            fo.Detection(
                label=name,
                bounding_box=[
                    r[name][0] / w,
                    r[name][1] / h,
                    (r[name][2] - r[name][0]) / w,
                    (r[name][3] - r[name][1]) / h,
                ],
            )
            for name in ("A", "B")
        ]
        gts.append(fo.Detection(label="A", bounding_box=[0.0, 0.85, 0.1, 0.1]))
        samples.append(
            fo.Sample(filepath=str(path), ground_truth=fo.Detections(detections=gts))
        )
    ds.add_samples(samples)
    return ds


def run(ds, model, **kwargs):
    kwargs.setdefault("layers", ["features"])
    kwargs.setdefault("method", "layercam")
    kwargs.setdefault("run_key", "det")
    kwargs.setdefault("classes", CLASSES)
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("confidence_thresh", 0.0)
    return compute_cams(ds, model, task="detection", **kwargs)


def test_known_truth_detector_on_a_dataset(known_dataset):
    ds = known_dataset
    summary = run(ds, KnownTruthDetector(), batch_size=2)
    assert summary.num_errors == 0 and summary.num_computed == 3
    schema = ds.get_field_schema()
    assert "det_detections" in schema and "det_features" in schema
    for sample in ds:
        dets = {d.label: d for d in sample.det_detections.detections}
        assert dets["A"]["features_focus"] > 0.9
        assert dets["B"]["features_focus"] < 0.1
        # its own map over the whole original image, where B's evidence is
        own = dets["B"]["features_map"].map
        h, w = own.shape
        x0, y0, x1, y1 = regions(h, w)["P"]
        assert own[y0:y1, x0:x1].mean() > 5 * own.mean()
        # boxes relative to the original image
        assert dets["A"].bounding_box == pytest.approx(
            sample.ground_truth.detections[0].bounding_box, abs=0.02
        )
        assert sample.det_features.map.max() > 0  # the combined map
        assert sample.det_prediction.label in ("A", "B")
    # the same call resumes (nothing to do); other detection settings refuse
    again = run(ds, KnownTruthDetector(), batch_size=2)
    assert again.num_skipped == 3 and again.num_computed == 0
    with pytest.raises(ValueError, match="different config.*detection"):
        run(ds, KnownTruthDetector(), confidence_thresh=0.3)
    low = ds.filter_labels("det_detections", F("features_focus") < 0.5)
    assert low.count("det_detections.detections") == 3
    assert set(low.distinct("det_detections.detections.label")) == {"B"}
    assert "det_detections" in get_cam_run(ds, "det").owned_fields

    # target="label": each ground-truth box, matched or carrying an error
    run(
        ds,
        KnownTruthDetector(),
        run_key="gt",
        target="label",
        label_field="ground_truth",
    )
    sample = ds.first()
    a, b, nowhere = sample.gt_detections.detections
    assert a["features_focus"] > 0.9 and b["features_focus"] < 0.1
    assert a.gt_id == sample.ground_truth.detections[0].id
    assert "no detection of class 'A'" in nowhere["error"]
    assert not nowhere.has_field("features_focus")

    # FiftyOne's own rename / delete move or remove the new field
    ds.rename_run("gt", "gt2")
    assert "gt2_detections" in ds.get_field_schema()
    assert "gt_detections" not in ds.get_field_schema()
    ds.delete_run("gt2")
    assert not any(name.startswith("gt2_") for name in ds.get_field_schema())


def test_a_non_detector_is_refused_before_registration(known_dataset):
    classifier = torchvision.models.resnet18(weights=None, num_classes=3)
    with pytest.raises(RuntimeError, match="task='detection' needs a detector"):
        run(known_dataset, classifier, run_key="notdet", layers=["layer4"])

    class Logits(nn.Module):  # takes the list, returns a tensor
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, images):
            return self.conv(torch.stack(list(images))).mean(dim=(2, 3))

    with pytest.raises(TypeError, match="returned Tensor.*torchvision's convention"):
        run(known_dataset, Logits(), run_key="notdet", layers=None)
    assert "notdet" not in known_dataset.list_runs()
    assert "notdet_detections" not in known_dataset.get_field_schema()


def test_torchvision_faster_rcnn_end_to_end(known_dataset):
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=3,
        box_score_thresh=0.0,
        # small internal canvas and few proposals: the plumbing, fast
        min_size=96,
        max_size=128,
        rpn_pre_nms_top_n_test=50,
        rpn_post_nms_top_n_test=20,
    ).eval()
    summary = run(
        known_dataset,
        model,
        layers=None,  # the detector's default: its backbone (FPN levels)
        method="gradcam",
        run_key="frcnn",
        max_detections=2,
        batch_size=2,
    )
    assert summary.num_errors == 0, summary
    assert get_cam_run(known_dataset, "frcnn").layers == ["backbone"]
    for sample in known_dataset:
        dets = sample.frcnn_detections.detections
        assert 1 <= len(dets) <= 2
        for det in dets:
            assert 0.0 <= det["backbone_focus"] <= 1.0
            assert max(det["backbone_map"].map.shape) == 64  # its own map, small
            x, y, w, h = det.bounding_box
            assert 0 <= x <= 1 and 0 <= y <= 1 and x + w <= 1.0001 and y + h <= 1.0001
        assert sample.frcnn_backbone.map.max() > 0
    known_dataset.delete_run("frcnn")
    assert "frcnn_detections" not in known_dataset.get_field_schema()


def test_class_report_score_cams_and_review_views_on_detections(
    known_dataset, tmp_path
):
    ds = known_dataset
    run(ds, KnownTruthDetector(), run_key="aud")
    with pytest.raises(ValueError, match="evaluate_detections.*'aud_detections'"):
        class_report(ds, "aud", label_field="ground_truth")
    ds.evaluate_detections("aud_detections", gt_field="ground_truth", eval_key="aude")
    report = class_report(ds, "aud", label_field="ground_truth")
    assert report.loc["A", "mean_focus"] > 0.9 and report.loc["B", "mean_focus"] < 0.1
    assert report.loc["B", "n_low_focus"] == 3 and report.loc["(all)", "count"] == 6
    assert report.loc["A", "accuracy"] == 1.0
    suspects, errors = save_review_views(ds, "aud", label_field="ground_truth")
    view = ds.load_saved_view(suspects)
    assert view.count("aud_detections.detections") == 3
    assert set(view.distinct("aud_detections.detections.label")) == {"B"}
    assert len(ds.load_saved_view(errors)) == 0
    # the HTML review: a card per low-focus detection, its own map and box
    page = export_review(
        ds, "aud", tmp_path / "review.html", label_field="ground_truth"
    )
    html = pathlib.Path(page).read_text(encoding="utf-8")
    assert html.count("data-detection=") == 6
    # the combined map scored against the ground truth, per sample
    summary = score_cams(ds, "aud", gt_field="ground_truth", progress=False)
    assert summary.num_scored == 3
    # the review panel's Open shows the detections with the heatmap
    src = review_data.sources(ds)["aud/features"]
    assert review_panel._fields_of(src) == [
        "aud_features",
        "ground_truth",
        "aud_detections",
    ]
    # ... and its object list: detections lowest focus first, tp / fp of the
    # evaluation of aud_detections
    rows = object_rows(ds, "aud")
    assert [r["label"] for r in rows] == ["B"] * 3 + ["A"] * 3
    assert {r["eval"] for r in rows} <= {"tp", "fp"} and rows[-1]["eval"] == "tp"
    ds.delete_run("aud")
    assert suspects not in ds.list_saved_views()
    assert "aud_features_focus" not in ds.get_field_schema()
    assert "aude" not in ds.list_evaluations()  # went with its predictions


def test_the_users_evaluation_moves_and_goes_with_the_run(known_dataset, caplog):
    """FiftyOne's evaluation of a run's detections follows the run: a rename
    (ours or FiftyOne's) points it at the renamed field, a delete removes it
    with its marks on the ground truth, and says so."""
    import fiftyone.operators as foo

    ds = known_dataset
    run(ds, KnownTruthDetector(), run_key="evr")
    ds.evaluate_detections("evr_detections", gt_field="ground_truth", eval_key="ev")
    tp = ds.sum("ev_tp")
    ds.load_evaluation_results("ev")  # cached with the old config
    rename_cam_run(ds, "evr", "evr2")
    ds.rename_run("evr2", "evr3")  # FiftyOne's own rename
    assert ds.get_evaluation_info("ev").config.pred_field == "evr3_detections"
    view = ds.load_evaluation_view("ev")  # raised: no field 'evr_detections'
    assert "evr3_detections" in view.get_field_schema()
    assert ds.count_values("evr3_detections.detections.ev")["tp"] == tp
    assert ds.load_evaluation_results("ev").report()["A"]["support"] == 6
    with caplog.at_level(logging.WARNING, logger="gradcam_engine"):
        deleted = foo.execute_operator(  # the App's delete names it too
            "@cam-audit/cam-audit/delete_cam_run",
            ctx=dict(view=ds.view(), params={"run_key": "evr3"}),
        )
    assert deleted.result == {"deleted": "evr3", "evaluations": ["ev"]}
    assert "Deleted evaluation 'ev' of 'evr3_detections' with run 'evr3'" in (
        caplog.text
    )
    assert "ev" not in ds.list_evaluations()
    schema = ds.get_field_schema(flat=True)
    assert not [f for f in schema if f.startswith("ev_") or f.endswith(".ev")]
    assert "ground_truth.detections.ev_iou" not in schema


def test_compute_operator_detection_immediate(known_dataset, monkeypatch):
    """The App's compute operator with Task "Detection", on a model source the
    admin registered (delegated and sharded: test_detection_operators.py)."""
    import os

    import fiftyone.operators as foo

    sources = os.environ.get("CAM_AUDIT_MODEL_SOURCES", "")
    sources += ",known-truth-detector=detection_models:build_known_truth"
    monkeypatch.setenv("CAM_AUDIT_MODEL_SOURCES", sources)
    compute = foo.get_operator("@cam-audit/cam-audit/compute_cams")
    result = compute(
        known_dataset,
        run_key="op_det",
        model="known-truth-detector",
        layers=["features"],
        method="hirescam",
        task="detection",
        confidence_thresh=0.0,
        batch_size=2,
    )
    assert result.error is None, result.error
    low = known_dataset.filter_labels("op_det_detections", F("features_focus") < 0.5)
    assert set(low.distinct("op_det_detections.detections.label")) == {"B"}
    known_dataset.delete_run("op_det")


def show_detection_cam(view, run_key: str, sample_id: str, label_id: str):
    """Run the App's "Show the selected detection's CAM" with one detection of
    ``{run_key}_detections`` selected on ``sample_id`` of ``view``."""
    import fiftyone.operators as foo

    field = f"{run_key}_detections"
    selected = {"label_id": label_id, "sample_id": sample_id, "field": field}
    return foo.execute_operator(
        "@cam-audit/cam-audit/show_detection_cam",
        ctx=dict(view=view, selected_labels=[selected], params={"run_key": run_key}),
    )


def test_show_detection_cam_writes_the_selected_detections_map(known_dataset):
    """The App's way to see one detection's map: select it, run the operator;
    its own map lands in a run-owned heatmap field the App draws."""

    ds = known_dataset
    run(ds, KnownTruthDetector(), run_key="pick")
    sample = ds.first()
    b = next(d for d in sample.pick_detections.detections if d.label == "B")
    result = show_detection_cam(ds.view(), "pick", sample.id, b.id)
    result.raise_exceptions()
    assert result.result == {
        "samples": {sample.id: b.id},
        "field": "pick_features_detection",
    }
    sample.reload()
    shown = sample.pick_features_detection.map
    assert (shown == b["features_map"].map).all()  # B's map: over P, not B
    assert ds.count("pick_features_detection") == 1
    assert "pick_features_detection" in get_cam_run(ds, "pick").owned_fields
    # from the patches view of the detections: refused, saying where to go
    patches = ds.to_patches("pick_detections")
    patch = patches.match(F("pick_detections.label") == "B").first()
    with pytest.raises(ExecutionError, match="open the dataset's sample view"):
        show_detection_cam(patches, "pick", patch.id, patch.pick_detections.id)
    ds.delete_run("pick")
    assert "pick_features_detection" not in ds.get_field_schema()


def test_compute_form_offers_detection_and_detections_label_fields(known_dataset):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    uri = "@cam-audit/cam-audit/compute_cams"
    params = {"task": "detection", "target": "label_field"}
    ctx = ExecutionContext(
        request_params=dict(
            dataset_name=known_dataset.name,
            view=known_dataset.view()._serialize(),
            params=params,
        ),
        operator_uri=uri,
    )
    form = foo.get_operator(uri).resolve_type(ctx, "inputs").to_json()
    props = form["type"]["properties"]
    assert "detection" in str(props["task"])
    assert "ground_truth" in str(props["label_field"])  # a Detections field
    assert "confidence_thresh" in props and "max_detections" in props
