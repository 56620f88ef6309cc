"""The CAM figures in FiftyOne's Model Evaluation panel, in the real App
(Chromium): an evaluate_classifications run with the plugin's custom metrics
shows them, by label, with their values, beside the built-in metrics."""

from __future__ import annotations

import socket
import time
import uuid

import fiftyone as fo
import pytest
import torch

from gradcam_engine import background_test, compute_cams, score_cams
from gradcam_engine.audit.eval_metrics import CAM_METRICS
from gradcam_engine.demo import marked_data as md
from gradcam_engine.demo import shortcut_model as sm
from gradcam_engine.demo.clever_hans import marked_dataset
from gradcam_engine.demo.shortcut_data import CLASSES

PLUGIN = "@cam-audit/cam-audit"
N = 16


@pytest.fixture(scope="module")
def evaluated_app(tmp_path_factory):
    torch.manual_seed(0)
    model = sm.ShortcutCNN().eval()  # what it learned does not matter here
    ds = marked_dataset(
        f"app-eval-{uuid.uuid4().hex[:8]}",
        md.generate_marked(N, "test", seed=3),
        tmp_path_factory.mktemp("app-eval"),
    )
    tf = sm.transforms()
    compute_cams(
        ds,
        model,
        layers=["block4"],
        run_key="cam",
        transforms=tf,
        classes=list(CLASSES),
        num_workers=0,
        progress=False,
    )
    score_cams(ds, "cam", "objects")
    background_test(ds, "cam", "objects", model, transforms=tf)
    results = ds.evaluate_classifications(
        "cam_prediction",
        gt_field="ground_truth",
        eval_key="eval",
        # FiftyOne 1.22 reloads custom metrics for binary and detection
        # evaluations only ("simple" ones lose them: base.py's _from_dict).
        method="binary",
        classes=["cross", "circle"],
        custom_metrics=[f"{PLUGIN}/cam_{m}" for m in CAM_METRICS],
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    session = fo.launch_app(ds, remote=True, port=port, auto=False)
    try:
        yield ds, results, f"http://localhost:{port}/datasets/{ds.name}"
    finally:
        session.close()
        ds.delete()


def test_model_evaluation_panel_shows_the_cam_metrics(
    evaluated_app, browser, artifacts_dir
):
    ds, results, url = evaluated_app
    assert len(results.custom_metrics) == len(CAM_METRICS)
    page = browser.new_page(viewport={"width": 1600, "height": 1100})
    page.goto(url)
    page.get_by_text(f"{N} samples").first.wait_for(timeout=90_000)
    dismiss = page.get_by_text("Dismiss", exact=True)
    if dismiss.count():
        dismiss.first.click()
    page.keyboard.press("Escape")
    page.locator("[data-cy='new-panel-btn']").first.click()
    page.get_by_text("Model Evaluation", exact=True).first.click()
    try:
        page.get_by_text("1 Model Evaluations").first.wait_for(timeout=120_000)
        # The evaluation's card in the panel (the sidebar also lists "eval").
        cards = page.get_by_text("eval", exact=True)
        card = max(
            (cards.nth(i) for i in range(cards.count())),
            key=lambda c: (c.bounding_box() or {"x": -1})["x"],
        )
        box = card.bounding_box()
        # The card opens on a click on its body (the name itself is the
        # rename control).
        page.mouse.click(box["x"] + 250, box["y"] + box["height"] / 2)
        for label, _ in CAM_METRICS.values():
            page.get_by_text(label, exact=True).first.wait_for(timeout=120_000)
        time.sleep(1)
    finally:
        page.screenshot(path=str(artifacts_dir / "app_eval_metrics.png"))
    body = page.inner_text("body")
    for uri, metric in results.custom_metrics.items():
        value = metric["value"]
        assert metric["label"] in body, uri
        # The panel prints values with at most 3 decimals.
        assert (
            f"{value:.3f}".rstrip("0").rstrip(".") in body or f"{value:.2f}" in body
        ), (
            uri,
            value,
        )
    page.close()
