"""Runs you can trust (issue 10), one test per reported problem, on real datasets
with real models: ownership, identity, retry, FiftyOne's own run commands,
kept config, atomic registration, TorchScript, fixed cost, safe overwrite."""

from __future__ import annotations

import copy
import os
import threading

import fiftyone as fo
import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from PIL import Image

from gradcam_engine import compute_cams, get_cam_run, list_cam_runs, score_cams
from gradcam_engine.audit.report import save_review_views
from gradcam_engine.runs.fingerprint import transforms_fingerprint, weights_fingerprint
from gradcam_engine.sources.models import ResizeNormalize, load_model

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
SMALL = ResizeNormalize(64)


def write_photos(root, names=PHOTOS):
    """Small 80x60 PNGs of scikit-image photos in ``root``; returns ``root``."""
    for name in names:
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        img.resize((80, 60)).save(root / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("runs-photos"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=3).eval()


def make_dataset(image_dir) -> fo.Dataset:
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=str(image_dir / f"{n}.png")) for n in PHOTOS])
    boxes = fo.Detections(detections=[fo.Detection(label="0", bounding_box=[0.2] * 4)])
    ds.set_values("gt", [boxes] * len(ds))
    ds.set_values("cls", [fo.Classification(label="0")] * len(ds))
    return ds


def run(ds, model, **kwargs):
    kwargs.setdefault("run_key", "cam")
    kwargs.setdefault("layers", ["layer4"])
    kwargs.setdefault("transforms", SMALL)
    kwargs.setdefault("batch_size", 2)
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("classes", ["0", "1", "2"])
    return compute_cams(ds, model, **kwargs)


def test_1_user_fields_and_views_are_never_clobbered(image_dir, model):
    ds = make_dataset(image_dir)
    run(ds, model)
    ds.add_sample_field("cam_layer4_focus", fo.FloatField)
    ds.set_values("cam_layer4_focus", [0.25] * len(ds))
    with pytest.raises(ValueError, match=r"score_cams.*'cam_layer4_focus'.*overwrite"):
        score_cams(ds, "cam", gt_field="gt")
    assert ds.values("cam_layer4_focus") == [0.25] * 4
    assert "cam_layer4_spread" not in ds.get_field_schema()  # refused before work
    ds.delete_run("cam")
    assert ds.values("cam_layer4_focus") == [0.25] * 4  # never the run's

    run(ds, model)
    summary = score_cams(ds, "cam", gt_field="gt", overwrite=True)
    assert summary["replaced"] == ["field 'cam_layer4_focus' (not from a CAM run)"]
    assert ds.values("cam_layer4_focus") != [0.25] * 4
    user_view = ds.limit(1)
    ds.save_view("cam-suspects", user_view)
    with pytest.raises(ValueError, match=r"saved view 'cam-suspects'"):
        save_review_views(ds, "cam", label_field="cls")
    assert len(ds.load_saved_view("cam-suspects")) == 1
    assert save_review_views(ds, "cam", label_field="cls", overwrite=True)
    ds.delete()


def test_2_resume_refuses_other_weights_and_other_transforms(image_dir, model):
    ds = make_dataset(image_dir)
    run(ds, model)
    same = copy.deepcopy(model)  # the same weights, loaded again: resumes
    assert run(ds, same).num_skipped == 4
    retrained = copy.deepcopy(model)
    with torch.no_grad():
        retrained.fc.bias[0] += 1e-3
    assert weights_fingerprint(retrained) != weights_fingerprint(model)
    with pytest.raises(ValueError, match=r"weights: stored '[0-9a-f]+', now"):
        run(ds, retrained)
    # the same object trained in place, even through .data (which torch's
    # version counters do not see): its remembered digest is not reused
    weights_fingerprint(same)
    original = same.fc.bias.data[0].item()
    same.fc.bias.data[0] += 1e-3
    with pytest.raises(ValueError, match=r"weights: stored '[0-9a-f]+', now"):
        run(ds, same)
    same.fc.bias.data[0] = original
    assert weights_fingerprint(same) == weights_fingerprint(model)
    # two lambdas print alike but differ in code, constants or closures
    small, big = ResizeNormalize(64), ResizeNormalize(72)
    run(ds, model, run_key="lam", transforms=lambda img: small(img))
    with pytest.raises(ValueError, match="transforms_fingerprint"):
        run(ds, model, run_key="lam", transforms=lambda img: big(img))

    def sized(size):
        return lambda img: ResizeNormalize(size)(img)

    assert transforms_fingerprint(sized(64)) != transforms_fingerprint(sized(72))
    assert transforms_fingerprint(sized(64)) == transforms_fingerprint(sized(64))
    assert transforms_fingerprint(small) != transforms_fingerprint(small, {"crop": 1})
    ds.delete()


