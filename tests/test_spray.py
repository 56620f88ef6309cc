"""The pure maths of discovery: map vectors, clustering, counterfactual inputs.

No FiftyOne and no training: synthetic maps with a known strategy each, and
images with known objects. test_discovery.py runs the same code on a trained
CNN's maps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gradcam_engine.audit import spray
from gradcam_engine.audit.counterfactual import prediction_change, replace_background


def _blob(size: int, cx: float, cy: float, width: float) -> np.ndarray:
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / width).astype(np.float32)


def _strategies(n: int, seed: int = 0):
    """Maps on an object anywhere in the lower right, and a third of them with a
    second, stronger blob in the top-left corner (the cue)."""
    rng = np.random.default_rng(seed)
    cue = rng.uniform(size=n) < 1 / 3
    maps = []
    for i in range(n):
        m = _blob(48, *rng.uniform(0.4, 0.85, 2), 0.02)
        if cue[i]:
            m = 0.5 * m + _blob(48, 0.1, 0.1, 0.005)
        maps.append(m + 0.05 * rng.uniform(size=m.shape).astype(np.float32))
    return maps, cue


def test_map_vectors_block_means_and_peak_normalisation():
    m = np.zeros((64, 32), dtype=np.float32)
    m[:4, :2] = 2.0  # one 16x16 cell of the top-left 4x2 block
    v = spray.map_vectors([m, np.zeros((5, 7)), 3 * m], size=16)
    assert v.shape == (3, 256) and v.dtype == np.float32
    assert v[0, 0] == 1.0 and v[0, 1:].sum() == 0.0
    assert np.array_equal(v[0], v[2])  # strength does not count, place does
    assert not v[1].any()  # an empty map stays empty
    # Non-divisible shapes go through PIL's box filter: same place, same vector.
    odd = spray.map_vectors([np.pad(m, ((0, 1), (0, 1)))], size=16)
    assert odd[0].argmax() == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_clusters": 0}, r"n_clusters must be a positive int or None, got 0"),
        ({"select": "elbow"}, r"select must be one of .*got 'elbow'"),
        ({"max_clusters": 1}, r"max_clusters must be an int >= 2, got 1"),
    ],
)
def test_cluster_maps_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        spray.cluster_maps(np.zeros((5, 4)), **kwargs)


def test_map_vectors_rejects_bad_input():
    with pytest.raises(ValueError, match=r"maps\[1\] must be a 2-D \[H, W\] map"):
        spray.map_vectors([np.zeros((4, 4)), np.zeros((2, 4, 4))])
    with pytest.raises(ValueError, match=r"size must be an int >= 2, got 1"):
        spray.map_vectors([np.zeros((4, 4))], size=1)


@pytest.mark.parametrize("select", ["silhouette", "eigengap"])
def test_the_cue_strategy_is_one_cluster(select):
    maps, cue = _strategies(600)
    labels = spray.cluster_maps(spray.map_vectors(maps), select=select)
    assert labels.dtype == np.int64 and labels.min() == 0
    sizes = np.bincount(labels)
    assert (np.diff(sizes) <= 0).all()  # 0 is the largest cluster
    best = np.bincount(labels[cue]).argmax()
    members = labels == best
    purity = (cue & members).sum() / members.sum()
    assert purity >= 0.95, purity
    if select == "silhouette":  # the default keeps the whole cue together
        # (the object maps may split by position: that is not a shortcut)
        assert (cue & members).sum() / cue.sum() >= 0.95


def test_fixed_k_and_tiny_inputs():
    maps, _ = _strategies(60, seed=1)
    v = spray.map_vectors(maps)
    assert spray.cluster_maps(v, 3).max() == 2
    assert spray.cluster_maps(v, 1).max() == 0
    assert spray.cluster_maps(v[:2]).tolist() == [0, 0]
    assert spray.choose_k_eigengap(np.array([0.0, 0.01, 0.02, 0.6, 0.7])) == 3
    means = spray.mean_maps(v, np.arange(60) % 2)
    assert np.allclose(means[1], v[1::2].mean(axis=0))


def test_replace_background_keeps_the_object_and_removes_the_rest():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    keep = np.zeros((40, 60), dtype=bool)
    keep[10:20, 20:40] = True
    for fill in ("blur", "mean", "gray", "noise"):
        out = replace_background(image, keep, fill)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert np.array_equal(out[keep], image[keep])
        assert np.abs(out[~keep].astype(int) - image[~keep]).mean() > 20, fill
    blurred = replace_background(image, keep, "blur")
    assert blurred[~keep].std() < image[~keep].std() / 3  # details are gone
    gray = replace_background(image, keep, "gray")
    assert set(np.unique(gray[~keep])) == {128}
    # Soft edges (box coverage) blend, and the noise fill is seeded.
    half = replace_background(image, np.full((40, 60), 0.5), "gray")
    assert np.abs(half.astype(float) - (image / 2 + 63.75)).max() <= 1
    assert np.array_equal(
        replace_background(image, keep, "noise", seed=3),
        replace_background(image, keep, "noise", seed=3),
    )
    with pytest.raises(ValueError, match=r"fill must be one of .*got 'sepia'"):
        replace_background(image, keep, "sepia")
    with pytest.raises(ValueError, match=r"keep must be \[H, W\] = \(40, 60\)"):
        replace_background(image, keep[:10], "gray")
    with pytest.raises(ValueError, match=r"image must be uint8 \[H, W, 3\]"):
        replace_background(np.asarray(Image.fromarray(image).convert("L")), keep)


def test_prediction_change():
    before = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    after = torch.tensor([[0.0, 2.0], [0.0, 3.0], [1.0, 0.0]])
    flips, drops = prediction_change(before, after, [None, 0, None])
    assert flips == [True, False, False]
    p = torch.tensor([2.0, 0.0]).softmax(0)
    assert drops[0] == pytest.approx(float(p[0] - p[1]))
    assert drops[1] > 0  # class 0 fell further as class 1 rose
    assert drops[2] == 0
    with pytest.raises(ValueError, match=r"2 targets for 3 samples"):
        prediction_change(before, after, [None, None])


def test_stored_maps_go_back_onto_the_model_input():
    from gradcam_engine.audit.model_checks import map_to_input
    from gradcam_engine.sources.geometry import Geometry

    ramp = np.tile(np.arange(100, dtype=np.float32), (50, 1))  # value = x
    # A center crop of 50 of the 100 columns: the input shows columns 25..74.
    crop = Geometry((100, 50), (50, 50), (1.0, 1.0), (25.0, 0.0))
    assert np.array_equal(map_to_input(ramp, crop), ramp[:, 25:75])
    # The same through a map stored at half resolution: close, not exact.
    half = ramp[::2, ::2] + 0.5
    assert np.abs(map_to_input(half, crop) - ramp[:, 25:75]).max() <= 1.0
    # A letterbox: the input's top and bottom 25 rows are padding -> 0.
    box = Geometry((100, 50), (100, 100), (1.0, 1.0), (0.0, -25.0))
    out = map_to_input(ramp, box)
    assert not out[:25].any() and not out[75:].any()
    assert np.array_equal(out[25:75], ramp)
