"""The demo's detection case (issue 20): a small detector trained on the
watermark data; its lowest-focus detections are those the mark explains."""

from __future__ import annotations

import fiftyone as fo
import pytest
from trained_models import trained_detector

from gradcam_engine.demo import detection_case as dc
from gradcam_engine.demo import mark_detector

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_demo_lowest_focus_detections_are_the_marked_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("CAM_AUDIT_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.setattr(dc, "N_TEST", 60)  # the property at a small scale
    # The demo's detector (same recipe), trained once and cached for the
    # tests, placed where the demo caches it.
    dc._model_path().parent.mkdir(parents=True, exist_ok=True)
    model = trained_detector(dc.N_TRAIN, seed=dc.SEED, epochs=dc.EPOCHS)
    mark_detector.save(model, dc._model_path())
    lines: list[str] = []
    dataset = dc.run_detection(fresh=True, say=lines.append)
    assert len(dataset) == 60 and dataset.count("det_hirescam_detections") > 50
    fig = dc.detection_figures(dataset, "det_hirescam", "block2")
    assert fig["auroc"] >= 0.9, fig
    assert fig["lowest_tenth_marked"] == 1.0, fig
    assert fig["focus_marked"] < fig["focus_clean"] - 0.15, fig
    # each detection carries its own map, as the App and the review show it
    low = dataset.to_patches("det_hirescam_detections").sort_by(
        "det_hirescam_detections.block2_focus"
    )
    first = low.first()
    assert dataset[first.sample_id].marked
    assert first.det_hirescam_detections.block2_map is not None
    assert any("det_hirescam  block2" in line for line in lines), lines
    fo.delete_dataset(dc.DETECTION_DATASET)
