"""CAM runs as FiftyOne runs: a ``fiftyone.core.runs.Run`` subclass with its own
config class, as fiftyone-brain does for its methods.

A run's config records everything needed to reproduce it and to clean it up:
the method, layers, target, transforms, the model's fingerprint, storage, and
everything it owns (``owned_fields``, ``saved_views``, ``run_dir`` and
``owned_paths``). FiftyOne calls :class:`CamRun`'s ``rename`` and ``cleanup``
from ``dataset.rename_run`` / ``dataset.delete_run`` (and from anything in the
App that calls them), so those move or remove exactly what the run owns and
never a user's field that merely shares the run's prefix.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import fiftyone.core.odm as foo
import fiftyone.core.runs as fors

from . import live, naming
from . import record as _record
from .locks import run_lock
from .naming import MAX_RUN_KEY_LENGTH, heatmap_field, run_field
from .record import CONFIG_DEFAULTS, IDENTITY_KEYS, OWNED_LISTS, with_defaults
from .run_parts import move_parts, remove_parts, rename_plan

__all__ = [
    "CAM_RUN_KIND",
    "IDENTITY_KEYS",
    "CamRun",
    "CamRunConfig",
    "CamRunInfo",
    "CONFIG_DEFAULTS",
    "OWNED_LISTS",
    "list_cam_runs",
    "get_cam_run",
    "root_dataset",
    "register_cam_run",
    "update_run_config",
    "add_owned_fields",
    "add_to_run_lists",
    "remove_from_run_lists",
    "set_run_entries",
    "rename_cam_run",
    "delete_cam_run",
    "validate_run_key",
    "config_differences",
]

# Stored in every config so that our runs can be told apart from other custom runs.
CAM_RUN_KIND = "cam_audit"


class CamRunConfig(fors.RunConfig):
    """The config of a CAM run: the entries of :data:`record.CONFIG_DEFAULTS`
    (declared there with their defaults, in the style of fiftyone-brain's
    configs) plus any entry a newer version stored. FiftyOne builds a
    :class:`CamRun` from it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**with_defaults(kwargs))


_CONFIG_CLS = f"{CamRunConfig.__module__}.{CamRunConfig.__qualname__}"


class CamRun(fors.Run):
    """What FiftyOne calls when a user renames or deletes a CAM run. A run that
    a process is computing (live) cannot be changed under it: the request is
    recorded on the run and the computing process carries it out when it stops
    (FiftyOne goes ahead with its part whatever these raise)."""

    def get_fields(self, samples: foc.SampleCollection, key: str) -> list[str]:
        found = _record.find_record(root_dataset(samples), key)
        config = found.config if found else self.config.serialize()
        return list(config.get("owned_fields") or [])

    def rename(self, samples: foc.SampleCollection, key: str, new_key: str) -> None:
        dataset = root_dataset(samples)
        with run_lock(dataset, key):
            found = _record.require_record(dataset, key)
            _defer_if_live(dataset, found, {"action": "rename", "new_key": new_key})
            move_parts(dataset, key, new_key, found)

    def cleanup(self, samples: foc.SampleCollection, key: str) -> None:
        dataset = root_dataset(samples)
        with run_lock(dataset, key):
            found = _record.find_record(dataset, key)
            if found is not None:
                _defer_if_live(dataset, found, {"action": "delete"})
                remove_parts(dataset, key, found.config)


def _defer_if_live(dataset, found: _record.RunRecord, removal: dict) -> None:
    holders = live.live_holders(found.config)
    if holders:
        _record.set_by_id(found.id, {"removal": removal})
        raise live.RunIsLive(
            f"CAM run {found.key!r} is being computed by {', '.join(holders)}: "
            f"that process stops at its next batch and completes the "
            f"{removal['action']} itself"
        )


@dataclass
class CamRunInfo:
    """A CAM run's config as stored on the dataset."""

    run_key: str
    method: str
    layers: list[str]
    fields: dict[str, str]  # layer -> fo.Heatmap field
    storage: str
    output_dir: str | None
    owned_fields: list[str]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def saved_views(self) -> list[str]:
        return list(self.config.get("saved_views") or [])

    @property
    def instance(self) -> str | None:
        """The run instance (new at each registration) its samples' done
        markers carry; None for a run stored by an older version."""
        return self.config.get("instance")

    @property
    def error_field(self) -> str:
        return run_field(self.run_key, naming.ERROR)

    @property
    def target_field(self) -> str:
        return run_field(self.run_key, naming.TARGET)

    @property
    def prediction_field(self) -> str:
        return run_field(self.run_key, naming.PREDICTION)

    @property
    def seen_field(self) -> str:
        """fo.Detection: the box of the original image the model saw."""
        return run_field(self.run_key, naming.SEEN)


