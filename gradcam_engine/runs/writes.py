"""Bulk writes of many fields at once: one ``UpdateOne`` per sample setting
every field, sent in one ``bulk_write``. About half the time of one
``set_values`` per field (each is its own database round trip and reload).
The fields must already be declared (``registration`` declares a run's)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import fiftyone.core.collections as foc
from bson import ObjectId
from pymongo import UpdateOne

__all__ = ["set_fields"]

_CHUNK = 1000


def set_fields(
    samples: foc.SampleCollection, updates: dict[str, dict[str, Any]]
) -> None:
    """Write ``{sample id: {field: value}}``; labels (``fo.Heatmap``,
    ``fo.Classification``...) are serialised, other values stored as given."""
    dataset = samples._root_dataset
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


def _serialised(values: dict[str, Any]) -> dict[str, Any]:
    return {
        name: value.to_dict() if hasattr(value, "to_dict") else value
        for name, value in values.items()
    }
