"""score_cams: focus, pointing game, spread and agreement from stored heatmaps.

Runs are built by hand (heatmap fields + runs.register_cam_run), so every
expected value is known exactly.
"""

from __future__ import annotations

import os
import uuid

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from gradcam_engine.audit.scoring import score_cams
from gradcam_engine.runs import cam_runs as runs
from gradcam_engine.runs.naming import heatmap_field


def make_dataset(n: int) -> fo.Dataset:
    ds = fo.Dataset(f"scoring-{uuid.uuid4().hex[:8]}")
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.png") for i in range(n)])
    return ds


def make_run(
    ds: fo.Dataset,
    run_key: str,
    maps: dict[str, list[np.ndarray | None]],
    storage: str = "db",
    out_dir: str | None = None,
) -> runs.CamRunInfo:
    """One heatmap field per layer from uint8 maps (None: no heatmap)."""
    fields = []
    for layer, layer_maps in maps.items():
        field = heatmap_field(run_key, layer)
        heatmaps = []
        for i, m in enumerate(layer_maps):
            if m is None:
                heatmaps.append(None)
            elif storage == "db":
                heatmaps.append(fo.Heatmap(map=m, range=[0, 255]))
            else:
                path = os.path.join(out_dir, run_key, field, f"{i}.png")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                Image.fromarray(m, mode="L").save(path)
                heatmaps.append(fo.Heatmap(map_path=path, range=[0, 255]))
        ds.add_sample_field(
            field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Heatmap
        )
        ds.set_values(field, heatmaps)
        fields.append(field)
    return runs.register_cam_run(
        ds,
        run_key,
        method="gradcam",
        layers=list(maps),
        storage=storage,
        output_dir=out_dir,
        owned_fields=fields,
    )


def set_boxes(ds: fo.Dataset, boxes: list[list[list[float]] | None], field="gt"):
    ds.set_values(
        field,
        [
            None
            if b is None
            else fo.Detections(
                detections=[fo.Detection(label="obj", bounding_box=x) for x in b]
            )
            for b in boxes
        ],
    )


def box_map(h: int, w: int, box: list[float], inside=255, outside=0) -> np.ndarray:
    m = np.full((h, w), outside, dtype=np.uint8)
    x, y, bw, bh = box
    m[round(y * h) : round((y + bh) * h), round(x * w) : round((x + bw) * w)] = inside
    return m


def test_focus_is_one_when_all_energy_is_inside_the_box():
    ds = make_dataset(2)
    box = [0.25, 0.25, 0.5, 0.5]
    # Two resolutions and aspects: focus must not depend on them.
    make_run(ds, "r", {"layer4": [box_map(40, 60, box), box_map(128, 32, box)]})
    set_boxes(ds, [[box], [box]])
    summary = score_cams(ds, "r", "gt")
    assert ds.values("r_layer4_focus") == pytest.approx([1.0, 1.0])
    assert ds.values("r_layer4_hit") == [True, True]
    # Half of the energy sits in half of the box's area: 0.5 * 0.25.
    assert ds.values("r_layer4_spread") == pytest.approx([0.125, 0.125])
    assert summary["mean_focus"] == {"layer4": pytest.approx(1.0)}
    assert summary["hit_rate"] == {"layer4": pytest.approx(1.0)}
    assert set(summary["fields"]) == {
        "r_layer4_focus",
        "r_layer4_hit",
        "r_layer4_spread",
    }


def test_half_inside_and_uniform_maps_give_the_covered_fraction():
    ds = make_dataset(3)
    uniform = np.full((20, 20), 200, dtype=np.uint8)
    # Energy on the left half of the image; the box covers the left quarter.
    left_half = box_map(20, 20, [0.0, 0.0, 0.5, 1.0])
    make_run(ds, "r", {"l": [uniform, left_half, uniform]})
    set_boxes(
        ds,
        [
            [[0.0, 0.0, 0.5, 1.0]],  # half the image
            [[0.0, 0.0, 0.25, 1.0]],  # half of the energy
            [[0.05, 0.0, 0.1, 1.0]],  # straddles pixel edges: fractional coverage
        ],
    )
    score_cams(ds, "r", "gt")
    assert ds.values("r_l_focus") == pytest.approx([0.5, 0.5, 0.1])
    assert ds.values("r_l_spread") == pytest.approx([0.5, 0.25, 0.5])


def test_overlapping_boxes_are_not_counted_twice():
    ds = make_dataset(1)
    make_run(ds, "r", {"l": [np.full((10, 10), 9, dtype=np.uint8)]})
    set_boxes(ds, [[[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]]])
    score_cams(ds, "r", "gt")
    assert ds.values("r_l_focus") == pytest.approx([0.5])