def test_3_a_fixed_missing_file_is_retried(image_dir, model, tmp_path):
    ds = make_dataset(image_dir)
    late = tmp_path / "late.png"
    ds.add_sample(fo.Sample(filepath=str(late)))
    summary = run(ds, model)
    assert (summary.num_computed, summary.num_errors) == (4, 1)
    Image.open(image_dir / "coffee.png").save(late)
    summary = run(ds, model)
    assert (summary.num_computed, summary.num_skipped, summary.num_errors) == (1, 4, 0)
    sample = ds.match(fo.ViewField("filepath") == str(late)).first()
    assert sample.cam_error is None and sample.cam_layer4 is not None
    ds.delete()


def test_4_fiftyone_rename_and_delete_run_move_exactly_what_the_run_owns(
    image_dir, model, tmp_path
):
    ds = make_dataset(image_dir)
    ds.set_values("cam_notes", ["mine"] * len(ds))  # shares the prefix only
    run(ds, model, storage="disk", output_dir=str(tmp_path))
    score_cams(ds, "cam", gt_field="gt")
    views = save_review_views(ds, "cam", label_field="cls", low_focus=1.0)
    run_dir = get_cam_run(ds, "cam").config["run_dir"]
    before = ds.values("cam_layer4_focus")
    suspects = len(ds.load_saved_view(views[0]))

    ds.rename_run("cam", "new")  # FiftyOne's own command
    schema = ds.get_field_schema()
    assert not [f for f in schema if f.startswith("cam_") and f != "cam_notes"]
    assert {"new_layer4", "new_layer4_focus", "new_error", "cam_notes"} <= set(schema)
    assert ds.values("new_layer4_focus") == before
    assert sorted(ds.list_saved_views()) == ["new-misfocus-errors", "new-suspects"]
    assert len(ds.load_saved_view("new-suspects")) == suspects  # refs renamed
    info = get_cam_run(ds, "new")
    assert info.fields == {"layer4": "new_layer4"}
    assert os.path.isfile(ds.first().new_layer4.map_path)

    ds.delete_run("new")
    assert [f for f in ds.get_field_schema() if f.startswith(("new_", "cam_"))] == [
        "cam_notes"
    ]
    assert ds.values("cam_notes") == ["mine"] * 4
    assert ds.list_saved_views() == [] and not os.path.exists(run_dir)
    ds.delete()


def test_5_resume_keeps_config_added_later(image_dir, model):
    ds = make_dataset(image_dir)
    run(ds, model)
    score_cams(ds, "cam", gt_field="gt")
    views = save_review_views(ds, "cam", label_field="cls")
    run(ds, model)  # resume
    config = get_cam_run(ds, "cam").config
    assert config["scoring"]["gt_field"] == "gt"
    assert config["saved_views"] == views
    assert "cam_layer4_focus" in config["owned_fields"]
    ds.delete_run("cam")
    assert ds.list_saved_views() == []
    ds.delete()


