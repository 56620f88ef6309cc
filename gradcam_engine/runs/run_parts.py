"""What a CAM run owns, removed or moved as a whole: its fields, saved views,
brain runs, files and run directory (the lists of ``record.OWNED_LISTS`` and
``run_dir``). ``CamRun.cleanup`` / ``rename`` (FiftyOne's ``delete_run`` /
``rename_run``), ``delete_cam_run`` / ``rename_cam_run``, and a computing
process that carries out a delete or rename asked while it computed, all go
through here.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from typing import Any

import fiftyone as fo
import fiftyone.core.view as fov
from bson import json_util

from . import record
from .app_look import remove_run_look, rename_run_look
from .evaluations import move_evaluations, remove_evaluations
from .frame_fields import delete_fields, existing_fields, rename_fields
from .naming import FRAMES_PREFIX

__all__ = ["remove_parts", "move_parts", "rename_plan"]


def remove_parts(
    dataset: fo.Dataset, key: str, config: dict[str, Any], fields=True
) -> None:
    """Delete what run ``key`` with ``config`` owns: fields (unless
    ``fields=False``: a newer run of the key owns them), saved views, brain
    runs, files, its run directory and its look in the App; the user's
    evaluations of its fields go with them (``evaluations``)."""
    existing = existing_fields(dataset)
    owned = [f for f in config.get("owned_fields") or [] if f in existing]
    if owned and fields:
        remove_evaluations(dataset, key, owned)
        delete_fields(dataset, owned)
    for name in config.get("saved_views") or []:
        if dataset.has_saved_view(name):
            dataset.delete_saved_view(name)
    for brain_key in config.get("brain_keys") or []:  # cluster_cams' plots
        if dataset.has_brain_run(brain_key):
            dataset.delete_brain_run(brain_key)
    paths = list(config.get("owned_paths") or [])
    if config.get("storage") == "disk" and config.get("run_dir"):
        paths.append(config["run_dir"])
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    if fields:  # sidebar groups and colours of the fields just deleted
        remove_run_look(dataset, key, config.get("owned_fields") or [])


def move_parts(dataset: fo.Dataset, key: str, new_key: str, found) -> None:
    """Move what run ``key`` (the ``record.RunRecord`` ``found``) owns to
    ``new_key``'s names and record them on its document, whatever key the
    document has by then (FiftyOne moves it after ``CamRun.rename``)."""
    config = record.with_defaults(found.config)
    plan = rename_plan(dataset, key, config, new_key)
    existing = existing_fields(dataset)
    present = {o: n for o, n in plan.fields.items() if o in existing}
    if present:
        rename_fields(dataset, present)
        move_evaluations(dataset, present)
    # a frames run's fields by the names its frames view (and the layer ->
    # field map, and its saved views of frames) gives them
    as_frames = {
        old[len(FRAMES_PREFIX) :]: new[len(FRAMES_PREFIX) :]
        for old, new in plan.fields.items()
        if old.startswith(FRAMES_PREFIX)
    }
    for old, new in plan.views.items():
        if dataset.has_saved_view(old):
            _move_saved_view(dataset, old, new, {**plan.fields, **as_frames})
    for old, new in plan.brain_keys.items():  # cluster_cams' plots
        if dataset.has_brain_run(old):
            dataset.rename_brain_run(old, new)
    moved = {**plan.fields, **as_frames, **plan.views, **plan.brain_keys}
    clusters = config["clusters"]
    record.set_by_id(
        found.id,
        dict(
            owned_fields=[moved.get(f, f) for f in config["owned_fields"]],
            fields={layer: moved.get(f, f) for layer, f in config["fields"].items()},
            saved_views=[moved.get(v, v) for v in config["saved_views"]],
            brain_keys=[moved.get(k, k) for k in config["brain_keys"]],
            # keyed by heatmap field
            clusters={moved.get(f, f): c for f, c in clusters.items()}
            if clusters
            else clusters,
            removal=None,
        ),
    )
    rename_run_look(dataset, key, new_key, plan.fields)  # groups, colours


def _renamed(name: str, run_key: str, new_key: str, sep: str) -> str:
    if name.startswith(FRAMES_PREFIX):  # a frame field stays one
        tail = name[len(FRAMES_PREFIX) :]
        return FRAMES_PREFIX + _renamed(tail, run_key, new_key, sep)
    prefix = run_key + sep
    return new_key + sep + name[len(prefix) :] if name.startswith(prefix) else name


@dataclass
class RenamePlan:
    """What moves when a run is renamed: old name -> new name, changed ones only."""

    fields: dict[str, str]
    views: dict[str, str]
    brain_keys: dict[str, str]


def rename_plan(
    dataset: fo.Dataset, key: str, config: dict[str, Any], new_key: str
) -> RenamePlan:
    """Field, saved-view and brain-run renames for run ``key`` -> ``new_key``;
    raises, before anything moves, if a new name is taken by something the run
    does not own. Brain keys without the run's prefix (a ``brain_key`` the
    user chose) keep their name."""
    existing = existing_fields(dataset)
    fields = {f: _renamed(f, key, new_key, "_") for f in config["owned_fields"]}
    views = {v: _renamed(v, key, new_key, "-") for v in config["saved_views"]}
    brain = {k: _renamed(k, key, new_key, "_") for k in config["brain_keys"]}
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
    return RenamePlan(
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
    view = fov.DatasetView._build(dataset, [_regenerated(s) for s in stages])
    description, color = doc.description, doc.color
    dataset.delete_saved_view(name)
    dataset.save_view(new_name, view, description=description, color=color)


def _regenerated(stage: str) -> dict:
    """A stage of a saved view, without the generated dataset a ``to_frames``
    or ``to_patches`` stage remembers (``_state``): that snapshot has the old
    field names, so the stage makes a new one from the renamed fields."""
    d = json_util.loads(stage)
    d["kwargs"] = [[k, None if k == "_state" else v] for k, v in d["kwargs"]]
    return d