def test_peak_location_drives_hit_with_tolerance():
    ds = make_dataset(3)
    box = [0.5, 0.5, 0.3, 0.3]  # pixels 50..79 of 100
    maps = []
    for peak_x in (60, 85, 53):  # inside; 6% outside; inside
        m = np.full((100, 100), 10, dtype=np.uint8)
        m[60, peak_x] = 255
        maps.append(m)
    maps[2][10, 10] = 255  # a tie: the first maximum (top-left, outside) wins
    maps[2][60, 53] = 250
    make_run(ds, "r", {"l": maps})
    set_boxes(ds, [[box]] * 3)
    score_cams(ds, "r", "gt")
    assert ds.values("r_l_hit") == [True, False, False]
    score_cams(ds, "r", "gt", hit_tolerance=0.1)
    assert ds.values("r_l_hit") == [True, True, False]


def test_no_objects_or_no_map_give_none():
    ds = make_dataset(4)
    m = np.full((8, 8), 100, dtype=np.uint8)
    zero = np.zeros((8, 8), dtype=np.uint8)
    make_run(ds, "r", {"l": [m, m, None, zero]})
    ds.set_values(
        "gt",
        [
            None,
            fo.Detections(detections=[]),
            fo.Detections(detections=[fo.Detection(bounding_box=[0, 0, 1, 1])]),
            fo.Detections(detections=[fo.Detection(bounding_box=[0, 0, 1, 1])]),
        ],
    )
    summary = score_cams(ds, "r", "gt")
    assert ds.values("r_l_focus") == [None, None, None, None]
    assert ds.values("r_l_hit") == [None, None, None, None]
    assert ds.values("r_l_spread") == pytest.approx([0.5, 0.5, None, None])
    assert summary["counts"]["r_l_focus"] == 0
    assert summary["mean_focus"] == {"l": None}


def test_label_classes_restrict_the_objects():
    ds = make_dataset(1)
    make_run(ds, "r", {"l": [box_map(10, 10, [0, 0, 0.5, 1])]})
    ds.set_values(
        "gt",
        [
            fo.Detections(
                detections=[
                    fo.Detection(label="dog", bounding_box=[0, 0, 0.5, 1]),
                    fo.Detection(label="cat", bounding_box=[0.5, 0, 0.5, 1]),
                ]
            )
        ],
    )
    score_cams(ds, "r", "gt", label_classes=["cat"])
    assert ds.values("r_l_focus") == pytest.approx([0.0])
    score_cams(ds, "r", "gt", label_classes=["dog"])
    assert ds.values("r_l_focus") == pytest.approx([1.0])
    score_cams(ds, "r", "gt", label_classes=["bird"])
    assert ds.values("r_l_focus") == [None]


def test_segmentation_is_restricted_to_the_target_class():
    ds = make_dataset(3)
    # Mask 40x40 (resized nearest to the 20x20 maps): dog on the left, cat top right.
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[:, :20] = 2
    mask[:20, 20:] = 1
    ds.mask_targets = {"seg": {1: "cat", 2: "dog"}}
    ds.save()
    ds.set_values("seg", [fo.Segmentation(mask=mask)] * 3)
    ds.set_values(
        "r_target",
        [fo.Classification(label="dog"), fo.Classification(label="cat"), None],
    )
    uniform = np.full((20, 20), 50, dtype=np.uint8)
    make_run(ds, "r", {"l": [uniform] * 3})
    score_cams(ds, "r", "seg")
    # dog: left half; cat: a quarter; unknown target: all non-zero pixels.
    assert ds.values("r_l_focus") == pytest.approx([0.5, 0.25, 0.75])
    # A uniform map peaks at its first pixel (top left): dog, not cat.
    assert ds.values("r_l_hit") == [True, False, True]


def test_segmentation_from_mask_path_and_default_mask_targets(tmp_path):
    ds = make_dataset(1)
    ds.default_mask_targets = {3: "obj"}
    ds.save()
    mask = np.zeros((10, 30), dtype=np.uint8)
    mask[:, 20:] = 3
    mask[:, :5] = 7  # another class, not the target
    path = str(tmp_path / "mask.png")
    Image.fromarray(mask).save(path)
    ds.set_values("seg", [fo.Segmentation(mask_path=path)])
    ds.set_values("r_target", [fo.Classification(label="obj")])
    make_run(ds, "r", {"l": [np.full((5, 15), 10, dtype=np.uint8)]})
    score_cams(ds, "r", "seg")
    assert ds.values("r_l_focus") == pytest.approx([1 / 3])


