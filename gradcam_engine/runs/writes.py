"""Bulk writes of many fields at once: one ``UpdateOne`` per sample setting
every field, sent in one ``bulk_write``. About half the time of one
``set_values`` per field (each is its own database round trip and reload).
The fields must already be declared (``registration`` declares a run's).

Heatmap maps are encoded as FiftyOne encodes them (``.npy`` bytes in a zlib
stream), but deflated by ISA-L (``isal``, the library behind igzip) at its
level 1 instead of Python's zlib at FiftyOne's level 6: readers only
``zlib.decompress`` (the App inflates), which reads any deflate stream. On the
maps of a 320x240 image (4 layers) zlib level 1 took 2.8 ms an image, ISA-L
0.5 ms for ~6% more bytes: the largest per-image cost of a DB run (issue 23)."""

from __future__ import annotations

import functools
import io
from datetime import datetime, timezone
from typing import Any

import fiftyone.core.collections as foc
import fiftyone.core.labels as fol
import numpy as np
from bson import Binary, ObjectId
from isal import isal_zlib
from pymongo import UpdateOne

from .cam_runs import root_dataset
from .frame_fields import is_frames, view_schema

__all__ = ["encode_map", "heatmap_document", "label_document", "set_fields"]

_CHUNK = 1000
_DEFLATE_LEVEL = 1  # ISA-L's levels are 0-3


def set_fields(
    samples: foc.SampleCollection, updates: dict[str, dict[str, Any]]
) -> None:
    """Write ``{sample id: {field: value}}``; labels (``fo.Heatmap``,
    ``fo.Classification``...) are serialised, other values stored as given.

    On a frames view the ids are frame ids: the values go into the view's own
    dataset and, by FiftyOne's sync of frames views, into the video dataset's
    frames (where the fields must be declared)."""
    if is_frames(samples) and updates:
        _set_frame_fields(samples, updates)
        return
    dataset = root_dataset(samples)
    if not hasattr(dataset, "_bulk_write"):  # a FiftyOne without the hook
        by_field: dict[str, dict[str, Any]] = {}
        for sample_id, values in updates.items():
            for name, value in values.items():
                by_field.setdefault(name, {})[sample_id] = value
        for name, by_id in by_field.items():
            dataset.set_values(name, by_id, key_field="id", validate=False)
        return
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    ids = list(updates)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        ops = [
            UpdateOne(
                {"_id": ObjectId(sample_id)},
                {"$set": {**_serialised(updates[sample_id]), "last_modified_at": now}},
            )
            for sample_id in chunk
        ]
        dataset._bulk_write(ops, ids=chunk)


def _set_frame_fields(frames_view, updates: dict[str, dict[str, Any]]) -> None:
    names = sorted({name for values in updates.values() for name in values})
    view_schema(frames_view, names)
    set_fields(frames_view._frames_dataset, updates)
    # FiftyOne's own write-back of a frames view (FramesView.set_values does it)
    frames_view._sync_source(fields=names, ids=list(updates))


def encode_map(array: np.ndarray) -> Binary:
    """The bytes ``fo.Heatmap.map`` stores (FiftyOne's ``serialize_numpy_array``:
    ``.npy`` in a zlib stream), deflated by ISA-L at level 1."""
    array = np.ascontiguousarray(array)
    header = _npy_header(array.shape, array.dtype.str)
    return Binary(isal_zlib.compress(header + array.tobytes(), _DEFLATE_LEVEL))


@functools.lru_cache(maxsize=64)
def _npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    """What ``np.save`` writes before the data of a C-ordered array: the same
    for every map of a size (np.save builds it again each time, ~40 us)."""
    with io.BytesIO() as f:
        np.save(f, np.zeros(shape, dtype=dtype), allow_pickle=False)
        saved = f.getvalue()
    return saved[: len(saved) - int(np.prod(shape)) * np.dtype(dtype).itemsize]


def heatmap_document(map_u8: np.ndarray, value_range=(0, 255)) -> dict[str, Any]:
    """What ``fo.Heatmap(map=map_u8, range=value_range).to_dict()`` stores (the
    map by :func:`encode_map`), built from FiftyOne's own document of a map-less
    heatmap instead of two label objects per map (``set_fields`` stores it as
    given): ~1 ms less per map, 4 maps an image (issue 23)."""
    document = dict(_empty_heatmap(tuple(value_range)))
    document["_id"] = ObjectId()
    document["map"] = encode_map(map_u8)
    return document


@functools.lru_cache(maxsize=8)
def _empty_heatmap(value_range: tuple) -> dict[str, Any]:
    document = dict(fol.Heatmap(range=list(value_range)).to_dict())
    document.pop("_id")
    return document


def label_document(label_type: type[fol.Label], **values: Any) -> dict[str, Any]:
    """What ``label_type(**values).to_dict()`` stores (same keys, same order),
    made from FiftyOne's document of the first such label instead of a label
    object each time (~0.1 ms a label, 3 labels an image: issue 23).

    ``values`` are stored as given: str, float, lists of floats (what
    FiftyOne's fields store them as); a None leaves the field out, as FiftyOne
    does."""
    present = {name: value for name, value in values.items() if value is not None}
    key = (label_type, tuple(present))
    template = _LABEL_TEMPLATES.get(key)
    if template is None:
        template = dict(label_type(**present).to_dict())
        template.pop("_id")
        _LABEL_TEMPLATES[key] = template
    document = {"_id": ObjectId()}
    for name, value in template.items():  # tags, attributes: one per label
        document[name] = value.copy() if isinstance(value, list | dict) else value
    document.update(present)
    return document


_LABEL_TEMPLATES: dict[tuple, dict[str, Any]] = {}


def _serialised(values: dict[str, Any]) -> dict[str, Any]:
    return {name: _document(value) for name, value in values.items()}


def _document(value: Any) -> Any:
    if isinstance(value, fol.Heatmap) and isinstance(value.map, np.ndarray):
        return _heatmap_document(value)
    return value.to_dict() if hasattr(value, "to_dict") else value


def _heatmap_document(heatmap: fol.Heatmap) -> dict[str, Any]:
    """``heatmap.to_dict()``, with the map encoded by :func:`encode_map`: the
    other fields go through FiftyOne on a map-less copy (setting ``map`` on
    the heatmap itself costs more than the encoding saves)."""
    others = {n: heatmap[n] for n in heatmap.field_names if n not in ("id", "map")}
    document = fol.Heatmap(**others).to_dict()
    document["_id"] = heatmap._id
    document["map"] = encode_map(heatmap.map)
    return document
