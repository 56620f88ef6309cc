"""class_report, format_report and save_review_views on a hand-built scored run."""

from __future__ import annotations

import math
import uuid

import fiftyone as fo
import numpy as np
import pandas as pd
import pytest

from gradcam_engine.audit.report import (
    ALL_CLASSES,
    class_report,
    format_report,
    save_review_views,
)
from gradcam_engine.audit.scoring import score_cams
from gradcam_engine.runs import cam_runs as runs

# (class, focus, prediction): cat is right only when it looks at the cat.
ROWS = [
    ("cat", 0.9, "cat"),
    ("cat", 0.8, "cat"),
    ("cat", 0.1, "dog"),
    ("cat", 0.2, "dog"),
    ("dog", 0.9, "dog"),
    ("dog", 0.9, "dog"),
    ("dog", 0.9, "cat"),
    ("dog", 0.05, "dog"),
    ("dog", None, "dog"),
]


def make_scored(rows=ROWS) -> fo.Dataset:
    ds = fo.Dataset(f"report-{uuid.uuid4().hex[:8]}")
    ds.add_samples(
        [fo.Sample(filepath=f"/nonexistent/{i}.png") for i in range(len(rows))]
    )
    ds.set_values("gt", [fo.Classification(label=c) for c, _, _ in rows])
    ds.set_values("r_prediction", [fo.Classification(label=p) for _, _, p in rows])
    ds.set_values("r_target", [fo.Classification(label=p) for _, _, p in rows])
    ds.set_values(
        "r_l", [fo.Heatmap(map=np.ones((4, 4), np.uint8), range=[0, 255])] * len(rows)
    )
    ds.add_sample_field("r_l_focus", fo.FloatField)
    ds.set_values("r_l_focus", [f for _, f, _ in rows])
    runs.register_cam_run(
        ds,
        "r",
        method="gradcam",
        layers=["l"],
        storage="db",
        output_dir=None,
        owned_fields=["r_l", "r_prediction", "r_target", "r_l_focus"],
    )
    return ds


def test_class_report_per_class_numbers():
    ds = make_scored()
    report = class_report(ds, "r", label_field="gt")
    assert isinstance(report, pd.DataFrame)
    assert list(report.index) == ["cat", "dog", ALL_CLASSES]  # lowest mean focus first
    cat, dog, every = (report.loc[c] for c in ("cat", "dog", ALL_CLASSES))
    assert cat["count"] == 4 and cat["scored"] == 4
    assert cat["accuracy"] == pytest.approx(0.5)
    assert cat["mean_focus"] == pytest.approx(0.5)
    assert cat["median_focus"] == pytest.approx(0.5)
    assert cat["low_focus_share"] == pytest.approx(0.5)
    assert cat["accuracy_high_focus"] == pytest.approx(1.0)
    assert cat["accuracy_low_focus"] == pytest.approx(0.0)
    assert cat["accuracy_gap"] == pytest.approx(1.0)  # leans on context
    assert dog["count"] == 5 and dog["scored"] == 4
    assert dog["accuracy"] == pytest.approx(0.8)
    assert dog["mean_focus"] == pytest.approx(0.6875)
    assert dog["low_focus_share"] == pytest.approx(0.25)
    assert dog["accuracy_gap"] == pytest.approx(2 / 3 - 1.0)
    assert every["count"] == 9 and every["n_low_focus"] == 3
    assert every["accuracy"] == pytest.approx(6 / 9)
    assert report.attrs["focus_field"] == "r_l_focus"

    text = format_report(report)
    assert "run 'r', layer 'l'" in text
    assert "cat" in text and "0.50" in text and "0.69" in text

    rows = class_report(ds, "r", "r_l", label_field="gt", as_dataframe=False)
    assert [r["class"] for r in rows] == ["cat", "dog", ALL_CLASSES]
    assert rows[0]["accuracy_gap"] == pytest.approx(1.0)
    assert "cat" in format_report(rows)


