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
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc
import fiftyone.core.runs as fors
import fiftyone.core.view as fov
from bson import json_util

from .app_look import remove_run_look, rename_run_look
from .naming import heatmap_field

__all__ = [
    "CAM_RUN_KIND",
    "IDENTITY_KEYS",
    "CamRun",
    "CamRunConfig",
    "CamRunInfo",
    "list_cam_runs",
    "get_cam_run",
    "root_dataset",
    "register_cam_run",
    "update_run_config",
    "add_owned_fields",
    "rename_cam_run",
    "delete_cam_run",
    "validate_run_key",
    "config_differences",
]

# Stored in every config so that our runs can be told apart from other custom runs.
CAM_RUN_KIND = "cam_audit"
# Config keys that must match for a run to be resumed: what makes its maps.
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
)


class CamRunConfig(fors.RunConfig):
    """The config of a CAM run; FiftyOne builds a :class:`CamRun` from it."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("kind", CAM_RUN_KIND)
        super().__init__(**kwargs)


class CamRun(fors.Run):
    """What FiftyOne calls when a user renames or deletes a CAM run."""

    def get_fields(self, samples: foc.SampleCollection, key: str) -> list[str]:
        return list(getattr(self.config, "owned_fields", None) or [])

    def rename(self, samples: foc.SampleCollection, key: str, new_key: str) -> None:
        dataset = root_dataset(samples)
        info = get_cam_run(dataset, key)
        plan = _rename_plan(dataset, info, new_key)
        existing = set(dataset.get_field_schema())
        present = {o: n for o, n in plan.fields.items() if o in existing}
        if present:
            dataset.rename_sample_fields(present)
        for old, new in plan.views.items():
            if dataset.has_saved_view(old):
                _move_saved_view(dataset, old, new, plan.fields)
        for old, new in plan.brain_keys.items():  # cluster_cams' plots
            if dataset.has_brain_run(old):
                dataset.rename_brain_run(old, new)
        moved = {**plan.fields, **plan.views, **plan.brain_keys}
        # FiftyOne moves the run document to new_key after this returns.
        changes: dict[str, Any] = dict(
            owned_fields=[moved.get(f, f) for f in info.owned_fields],
            fields={layer: moved.get(f, f) for layer, f in info.fields.items()},
            saved_views=[moved.get(v, v) for v in info.saved_views],
        )
        if info.config.get("brain_keys"):
            changes["brain_keys"] = [moved.get(k, k) for k in info.config["brain_keys"]]
        if info.config.get("clusters"):  # keyed by heatmap field
            changes["clusters"] = {
                moved.get(f, f): c for f, c in info.config["clusters"].items()
            }
        update_run_config(dataset, key, **changes)
        rename_run_look(dataset, key, new_key, plan.fields)  # groups, colours

    def cleanup(self, samples: foc.SampleCollection, key: str) -> None:
        dataset = root_dataset(samples)
        info = get_cam_run(dataset, key)
        existing = set(dataset.get_field_schema())
        owned = [f for f in info.owned_fields if f in existing]
        if owned:
            dataset.delete_sample_fields(owned)
        for name in info.saved_views:
            if dataset.has_saved_view(name):
                dataset.delete_saved_view(name)
        for brain_key in info.config.get("brain_keys") or []:  # cluster_cams' plots
            if dataset.has_brain_run(brain_key):
                dataset.delete_brain_run(brain_key)
        paths = list(info.config.get("owned_paths") or [])
        if info.storage == "disk" and info.config.get("run_dir"):
            paths.append(info.config["run_dir"])
        for path in paths:
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        remove_run_look(dataset, key, info.owned_fields)  # groups, colours


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
    def error_field(self) -> str:
        return f"{self.run_key}_error"

    @property
    def target_field(self) -> str:
        return f"{self.run_key}_target"

    @property
    def prediction_field(self) -> str:
        return f"{self.run_key}_prediction"

    @property
    def seen_field(self) -> str:
        """fo.Detection: the box of the original image the model saw."""
        return f"{self.run_key}_seen"


def root_dataset(samples: foc.SampleCollection) -> fo.Dataset:
    """The dataset behind ``samples`` (a Dataset or DatasetView); TypeError else."""
    if not isinstance(samples, foc.SampleCollection):
        raise TypeError(
            f"samples must be a fiftyone Dataset or DatasetView, got {type(samples).__name__}"
        )
    return samples._root_dataset


def validate_run_key(run_key: str) -> str:
    """A run key must be usable as a field-name prefix: letters, digits, ``_``."""
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
    """Keys of the CAM runs on the dataset, sorted."""
    dataset = root_dataset(samples)
    return sorted(dataset.list_runs(kind=CAM_RUN_KIND))


def _config_dict(dataset: fo.Dataset, run_key: str) -> dict[str, Any]:
    info = dataset.get_run_info(run_key)
    config = info.config.serialize()
    config["method"] = info.config.method
    return config


def get_cam_run(samples: foc.SampleCollection, run_key: str) -> CamRunInfo:
    """The CAM run ``run_key``; a miss lists the runs that exist."""
    dataset = root_dataset(samples)
    runs = list_cam_runs(dataset)
    if run_key not in runs:
        close = difflib.get_close_matches(str(run_key), runs, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"No CAM run {run_key!r} on dataset {dataset.name!r}.{hint} "
            f"Existing CAM runs: {runs or 'none (run compute_cams first)'}"
        )
    config = _config_dict(dataset, run_key)
    return CamRunInfo(
        run_key=run_key,
        method=config["method"],
        layers=list(config["layers"]),
        fields=dict(config["fields"]),
        storage=config["storage"],
        output_dir=config.get("output_dir"),
        owned_fields=list(config["owned_fields"]),
        config=config,
    )


def register_cam_run(
    samples: foc.SampleCollection, run_key: str, **config: Any
) -> CamRunInfo:
    """Register (or replace, without cleanup) the run's config. ``config`` must
    hold ``method``, ``layers``, ``storage`` and ``owned_fields``; ``fields``
    is derived. ``registration.open_run`` is the atomic, checked way in."""
    dataset = root_dataset(samples)
    validate_run_key(run_key)
    layers = list(config["layers"])
    config["fields"] = {layer: heatmap_field(run_key, layer) for layer in layers}
    dataset.register_run(run_key, CamRunConfig(**config), overwrite=True, cleanup=False)
    return get_cam_run(dataset, run_key)


def update_run_config(
    samples: foc.SampleCollection, run_key: str, **changes: Any
) -> None:
    """Change entries of the stored config, keeping every other entry. Also
    upgrades a run stored by an older version to :class:`CamRunConfig`."""
    dataset = root_dataset(samples)
    config = _config_dict(dataset, run_key)
    config.pop("cls", None)
    config.pop("type", None)
    config.update(changes)
    dataset.update_run_config(run_key, CamRunConfig(**config))


def add_owned_fields(
    samples: foc.SampleCollection, run_key: str, fields: list[str]
) -> None:
    """Record fields written on behalf of the run (``ownership.claim`` checks
    and records in one step), so that rename and delete take them along."""
    info = get_cam_run(samples, run_key)
    owned = info.owned_fields + [f for f in fields if f not in info.owned_fields]
    update_run_config(samples, run_key, owned_fields=owned)


def rename_cam_run(
    samples: foc.SampleCollection, run_key: str, new_run_key: str
) -> CamRunInfo:
    """``dataset.rename_run`` after checking that nothing is in the way (FiftyOne
    itself only logs a failed rename): moves every field and saved view the run
    owns from the ``{run_key}`` prefix to ``{new_run_key}``."""
    dataset = root_dataset(samples)
    info = get_cam_run(dataset, run_key)
    validate_run_key(new_run_key)
    if new_run_key in dataset.list_runs():
        raise ValueError(
            f"A run named {new_run_key!r} already exists on {dataset.name!r}"
        )
    _rename_plan(dataset, info, new_run_key)
    update_run_config(dataset, run_key)  # an older run gets the CamRun class
    dataset.rename_run(run_key, new_run_key)
    return get_cam_run(dataset, new_run_key)


def delete_cam_run(samples: foc.SampleCollection, run_key: str) -> None:
    """``dataset.delete_run``: the run, its fields, saved views and files. Unlike
    FiftyOne, which logs a failed cleanup and deletes the run anyway, this
    raises and keeps the run (so that nothing it owns is left untracked)."""
    dataset = root_dataset(samples)
    get_cam_run(dataset, run_key)
    update_run_config(dataset, run_key)  # an older run gets the CamRun class
    dataset.get_run_info(run_key).config.build().cleanup(dataset, run_key)
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


# -- rename internals ------------------------------------------------------------


def _renamed(name: str, run_key: str, new_key: str, sep: str) -> str:
    prefix = run_key + sep
    return new_key + sep + name[len(prefix) :] if name.startswith(prefix) else name


@dataclass
class _RenamePlan:
    """What moves when a run is renamed: old name -> new name, changed ones only."""

    fields: dict[str, str]
    views: dict[str, str]
    brain_keys: dict[str, str]


def _rename_plan(dataset: fo.Dataset, info: CamRunInfo, new_key: str) -> _RenamePlan:
    """Field, saved-view and brain-run renames for ``info`` -> ``new_key``;
    raises, before anything moves, if a new name is taken by something the run
    does not own. Brain keys without the run's prefix (a ``brain_key`` the
    user chose) keep their name."""
    key = info.run_key
    existing = set(dataset.get_field_schema())
    fields = {f: _renamed(f, key, new_key, "_") for f in info.owned_fields}
    views = {v: _renamed(v, key, new_key, "-") for v in info.saved_views}
    brain = {
        k: _renamed(k, key, new_key, "_") for k in info.config.get("brain_keys") or []
    }
    taken = {*dataset.list_brain_runs(), *dataset.list_runs()}
    taken |= set(dataset.list_evaluations())
    clashes = [n for o, n in fields.items() if n != o and n in existing]
    clashes += [n for o, n in views.items() if n != o and dataset.has_saved_view(n)]
    clashes += [n for o, n in brain.items() if n != o and n in taken]
    if clashes:
        raise ValueError(
            f"Cannot rename run {key!r} to {new_key!r}: {clashes} already "
            "exist on the dataset and do not belong to the run"
        )
    return _RenamePlan(
        fields={o: n for o, n in fields.items() if o != n},
        views={o: n for o, n in views.items() if o != n},
        brain_keys={o: n for o, n in brain.items() if o != n},
    )


def _move_saved_view(
    dataset: fo.Dataset, name: str, new_name: str, field_renames: dict[str, str]
) -> None:
    """Save view ``name`` as ``new_name`` with its field references renamed."""
    doc = dataset._get_saved_view_doc(name)
    stages = list(doc.view_stages)
    for old, new in field_renames.items():
        # whole field names only: "cam_layer4" must not hit "cam_layer4_focus"
        pattern = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(old)}(?![A-Za-z0-9_])")
        stages = [pattern.sub(new, s) for s in stages]
    view = fov.DatasetView._build(dataset, [json_util.loads(s) for s in stages])
    description, color = doc.description, doc.color
    dataset.delete_saved_view(name)
    dataset.save_view(new_name, view, description=description, color=color)
