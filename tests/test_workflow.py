"""compute_cams on real FiftyOne datasets of real image files: fields, runs, resume."""

from __future__ import annotations

import os

import bson
import fiftyone as fo
import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from PIL import Image

from gradcam_engine import compute_cams, get_cam_run
from gradcam_engine.runs.storage import heatmap_to_float
from gradcam_engine.sources.models import ResizeNormalize

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins")
LAYERS = ["layer3", "layer4"]
SMALL = ResizeNormalize(64)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()).save(root / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


def make_dataset(image_dir, copies: int = 1) -> fo.Dataset:
    ds = fo.Dataset()
    paths = [str(image_dir / f"{name}.png") for name in PHOTOS] * copies
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    return ds


def run(ds, model, **kwargs):
    kwargs.setdefault("layers", LAYERS)
    kwargs.setdefault("transforms", SMALL)
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("progress", False)
    return compute_cams(ds, model, **kwargs)


def maps_by_id(ds, field):
    return dict(zip(ds.values("id"), ds.values(f"{field}.map"), strict=True))


def test_fields_summary_and_run_config(image_dir, model):
    ds = make_dataset(image_dir)
    summary = run(ds, model, run_key="cam", num_workers=2)
    assert summary.fields == {"layer3": "cam_layer3", "layer4": "cam_layer4"}
    assert (summary.num_samples, summary.num_computed) == (6, 6)
    assert (summary.num_skipped, summary.num_errors) == (0, 0)
    assert "6 computed" in str(summary)
    schema = ds.get_field_schema()
    for name in ("cam_layer3", "cam_layer4", "cam_target", "cam_prediction"):
        assert name in schema
    for sample in ds:
        width, height = Image.open(sample.filepath).size
        for field in ("cam_layer3", "cam_layer4"):
            heatmap = sample[field]
            assert isinstance(heatmap, fo.Heatmap) and heatmap.range == [0, 255]
            assert heatmap.map.dtype == np.uint8
            h, w = heatmap.map.shape
            assert max(h, w) == 256
            assert abs(w / h - width / height) < 0.02
            assert heatmap.map.max() >= 240 and heatmap.map.min() <= 5
            assert sample[f"{field}_strength"] > 0
        assert sample.cam_error is None
        assert isinstance(sample.cam_prediction, fo.Classification)
        assert sample.cam_prediction.label == sample.cam_target.label  # "predicted"
        assert int(sample.cam_prediction.label) in range(10)
        assert 0 < sample.cam_prediction.confidence <= 1
        assert sample.cam_target.confidence == pytest.approx(
            sample.cam_prediction.confidence, rel=1e-4
        )
    info = get_cam_run(ds, "cam")
    config = info.config
    assert info.layers == LAYERS and info.storage == "db"
    assert config["method"] == "gradcam" and config["target"] == "predicted"
    assert config["model"] == "ResNet" and "ResizeNormalize" in config["transforms"]
    assert set(info.owned_fields) == {
        "cam_layer3",
        "cam_layer4",
        "cam_layer3_strength",
        "cam_layer4_strength",
        "cam_target",
        "cam_prediction",
        "cam_error",
        "cam_seen",
        "cam_instance",
    }
    ds.delete()


def test_db_heatmaps_are_compact(image_dir, model):
    ds = make_dataset(image_dir)
    run(ds, model, run_key="cam")
    sizes = [
        len(bson.BSON.encode(doc["cam_layer4"]))
        for doc in ds._sample_collection.find({}, {"cam_layer4": 1})
    ]
    assert max(sizes) <= 20_000, sizes
    ds.delete()


def test_maps_match_the_engine_resized_to_the_image(image_dir, model):
    from gradcam_engine import CamEngine

    ds = make_dataset(image_dir)
    run(ds, model, run_key="cam", layers=["layer4"])
    sample = ds.first()
    with CamEngine(model, ["layer4"]) as engine:
        img = Image.open(sample.filepath).convert("RGB")
        expected = engine(SMALL(img)[None], [None])[0, 0].numpy()
    stored = heatmap_to_float(sample.cam_layer4)
    small = np.asarray(
        Image.fromarray(stored).resize((64, 64), Image.BILINEAR), dtype=np.float32
    )
    assert np.abs(small - expected).mean() < 0.03
    ds.delete()


def test_bulk_writes_only(image_dir, model, monkeypatch):
    def no_save(self, *args, **kwargs):
        raise AssertionError("compute_cams must not save samples one by one")

    ds = make_dataset(image_dir)
    monkeypatch.setattr(fo.Sample, "save", no_save)
    summary = run(
        ds, model, run_key="cam", layers=["layer4"], device="cpu", progress=True
    )
    assert summary.num_computed == 6
    ds.delete()


def test_resume_after_a_partial_view(image_dir, model):
    ds = make_dataset(image_dir)
    first_half = ds.limit(3)
    summary = run(ds.limit(3), model, run_key="cam")
    assert summary.num_computed == 3
    before = maps_by_id(first_half, "cam_layer4")
    summary = run(ds, model, run_key="cam")
    assert (summary.num_computed, summary.num_skipped) == (3, 3)
    after = maps_by_id(ds, "cam_layer4")
    for sid, arr in before.items():
        assert np.array_equal(after[sid], arr)
    assert all(a is not None for a in after.values())
    summary = run(ds, model, run_key="cam")
    assert (summary.num_computed, summary.num_skipped) == (0, 6)
    ds.delete()


def test_killed_run_finishes_where_it_stopped(image_dir, model):
    ds = make_dataset(image_dir)

    class Killed(Exception):
        pass

    def kill(done, total):
        if done >= 2:
            raise Killed

    with pytest.raises(Killed):
        run(ds, model, run_key="cam", batch_size=2, progress=kill)
    done_before = maps_by_id(ds.exists("cam_layer4"), "cam_layer4")
    assert len(done_before) == 2
    calls = []
    summary = run(
        ds,
        model,
        run_key="cam",
        batch_size=2,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert (summary.num_computed, summary.num_skipped) == (4, 2)
    assert calls[-1] == (4, 4)
    after = maps_by_id(ds, "cam_layer4")
    for sid, arr in done_before.items():
        assert np.array_equal(after[sid], arr)
    ds.delete()


def test_changed_config_needs_overwrite(image_dir, model):
    ds = make_dataset(image_dir)
    ds.add_sample_field("notes", fo.StringField)
    ds.set_values("notes", ["keep"] * len(ds))
    run(ds, model, run_key="cam")
    with pytest.raises(ValueError, match=r"different config.*method.*overwrite=True"):
        run(ds, model, run_key="cam", method="gradcam++")
    summary = run(
        ds, model, run_key="cam", method="gradcam++", layers=["layer4"], overwrite=True
    )
    assert summary.num_computed == 6
    assert "cam_layer3" not in ds.get_field_schema()  # the old run's fields are gone
    assert get_cam_run(ds, "cam").method == "gradcam++"
    assert ds.values("notes") == ["keep"] * 6  # fields the run does not own
    ds.delete()


def test_foreign_field_is_refused(image_dir, model):
    ds = make_dataset(image_dir)
    ds.add_sample_field("cam_target", fo.StringField)
    ds.set_values("cam_target", ["mine"] * len(ds))
    with pytest.raises(ValueError, match="cam_target"):
        run(ds, model, run_key="cam")
    assert ds.values("cam_target") == ["mine"] * 6
    assert "cam" not in ds.list_runs()
    run(ds, model, run_key="cam", overwrite=True)
    assert isinstance(ds.first().cam_target, fo.Classification)
    ds.delete()


def test_disk_storage_unique_run_dir(image_dir, model, tmp_path):
    ds = make_dataset(image_dir)
    run(ds, model, run_key="cam", storage="disk", output_dir=str(tmp_path))
    info = get_cam_run(ds, "cam")
    run_dir = info.config["run_dir"]
    assert os.path.dirname(run_dir) == str(tmp_path)
    assert os.path.basename(run_dir).startswith("cam-")
    for sample in ds:
        for layer in LAYERS:
            heatmap = sample[f"cam_{layer}"]
            assert heatmap.map is None
            assert heatmap.map_path == os.path.join(run_dir, layer, f"{sample.id}.png")
            png = np.asarray(Image.open(heatmap.map_path))
            assert png.dtype == np.uint8 and max(png.shape) == 256
    run(
        ds,
        model,
        run_key="cam",
        storage="disk",
        output_dir=str(tmp_path),
        method="hirescam",
        overwrite=True,
    )
    new_dir = get_cam_run(ds, "cam").config["run_dir"]
    assert new_dir != run_dir and not os.path.exists(run_dir)
    assert os.path.isdir(new_dir)
    ds.delete()


def test_targets_label_int_and_class_name(image_dir, model):
    ds = make_dataset(image_dir)
    classes = [f"c{i}" for i in range(10)]
    labels = [fo.Classification(label=f"c{i}") for i in range(5)] + [None]
    ds.set_values("gt", labels)
    summary = run(
        ds,
        model,
        run_key="lab",
        layers=["layer4"],
        target="label",
        label_field="gt",
        classes=classes,
    )
    assert (summary.num_computed, summary.num_errors) == (5, 1)
    assert ds.values("lab_target.label")[:5] == [f"c{i}" for i in range(5)]
    assert ds.values("lab_layer4")[5] is None
    assert "no label" in ds.values("lab_error")[5]
    assert all(label in classes for label in ds.values("lab_prediction.label")[:5])

    run(ds, model, run_key="num", layers=["layer4"], target=7)
    assert set(ds.values("num_target.label")) == {"7"}
    run(ds, model, run_key="name", layers=["layer4"], target="c3", classes=classes)
    assert set(ds.values("name_target.label")) == {"c3"}
    with pytest.raises(ValueError, match="'dog'"):
        run(ds, model, run_key="bad", layers=["layer4"], target="dog", classes=classes)
    ds.delete()


def test_argument_errors_before_any_work(image_dir, model):
    ds = make_dataset(image_dir)
    fields = set(ds.get_field_schema())
    with pytest.raises(ValueError, match=r"Unknown layer 'layer9'.*layer"):
        run(ds, model, run_key="cam", layers=["layer9"])
    with pytest.raises(ValueError, match="'missing_gt'"):
        run(ds, model, run_key="cam", target="label", label_field="missing_gt")
    with pytest.raises(ValueError, match="label_field"):
        run(ds, model, run_key="cam", target="label")
    with pytest.raises(ValueError, match="storage"):
        run(ds, model, run_key="cam", storage="s3")
    with pytest.raises(ValueError, match="run_key"):
        run(ds, model, run_key="9 bad")
    assert set(ds.get_field_schema()) == fields
    assert ds.list_runs() == []
    ds.delete()


def test_overwrite_same_config_recomputes_and_resume_keeps_owned_fields(
    image_dir, model
):
    from gradcam_engine.runs.cam_runs import add_owned_fields

    ds = make_dataset(image_dir)
    run(ds, model, run_key="cam", layers=["layer4"])
    ds.set_values("cam_layer4_focus", [0.5] * len(ds))
    add_owned_fields(ds, "cam", ["cam_layer4_focus"])
    summary = run(ds, model, run_key="cam", layers=["layer4"])
    assert summary.num_skipped == 6
    assert "cam_layer4_focus" in get_cam_run(ds, "cam").owned_fields
    summary = run(ds, model, run_key="cam", layers=["layer4"], overwrite=True)
    assert (summary.num_computed, summary.num_skipped) == (6, 0)
    assert "cam_layer4_focus" not in ds.get_field_schema()
    ds.delete()
