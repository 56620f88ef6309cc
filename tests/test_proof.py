"""An audit that proves itself (issue 19), on trained models and real datasets.

- sanity_check: Grad-CAM of a trained CNN passes the model-parameter
  randomisation test; a registered method that returns the input's edge map
  (it ignores the model) fails it; the verdict is stored on the run and shown
  by the list_cam_runs operator and the HTML review.
- deletion/insertion rank a known-evidence model's exact map above the same
  map shuffled; the CAM figures are custom metrics of an evaluation.
- background_test with its default fills agrees with the counterfactual truth
  (the prediction changes when the same image is drawn without the mark) on
  two differently drawn shortcut sets: marked_data (gradients, a white square
  in a corner) and textured_marks (natural textures, a striped triangle along
  two edges).
"""

from __future__ import annotations

import uuid

import fiftyone.operators as foo
import numpy as np
import pytest
import torch
from edge_method import register_edge_method, register_shuffled_method
from marked_run import marked_run
from PIL import Image

from gradcam_engine.audit.backgrounds import DEFAULT_MIN_FLIP_RATE
from gradcam_engine.audit.eval_metrics import CAM_METRICS
from gradcam_engine.audit.export import export_review
from gradcam_engine.audit.faithfulness import deletion_insertion_cams
from gradcam_engine.audit.model_checks import background_test
from gradcam_engine.audit.sanity import sanity_check
from gradcam_engine.audit.scoring import score_cams
from gradcam_engine.demo import shortcut_model as sm
from gradcam_engine.demo import textured_marks
from gradcam_engine.demo.clever_hans import marked_dataset
from gradcam_engine.demo.shortcut_data import CLASSES
from gradcam_engine.runs.cam_runs import get_cam_run
from gradcam_engine.runs.compute import compute_cams
from gradcam_engine.sources.models import (
    LoadedModel,
    list_model_sources,
    register_model_source,
)
from operators import review_data

PLUGIN = "@cam-audit/cam-audit"
N_TEST = 120


def _truth(model, test, ds) -> np.ndarray:
    """Per dataset sample: the mark caused the prediction (counterfactual)."""
    by_stem = {s.name: s for s in test}
    ordered = [
        by_stem[p.rsplit("/", 1)[-1].rsplit(".", 1)[0]] for p in ds.values("filepath")
    ]
    with_mark = sm.predict(model, np.stack([s.image for s in ordered]))
    without = sm.predict(model, np.stack([s.clean for s in ordered]))
    return with_mark != without


def _cams(ds, model, run_key, method="gradcam", layers=("block4",)):
    compute_cams(
        ds,
        model,
        layers=list(layers),
        method=method,
        run_key=run_key,
        transforms=sm.transforms(),
        classes=list(CLASSES),
        num_workers=0,
        progress=False,
    )


@pytest.fixture(scope="module")
def marked(tmp_path_factory):
    ds, model, test = marked_run(tmp_path_factory.mktemp("proof"), N_TEST, "proof")
    yield ds, model, _truth(model, test, ds)
    ds.delete()


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    train = textured_marks.generate_textured(1000, "train", seed=0)
    model = sm.train_classifier(train, seed=0)
    test = textured_marks.generate_textured(N_TEST, "test", seed=1)
    ds = marked_dataset(
        f"proof-tex-{uuid.uuid4().hex[:8]}", test, tmp_path_factory.mktemp("tex")
    )
    _cams(ds, model, "hans")
    yield ds, model, _truth(model, test, ds)
    ds.delete()


def test_sanity_check_passes_gradcam_and_fails_an_edge_map(marked, tmp_path):
    ds, model, _ = marked
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _cams(
        ds, model, "edges", method=register_edge_method(), layers=("block3", "block4")
    )
    ok = sanity_check(ds, "hans", model, transforms=sm.transforms(), num_samples=12)
    bad = sanity_check(ds, "edges", model, transforms=sm.transforms(), num_samples=12)
    print("gradcam", ok["layers"], "\nedge map", bad["layers"])
    assert ok["passed"] and set(ok["layers"]) == {"block4"}
    assert ok["layers"]["block4"]["spearman"] < 0.3
    assert not bad["passed"] and set(bad["layers"]) == {"block3", "block4"}
    for figures in bad["layers"].values():
        assert not figures["passed"]
        assert figures["spearman"] > 0.99 and figures["ssim"] > 0.99
    # The cascade starts at the top (the logits) and reaches the layer's block.
    assert (
        ok["cascade"][0] == "fc" and ok["layers"]["block4"]["randomised"] == "block4.0"
    )
    assert ok["num_samples"] == 12
    # The caller's model is untouched (the cascade randomised a copy).
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    # Stored on the run, shown by list_cam_runs and the HTML review.
    assert get_cam_run(ds, "edges").config["sanity"] == bad
    listed = foo.get_operator(f"{PLUGIN}/list_cam_runs")(ds)["runs"]
    sanity = {r["run_key"]: r["sanity"] for r in listed}
    assert sanity["hans"].startswith("passed") and sanity["edges"].startswith("FAILED")
    score_cams(ds, "edges", "objects")
    with open(export_review(ds, "edges", tmp_path / "r.html"), encoding="utf-8") as f:
        assert "sanity check FAILED at block3, block4" in f.read()
    # The review panel's run summary line carries the same verdict.
    assert review_data.sources(ds)["edges/block4"]["sanity"].startswith("FAILED")


