"""Bulk writes: what FiftyOne reads back is what was written."""

from __future__ import annotations

import zlib

import fiftyone as fo
import numpy as np

from gradcam_engine.runs.writes import (
    encode_map,
    heatmap_document,
    label_document,
    set_fields,
)


def test_heatmaps_deflated_by_isal_read_back_through_fiftyone_and_zlib():
    ds = fo.Dataset()
    try:
        ds.add_samples([fo.Sample(filepath=f"/tmp/{i}.png") for i in range(2)])
        ds.add_sample_field(
            "hm", fo.EmbeddedDocumentField, embedded_doc_type=fo.Heatmap
        )
        yy, xx = np.mgrid[0:96, 0:128]
        maps = [
            ((np.sin(xx / 9.0 + k) * np.cos(yy / 7.0) + 1) * 127).astype(np.uint8)
            for k in range(2)
        ]
        written = [
            fo.Heatmap(map=m, range=[0, 255], note=f"n{k}") for k, m in enumerate(maps)
        ]
        ids = ds.values("id")
        set_fields(ds, {sid: {"hm": h} for sid, h in zip(ids, written, strict=True)})

        ds.reload()
        for sid, heatmap, array in zip(ids, written, maps, strict=True):
            stored = ds[sid]["hm"]
            assert np.array_equal(stored.map, array) and stored.map.dtype == np.uint8
            assert stored.id == heatmap.id and stored.note == heatmap.note
            assert stored.range == [0, 255]
        # the writer's heatmaps keep their maps
        assert all(h.map is m for h, m in zip(written, maps, strict=True))
        raw = ds._sample_collection.find_one({"_id": ds[ids[0]]._id})["hm"]["map"]
        assert bytes(raw) == bytes(encode_map(maps[0]))
        fiftyone_bytes = fo.Heatmap(map=maps[0]).to_dict()["map"]
        assert zlib.decompress(raw) == zlib.decompress(fiftyone_bytes)
    finally:
        ds.delete()


def test_heatmap_document_is_what_fiftyone_stores_and_reads():
    """compute_cams writes heatmaps as ready documents (no label objects):
    the same keys and values as fo.Heatmap.to_dict(), read back as a Heatmap."""
    yy, xx = np.mgrid[0:48, 0:64]
    array = (xx * 3 + yy).astype(np.uint8)
    document = heatmap_document(array)
    expected = fo.Heatmap(map=array, range=[0, 255]).to_dict()
    assert set(document) == set(expected)
    assert {k: v for k, v in document.items() if k not in ("_id", "map")} == {
        k: v for k, v in expected.items() if k not in ("_id", "map")
    }
    assert bytes(document["map"]) == bytes(encode_map(array))
    assert heatmap_document(array)["_id"] != document["_id"]  # one id per map

    ds = fo.Dataset()
    try:
        ds.add_sample(fo.Sample(filepath="/tmp/doc.png"))
        ds.add_sample_field(
            "hm", fo.EmbeddedDocumentField, embedded_doc_type=fo.Heatmap
        )
        sid = ds.first().id
        set_fields(ds, {sid: {"hm": document}})
        stored = ds[sid]["hm"]
        assert isinstance(stored, fo.Heatmap) and stored.id == str(document["_id"])
        assert np.array_equal(stored.map, array) and stored.range == [0, 255]
    finally:
        ds.delete()


def test_label_documents_are_what_fiftyone_stores_and_reads():
    """compute_cams writes its target, prediction and seen-box labels as ready
    documents: FiftyOne's keys, order and values, one id and tag list each."""
    cases = [
        (fo.Classification, {"label": "cat", "confidence": 0.25}),
        (fo.Classification, {"label": None, "confidence": 0.5}),  # field left out
        (fo.Detection, {"label": "seen", "bounding_box": [0.0, 0.1, 0.9, 0.8]}),
    ]
    ds = fo.Dataset()
    try:
        ds.add_samples([fo.Sample(filepath=f"/tmp/l{i}.png") for i in range(3)])
        ids = ds.values("id")
        for (label_type, values), sid in zip(cases, ids, strict=True):
            for _ in range(2):  # the first builds the template, the second copies
                document = label_document(label_type, **values)
                expected = label_type(**values).to_dict()
                assert list(document) == list(expected)  # the same order
                assert {**document, "_id": None} == {**expected, "_id": None}
            assert label_document(label_type, **values)["_id"] != document["_id"]
            field = label_type.__name__.lower()
            if field not in ds.get_field_schema():
                ds.add_sample_field(
                    field, fo.EmbeddedDocumentField, embedded_doc_type=label_type
                )
            set_fields(ds, {sid: {field: document}})
        first = label_document(fo.Classification, label="a", confidence=1.0)
        second = label_document(fo.Classification, label="b", confidence=1.0)
        assert first["tags"] is not second["tags"]  # not one list shared by all
        ds.reload()
        assert ds[ids[0]]["classification"].label == "cat"
        assert ds[ids[0]]["classification"].confidence == 0.25
        assert ds[ids[1]]["classification"].label is None
        seen = ds[ids[2]]["detection"]
        assert seen.label == "seen" and seen.bounding_box == [0.0, 0.1, 0.9, 0.8]
    finally:
        ds.delete()