def test_polylines_are_filled():
    ds = make_dataset(1)
    square = [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.0, 0.5]]
    ds.set_values(
        "poly",
        [fo.Polylines(polylines=[fo.Polyline(points=[square], closed=True)])],
    )
    make_run(ds, "r", {"l": [box_map(40, 40, [0, 0, 0.5, 0.5]) // 2 + 10]})
    score_cams(ds, "r", "poly")
    # Energy: 137 on the square's 400 pixels, 10 on the other 1200.
    expected = 137 * 400 / (137 * 400 + 10 * 1200)
    assert ds.values("r_l_focus")[0] == pytest.approx(expected, abs=0.01)
    assert ds.values("r_l_hit") == [True]


def test_disk_and_db_storage_give_the_same_scores(tmp_path):
    rng = np.random.default_rng(0)
    maps = {
        "a": [rng.integers(0, 256, (24, 32), dtype=np.uint8) for _ in range(5)],
        "b": [rng.integers(0, 256, (12, 16), dtype=np.uint8) for _ in range(5)],
    }
    boxes = [[[0.1 * i, 0.2, 0.3, 0.4]] for i in range(5)]
    results = []
    for storage in ("db", "disk"):
        ds = make_dataset(5)
        make_run(ds, "r", maps, storage=storage, out_dir=str(tmp_path))
        set_boxes(ds, boxes)
        score_cams(ds, "r", "gt")
        fields = [
            f
            for f in ds.get_field_schema()
            if f.endswith(("_focus", "_hit", "_spread", "_agreement"))
        ]
        results.append({f: ds.values(f) for f in sorted(fields)})
    assert results[0].keys() == results[1].keys()
    assert len(results[0]) == 7
    for field in results[0]:
        assert results[0][field] == pytest.approx(results[1][field]), field


def test_layer_agreement_and_compare_run():
    ds = make_dataset(3)
    rng = np.random.default_rng(1)
    base = [rng.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(3)]
    flat = np.full((16, 16), 7, dtype=np.uint8)
    make_run(
        ds,
        "r",
        {
            "a": base,
            # Same maps at twice the size: agreement ~1 after resizing.
            "b": [np.kron(m, np.ones((2, 2), dtype=np.uint8)) for m in base[:2]]
            + [flat],
        },
    )
    make_run(ds, "other", {"a": [255 - m for m in base], "c": base})
    summary = score_cams(ds, "r", compare_run="other")
    agreement = ds.values("r_layer_agreement")
    assert agreement[0] == pytest.approx(1.0, abs=0.1)
    assert agreement[1] == pytest.approx(1.0, abs=0.1)
    assert agreement[2] is None  # a constant map has no correlation
    assert ds.values("r_a_vs_other") == pytest.approx([-1.0] * 3)
    assert "r_b_vs_other" not in ds.get_field_schema()
    assert summary["mean_agreement_vs"] == {"a": pytest.approx(-1.0)}
    # Ground-truth free: no focus/hit fields.
    assert not [f for f in ds.get_field_schema() if f.endswith(("_focus", "_hit"))]
    assert "r_a_spread" in ds.get_field_schema()
    with pytest.raises(ValueError, match="share no layer"):
        score_cams(ds, "r", layers=["b"], compare_run="other")


def test_scores_are_owned_by_the_run_and_deleted_with_it():
    ds = make_dataset(2)
    make_run(ds, "r", {"a": [box_map(8, 8, [0, 0, 1, 1])] * 2, "b": [None] * 2})
    set_boxes(ds, [[[0, 0, 1, 1]]] * 2)
    summary = score_cams(ds, "r", "gt")
    owned = runs.get_cam_run(ds, "r").owned_fields
    for field in summary["fields"]:
        assert field in owned
    assert "r_layer_agreement" in owned
    assert runs.get_cam_run(ds, "r").config["scoring"]["gt_field"] == "gt"
    runs.delete_cam_run(ds, "r")
    left = [f for f in ds.get_field_schema() if f.startswith("r_")]
    assert left == []
    assert "gt" in ds.get_field_schema()


def test_scoring_a_view_writes_only_its_samples():
    ds = make_dataset(4)
    make_run(ds, "r", {"l": [box_map(8, 8, [0, 0, 0.5, 1])] * 4})
    set_boxes(ds, [[[0, 0, 0.5, 1]]] * 4)
    score_cams(ds.skip(2), "r", "gt", layers=["r_l"])
    assert ds.values("r_l_focus") == [None, None, 1.0, 1.0]


def test_bad_arguments_are_named():
    ds = make_dataset(1)
    make_run(ds, "r", {"l": [np.ones((4, 4), dtype=np.uint8)]})
    set_boxes(ds, [[[0, 0, 1, 1]]], field="ground_truth")
    ds.set_values("cls", [fo.Classification(label="x")])
    with pytest.raises(ValueError, match=r"'gt_truth' does not exist.*'ground_truth'"):
        score_cams(ds, "r", "gt_truth")
    with pytest.raises(ValueError, match=r"'cls' is a Classification field"):
        score_cams(ds, "r", "cls")
    with pytest.raises(ValueError, match="No CAM run 'rr'"):
        score_cams(ds, "rr", "ground_truth")
    with pytest.raises(ValueError, match=r"layers: 'layer9'.*\['l'\]"):
        score_cams(ds, "r", "ground_truth", layers=["layer9"])
    with pytest.raises(ValueError, match="hit_tolerance"):
        score_cams(ds, "r", "ground_truth", hit_tolerance=0.7)


def test_many_samples_with_small_maps():
    n = 2000
    ds = make_dataset(n)
    rng = np.random.default_rng(2)
    maps = rng.integers(0, 256, (n, 14, 14), dtype=np.uint8)
    make_run(ds, "r", {"a": list(maps), "b": list(maps[:, ::-1])})
    set_boxes(ds, [[[0.25, 0.25, 0.5, 0.5]]] * n)
    calls = []
    summary = score_cams(ds, "r", "gt", progress=lambda done, total: calls.append(done))
    assert summary["num_samples"] == n
    assert summary["counts"]["r_a_focus"] == n
    assert calls[-1] == n
    focus = np.array(ds.values("r_a_focus"))
    # Random maps: about a quarter of the energy in a box of a quarter of the area.
    assert 0.2 < focus.mean() < 0.3
    assert np.all((focus >= 0) & (focus <= 1))


def test_end_to_end_with_compute_cams_db_and_disk(tmp_path):
    """Real maps from compute_cams (a small untrained CNN): disk and db runs of
    the same model score identically, and rescoring is stable."""
    import torch

    from gradcam_engine.demo import shortcut_data as sd
    from gradcam_engine.demo import shortcut_model as sm
    from gradcam_engine.runs.compute import compute_cams

    torch.manual_seed(0)
    model = sm.ShortcutCNN().eval()
    generated = sd.generate(6, "test", seed=3)
    paths = sd.write_images(generated, tmp_path / "images")
    ds = fo.Dataset(f"scoring-e2e-{uuid.uuid4().hex[:8]}")
    ds.add_samples(
        [
            fo.Sample(
                filepath=p,
                objects=fo.Detections(
                    detections=[fo.Detection(label=s.label, bounding_box=s.bbox)]
                ),
                mask=fo.Segmentation(mask=s.mask.astype(np.uint8)),
            )
            for s, p in zip(generated, paths, strict=True)
        ]
    )
    for key, storage in (("db", "db"), ("disk", "disk")):
        compute_cams(
            ds,
            model,
            layers=["block3", "block4"],
            run_key=key,
            transforms=sm.transforms(),
            classes=list(sd.CLASSES),
            storage=storage,
            output_dir=str(tmp_path / "maps"),
            num_workers=0,
            progress=False,
        )
        summary = score_cams(ds, key, "objects")
        assert summary["counts"][f"{key}_block4_spread"] >= 5
        score_cams(ds, key, "mask", layers=["block4"])  # mask of 1s: same objects
    for layer in ("block3", "block4"):
        for suffix in ("focus", "hit", "spread"):
            db = ds.values(f"db_{layer}_{suffix}")
            disk = ds.values(f"disk_{layer}_{suffix}")
            assert db == pytest.approx(disk), (layer, suffix)
    assert ds.values("db_layer_agreement") == pytest.approx(
        ds.values("disk_layer_agreement")
    )
    # Box focus >= mask focus: the tight box holds the object's pixels and more.
    box = score_cams(ds, "db", "objects", layers=["block4"])["mean_focus"]["block4"]
    mask = score_cams(ds, "db", "mask", layers=["block4"])["mean_focus"]["block4"]
    assert box >= mask - 1e-6
    owned = runs.get_cam_run(ds, "disk").owned_fields
    assert "disk_block4_focus" in owned and "disk_layer_agreement" in owned


def test_batched_arithmetic_matches_direct_formulas():
    """map_scores (pure numpy) against straightforward reference formulas."""
    from gradcam_engine.audit.metrics import GroundTruth, agreement, score_layer

    rng = np.random.default_rng(5)
    maps = [rng.integers(0, 256, (9, 13)).astype(np.float32) / 255 for _ in range(6)]
    maps.append(np.zeros((9, 13), np.float32))
    maps.append(rng.integers(0, 256, (4, 7)).astype(np.float32) / 255)  # other shape
    gts = [GroundTruth(boxes=np.array([[0.1, 0.2, 0.5, 0.4]]))] * len(maps)
    spread, focus, hit = score_layer(maps, gts, "detections", 0.0)
    for k, m in enumerate(maps):
        if m.sum() == 0:
            assert spread[k] is focus[k] is hit[k] is None
            continue
        s = np.sort(m.ravel())[::-1]
        expected = (np.searchsorted(np.cumsum(s), s.sum() / 2 - 1e-6) + 1) / m.size
        assert spread[k] == pytest.approx(expected)
        cover = gts[k].mask(m.shape)
        assert focus[k] == pytest.approx((m * cover).sum() / m.sum(), rel=1e-5)
        i, j = np.unravel_index(np.argmax(m), m.shape)
        x, y = (j + 0.5) / m.shape[1], (i + 0.5) / m.shape[0]
        assert hit[k] == (0.1 <= x <= 0.6 and 0.2 <= y <= 0.6)
    # the stored uint8 levels (score_cams' own reads) give the same scores
    levels = [np.rint(m * 255).astype(np.uint8) for m in maps]
    levels[-1] = maps[-1]  # a float map among them: its shape group stays float
    spread_u8, focus_u8, hit_u8 = score_layer(levels, gts, "detections", 0.0)
    assert (spread_u8, hit_u8) == (spread, hit)
    for got, want in zip(focus_u8, focus, strict=True):  # float32 vs float64 sums
        assert got is want is None or got == pytest.approx(want, rel=1e-6)
    a = [rng.random((6, 6)) for _ in range(4)]
    b = [rng.random((6, 6)) for _ in range(4)]
    c = [rng.random((6, 6)) for _ in range(4)]
    got = agreement([a, b, c])
    for k in range(4):
        r = np.corrcoef([a[k].ravel(), b[k].ravel(), c[k].ravel()])
        assert got[k] == pytest.approx(np.mean([r[0, 1], r[0, 2], r[1, 2]]))


def test_scores_follow_a_renamed_run_and_progress_bar_works():
    ds = make_dataset(3)
    make_run(ds, "r", {"l": [box_map(8, 8, [0, 0, 0.5, 1])] * 3})
    set_boxes(ds, [[[0, 0, 0.5, 1]]] * 3)
    score_cams(ds, "r", "gt", progress=True)
    runs.rename_cam_run(ds, "r", "r2")
    assert ds.values("r2_l_focus") == pytest.approx([1.0] * 3)
    assert "r_l_focus" not in ds.get_field_schema()
    summary = score_cams(ds, "r2", "gt")
    assert summary["mean_focus"] == {"l": pytest.approx(1.0)}
    assert sorted(runs.get_cam_run(ds, "r2").owned_fields) == sorted(
        ["r2_l", "r2_l_focus", "r2_l_hit", "r2_l_spread"]
    )


def test_layer_agreement_in_chunks_equals_pearson_and_skips_constant_maps():
    """agreement() works a few samples at a time (memory; issue 23): across the
    chunk boundary each value is the mean pairwise np.corrcoef of its maps,
    a constant map's pairs left out, spread unchanged by the uint8 counting."""
    from gradcam_engine.audit.metrics import _spread_float, agreement, score_layer

    rng = np.random.default_rng(0)
    n, layers = 37, 3
    maps = [[rng.random((12, 16)).astype(np.float32) for _ in range(n)]]
    for _ in range(layers - 1):
        maps.append(
            [m * 0.5 + rng.random((12, 16)).astype(np.float32) * 0.5 for m in maps[0]]
        )
    maps[2][5] = np.full((12, 16), 0.3, np.float32)  # constant: its pairs left out
    values = agreement(maps)
    for i in range(n):
        corr = np.corrcoef(np.stack([maps[k][i].ravel() for k in range(layers)]))
        pairs = [(0, 1)] if i == 5 else [(0, 1), (0, 2), (1, 2)]
        assert values[i] == pytest.approx(
            np.mean([corr[a, b] for a, b in pairs]), abs=1e-9
        )
    quantised = [np.rint(m * 255) / 255 for m in maps[0]]
    spread, _, _ = score_layer(quantised, [None] * n, None, 0.05)
    assert spread == pytest.approx([_spread_float(m) for m in quantised], abs=1 / 192)
