"""The planted-shortcut dataset and its small CNN (shortcut_data, shortcut_model).

The key property: a model trained on the correlated split uses the background
(right when it agrees with the class, wrong when it does not) and its Grad-CAM
energy falls outside the object's box; a model trained on the control split
uses the shape and looks at the object.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trained_models
from PIL import Image

from gradcam_engine import CamEngine, default_layers
from gradcam_engine.demo import shortcut_data as sd
from gradcam_engine.demo import shortcut_model as sm

SEED = 0
N_TRAIN = 1000
N_TEST = 200


def _same(a: list[sd.ShortcutSample], b: list[sd.ShortcutSample]) -> bool:
    return all(
        np.array_equal(x.image, y.image)
        and np.array_equal(x.mask, y.mask)
        and (x.label, x.background, x.agrees, x.bbox, x.name)
        == (y.label, y.background, y.agrees, y.bbox, y.name)
        for x, y in zip(a, b, strict=True)
    )


def test_generation_is_deterministic_per_seed_and_split():
    first = sd.generate(12, "train", seed=3)
    assert _same(first, sd.generate(12, "train", seed=3))
    assert not _same(first, sd.generate(12, "train", seed=4))
    assert not _same(first, sd.generate(12, "control", seed=3))


@pytest.mark.parametrize("split", sd.SPLITS)
@pytest.mark.parametrize("size", [64, 96])
def test_samples_are_consistent(split, size):
    samples = sd.generate(40, split, seed=1, size=size)
    assert [s.name for s in samples] == [f"{split}_{i:05d}" for i in range(40)]
    for s in samples:
        assert s.image.dtype == np.uint8 and s.image.shape == (size, size, 3)
        assert s.mask.dtype == bool and s.mask.shape == (size, size)
        assert sd.CLASSES[s.label_index] == s.label
        assert s.background in sd.BACKGROUNDS and s.split == split
        assert s.agrees == (s.background == sd.TRAIN_BACKGROUND[s.label])
        x, y, w, h = s.bbox
        assert all(isinstance(v, float) for v in s.bbox)
        assert min(x, y) >= 0 and min(w, h) > 0
        assert x + w <= 1 and y + h <= 1
        # Objects span 25-45% of the side, so box energy is measurable.
        assert 0.25 <= max(w, h) <= 0.5
        # The box is tight: the mask lies inside it and touches all four edges.
        x0, y0 = round(x * size), round(y * size)
        x1, y1 = round((x + w) * size), round((y + h) * size)
        inside = np.zeros_like(s.mask)
        inside[y0:y1, x0:x1] = True
        assert s.mask.any() and not (s.mask & ~inside).any()
        box = s.mask[y0:y1, x0:x1]
        assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()


def test_agreement_rates_and_class_balance():
    train = sd.generate(400, "train", seed=2)
    assert np.mean([s.agrees for s in train]) == pytest.approx(0.98)
    biased = sd.generate(400, "train", seed=2, p_agree=0.9)
    assert np.mean([s.agrees for s in biased]) == pytest.approx(0.9)
    for split in ("control", "test"):
        samples = sd.generate(400, split, seed=2)
        assert np.mean([s.agrees for s in samples]) == pytest.approx(0.5)
        # Backgrounds are independent of the class: each pair about a quarter.
        for label in sd.CLASSES:
            for bg in sd.BACKGROUNDS:
                count = sum(s.label == label and s.background == bg for s in samples)
                assert 60 <= count <= 140, (split, label, bg, count)
    assert [s.label_index for s in train].count(0) == 200


def test_write_images_round_trips(tmp_path):
    samples = sd.generate(3, "test", seed=0)
    paths = sd.write_images(samples, tmp_path / "images")
    assert [p.rsplit("/", 1)[-1] for p in paths] == [f"{s.name}.png" for s in samples]
    for s, p in zip(samples, paths, strict=True):
        assert np.array_equal(np.asarray(Image.open(p).convert("RGB")), s.image)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"n": 4, "split": "val"},
            r"split must be one of \['train', 'control', 'test'\], got 'val'",
        ),
        ({"n": -1}, r"n must be a non-negative int, got -1"),
        ({"n": 4, "p_agree": 1.5}, r"p_agree must be in \[0, 1\], got 1.5"),
        ({"n": 4, "size": 8}, r"size must be an int >= 16"),
    ],
)
def test_generate_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sd.generate(**kwargs)


def test_model_layout_and_preprocessing():
    model = sm.ShortcutCNN().eval()
    assert default_layers(model) == [sm.DEFAULT_LAYER] == ["block4"]
    images = np.stack([s.image for s in sd.generate(2, "test", seed=0)])
    x = sm.preprocess(images)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 64, 64)
    one = sm.transforms()(Image.fromarray(images[1]))
    assert torch.allclose(one, x[1], atol=1e-5)
    with torch.no_grad():
        assert model(x).shape == (2, len(sd.CLASSES))
        assert model.block4(model.block3(model.block2(model.block1(x)))).shape[-1] == 8
    with pytest.raises(ValueError, match=r"images must be uint8 \[B, H, W, 3\]"):
        sm.preprocess(images[0])


def test_training_is_deterministic_and_restores_torch_settings():
    data = sd.generate(64, "control", seed=5)
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    a = sm.train_classifier(data, epochs=1, seed=7)
    b = sm.train_classifier(data, epochs=1, seed=7)
    assert not a.training
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    for (name, x), (_, y) in zip(
        a.state_dict().items(), b.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), name


@pytest.fixture(scope="module")
def trained():
    shortcut = trained_models.trained("shortcut", N_TRAIN, "train", seed=SEED)
    control = trained_models.trained("shortcut", N_TRAIN, "control", seed=SEED)
    return {"shortcut": shortcut, "control": control}


@pytest.fixture(scope="module")
def test_split():
    return sd.generate(N_TEST, "test", seed=SEED + 100)


def _box_focus(maps: np.ndarray, samples: list[sd.ShortcutSample]) -> np.ndarray:
    """Fraction of each ``[H, W]`` map's energy inside the sample's box; NaN
    for an all-zero map (no feature supports the target class)."""
    focus = np.full(len(samples), np.nan)
    size = maps.shape[-1]
    for i, (m, s) in enumerate(zip(maps, samples, strict=True)):
        x, y, w, h = s.bbox
        x0, y0 = round(x * size), round(y * size)
        x1, y1 = round((x + w) * size), round((y + h) * size)
        if m.sum() > 0:
            focus[i] = m[y0:y1, x0:x1].sum() / m.sum()
    return focus


def test_shortcut_model_uses_the_background(trained, test_split):
    shortcut = sm.evaluate(trained["shortcut"], test_split)
    control = sm.evaluate(trained["control"], test_split)
    print(f"shortcut: {shortcut}\ncontrol: {control}")
    assert shortcut["n_agree"] + shortcut["n_disagree"] == N_TEST
    # Right when the background agrees with the class, wrong when it does not.
    assert shortcut["accuracy_agree"] >= 0.95
    assert shortcut["accuracy_disagree"] <= 0.1
    # The control model reads the shape: the background makes no difference.
    assert control["accuracy_agree"] >= 0.9 and control["accuracy_disagree"] >= 0.9
    assert abs(control["accuracy_agree"] - control["accuracy_disagree"]) <= 0.08


def test_shortcut_model_looks_outside_the_object(trained, test_split):
    x = sm.preprocess([s.image for s in test_split])
    agrees = np.array([s.agrees for s in test_split])
    focus = {}
    for kind, model in trained.items():
        with CamEngine(model, layers=[sm.DEFAULT_LAYER], method="gradcam") as engine:
            true = engine(x, [s.label_index for s in test_split])[:, 0].numpy()
            predicted = engine(x, [None] * len(test_split))[:, 0].numpy()
        focus[kind] = (_box_focus(true, test_split), _box_focus(predicted, test_split))
    (short_true, short_pred), (ctrl_true, ctrl_pred) = (
        focus["shortcut"],
        focus["control"],
    )
    print(
        f"true class, agreeing images: shortcut {short_true[agrees].mean():.3f}, "
        f"control {ctrl_true[agrees].mean():.3f}; predicted class, all images: "
        f"shortcut {np.nanmean(short_pred):.3f}, control {np.nanmean(ctrl_pred):.3f}"
    )
    # Where both models are right (background agrees), only the CAM tells
    # them apart: the shortcut model's energy lies on the background.
    assert not np.isnan(short_true[agrees]).any()
    assert not np.isnan(ctrl_true[agrees]).any()
    assert short_true[agrees].mean() <= 0.2
    assert ctrl_true[agrees].mean() >= 0.35
    assert short_true[agrees].mean() <= 0.5 * ctrl_true[agrees].mean()
    assert (ctrl_true[agrees] > short_true[agrees]).mean() >= 0.8
    # For the class each model predicts, on every test image, the same holds.
    assert np.isnan(short_pred).mean() <= 0.05 and np.isnan(ctrl_pred).mean() <= 0.05
    assert np.nanmean(short_pred) <= 0.5 * np.nanmean(ctrl_pred)
    # On disagreeing images the true class has little support in the shortcut
    # model: Grad-CAM is all zero for most of them (score_cams must cope).
    assert np.isnan(short_true[~agrees]).mean() >= 0.3


def test_save_and_load_round_trip(trained, test_split, tmp_path):
    path = tmp_path / "shortcut.pt"
    sm.save(trained["shortcut"], path)
    loaded = sm.load(path)
    assert not loaded.training
    images = np.stack([s.image for s in test_split[:16]])
    with torch.no_grad():
        expected = trained["shortcut"](sm.preprocess(images))
        assert torch.allclose(loaded(sm.preprocess(images)), expected)
    assert np.array_equal(
        sm.predict(loaded, images), sm.predict(trained["shortcut"], images)
    )