def test_sanity_check_operator_stores_the_verdict(marked):
    ds, model, _ = marked
    if "proof-hans" not in list_model_sources():
        register_model_source(
            "proof-hans",
            lambda: LoadedModel(model, sm.transforms(), list(CLASSES), "proof-hans"),
        )
    foo.get_operator(f"{PLUGIN}/sanity_check")(
        ds, "hans", model="proof-hans", num_samples=4
    ).raise_exceptions()
    assert get_cam_run(ds, "hans").config["sanity"]["num_samples"] == 4
    with pytest.raises(ValueError, match=r"num_samples must be >= 2"):
        sanity_check(ds, "hans", model, transforms=sm.transforms(), num_samples=1)


@pytest.mark.parametrize("dataset", ["marked", "textured"])
def test_background_test_agrees_with_the_truth_on_two_generators(dataset, request):
    ds, model, truth = request.getfixturevalue(dataset)
    summary = background_test(
        ds, "hans", "objects", model, transforms=sm.transforms(), overwrite=True
    )
    flags = np.array(ds.values("hans_bg_flip"), dtype=bool)
    rates = np.array(ds.values("hans_bg_flip_rate"), dtype=float)
    agreement = float(np.mean(flags == truth))
    print(
        f"{dataset}: agreement {agreement:.3f}, flagged {flags.sum()}, "
        f"true {truth.sum()}, per fill {summary['fill_flip_rates']}"
    )
    assert 10 <= truth.sum() <= 0.8 * len(truth)  # the mark is a real shortcut
    assert agreement >= 0.9
    # The flag is the flip rate over the fills against the threshold.
    assert len(summary["fills"]) >= 3 and "swap" in summary["fills"]
    assert ((rates >= DEFAULT_MIN_FLIP_RATE) == flags).all()
    assert summary["fields"][-1] == "hans_bg_flip_rate"


class EdgeEvidence(torch.nn.Module):
    """A model whose evidence is known: class 0's probability grows with the
    image's total edge energy (a fixed Laplacian, rectified, at layer
    ``feat``), class 1's logit is constant. Grad-CAM at ``feat`` is then
    exactly each pixel's share of the evidence (the gradient is uniform)."""

    def __init__(self) -> None:
        super().__init__()
        lap = torch.tensor([[0.0, -1, 0], [-1, 4, -1], [0, -1, 0]])
        self.edges = torch.nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False)
        self.edges.weight.data[:] = lap
        self.feat = torch.nn.ReLU()
        self.register_buffer("scale", torch.tensor(1.0))

    def evidence(self, x: torch.Tensor) -> torch.Tensor:
        return self.feat(self.edges(x)).mean(dim=(1, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.evidence(x) / self.scale
        return torch.stack([4 * torch.log(r + 1e-6), torch.zeros_like(r)], dim=1)


def test_deletion_insertion_rank_the_faithful_map_above_a_shuffled_one(marked):
    ds = marked[0].limit(40)  # a view: runs and scores cover only these
    model = EdgeEvidence().eval()
    tf = sm.transforms()
    with torch.no_grad():  # original probability about 0.94 on a typical image
        x = torch.stack(
            [tf(Image.open(p).convert("RGB")) for p in ds.values("filepath")]
        )
        model.scale.fill_(float(model.evidence(x).median()) / 2)
    for key, method in (("known", "gradcam"), ("shuffled", register_shuffled_method())):
        compute_cams(
            ds,
            model,
            layers=["feat"],
            method=method,
            run_key=key,
            transforms=tf,
            classes=["edges", "flat"],
            target=0,
            num_workers=0,
            progress=False,
        )
    got = {
        key: deletion_insertion_cams(ds, key, model=model, transforms=tf, steps=10)
        for key in ("known", "shuffled")
    }
    print(got)
    dele = {k: np.array(ds.values(f"{k}_feat_deletion")) for k in got}
    ins = {k: np.array(ds.values(f"{k}_feat_insertion")) for k in got}
    assert got["known"]["fields"] == ["known_feat_deletion", "known_feat_insertion"]
    assert ((dele["known"] >= 0) & (dele["known"] <= 1)).all()
    # Deleting the most relevant pixels first drops the score faster, and
    # inserting them first raises it faster, on nearly every image.
    assert (dele["known"] < dele["shuffled"]).mean() >= 0.9
    assert (ins["known"] > ins["shuffled"]).mean() >= 0.9
    assert dele["known"].mean() + 0.05 < dele["shuffled"].mean()
    assert ins["known"].mean() > ins["shuffled"].mean() + 0.05


def test_cam_figures_are_custom_metrics_of_an_evaluation(marked):
    ds, model, _ = marked
    score_cams(ds, "hans", "objects")
    background_test(ds, "hans", "objects", model, transforms=sm.transforms())
    uris = {f"{PLUGIN}/cam_{m}": m for m in CAM_METRICS}
    results = ds.evaluate_classifications(
        "hans_prediction",
        gt_field="ground_truth",
        eval_key="proof_eval",
        method="binary",  # see test_app_eval_metrics.py
        classes=["cross", "circle"],
        custom_metrics={uri: {"run_key": "hans"} for uri in uris},
    )
    try:
        focus = np.array(ds.values("hans_block4_focus"), dtype=float)
        flips = np.array(ds.values("hans_bg_flip"), dtype=float)
        expected = {
            "mean_focus": focus.mean(),
            "low_focus_share": (focus < 0.3).mean(),
            "bg_flip_rate": flips.mean(),
        }
        got = results.custom_metrics
        for uri, name in uris.items():
            assert got[uri]["value"] == pytest.approx(expected[name]), name
            assert got[uri]["label"] == CAM_METRICS[name][0]
            assert got[uri]["lower_is_better"] is CAM_METRICS[name][1]
        # Stored with the evaluation, as the Model Evaluation panel loads it.
        again = ds.load_evaluation_results("proof_eval", cache=False).custom_metrics
        assert {k: v["value"] for k, v in again.items()} == {
            k: v["value"] for k, v in got.items()
        }
    finally:
        ds.delete_evaluation("proof_eval")