def _race(target, count=2):
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def go(i):
        barrier.wait()
        try:
            results[i] = target(i)
        except Exception as exc:  # recorded for the test to inspect
            results[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_6_simultaneous_registrations_leave_one_run_and_no_orphan(
    image_dir, model, tmp_path
):
    ds = make_dataset(image_dir)
    out = tmp_path / "maps"
    # one model object each (the same weights): hooks of two runs on one
    # module would see each other's passes
    models = [model, copy.deepcopy(model)]
    results = _race(lambda i: run(ds, models[i], storage="disk", output_dir=str(out)))
    assert [r.num_errors for r in results] == [0, 0], results
    assert list_cam_runs(ds) == ["cam"]
    assert os.listdir(out) == [
        os.path.basename(get_cam_run(ds, "cam").config["run_dir"])
    ]
    assert all(os.path.isfile(p) for p in ds.values("cam_layer4.map_path"))

    methods = ["gradcam", "hirescam"]
    results = _race(lambda i: run(ds, models[i], run_key="two", method=methods[i]))
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == 1 and "different config" in str(refused[0])
    assert sorted(list_cam_runs(ds)) == ["cam", "two"]
    ds.delete()


def test_7_torchscript_is_refused_up_front_and_pickles_need_consent(
    image_dir, model, tmp_path
):
    ds = make_dataset(image_dir)
    fields = set(ds.get_field_schema())
    scripted = torch.jit.trace(model, torch.randn(1, 3, 64, 64))
    with pytest.raises(TypeError, match="TorchScript.*register_forward_hook"):
        run(ds, scripted)
    scripted.save(str(tmp_path / "scripted.pt"))
    with pytest.raises(ValueError, match="TorchScript"):
        run(ds, str(tmp_path / "scripted.pt"))
    assert set(ds.get_field_schema()) == fields and ds.list_runs() == []

    torch.save(model, tmp_path / "full.pt")
    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_model(str(tmp_path / "full.pt"))
    loaded = load_model(str(tmp_path / "full.pt"), allow_pickle=True)
    assert weights_fingerprint(loaded.module) == weights_fingerprint(model)
    ds.delete()


def test_9_fields_are_declared_in_one_schema_update(image_dir, model, monkeypatch):
    ds = make_dataset(image_dir)
    calls = []
    original = fo.Dataset._merge_sample_field_schema

    def count(self, schema, *args, **kwargs):
        calls.append(sorted(schema))
        return original(self, schema, *args, **kwargs)

    def one_by_one(*args, **kwargs):
        raise AssertionError("each add_sample_field reloads the dataset")

    monkeypatch.setattr(fo.Dataset, "_merge_sample_field_schema", count)
    monkeypatch.setattr(fo.Dataset, "add_sample_field", one_by_one)
    run(ds, model, layers=["layer3", "layer4"])
    score_cams(ds, "cam", gt_field="gt")
    # 2 maps, 2 strengths, 4 labels, the done marker (the run instance)
    assert len(calls) == 2 and len(calls[0]) == 9
    assert isinstance(ds.first().cam_layer3, fo.Heatmap)
    ds.delete()


def test_overwrite_that_fails_leaves_the_old_run_intact(image_dir, model):
    ds = make_dataset(image_dir)
    run(ds, model)
    maps = ds.values("cam_layer4.map")

    class Killed(Exception):
        pass

    def kill(done, total):
        raise Killed

    with pytest.raises(Killed):
        run(ds, model, method="hirescam", overwrite=True, progress=kill)
    assert get_cam_run(ds, "cam").method == "gradcam"
    after = ds.values("cam_layer4.map")
    assert all(np.array_equal(a, b) for a, b in zip(maps, after, strict=True))
    # the failed replacement removed its temporary run (tests/test_replacement.py)
    assert list_cam_runs(ds) == ["cam"]
    assert not [f for f in ds.get_field_schema() if "replacing" in f]

    summary = run(ds, model, method="hirescam", overwrite=True)
    assert summary.run_key == "cam" and summary.fields == {"layer4": "cam_layer4"}
    assert list_cam_runs(ds) == ["cam"] and get_cam_run(ds, "cam").method == "hirescam"
    assert not [f for f in ds.get_field_schema() if "replacing" in f]
    ds.delete()


def test_per_image_work_runs_on_one_torch_thread_and_batches_on_all(image_dir, model):
    """Issue 23: the probe's one-image forward and the user's torchvision
    transform run on one intra-op thread (a thread team waits on a busy
    machine), the engine's batches on every thread; the count comes back."""
    from torchvision import transforms as T

    calls = []

    class Recording(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls.append((len(x), torch.is_grad_enabled(), torch.get_num_threads()))
            return self.inner(x)

    pipeline = T.Compose([T.Resize((64, 64)), T.ToTensor()])
    transformed = []

    def transforms(img):
        transformed.append(torch.get_num_threads())
        return pipeline(img)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    ds = make_dataset(image_dir)
    try:
        recording = Recording(model)
        run(ds, recording, layers=["inner.layer4"], transforms=transforms, batch_size=4)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
        ds.delete()
    assert calls[0] == (1, False, 1)  # the probe, before registration
    assert calls[1:] == [(4, True, 2)]  # one batch of all four
    assert set(transformed) == {1} and after == 2


_SIZES = [ResizeNormalize(64)]  # read by sized_by_global: not in its fingerprint
_TRANSFORM_CALLS = []


def sized_by_global(img):
    _TRANSFORM_CALLS.append(img.size)
    return _SIZES[0](img)


def test_a_second_run_reuses_the_probes_unless_model_or_transforms_changed(
    image_dir, model
):
    """Issue 23: the transform geometry and the model's output check are probed
    once per process; weights changed in place or transforms that now behave
    otherwise (same description) are probed again."""
    mine = copy.deepcopy(model)  # not probed by another test
    probes = []
    mine.register_forward_pre_hook(lambda _, args: probes.append(len(args[0])))

    def run_on_new_dataset(key):
        ds = make_dataset(image_dir)
        _TRANSFORM_CALLS.clear()
        probes.clear()
        try:
            run(ds, mine, run_key=key, transforms=sized_by_global, batch_size=4)
            return get_cam_run(ds, key).config["geometry"], list(probes)
        finally:
            ds.delete()

    geometry, forwards = run_on_new_dataset("first")
    assert forwards == [1, 4] and len(_TRANSFORM_CALLS) > 20  # probed
    again, forwards = run_on_new_dataset("second")
    # one check of the probed transforms, the probe sample, the 4 samples
    assert forwards == [4] and len(_TRANSFORM_CALLS) == 6 and again == geometry

    mine.fc.bias.data[0] += 1e-3  # trained in place
    assert run_on_new_dataset("third")[1] == [1, 4]

    _SIZES[0] = ResizeNormalize(72)  # behaves otherwise, described alike
    try:
        geometry, forwards = run_on_new_dataset("fourth")
    finally:
        _SIZES[0] = ResizeNormalize(64)
    assert len(_TRANSFORM_CALLS) > 20 and forwards == [1, 4]  # a new input shape
    assert geometry["sizes"]["640x480"]["input_size"] == [72, 72]

    assert run_on_new_dataset("fifth")[1] == [4]
    linear = mine.fc.forward
    mine.fc.forward = lambda x: linear(x)  # the same weights, new code
    assert run_on_new_dataset("sixth")[1] == [1, 4]
