"""The demo's Clever-Hans step: found without boxes, proven, and rerunnable."""

from __future__ import annotations

import re

import fiftyone as fo
from readme_claims import clever_hans_claims
from trained_models import trained

from gradcam_engine.demo import clever_hans as ch
from gradcam_engine.demo import shortcut_model as sm


def test_demo_finds_and_proves_the_watermark(tmp_path, monkeypatch):
    monkeypatch.setenv("CAM_AUDIT_DEMO_DIR", str(tmp_path / "demo"))
    # The demo's model, trained once for the session (the same recipe as the
    # discovery tests'), placed where the demo caches it.
    ch._model_path().parent.mkdir(parents=True, exist_ok=True)
    sm.save(trained("marked", ch.N_TRAIN, "train", seed=ch.SEED), ch._model_path())
    lines: list[str] = []
    dataset = ch.run_clever_hans(fresh=True, say=lines.append)
    text = "\n".join(lines)
    # Found without boxes: a circle cluster whose mean map sits in the corner.
    assert re.search(r"circle/\d .*<- off the objects, in the corner", text), text
    # Proven: the background test agrees with the counterfactual truth.
    agreement = float(re.search(r"truth .*: ([\d.]+)% agreement", text).group(1))
    assert agreement >= 95.0, text
    # README.md quotes this printout (issue 22, point 11)
    assert not clever_hans_claims(text), clever_hans_claims(text)
    assert (tmp_path / "demo" / "clever_hans_review.html").exists()
    # In the App: the heatmap-space plot and the cluster field are there.
    assert f"{ch.HEAT}_clusters" in dataset.list_brain_runs()
    assert dataset.count(f"{ch.HEAT}_cluster") == len(dataset)
    # A second run reuses the dataset and the run's own fields, and says the same.
    again: list[str] = []
    ch.run_clever_hans(say=again.append)
    assert [x for x in again if "agreement" in x] == [
        x for x in lines if "agreement" in x
    ]
    fo.delete_dataset(ch.CLEVER_HANS_DATASET)
