"""A model fault costs only the samples that cause it, and what can be checked
is checked before a run registers.

Real photos (scikit-image) plus one marked image (solid magenta) in a real
FiftyOne dataset; small real CNNs built here that raise on, or return NaN for,
the marked input, or whose output the run cannot use.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import types

import fiftyone as fo
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torch import nn

from gradcam_engine import compute_cams, list_cam_runs
from gradcam_engine.runs.outcome import CamRunFailed
from gradcam_engine.sources.models import ResizeNormalize

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins")
MARKED = 3  # the marked image's place: inside the first batch of 4
LAYER = "features.2"
FIELD = "cam_features_2"
COMMON = dict(
    layers=[LAYER],
    run_key="cam",
    transforms=ResizeNormalize(32),
    num_workers=0,
    progress=False,
)


def _is_marked(x: torch.Tensor) -> torch.Tensor:
    """Rows that are the solid magenta image after ImageNet normalisation (red
    +2.25, green -2.04): no photo has that mean colour."""
    return (x[:, 0].mean(dim=(1, 2)) > 2.0) & (x[:, 1].mean(dim=(1, 2)) < -1.8)


class Net(nn.Module):
    """A small CNN. ``fault``: "raise" on the marked input, "nan" logits for
    it, "always" raise; ``output``: "logits", "tuple", "hf" (an object with
    ``.logits``, read like a Hugging Face output), "3d" ([B, K, 1])."""

    def __init__(self, fault: str | None = None, output: str = "logits") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(8, 4)
        self.fault, self.output = fault, output

    def forward(self, x: torch.Tensor):
        marked = _is_marked(x)
        if self.fault == "always" or (self.fault == "raise" and marked.any()):
            raise ValueError("marked input")
        feats = self.features(x)
        logits = self.head(feats.mean(dim=(2, 3)))
        if self.fault == "nan":
            logits = torch.where(marked[:, None], torch.nan, logits)
        if self.output == "tuple":
            return logits, feats
        if self.output == "hf":
            return types.SimpleNamespace(logits=logits)
        if self.output == "3d":
            return logits[:, :, None]
        return logits


def test_the_engine_reports_nonfinite_rows_and_keeps_the_others():
    from gradcam_engine import CamEngine

    x = torch.zeros(3, 3, 16, 16)
    x[0] = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    x[1, 0], x[1, 1] = 2.25, -2.04  # the marked input
    x[2] = x[0].flip(-1)
    with CamEngine(Net("nan"), [LAYER]) as engine:
        result = engine.compute(x, [None, None, None])
    assert result.nonfinite == [None, "logits", None]
    with CamEngine(Net(), [LAYER]) as engine:
        clean = engine.compute(x[[0, 2]], [None, None])
    assert clean.nonfinite == [None, None]
    assert torch.allclose(result.maps[[0, 2]], clean.maps, atol=1e-5)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_images")
    paths = []
    for name in PHOTOS:
        img = Image.fromarray(getattr(skimage.data, name)())
        img.thumbnail((96, 96))
        img.save(root / f"{name}.png")
        paths.append(str(root / f"{name}.png"))
    Image.new("RGB", (80, 60), (255, 0, 255)).save(root / "marked.png")
    paths.insert(MARKED, str(root / "marked.png"))
    return paths


@pytest.fixture()
def dataset(image_dir):
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p) for p in image_dir])
    yield ds
    ds.delete()


def _marked(ds) -> fo.Sample:
    return ds.match(fo.ViewField("filepath").ends_with("marked.png")).first()


def test_a_model_that_raises_on_one_input_costs_that_sample_only(dataset):
    summary = compute_cams(dataset, Net("raise"), batch_size=4, **COMMON)
    n = len(PHOTOS) + 1
    assert (summary.num_computed, summary.num_reused, summary.num_errors) == (
        n - 1,
        0,
        1,
    )
    marked = _marked(dataset)
    assert marked.cam_error == (
        "the model failed on this sample: ValueError: marked input"
    )
    assert marked[FIELD] is None and marked.cam_prediction is None
    assert summary.errors == {marked.id: marked.cam_error}
    assert f"1 x {marked.cam_error}" in str(summary)
    others = dataset.match(fo.ViewField("cam_error") == None)  # noqa: E711
    assert len(others) == n - 1
    assert all(s[FIELD] is not None and s.cam_prediction for s in others)

    # the other samples' maps are those of the same model without the fault
    clean = fo.Dataset()
    clean.add_samples([fo.Sample(filepath=s.filepath) for s in others])
    compute_cams(clean, Net(), batch_size=4, **COMMON)
    for mine, theirs in zip(others, clean, strict=True):
        # other batch compositions may differ in the last float bits: 1 level
        diff = mine[FIELD].map.astype(int) - theirs[FIELD].map.astype(int)
        assert mine[FIELD].map.shape == theirs[FIELD].map.shape
        assert np.abs(diff).max() <= 1
        assert mine.cam_prediction.label == theirs.cam_prediction.label
    clean.delete()

    # a resume computes nothing new: it retries the failed sample only
    with pytest.raises(CamRunFailed, match="0 computed, 6 reused, 1 failed"):
        compute_cams(dataset, Net("raise"), batch_size=4, **COMMON)
    assert _marked(dataset).cam_error == marked.cam_error
    again = compute_cams(
        dataset, Net("raise"), batch_size=1, retry_errors=False, **COMMON
    )
    assert (again.num_computed, again.num_reused, again.num_errors) == (0, n, 0)


def test_nan_logits_are_an_error_never_a_success(dataset):
    summary = compute_cams(dataset, Net("nan"), batch_size=4, **COMMON)
    assert (summary.num_computed, summary.num_errors) == (len(PHOTOS), 1)
    marked = _marked(dataset)
    assert marked.cam_error.startswith("the model returned NaN/Inf logits")
    assert marked[FIELD] is None and marked.cam_prediction is None
    assert marked.cam_target is None
    (message, count), *_ = summary.common_errors()
    assert count == 1 and "NaN/Inf" in message
    confidences = dataset.values("cam_prediction.confidence")
    assert sum(c is not None and np.isfinite(c) for c in confidences) == len(PHOTOS)


@pytest.mark.parametrize(
    ("model", "kwargs", "error", "match"),
    [
        (
            Net(output="tuple"),
            {},
            TypeError,
            r"returned a tuple of 2 .*model\(x\)\[0\]",
        ),
        (Net(output="3d"), {}, ValueError, r"shape \(1, 4, 1\).*needs \[B, K\]"),
        (Net(), {"target": 7}, ValueError, r"target=7 .* 4 outputs \(0\.\.3\)"),
        (
            Net(),
            {"target": "e", "classes": list("abcde")},
            ValueError,
            r"target='e' is class index 4 of classes, but the model has 4",
        ),
        (Net("always"), {}, RuntimeError, "model raised on each of the first"),
    ],
    ids=["tuple", "bad-shape", "target-index", "target-name", "broken"],
)
def test_unusable_model_output_is_refused_before_registration(
    dataset, tmp_path, model, kwargs, error, match
):
    before = set(dataset.get_field_schema())
    out = tmp_path / "maps"
    with pytest.raises(error, match=match):
        compute_cams(
            dataset, model, storage="disk", output_dir=str(out), **COMMON, **kwargs
        )
    assert list_cam_runs(dataset) == [] and dataset.list_runs() == []
    assert set(dataset.get_field_schema()) == before
    assert not out.exists() or not any(out.rglob("*"))


def test_a_fault_on_the_first_sample_is_not_taken_for_a_broken_model(image_dir):
    ds = fo.Dataset()
    first = [image_dir[MARKED]] + [p for p in image_dir if p != image_dir[MARKED]]
    ds.add_samples([fo.Sample(filepath=p) for p in first])
    summary = compute_cams(ds, Net("raise"), batch_size=2, **COMMON)
    assert (summary.num_computed, summary.num_errors) == (len(PHOTOS), 1)
    ds.delete()


def _refused(samples, match: str) -> None:
    root = samples._root_dataset
    before = set(root.get_field_schema())
    with pytest.raises(ValueError, match=match):
        compute_cams(samples, Net(), batch_size=4, **COMMON)
    assert root.list_runs() == [] and set(root.get_field_schema()) == before


def test_video_and_clips_collections_are_refused_up_front(image_dir):
    # patches and frames views are explained (test_patches.py, test_frames.py)
    video = fo.Dataset()
    sample = fo.Sample(filepath="/no/such/video.mp4")
    for number, path in enumerate(image_dir[:3], start=1):
        sample.frames[number] = fo.Frame(filepath=path)
    video.add_sample(sample)
    _refused(video, r"'video' media")
    clips = video.to_clips([[(1, 2)]])
    _refused(clips, r"clips view")
    assert video.list_runs() == []
    video.delete()


def test_counts_are_exact_after_an_unclean_database_stop(image_dir, tmp_path):
    """A child process with its own mongod: 2 of 7 samples computed, mongod
    killed and restarted (``len(ds)`` then reads 0), the run resumed."""
    script = pathlib.Path(__file__).with_name("unclean_stop.py")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "db"), *image_dir],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(script.parents[1])},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    n = len(image_dir)
    # the premise: MongoDB's fast count is wrong, the documents are all there
    assert (result["fast_count"], result["exact_count"]) == (0, n)
    outcome = result["summary"]
    assert (outcome["computed"], outcome["reused"], outcome["failed"]) == (n - 2, 2, 0)
    assert result["num_samples"] == n
    assert f"(of {n} samples)" in outcome["headline"] and "-" not in outcome["headline"]
    status = result["status"]
    assert (status["total"], status["done"], status["pending"]) == (n, n, 0)
