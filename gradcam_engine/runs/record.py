"""The run record in the database: one FiftyOne run document per CAM run, read
fresh and changed one entry at a time.

FiftyOne keeps a dataset's runs in its ``runs`` collection (``RunDocument``:
``_dataset_id``, ``key``, ``config``...) and caches them on the dataset object.
Several processes act on one run (a compute, a score, the App), so every read
here goes to the database and every write is one MongoDB update of the entries
it changes (``$set`` of ``config.<entry>``, or an array union / difference),
never a whole config written back from a copy that may be stale.

``config.instance`` names the run instance (a new one per registration):
each sample's done marker (``{R}_instance``) carries it, so a run registered
later under the same key never takes an earlier run's sample as done. The
leases of live runs (``config.live``) are ``live.py``'s.
"""

from __future__ import annotations

import copy
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import fiftyone.core.odm as foo
from fiftyone import ViewField as VF

__all__ = [
    "CONFIG_DEFAULTS",
    "IDENTITY_KEYS",
    "OWNED_LISTS",
    "with_defaults",
    "RunRecord",
    "find_record",
    "require_record",
    "set_entries",
    "set_by_id",
    "runs_collection",
    "add_to_lists",
    "remove_from_lists",
    "new_instance",
    "done_expression",
    "own_samples",
]

logger = logging.getLogger(__name__)


# Every entry of a CAM run's config and its default: the one place that declares
# them (docs/ARCHITECTURE.md says what each holds). Entries stored by another
# version that are not declared here are kept as they are.
CONFIG_DEFAULTS: dict[str, Any] = {
    "kind": "cam_audit",
    # identity (IDENTITY_KEYS) and description, set by compute_cams' plan
    "model": None,
    "model_source": None,
    "num_samples": None,
    "weights": None,
    "layers": [],
    "method": None,  # stored by FiftyOne's RunConfig
    "task": "classification",
    "target": "predicted",
    "label_field": None,
    "classes": None,
    "transforms": None,
    "transforms_fingerprint": None,
    "geometry": None,
    "storage": "db",
    "output_dir": None,
    "max_size": 256,
    "eigen_smooth": False,
    "aug_smooth": False,
    "precision": "fp32",
    # task="detection": confidence_thresh, max_detections, iou_threshold and
    # map_size (runs/detections.py); None for the other tasks
    "detection": None,
    # task="multilabel": threshold and map_size (runs/multilabel.py)
    "multilabel": None,
    # a patches view (runs/patch_runs.py): its label field and map_size
    "patches": None,
    # a frames view (runs/frame_fields.py): its fields are the video dataset's
    # frame fields (``frames.<name>`` in owned_fields)
    "frames": False,
    # set at registration
    "fields": {},  # layer -> fo.Heatmap field
    "run_dir": None,  # disk storage: the PNGs' directory, owned
    "instance": None,  # this registration; on every sample's done marker
    "replaces": None,  # a temporary replacement: the key it replaces
    # what the run owns (OWNED_LISTS): removed with it, moved when renamed
    "owned_fields": [],
    "saved_views": [],
    "owned_paths": [],
    "brain_keys": [],
    # run state: leases of computing processes; a delete or rename asked
    # while live (done by the computing process when it stops)
    "live": {},
    "removal": None,
    # written later, each by its own writer
    "outcome": None,
    "sharding": None,
    "scoring": None,
    "clusters": None,
    "sanity": None,
}
# Entries that must match for a run to be resumed: what makes its maps. A new
# run option is an argument of compute_cams put in its config (compute.py), an
# entry above and, if it changes the maps, a key here.
IDENTITY_KEYS = (
    "model",
    "weights",
    "layers",
    "method",
    "task",
    "target",
    "label_field",
    "classes",
    "transforms",
    "transforms_fingerprint",
    "geometry",
    "storage",
    "output_dir",
    "max_size",
    "eigen_smooth",
    "aug_smooth",
    "precision",
    "detection",
    "multilabel",
    "patches",
    "frames",
)
# Lists of what a run owns (besides ``run_dir``).
OWNED_LISTS = ("owned_fields", "saved_views", "owned_paths", "brain_keys")


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every declared entry (a run stored by an older version
    lacks some)."""
    filled = {k: copy.deepcopy(v) for k, v in CONFIG_DEFAULTS.items()}
    filled.update(config)
    for name in OWNED_LISTS:  # an older run may hold None
        filled[name] = list(filled[name] or [])
    filled["live"] = dict(filled["live"] or {})
    return filled


@dataclass
class RunRecord:
    """A run document as stored now."""

    id: Any  # the document's ObjectId: stable across renames
    key: str
    config: dict[str, Any]

    @property
    def instance(self) -> str | None:
        return self.config.get("instance")


def runs_collection():
    """FiftyOne's ``runs`` collection (run documents of every kind)."""
    return foo.get_db_conn()["runs"]