def test_low_focus_threshold_and_target_grouping():
    ds = make_scored()
    report = class_report(ds, "r", low_focus=0.95)
    # Grouped by the explained (target) class; no label field -> no accuracy.
    assert set(report.index) == {"cat", "dog", ALL_CLASSES}
    assert report.loc["cat", "count"] == 3  # rows whose explained target is "cat"
    assert report.loc[ALL_CLASSES, "low_focus_share"] == pytest.approx(1.0)
    assert math.isnan(report.loc["cat", "accuracy"])
    assert "-" in format_report(report)


def test_detections_label_field():
    ds = make_scored()
    ds.set_values(
        "boxes",
        [
            fo.Detections(
                detections=[
                    fo.Detection(label=c, bounding_box=[0, 0, 0.5, 0.5]),
                    fo.Detection(label="bird", bounding_box=[0.5, 0.5, 0.1, 0.1]),
                    fo.Detection(label=c, bounding_box=[0.2, 0.2, 0.1, 0.1]),
                ]
            )
            for c, _, _ in ROWS
        ],
    )
    report = class_report(ds, "r", label_field="boxes")
    assert list(report.index) == ["cat", "dog", ALL_CLASSES]
    assert report.loc["cat", "accuracy"] == pytest.approx(0.5)
    names = save_review_views(ds, "r", label_field="boxes")
    assert len(ds.load_saved_view(names[1])) == 2


def test_save_review_views_and_cleanup():
    ds = make_scored()
    view = ds.match(fo.ViewField("gt.label") == "cat")
    with pytest.raises(ValueError, match="needs label_field"):
        save_review_views(ds, "r")
    names = save_review_views(view, "r", label_field="gt")
    assert names == ["r-suspects", "r-misfocus-errors"]
    assert len(ds.load_saved_view("r-suspects")) == 0
    assert ds.load_saved_view("r-misfocus-errors").values("r_l_focus") == [0.1, 0.2]

    names = save_review_views(ds, "r", label_field="gt")  # overwrites
    suspects = ds.load_saved_view("r-suspects")
    errors = ds.load_saved_view("r-misfocus-errors")
    assert suspects.values("r_l_focus") == [0.05]  # right for the wrong reason
    assert suspects.values("gt.label") == ["dog"]
    assert errors.values("r_l_focus") == [0.1, 0.2]
    assert sorted(ds.list_saved_views()) == sorted(names)
    assert runs.get_cam_run(ds, "r").config["saved_views"] == names

    runs.delete_cam_run(ds, "r")
    assert ds.list_saved_views() == []


def test_with_real_scores():
    ds = make_scored(ROWS[:4])
    ds.delete_sample_field("r_l_focus")
    ds.set_values(
        "r_l",
        [
            fo.Heatmap(
                map=np.pad(np.full((5, 5), 255, np.uint8), ((0, 5), (0, 5))),
                range=[0, 255],
            ),
            fo.Heatmap(
                map=np.pad(np.full((5, 5), 255, np.uint8), ((5, 0), (5, 0))),
                range=[0, 255],
            ),
        ]
        * 2,
    )
    ds.set_values(
        "objects",
        [
            fo.Detections(
                detections=[fo.Detection(label="x", bounding_box=[0, 0, 0.5, 0.5])]
            )
        ]
        * 4,
    )
    score_cams(ds, "r", "objects")
    report = class_report(ds, "r", label_field="gt")
    assert report.loc["cat", "mean_focus"] == pytest.approx(0.5)
    assert report.loc["cat", "low_focus_share"] == pytest.approx(0.5)


def test_errors_name_the_problem():
    ds = make_scored()
    with pytest.raises(ValueError, match=r"layer 'layer9'.*\['l'\]"):
        class_report(ds, "r", "layer9")
    with pytest.raises(ValueError, match=r"label_field 'nope'.*\['gt', 'r_prediction'"):
        class_report(ds, "r", label_field="nope")
    ds.delete_sample_field("r_l_focus")
    with pytest.raises(ValueError, match="score_cams"):
        class_report(ds, "r")
