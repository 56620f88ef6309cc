"""One ``progress`` argument for every public function, and ``score_cams``
returns the same kind of summary as ``compute_cams``.

A real dataset of real photos (plus the marked image of ``test_faults``) and
the small CNNs of ``test_faults``.
"""

from __future__ import annotations

import json
import pathlib
import sys
import warnings

import fiftyone as fo
import pytest

TESTS = pathlib.Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from test_faults import COMMON, FIELD, LAYER, PHOTOS, Net, image_dir  # noqa: E402,F401

import gradcam_engine as ge  # noqa: E402


@pytest.fixture()
def dataset(image_dir):  # noqa: F811
    ds = fo.Dataset()
    box = fo.Detection(label="x", bounding_box=[0.2, 0.2, 0.5, 0.5])
    ds.add_samples(
        [fo.Sample(filepath=p, gt=fo.Detections(detections=[box])) for p in image_dir]
    )
    yield ds
    ds.delete()


class Calls(list):
    """A ``(done, total)`` progress callback that remembers its calls."""

    def __call__(self, done: int, total: int) -> None:
        self.append((done, total))


def _check(calls: Calls, total: int) -> None:
    assert calls, "the progress callable was never called"
    assert calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_one_progress_argument_for_every_public_function(dataset):
    n = len(dataset)
    kwargs = {**COMMON, "batch_size": 4}
    del kwargs["progress"]
    calls = Calls()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        ge.compute_cams(dataset, Net(), progress=calls, **kwargs)
    _check(calls, n)

    old = Calls()  # the former keyword still works, and says it is deprecated
    with pytest.warns(DeprecationWarning, match="progress_callback= is deprecated"):
        ge.compute_cams(dataset, Net(), progress_callback=old, overwrite=True, **kwargs)
    _check(old, n)

    writers = {
        "score_cams": lambda p: ge.score_cams(dataset, "cam", "gt", progress=p),
        "cluster_cams": lambda p: ge.cluster_cams(
            dataset, "cam", by=None, n_clusters=2, visualization=None, progress=p
        ),
        "background_test": lambda p: ge.background_test(
            dataset, "cam", "gt", Net(), transforms=COMMON["transforms"], progress=p
        ),
        "road_cams": lambda p: ge.road_cams(
            dataset, "cam", model=Net(), transforms=COMMON["transforms"], progress=p
        ),
    }
    for name, call in writers.items():
        calls = Calls()
        call(calls)
        _check(calls, n)
        # the same wrong value is refused the same way, before anything is written
        before = set(dataset.get_field_schema())
        with pytest.raises(TypeError, match=r"progress must be True .*got str: 'yes'"):
            call("yes")
        assert set(dataset.get_field_schema()) == before, name
    with pytest.raises(TypeError, match=r"progress must be True .*got str: 'yes'"):
        ge.compute_cams(dataset, Net(), run_key="other", progress="yes", layers=[LAYER])
    assert "other" not in dataset.list_runs()


def test_score_cams_returns_a_summary_like_compute_cams(dataset):
    dataset.add_sample(fo.Sample(filepath="/no/such/image.png"))  # fails: no map
    n = len(dataset)
    ge.compute_cams(dataset, Net(), batch_size=4, **COMMON)
    summary = ge.score_cams(dataset, "cam", "gt")
    assert isinstance(summary, ge.ScoreSummary)
    assert (summary.num_samples, summary.num_scored, summary.num_without_maps) == (
        n,
        n - 1,
        1,
    )
    written = [f"{FIELD}_spread", f"{FIELD}_focus", f"{FIELD}_hit"]
    assert summary.fields_written == written
    assert summary.counts == {name: n - 1 for name in written}
    text = str(summary)
    assert f"{n - 1} scored, 1 without maps (of {n} samples)" in text
    assert f"{LAYER}: mean focus" in text and FIELD + "_focus" in text
    as_dict = json.loads(json.dumps(summary.as_dict()))
    assert as_dict["scored"] == n - 1 and as_dict["fields"] == written

    # what callers read from the former dict still reads the same
    assert summary["fields"] == written
    assert summary["counts"][f"{FIELD}_focus"] == n - 1
    assert summary["mean_focus"] == {LAYER: pytest.approx(summary.mean_focus[LAYER])}
    assert summary["num_samples"] == n and summary["replaced"] == []
    assert {"run_key", "gt_field", "hit_rate", "mean_spread"} <= set(summary)
    assert summary.get("mean_layer_agreement") is None