def find_record(dataset, run_key: str, kind: str = "cam_audit") -> RunRecord | None:
    """The stored run ``run_key`` of kind ``kind`` on ``dataset``, or None."""
    doc = runs_collection().find_one(
        {"_dataset_id": dataset._doc.id, "key": run_key, "config.kind": kind},
        {"key": 1, "config": 1},
        sort=[("_id", -1)],
    )
    if doc is None:
        return None
    return RunRecord(doc["_id"], doc["key"], doc.get("config") or {})


def require_record(dataset, run_key: str) -> RunRecord:
    record = find_record(dataset, run_key)
    if record is None:
        raise ValueError(
            f"No CAM run {run_key!r} on dataset {dataset.name!r} (it was deleted "
            "or renamed?); list_cam_runs(dataset) lists the CAM runs"
        )
    return record


def set_entries(dataset, run_key: str, entries: dict[str, Any]) -> None:
    """``$set`` of ``config.<path>`` for each ``path: value`` of ``entries``
    (a path may be dotted, e.g. ``"clusters.cam_layer4"``), in one update."""
    set_by_id(require_record(dataset, run_key).id, entries)


def set_by_id(doc_id, entries: dict[str, Any]) -> None:
    """:func:`set_entries` on the run document ``doc_id`` (whatever its key)."""
    if not entries:
        return
    for path in entries:  # a sub-entry of a null entry cannot be $set
        parent = path.rpartition(".")[0]
        if parent:
            runs_collection().update_one(
                {"_id": doc_id, f"config.{parent}": None},
                {"$set": {f"config.{parent}": {}}},
            )
    runs_collection().update_one(
        {"_id": doc_id},
        {"$set": {f"config.{path}": value for path, value in entries.items()}},
    )


def add_to_lists(dataset, run_key: str, lists: dict[str, Iterable[str]]) -> None:
    """Append to list entries what they do not hold yet (order kept; a missing
    or null entry becomes a list), all in one update."""
    record = require_record(dataset, run_key)
    stages = {}
    for name, values in lists.items():
        new = list(dict.fromkeys(values))
        if not new:
            continue
        old = {"$ifNull": [f"$config.{name}", []]}
        fresh = {
            "$filter": {
                "input": {"$literal": new},
                "cond": {"$not": [{"$in": ["$$this", old]}]},
            }
        }
        stages[f"config.{name}"] = {"$concatArrays": [old, fresh]}
    if stages:
        runs_collection().update_one({"_id": record.id}, [{"$set": stages}])


def remove_from_lists(dataset, run_key: str, lists: dict[str, Iterable[str]]) -> None:
    """Remove values from list entries, in one update."""
    record = require_record(dataset, run_key)
    pulls = {f"config.{k}": list(v) for k, v in lists.items() if list(v)}
    if pulls:
        runs_collection().update_one({"_id": record.id}, {"$pullAll": pulls})


def new_instance() -> str:
    return uuid.uuid4().hex[:16]


def done_expression(names, instance: str | None, retry_errors: bool = True):
    """Samples this run instance has done: computed, or (``retry_errors=False``)
    failed. ``names``: the run's ``FieldNames``. A run stored by an older
    version (no instance) goes by its prediction and error fields alone."""
    if instance:  # the marker is written in the same update as prediction/error
        mine = VF(names.instance) == instance
        return mine if not retry_errors else mine & VF(names.prediction).exists()
    done = VF(names.prediction).exists()
    return done if retry_errors else done | VF(names.error).exists()


def own_samples(samples, names, instance: str | None):
    """The samples of ``samples`` whose done marker is this run instance's."""
    return samples.match(VF(names.instance) == instance) if instance else samples
