"""Focus on real handwriting (issue 19 item 5), at a small scale.

scikit-learn's digits (nobody here drew them) on noisy canvases, with a
colour patch that encodes the class in 80% of the cue model's training
images (``demo/handwritten.py``). On held-out digits whose patch names another
class, the truth per prediction is counterfactual: cue-reliant when the
prediction changes once the same image is drawn without the patch. The focus
that ``score_cams`` writes (energy inside the digit's box) must rank the
digit-reliant predictions above the cue-reliant ones (AUROC). The benchmark
(``benchmarks/bench_digits.py``, BENCHMARKS.md) measures the same at full
scale on two drawings and six seeds.
"""

from __future__ import annotations

import uuid

import fiftyone as fo
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from trained_models import trained

from gradcam_engine.audit.scoring import score_cams
from gradcam_engine.demo import handwritten as hw
from gradcam_engine.demo import shortcut_model as sm
from gradcam_engine.demo.shortcut_data import write_images
from gradcam_engine.runs.compute import compute_cams

N_TEST = 150
CLASSES = [str(i) for i in range(10)]


def test_digits_are_drawn_as_documented():
    train = hw.generate_digits("train", seed=3, n=60)
    test = hw.generate_digits("test", seed=3, n=60, holdout=True)
    again = hw.generate_digits("test", seed=3, n=60, holdout=True)
    assert all(
        np.array_equal(a.image, b.image) for a, b in zip(test, again, strict=True)
    )
    # Held-out digits are never training (or tuning) digits, whatever the seed.
    held = set(hw.digit_indices("test", 5, holdout=True))
    assert not held & set(hw.digit_indices("train", 3))
    assert not held & set(hw.digit_indices("test", 3))
    assert 30 <= sum(s.cue == s.label_index for s in train) <= 58  # p_cue 0.8
    assert all(s.cue is None or s.cue == s.label_index for s in train)
    assert all(s.cue is not None and s.cue != s.label_index for s in test)
    for drawing in hw.DRAWINGS:
        for s in hw.generate_digits("test", seed=1, n=20, drawing=drawing):
            x0, y0, x1, y1 = s.box
            changed = (s.image != s.clean).any(axis=2)
            assert changed.any() and not changed[y0:y1, x0:x1].any()
            assert s.bbox == [x0 / 64, y0 / 64, (x1 - x0) / 64, (y1 - y0) / 64]
    with pytest.raises(ValueError, match=r"drawing must be one of \['A', 'B'\]"):
        hw.generate_digits("test", drawing="C")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The cue model (1,200 training digits, 16 epochs; trained once for all
    sessions), Grad-CAM at block3 on held-out digits, scored against the
    digits' boxes; and the counterfactual truth per sample."""
    model = trained(
        "digits", 1200, "train", seed=0, epochs=16, num_classes=10, hflip=False
    )
    test = hw.generate_digits("test", seed=0, n=N_TEST, holdout=True)
    paths = write_images(test, tmp_path_factory.mktemp("digits"))
    ds = fo.Dataset(f"digits-{uuid.uuid4().hex[:8]}")
    ds.add_samples(
        [
            fo.Sample(
                filepath=path,
                ground_truth=fo.Classification(label=s.label),
                digit=fo.Detections(
                    detections=[fo.Detection(label=s.label, bounding_box=s.bbox)]
                ),
            )
            for s, path in zip(test, paths, strict=True)
        ]
    )
    compute_cams(
        ds,
        model,
        layers=["block3"],
        run_key="digits",
        transforms=sm.transforms(),
        classes=CLASSES,
        num_workers=0,
        progress=False,
    )
    score_cams(ds, "digits", "digit")
    with_patch = sm.predict(model, np.stack([s.image for s in test]))
    without = sm.predict(model, np.stack([s.clean for s in test]))
    yield ds, with_patch, with_patch == without
    ds.delete()


def test_focus_separates_digit_from_cue_reliant_predictions(digits_run):
    ds, with_patch, digit_reliant = digits_run
    # The run explained the model's own predictions (the truth is about them).
    assert ds.values("digits_prediction.label") == [str(p) for p in with_patch]
    focus = np.array(ds.values("digits_block3_focus"), dtype=float)
    auroc = roc_auc_score(digit_reliant, focus)
    print(
        f"digit-reliant {digit_reliant.sum()}, cue-reliant {(~digit_reliant).sum()}, "
        f"AUROC {auroc:.3f}, mean focus {focus[digit_reliant].mean():.3f} vs "
        f"{focus[~digit_reliant].mean():.3f}"
    )
    # The cue model uses both rules, so both kinds of prediction are there.
    assert digit_reliant.sum() >= 20 and (~digit_reliant).sum() >= 50
    assert auroc >= 0.9
