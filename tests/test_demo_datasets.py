"""The demo datasets: built from offline material, reused, rebuilt on request;
and the numbers README.md quotes are what the demo prints."""

import inspect
import os

import fiftyone as fo
import numpy as np
import pytest
from readme_claims import photo_claims, shortcut_claims
from trained_models import trained

from gradcam_engine.demo import datasets as dd
from gradcam_engine.demo import main as demo
from gradcam_engine.demo import shortcut_model as sm
from gradcam_engine.demo.shortcut_data import CLASSES


@pytest.fixture(autouse=True)
def _demo_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CAM_AUDIT_DEMO_DIR", str(tmp_path / "demo"))


def test_demo_dir_follows_the_environment(tmp_path):
    assert dd.demo_dir() == (tmp_path / "demo").resolve()
    assert dd.demo_dir().is_dir()


def test_photos_dataset(tmp_path):
    name = "test-demo-photos"
    dataset = dd.build_photos_dataset(name, directory=tmp_path / "photos", fresh=True)
    try:
        assert len(dataset) == len(dd.PHOTOS) + 2
        assert all(os.path.isfile(p) for p in dataset.values("filepath"))
        assert set(dataset.values("grayscale")) == {True, False}
        two = dataset.match_tags("two_subjects")
        assert len(two) == 2
        labels = [
            sorted(d.label for d in gt.detections) for gt in two.values("ground_truth")
        ]
        assert labels == [["cat", "dog"], ["cat", "coffee cup"]]
        for gt in two.values("ground_truth"):
            for det in gt.detections:
                x, y, w, h = det.bounding_box
                assert min(x, y) >= 0 and max(x + w, y + h) <= 1 + 1e-6
        assert dataset.persistent
        # Reused as is unless fresh.
        ids = dataset.values("id")
        assert (
            dd.build_photos_dataset(name, directory=tmp_path / "photos").values("id")
            == ids
        )
        rebuilt = dd.build_photos_dataset(
            name, directory=tmp_path / "photos", fresh=True
        )
        assert set(rebuilt.values("id")).isdisjoint(ids)
    finally:
        fo.delete_dataset(name)


def test_shortcut_dataset(tmp_path):
    name = "test-demo-shortcut"
    dataset = dd.build_shortcut_dataset(
        name, directory=tmp_path / "sc", n=12, fresh=True
    )
    try:
        assert len(dataset) == 12
        sample = dataset.first()
        assert isinstance(sample.ground_truth, fo.Classification)
        assert sample.ground_truth.label in CLASSES
        assert len(sample.objects.detections) == 1
        mask = sample.mask.mask
        assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 1}
        assert sample.background in ("water", "land")
        assert dataset.count_values("agrees") == {True: 6, False: 6}
        assert dataset.count_sample_tags() == {"agree": 6, "disagree": 6}
        assert dataset.default_classes == list(CLASSES)
        ids = dataset.values("id")
        again = dd.build_shortcut_dataset(name, directory=tmp_path / "sc", n=12)
        assert again.values("id") == ids  # reused
        other = dd.build_shortcut_dataset(
            name, directory=tmp_path / "sc2", n=12, seed=1
        )
        assert set(other.values("id")).isdisjoint(ids)  # other arguments: rebuilt
    finally:
        fo.delete_dataset(name)


def test_shortcut_models_are_cached(tmp_path):
    kwargs = dict(directory=tmp_path / "models", n_train=32, epochs=1, n_test=16)
    logs = []
    first = dd.shortcut_models(**kwargs, log=logs.append)
    assert len(logs) == 2 and len(list((tmp_path / "models").glob("*.pt"))) == 2
    second = dd.shortcut_models(**kwargs, log=logs.append)
    assert len(logs) == 2  # loaded, not retrained
    for a, b in [(first.shortcut, second.shortcut), (first.control, second.control)]:
        for (k, v), w in zip(
            a.state_dict().items(), b.state_dict().values(), strict=True
        ):
            assert np.array_equal(v.numpy(), w.numpy()), k
    assert set(first.metrics) == {"shortcut", "control"}
    assert first.metrics["shortcut"]["n"] == 16


def test_readme_quotes_the_demos_printout(capsys):
    """The photos and planted-shortcut steps of ``make demo`` whose printout
    README.md quotes (the Clever-Hans part: test_demo_clever_hans), and the
    README's numbers against that printout. The demo's models are the tests'
    cached ones: same recipe."""
    epochs = inspect.signature(sm.train_classifier).parameters["epochs"].default
    assert epochs == dd.SHORTCUT_EPOCHS  # else the cached models are others
    root = dd.demo_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    for kind, split in (("shortcut", "train"), ("control", "control")):
        model = trained("shortcut", dd.SHORTCUT_N_TRAIN, split, seed=0)
        sm.save(
            model,
            dd.shortcut_model_path(root, kind, dd.SHORTCUT_N_TRAIN, epochs, 0, 64),
        )
    try:
        # the photo runs README.md quotes (the demo also runs GradCAM++ and
        # EigenCAM, and GradCAM on all photos): the two-subject images' table
        photos = dd.build_photos_dataset(fresh=True)
        two = photos.match_tags("two_subjects")
        quoted = ("cat_gradcam", "cup_gradcam")  # the forced rows README quotes
        demo.compute_photo_runs(photos, {"gradcam": "gradcam"}, two, quoted)
        demo.print_subject_focus(photos)
        photos = capsys.readouterr().out
        # the planted-shortcut part up to its table (the demo then prints the
        # class report and suspects, saves views and writes HTML reviews)
        dataset = dd.build_shortcut_dataset(fresh=True)
        demo.print_shortcut_table(dataset, demo.compute_shortcut_runs(dataset))
        shortcut = capsys.readouterr().out
        assert "training the" not in shortcut  # the cached models were used
        print(photos, shortcut)
        assert not photo_claims(photos), photo_claims(photos)
        assert not shortcut_claims(shortcut), shortcut_claims(shortcut)
    finally:
        for name in (dd.PHOTOS_DATASET, dd.SHORTCUT_DATASET):
            if fo.dataset_exists(name):
                fo.delete_dataset(name)
