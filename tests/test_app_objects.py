"""Per-object runs from the App's operators (issues 20, 21): the compute form's
Task "Multi-label" and patches views, and the per-object choice that the review
panel's Open hands to ``show_detection_cam`` (one mechanism for detections,
patches and labels), on a real dataset with the known-truth red/green model.
The browser side is in tests/test_app_review.py.
"""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone.operators.executor import ExecutionContext
from PIL import Image
from test_multilabel import CLASSES, SIZE, SQUARES
from test_operators import _panel_event

from gradcam_engine import score_label_maps
from gradcam_engine.audit.object_maps import object_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLUGIN = "@cam-audit/cam-audit"
COMMON = dict(model="red-green", layers=["features"], method="gradcam", batch_size=4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_objects")
    ds = fo.Dataset()
    for k, squares in enumerate(SQUARES):
        image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
        boxes = []
        for name, (top, left) in squares.items():
            image[top : top + 12, left : left + 12, CLASSES.index(name)] = 255
            boxes.append(
                fo.Detection(
                    label=name, bounding_box=[left / SIZE, top / SIZE, 0.25, 0.25]
                )
            )
        Image.fromarray(image).save(root / f"img{k}.png")
        ds.add_sample(
            fo.Sample(
                filepath=str(root / f"img{k}.png"),
                objects=fo.Detections(detections=boxes),
            )
        )
    yield ds
    ds.delete()


@pytest.fixture
def red_green_source(monkeypatch):
    import os

    sources = os.environ.get("CAM_AUDIT_MODEL_SOURCES", "")
    sources += ",red-green=test_multilabel:build_red_green"
    monkeypatch.setenv("CAM_AUDIT_MODEL_SOURCES", sources)


def _form(view, params: dict) -> dict:
    uri = f"{PLUGIN}/compute_cams"
    ctx = ExecutionContext(
        request_params=dict(
            dataset_name=view._root_dataset.name,
            view=view._serialize(),
            params=params,
        ),
        operator_uri=uri,
    )
    return (
        foo.get_operator(uri)
        .resolve_type(ctx, "inputs")
        .to_json()["type"]["properties"]
    )


def test_compute_form_offers_multilabel_and_patches(dataset):
    dataset.add_sample_field(
        "tags_gt", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classifications
    )
    props = _form(dataset.view(), {"task": "multilabel", "target": "label_field"})
    assert "multilabel" in str(props["task"])
    assert "tags_gt" in str(props["label_field"])  # a Classifications field
    assert "confidence_thresh" in props and "max_detections" not in props
    fixed = _form(dataset.view(), {"task": "multilabel", "target": "class"})
    assert "Predicted" in str(fixed["target"])  # refused, saying what to choose
    patches = _form(dataset.to_patches("objects"), {"target": "label_field"})
    assert "multilabel" not in str(patches["task"])  # a classifier on crops
    assert "Patches view of 'objects'" in str(patches["patches"])
    assert "label_field" not in patches  # the crops' own labels
    dataset.delete_sample_field("tags_gt")


def test_compute_operator_multilabel_then_the_panels_label_choice(
    dataset, red_green_source
):
    """Task Multi-label from the operator; then a label chosen as the review
    panel's Open does (its object id) shows that label's own map."""
    compute = foo.get_operator(f"{PLUGIN}/compute_cams")
    result = compute(dataset, run_key="ml", task="multilabel", **COMMON)
    assert result.error is None, result.error
    for sample, squares in zip(dataset, SQUARES, strict=True):
        labels = sample.ml_labels.classifications
        assert sorted(c.label for c in labels) == sorted(squares)
    score_label_maps(dataset, "ml", "objects")
    rows = object_rows(dataset, "ml")
    assert len(rows) == sum(len(s) for s in SQUARES)
    assert [r["focus"] for r in rows] == sorted(r["focus"] for r in rows)
    green = object_rows(dataset, "ml", label="green")[0]
    opened = foo.execute_operator(
        f"{PLUGIN}/show_detection_cam",
        ctx=dict(
            view=dataset.view(),
            params={
                "run_key": "ml",
                "layer": "features",
                "object_id": green["object_id"],
                "sample_id": green["sample_id"],
            },
        ),
    )
    opened.raise_exceptions()
    assert opened.result == {
        "samples": {green["sample_id"]: green["object_id"]},
        "field": "ml_features_label",
    }
    sample = dataset[green["sample_id"]]
    label = next(c for c in sample.ml_labels.classifications if c.label == "green")
    assert np.array_equal(sample.ml_features_label.map, label.features_map.map)
    assert dataset.count("ml_features_label") == 1  # that sample only
    # the review panel lists the labels; a run whose labels field is gone
    # (a run being deleted while the App is open) is left out, not an error
    state = {"obj_source": "ml/features"}
    _panel_event(dataset, "on_load", state=state)
    _panel_event(dataset, "on_click_object", state=state, row=0)
    dataset.delete_sample_field("ml_labels")
    _panel_event(dataset, "on_load", state=state)
    dataset.delete_run("ml")
    assert not [f for f in dataset.get_field_schema() if f.startswith("ml_")]


def test_compute_operator_on_a_patches_view(dataset, red_green_source):
    """The App's current view is a patches view: each crop is explained."""
    compute = foo.get_operator(f"{PLUGIN}/compute_cams")
    patches = dataset.to_patches("objects")
    result = compute(patches, run_key="crops", target="label_field", **COMMON)
    assert result.error is None, result.error
    dataset.reload()
    assert dataset.get_run_info("crops").config.task == "patches"
    rows = object_rows(dataset, "crops")
    assert len(rows) == len(patches)
    assert all(r["predicted"] == r["label"] for r in rows)
    again = dict(COMMON, run_key="crops", target="label_field", task="classification")
    assert "resumes" in _form(patches, again)  # same run: the form offers resume
    dataset.delete_run("crops")
