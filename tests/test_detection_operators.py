"""A real torchvision detector through the App's operators (issue 20's proof
line): torchvision's Faster R-CNN, registered as a model source the way an
admin does, on a FiftyOne dataset with ground-truth boxes. The compute
operator with Task Detection runs immediately and sharded on a real
``fiftyone delegated launch`` worker; score, class report, review views and
the selected detection's map then work on those runs.
"""

from __future__ import annotations

import os
import time

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from bson import ObjectId
from detection_models import known_truth_image, regions
from fiftyone import ViewField as F
from fiftyone.operators.delegated import DelegatedOperationService
from PIL import Image
from test_detection import show_detection_cam
from workers import start_worker, stop_worker

import gradcam_engine as ge

SOURCE = "torchvision-detector"
KNOWN = "known-truth-detector"
COMPUTE = "@cam-audit/cam-audit/compute_cams"
# The untrained head scores every box about 1/3 (softmax over 3 classes):
# real detections, explained above this threshold, at most 2 per image.
DETECTION = dict(
    model=SOURCE,
    task="detection",
    method="gradcam",
    layers=["backbone"],
    confidence_thresh=0.3,
    max_detections=2,
    batch_size=2,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_root):
    """Four small images with ground-truth boxes A and B; the detector source
    registered for the App (and for the worker, which inherits it)."""
    before = os.environ.get("CAM_AUDIT_MODEL_SOURCES", "")
    os.environ["CAM_AUDIT_MODEL_SOURCES"] = (
        f"{before},{SOURCE}=detection_models:build_torchvision_detector,"
        f"{KNOWN}=detection_models:build_known_truth"
    )
    root = tmp_root / "detection_operators"
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for k, (h, w) in enumerate([(48, 64), (60, 80), (48, 64), (60, 80)]):
        path = root / f"img{k}.png"
        Image.fromarray(known_truth_image(h, w)).save(path)
        boxes = []
        for name in ("A", "B"):
            x0, y0, x1, y1 = regions(h, w)[name]
            box = [x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h]
            boxes.append(fo.Detection(label=name, bounding_box=box))
        samples.append(
            fo.Sample(filepath=str(path), ground_truth=fo.Detections(detections=boxes))
        )
    ds = fo.Dataset("cam-detection-operators")
    ds.add_samples(samples)
    yield ds
    ds.delete()
    os.environ["CAM_AUDIT_MODEL_SOURCES"] = before


def _check_detections(ds, run_key):
    """Every sample explained 1-2 real detections, each with its own map and a
    focus in [0, 1], boxes inside the image, and a combined map."""
    assert ds.count(f"{run_key}_error") == 0
    for sample in ds:
        dets = sample[f"{run_key}_detections"].detections
        assert 1 <= len(dets) <= 2
        for det in dets:
            assert det.confidence >= 0.3
            assert 0.0 <= det["backbone_focus"] <= 1.0
            assert det["backbone_map"].map.max() > 0
            x, y, w, h = det.bounding_box
            assert min(x, y) >= 0 and x + w <= 1.0001 and y + h <= 1.0001
        assert sample[f"{run_key}_backbone"].map.max() > 0


def test_torchvision_detector_through_the_operators(dataset):
    ds = dataset
    compute = foo.get_operator(COMPUTE)
    result = compute(ds, run_key="tv", **DETECTION)
    assert result.error is None, result.error
    assert result.result["computed"] == 4, result.result
    _check_detections(ds, "tv")
    assert ge.get_cam_run(ds, "tv").config["task"] == "detection"

    # score: the combined map per sample against the ground truth
    scored = foo.execute_operator(
        "@cam-audit/cam-audit/score_cams",
        ctx=dict(view=ds.view(), params=dict(run_key="tv", gt_field="ground_truth")),
    )
    scored.raise_exceptions()
    assert ds.count("tv_backbone_focus") == 4

    # the class report: per-class focus over detections, right/wrong from
    # FiftyOne's own evaluation of the run's detections
    ds.evaluate_detections("tv_detections", gt_field="ground_truth", eval_key="tve")
    report = foo.get_operator("@cam-audit/cam-audit/cam_class_report")(
        ds, "tv", label_field="ground_truth"
    )
    rows = {row["class"]: row for row in report["rows"]}
    assert rows["(all)"]["count"] == ds.count("tv_detections.detections")
    assert set(rows) - {"(all)"} <= {"A", "B"}

    # review views: low-focus true positives / false positives
    suspects, errors = ge.save_review_views(
        ds, "tv", label_field="ground_truth", low_focus=1.0
    )
    fps = ds.filter_labels("tv_detections", F("tve") == "fp")
    assert ds.load_saved_view(errors).count("tv_detections.detections") == fps.count(
        "tv_detections.detections"
    )
    assert suspects in ds.list_saved_views()

    # the selected detection's own map, drawn in the sample view
    sample = ds.first()
    det = sample.tv_detections.detections[-1]
    shown = show_detection_cam(ds.view(), "tv", sample.id, det.id)
    shown.raise_exceptions()
    assert shown.result == {
        "samples": {sample.id: det.id},
        "field": "tv_backbone_detection",
    }
    sample.reload()
    assert (sample.tv_backbone_detection.map == det["backbone_map"].map).all()
    ds.delete_evaluation("tve")
    ds.delete_run("tv")


def test_detection_delegated_and_sharded_on_a_real_worker(dataset, tmp_root):
    """Task Detection queued from the compute operator, run by one real worker:
    the torchvision detector in 2 shards, and the known-truth detector as one
    delegated operation (its low-focus detections are B's, as in this process)."""
    ds = dataset
    compute = foo.get_operator(COMPUTE)
    sharded = compute(ds, run_key="tvd", shards=2, **DETECTION)
    assert sharded.error is None, sharded.error
    status = ge.cam_run_status(ds, "tvd")
    assert [s["state"] for s in status["shards"]] == ["queued", "queued"]
    known = dict(DETECTION, model=KNOWN, layers=["features"], confidence_thresh=0.0)
    delegated = compute(ds, run_key="ktd", delegate=True, **known)
    assert delegated.delegated
    ids = [ObjectId(s["operation_id"]) for s in status["shards"]]
    ids.append(ObjectId(delegated.result["id"]))

    service = DelegatedOperationService()
    log = tmp_root / "detection-operators-worker.log"
    worker = start_worker(log)
    try:
        deadline = time.monotonic() + 240
        while True:
            states = [service.get(i).run_state for i in ids]
            if all(s in ("completed", "failed") for s in states):
                break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        assert states == ["completed"] * 3, log.read_text()[-3000:]
    finally:
        stop_worker(worker)
    status = ge.cam_run_status(ds, "tvd")
    assert (status["done"], status["errors"], status["pending"]) == (4, 0, 0)
    ds.reload()
    _check_detections(ds, "tvd")
    low = ds.filter_labels("ktd_detections", F("features_focus") < 0.5)
    assert set(low.distinct("ktd_detections.detections.label")) == {"B"}
    assert ds.count("ktd_detections.detections") == 8
    for run_key in ("tvd", "ktd"):
        ge.delete_cam_run(ds, run_key)
        assert f"{run_key}_detections" not in ds.get_field_schema()
