"""The audit finds a planted shortcut, end to end.

Two copies of the same small CNN: one trained on the planted-shortcut split
(circles on water, squares on land, 98% of the time), one on the control split
(backgrounds independent of the class). On the same test images, loaded into
a FiftyOne dataset with box ground truth, compute_cams + score_cams must show
that the shortcut model looks at the objects much less than the control.
"""

from __future__ import annotations

import uuid

import fiftyone as fo
import numpy as np
import pytest
from trained_models import trained

from gradcam_engine.audit.export import export_review
from gradcam_engine.audit.report import ALL_CLASSES, class_report, save_review_views
from gradcam_engine.audit.scoring import score_cams
from gradcam_engine.demo import shortcut_data as sd
from gradcam_engine.demo import shortcut_model as sm
from gradcam_engine.runs.compute import compute_cams

LAYERS = ["block3", "block4"]


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    # The shortcut is learned from little data; the shape needs more.
    shortcut = trained("shortcut", 500, "train", seed=0, epochs=4)
    control = trained("shortcut", 1000, "control", seed=0, epochs=8)
    test = sd.generate(100, "test", seed=1)
    paths = sd.write_images(test, tmp_path_factory.mktemp("shortcut-test"))
    ds = fo.Dataset(f"audit-proof-{uuid.uuid4().hex[:8]}")
    ds.add_samples(
        [
            fo.Sample(
                filepath=path,
                ground_truth=fo.Classification(label=s.label),
                objects=fo.Detections(
                    detections=[fo.Detection(label=s.label, bounding_box=s.bbox)]
                ),
                agrees=s.agrees,
            )
            for s, path in zip(test, paths, strict=True)
        ]
    )
    summaries = {}
    for key, model in (("shortcut", shortcut), ("control", control)):
        compute_cams(
            ds,
            model,
            layers=LAYERS,
            method="gradcam",
            run_key=key,
            transforms=sm.transforms(),
            classes=list(sd.CLASSES),
            target="predicted",  # what made the model say what it said
            batch_size=50,
            num_workers=0,
            progress=False,
        )
        summaries[key] = score_cams(ds, key, "objects")
    metrics = {
        "shortcut": sm.evaluate(shortcut, test),
        "control": sm.evaluate(control, test),
    }
    return ds, summaries, metrics


def test_models_learned_what_they_were_meant_to(audited):
    _, _, metrics = audited
    # The shortcut model follows the background: wrong whenever it disagrees.
    assert metrics["shortcut"]["accuracy_agree"] >= 0.9
    assert metrics["shortcut"]["accuracy_disagree"] <= 0.2
    # The control model had to learn the shape.
    assert metrics["control"]["accuracy"] >= 0.8


def test_shortcut_model_has_much_lower_focus(audited):
    ds, summaries, _ = audited
    short, ctrl = summaries["shortcut"], summaries["control"]
    for key in ("shortcut", "control"):
        # Grad-CAM maps are all zero only when no feature supports the class.
        assert summaries[key]["counts"][f"{key}_block4_focus"] >= 0.9 * len(ds)
    focus_s, focus_c = short["mean_focus"]["block4"], ctrl["mean_focus"]["block4"]
    print(f"mean focus block4: shortcut {focus_s:.3f}, control {focus_c:.3f}")
    print(
        f"hit rate block4: shortcut {short['hit_rate']['block4']:.3f}, "
        f"control {ctrl['hit_rate']['block4']:.3f}"
    )
    assert focus_c - focus_s >= 0.15
    assert focus_s <= 0.6 * focus_c
    assert ctrl["hit_rate"]["block4"] - short["hit_rate"]["block4"] >= 0.3
    # Per image: the control looks more at the object on most of the same images.
    per_image = np.array(ds.values("control_block4_focus")) - np.array(
        ds.values("shortcut_block4_focus")
    )
    assert (per_image > 0).mean() >= 0.7


def test_class_report_and_review_outputs_flag_the_shortcut(audited, artifacts_dir):
    ds, _, _ = audited
    reports = {
        key: class_report(ds, key, label_field="ground_truth")
        for key in ("shortcut", "control")
    }
    for cls in sd.CLASSES:
        assert (
            reports["shortcut"].loc[cls, "mean_focus"]
            < reports["control"].loc[cls, "mean_focus"]
        )
    assert (
        reports["shortcut"].loc[ALL_CLASSES, "low_focus_share"]
        > reports["control"].loc[ALL_CLASSES, "low_focus_share"]
    )
    names = save_review_views(ds, "shortcut", label_field="ground_truth")
    errors = ds.load_saved_view(names[1])
    # Its low-focus mistakes are the images whose background disagrees.
    assert len(errors) > 0
    assert np.mean(errors.values("agrees")) <= 0.2
    path = export_review(
        ds,
        "shortcut",
        artifacts_dir / "audit_proof_review.html",
        label_field="ground_truth",
    )
    with open(path, encoding="utf-8") as f:
        assert f.read().count('<figure class="card"') == 2 * 5