def root_dataset(samples: foc.SampleCollection) -> fo.Dataset:
    """The dataset behind ``samples`` (a Dataset or DatasetView); TypeError else."""
    if not isinstance(samples, foc.SampleCollection):
        raise TypeError(
            f"samples must be a fiftyone Dataset or DatasetView, got {type(samples).__name__}"
        )
    return samples._root_dataset


def validate_run_key(run_key: str) -> str:
    """A run key must be usable as a field-name prefix: letters, digits, ``_``,
    at most ``MAX_RUN_KEY_LENGTH`` characters (plus the suffix of a temporary
    replacement, ``_replacing_<hex>``)."""
    base = (
        re.sub(r"_replacing_[0-9a-f]{8}$", "", run_key)
        if isinstance(run_key, str)
        else ""
    )
    if len(base) > MAX_RUN_KEY_LENGTH:
        raise ValueError(
            f"run_key {base[:40]!r}... has {len(base)} characters; at most "
            f"{MAX_RUN_KEY_LENGTH}, so that the run's field names stay readable: "
            "pick a shorter key (e.g. 'gradcam_v2')"
        )
    if (
        not isinstance(run_key, str)
        or not run_key.isidentifier()
        or run_key.startswith("_")
    ):
        raise ValueError(
            f"run_key {run_key!r} must be a valid field-name prefix: letters, digits and "
            "'_', not starting with a digit or '_' (e.g. 'gradcam' or 'gradcam_v2')"
        )
    return run_key


def list_cam_runs(samples: foc.SampleCollection) -> list[str]:
    """Keys of the CAM runs on the dataset, sorted (as stored now, also by
    other processes)."""
    dataset = root_dataset(samples)
    return sorted(
        foo.get_db_conn()["runs"].distinct(
            "key", {"_dataset_id": dataset._doc.id, "config.kind": CAM_RUN_KIND}
        )
    )


def _info(run_key: str, stored: dict[str, Any]) -> CamRunInfo:
    config = with_defaults(stored)
    config.pop("cls", None)
    config.pop("type", None)
    return CamRunInfo(
        run_key=run_key,
        method=config.get("method"),
        layers=list(config["layers"]),
        fields=dict(config["fields"]),
        storage=config["storage"],
        output_dir=config.get("output_dir"),
        owned_fields=list(config["owned_fields"]),
        config=config,
    )


def get_cam_run(samples: foc.SampleCollection, run_key: str) -> CamRunInfo:
    """The CAM run ``run_key`` as stored now; a miss lists the runs that exist."""
    dataset = root_dataset(samples)
    found = _record.find_record(dataset, run_key)
    if found is None:
        runs = list_cam_runs(dataset)
        close = difflib.get_close_matches(str(run_key), runs, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"No CAM run {run_key!r} on dataset {dataset.name!r}.{hint} "
            f"Existing CAM runs: {runs or 'none (run compute_cams first)'}"
        )
    return _info(run_key, found.config)


def register_cam_run(
    samples: foc.SampleCollection, run_key: str, **config: Any
) -> CamRunInfo:
    """Register (or replace, without cleanup) the run's config. ``config`` must
    hold ``method``, ``layers``, ``storage`` and ``owned_fields``; ``fields``
    is derived, ``instance`` new. ``registration.open_run`` is the atomic,
    checked way in."""
    dataset = root_dataset(samples)
    validate_run_key(run_key)
    layers = list(config["layers"])
    config["fields"] = {layer: heatmap_field(run_key, layer) for layer in layers}
    config["instance"] = _record.new_instance()
    config.pop("live", None)  # leases are taken by the computing processes
    config.pop("removal", None)
    dataset._doc.reload("runs")  # FiftyOne replaces by the runs it has loaded
    dataset.register_run(run_key, CamRunConfig(**config), overwrite=True, cleanup=False)
    return get_cam_run(dataset, run_key)


