"""CAM runs as FiftyOne custom runs: register, list, load, rename and delete.

A run's config records everything needed to reproduce and to clean it up:
the method, layers, target, transforms, storage, and every field it owns
(heatmaps, per-sample summaries, and the score fields added by ``score_cams``).
"""

from __future__ import annotations

import difflib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc

from .naming import heatmap_field

__all__ = [
    "CAM_RUN_KIND",
    "CamRunInfo",
    "list_cam_runs",
    "get_cam_run",
    "register_cam_run",
    "add_owned_fields",
    "rename_cam_run",
    "delete_cam_run",
    "validate_run_key",
    "prepare_run",
]

# Stored in every config so that our runs can be told apart from other custom runs.
CAM_RUN_KIND = "cam_audit"


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


def _dataset(samples: foc.SampleCollection) -> fo.Dataset:
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
    dataset = _dataset(samples)
    return sorted(dataset.list_runs(kind=CAM_RUN_KIND))


def _config_dict(dataset: fo.Dataset, run_key: str) -> dict[str, Any]:
    info = dataset.get_run_info(run_key)
    config = info.config.serialize()
    config["method"] = info.config.method
    return config


def get_cam_run(samples: foc.SampleCollection, run_key: str) -> CamRunInfo:
    """The CAM run ``run_key``; a miss lists the runs that exist."""
    dataset = _dataset(samples)
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
    """Register (or replace) the run's config. ``config`` must hold ``method``,
    ``layers``, ``storage`` and ``owned_fields``; ``fields`` is derived."""
    dataset = _dataset(samples)
    validate_run_key(run_key)
    layers = list(config["layers"])
    config["fields"] = {layer: heatmap_field(run_key, layer) for layer in layers}
    run_config = dataset.init_run(kind=CAM_RUN_KIND, **config)
    dataset.register_run(run_key, run_config, overwrite=True, cleanup=False)
    return get_cam_run(dataset, run_key)


def add_owned_fields(
    samples: foc.SampleCollection, run_key: str, fields: list[str]
) -> None:
    """Record fields that a later step (e.g. scoring) wrote on behalf of the run,
    so that rename and delete take them along."""
    dataset = _dataset(samples)
    info = get_cam_run(dataset, run_key)
    owned = info.owned_fields + [f for f in fields if f not in info.owned_fields]
    _update_config(dataset, run_key, owned_fields=owned)


def _update_config(dataset: fo.Dataset, run_key: str, **changes: Any) -> None:
    config = _config_dict(dataset, run_key)
    config.pop("cls", None)
    config.pop("type", None)
    config.update(changes)
    dataset.update_run_config(run_key, dataset.init_run(**config))


def rename_cam_run(
    samples: foc.SampleCollection, run_key: str, new_run_key: str
) -> CamRunInfo:
    """Rename the run and every field it owns (``{run_key}_*`` -> ``{new_run_key}_*``)."""
    dataset = _dataset(samples)
    info = get_cam_run(dataset, run_key)
    validate_run_key(new_run_key)
    if new_run_key in dataset.list_runs():
        raise ValueError(
            f"A run named {new_run_key!r} already exists on {dataset.name!r}"
        )
    prefix = f"{run_key}_"
    renames = {f: new_run_key + "_" + f[len(prefix) :] for f in info.owned_fields}
    existing = set(dataset.get_field_schema())
    clashes = [new for new in renames.values() if new in existing]
    if clashes:
        raise ValueError(
            f"Cannot rename run {run_key!r} to {new_run_key!r}: fields {clashes} already exist"
        )
    present = {old: new for old, new in renames.items() if old in existing}
    if present:
        dataset.rename_sample_fields(present)
    # Saved review views filter on the old field names: drop them (re-save).
    _delete_saved_views(dataset, info)
    dataset.rename_run(run_key, new_run_key)
    _update_config(
        dataset,
        new_run_key,
        owned_fields=list(renames.values()),
        fields={layer: heatmap_field(new_run_key, layer) for layer in info.layers},
        saved_views=[],
    )
    return get_cam_run(dataset, new_run_key)


def delete_cam_run(samples: foc.SampleCollection, run_key: str) -> None:
    """Delete the run, the fields it owns, its brain runs and, for disk storage,
    its PNG files."""
    dataset = _dataset(samples)
    info = get_cam_run(dataset, run_key)
    existing = set(dataset.get_field_schema())
    owned = [f for f in info.owned_fields if f in existing]
    if owned:
        dataset.delete_sample_fields(owned)
    _delete_saved_views(dataset, info)
    for brain_key in info.config.get("brain_keys") or []:  # cluster_cams' plots
        if dataset.has_brain_run(brain_key):
            dataset.delete_brain_run(brain_key)
    run_dir = info.config.get("run_dir")
    if info.storage == "disk" and run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    dataset.delete_run(run_key)


def _delete_saved_views(dataset: fo.Dataset, info: CamRunInfo) -> None:
    """Delete the saved views recorded in the run's ``saved_views`` config."""
    for name in info.config.get("saved_views") or []:
        if dataset.has_saved_view(name):
            dataset.delete_saved_view(name)


def prepare_run(
    samples: foc.SampleCollection,
    run_key: str,
    config: dict[str, Any],
    owned: list[str],
    overwrite: bool,
    compare_keys: Sequence[str],
) -> dict[str, Any] | None:
    """Resume, replace or refuse an existing run before a computation.

    Same ``compare_keys`` values as the stored config: resume (returns the
    stored config). Different: ``ValueError`` unless ``overwrite``, which
    deletes the old run. Fields in ``owned`` that exist but belong to no run
    of this key are refused by name unless ``overwrite``. Returns None when
    the run starts afresh.
    """
    dataset = _dataset(samples)
    existing = set(dataset.get_field_schema())
    if run_key in dataset.list_runs():
        if run_key not in list_cam_runs(dataset):
            raise ValueError(
                f"run_key {run_key!r} is already used by a non-CAM run on "
                f"{dataset.name!r}; pick another run_key"
            )
        info = get_cam_run(dataset, run_key)
        old = info.config
        diff = [
            key
            for key in compare_keys
            if _normalise(old.get(key)) != _normalise(config.get(key))
        ]
        if diff and not overwrite:
            changes = ", ".join(
                f"{key}: {old.get(key)!r} -> {config.get(key)!r}" for key in diff
            )
            raise ValueError(
                f"Run {run_key!r} exists with a different config ({changes}). Pass "
                "overwrite=True to replace it, or pick another run_key."
            )
        if not overwrite:  # same config: resume where it stopped
            foreign = [f for f in owned if f in existing and f not in info.owned_fields]
            _refuse_foreign(foreign, run_key, overwrite, dataset)
            return old
        delete_cam_run(dataset, run_key)
        existing = set(dataset.get_field_schema())
    foreign = [f for f in owned if f in existing]
    _refuse_foreign(foreign, run_key, overwrite, dataset)
    return None


def _refuse_foreign(foreign, run_key, overwrite, dataset) -> None:
    if not foreign:
        return
    if not overwrite:
        raise ValueError(
            f"Field(s) {foreign} already exist on {dataset.name!r} and do not belong "
            f"to CAM run {run_key!r}; pick another run_key, or pass overwrite=True "
            "to delete and replace them"
        )
    dataset.delete_sample_fields(foreign)


def _normalise(value):
    if isinstance(value, tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value