def update_run_config(
    samples: foc.SampleCollection, run_key: str, **changes: Any
) -> None:
    """Set entries of the stored config, each in one atomic update of that entry
    only (other writers' entries are never written back from a stale copy).
    Also upgrades a run stored by an older version to :class:`CamRunConfig`."""
    dataset = root_dataset(samples)
    changes = dict(changes, cls=_CONFIG_CLS, kind=CAM_RUN_KIND)
    _record.set_entries(dataset, run_key, changes)


def set_run_entries(
    samples: foc.SampleCollection, run_key: str, entries: dict[str, Any]
) -> None:
    """Like :func:`update_run_config` for dotted paths within entries, e.g.
    ``{"clusters.cam_layer4": {...}}`` sets one field's clusters only."""
    _record.set_entries(root_dataset(samples), run_key, entries)


def add_to_run_lists(
    samples: foc.SampleCollection, run_key: str, **lists: Iterable[str]
) -> None:
    """Append to list entries (``owned_fields``, ``saved_views``,
    ``owned_paths``, ``brain_keys``) what they lack, in one atomic update."""
    _record.add_to_lists(root_dataset(samples), run_key, lists)


def remove_from_run_lists(
    samples: foc.SampleCollection, run_key: str, **lists: Iterable[str]
) -> None:
    """Remove values from list entries, in one atomic update."""
    _record.remove_from_lists(root_dataset(samples), run_key, lists)


def add_owned_fields(
    samples: foc.SampleCollection, run_key: str, fields: list[str]
) -> None:
    """Record fields written on behalf of the run (``ownership.claim`` checks
    and records in one step), so that rename and delete take them along."""
    add_to_run_lists(samples, run_key, owned_fields=fields)


def rename_cam_run(
    samples: foc.SampleCollection, run_key: str, new_run_key: str
) -> CamRunInfo:
    """``dataset.rename_run`` after checking that nothing is in the way (FiftyOne
    itself only logs a failed rename) and that no process computes the run
    (``RunIsLive`` names it): moves every field and saved view the run owns
    from the ``{run_key}`` prefix to ``{new_run_key}``."""
    dataset = root_dataset(samples)
    validate_run_key(new_run_key)
    with run_lock(dataset, run_key):
        info = get_cam_run(dataset, run_key)
        dataset._doc.reload("runs")
        if new_run_key in dataset.list_runs():
            raise ValueError(
                f"A run named {new_run_key!r} already exists on {dataset.name!r}"
            )
        live.refuse_if_live(dataset, run_key, "rename")
        rename_plan(dataset, run_key, info.config, new_run_key)
        update_run_config(dataset, run_key)  # an older run gets the CamRun class
        dataset._doc.reload("runs")
        dataset.rename_run(run_key, new_run_key)
    return get_cam_run(dataset, new_run_key)


def delete_cam_run(samples: foc.SampleCollection, run_key: str) -> None:
    """``dataset.delete_run``: the run, its fields, saved views and files. Unlike
    FiftyOne, which logs a failed cleanup and deletes the run anyway, this
    raises and keeps the run (so that nothing it owns is left untracked);
    a run that a process computes is refused (``RunIsLive`` names it)."""
    dataset = root_dataset(samples)
    with run_lock(dataset, run_key):
        found = _record.find_record(dataset, run_key)
        if found is None:
            get_cam_run(dataset, run_key)  # raises, listing the runs
        live.refuse_if_live(dataset, run_key, "delete")
        remove_parts(dataset, run_key, found.config)
        dataset._doc.reload("runs")
        fors.Run.delete_run(dataset, run_key, cleanup=False)


def config_differences(
    stored: dict[str, Any],
    requested: dict[str, Any],
    keys: Sequence[str] = IDENTITY_KEYS,
) -> dict[str, tuple[Any, Any]]:
    """``{key: (stored, requested)}`` for the identity keys that differ; keys
    absent from ``requested`` are not compared (so that a form can ask whether
    a run could resume before it loads the model)."""
    return {
        key: (stored.get(key), requested[key])
        for key in keys
        if key in requested
        and _normalise(stored.get(key)) != _normalise(requested[key])
    }


def _normalise(value):
    if isinstance(value, tuple | list):
        return [_normalise(v) for v in value]
    return value
