"""The one ownership check every writer uses before it writes.

A CAM run owns the sample fields, saved views and files listed in its config
(``owned_fields``, ``saved_views``, ``owned_paths``; the PNGs of disk storage
live in its ``run_dir``). A writer (``compute_cams``, ``score_cams``,
``save_review_views``, and any later one) calls :func:`claim` with what it is
about to write: anything that exists and that the run does not own is refused,
by name and owner, unless ``overwrite=True``, which deletes it (and says so).
Claimed names are recorded on the run *before* the writer writes, so that
deleting the run removes even a half-written result.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass

import fiftyone as fo
import fiftyone.core.collections as foc

from . import cam_runs
from .frame_fields import delete_fields, existing_fields
from .locks import run_lock
from .naming import frame_path

__all__ = ["Conflict", "claim", "find_conflicts", "remove_conflicts"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Conflict:
    """Something a writer wants to write that its run does not own."""

    kind: str  # "field", "saved view" or "file"
    name: str
    owner: str | None  # the CAM run that owns it, None for a user's

    def __str__(self) -> str:
        whose = (
            f"owned by CAM run {self.owner!r}" if self.owner else "not from a CAM run"
        )
        return f"{self.kind} {self.name!r} ({whose})"


def find_conflicts(
    samples: foc.SampleCollection,
    run_key: str,
    *,
    fields: Iterable[str] = (),
    saved_views: Iterable[str] = (),
    paths: Iterable[str] = (),
) -> list[Conflict]:
    """What of ``fields``, ``saved_views`` and ``paths`` exists and is not
    owned by run ``run_key`` (which need not exist yet)."""
    dataset = cam_runs.root_dataset(samples)
    mine = _owned(dataset, run_key)
    owners: dict[tuple[str, str], str] = {}
    for key in cam_runs.list_cam_runs(dataset):
        if key != run_key:
            for kind, names in _owned(dataset, key).items():
                owners.update({(kind, n): key for n in names})
    existing = existing_fields(dataset)
    found = [("field", f) for f in fields if f in existing]
    found += [("saved view", v) for v in saved_views if dataset.has_saved_view(v)]
    found += [("file", p) for p in paths if os.path.exists(p)]
    return [
        Conflict(kind, name, owners.get((kind, name)))
        for kind, name in found
        if not _is_owned(kind, name, mine[kind])
    ]


def _is_owned(kind: str, name: str, owned: set[str]) -> bool:
    if kind != "file":
        return name in owned
    path = os.path.abspath(name)  # a file inside an owned directory is owned
    return any(path == p or path.startswith(p.rstrip(os.sep) + os.sep) for p in owned)


def remove_conflicts(samples: foc.SampleCollection, conflicts: list[Conflict]) -> None:
    """Delete what ``conflicts`` name and drop them from their owners' configs."""
    dataset = cam_runs.root_dataset(samples)
    fields = [c.name for c in conflicts if c.kind == "field"]
    if fields:
        delete_fields(dataset, fields)
    for c in conflicts:
        if c.kind == "saved view":
            dataset.delete_saved_view(c.name)
        elif c.kind == "file":
            shutil.rmtree(c.name) if os.path.isdir(c.name) else os.remove(c.name)
    for owner in {c.owner for c in conflicts if c.owner}:
        gone = [c.name for c in conflicts if c.owner == owner]
        cam_runs.remove_from_run_lists(
            dataset, owner, owned_fields=gone, saved_views=gone, owned_paths=gone
        )
    if conflicts:
        logger.warning("Replaced %s", ", ".join(map(str, conflicts)))


def claim(
    samples: foc.SampleCollection,
    run_key: str,
    *,
    fields: Iterable[str] = (),
    saved_views: Iterable[str] = (),
    paths: Iterable[str] = (),
    overwrite: bool = False,
    writer: str = "this call",
) -> list[Conflict]:
    """Make run ``run_key`` the owner of ``fields``, ``saved_views`` and
    ``paths`` before ``writer`` writes them; returns what was replaced.

    Raises ``ValueError`` naming every conflict unless ``overwrite``.
    """
    dataset = cam_runs.root_dataset(samples)
    fields, saved_views, paths = list(fields), list(saved_views), list(paths)
    with run_lock(dataset, run_key):
        info = cam_runs.get_cam_run(dataset, run_key)  # raises if there is no such run
        if info.config.get("frames"):  # the frames view's names -> the dataset's
            fields = [frame_path(f) for f in fields]
        conflicts = find_conflicts(
            dataset, run_key, fields=fields, saved_views=saved_views, paths=paths
        )
        if conflicts and not overwrite:
            raise ValueError(
                f"{writer} would write {', '.join(map(str, conflicts))}, which CAM "
                f"run {run_key!r} does not own. Pass overwrite=True to replace "
                "them, or rename or delete them first."
            )
        remove_conflicts(dataset, conflicts)
        # one atomic update: claims by other writers meanwhile are kept
        cam_runs.add_to_run_lists(
            dataset,
            run_key,
            owned_fields=fields,
            saved_views=saved_views,
            owned_paths=[os.path.abspath(p) for p in paths],
        )
    return conflicts


def _owned(dataset: fo.Dataset, run_key: str) -> dict[str, set[str]]:
    if run_key not in cam_runs.list_cam_runs(dataset):
        return {"field": set(), "saved view": set(), "file": set()}
    config = cam_runs.get_cam_run(dataset, run_key).config
    return {
        "field": set(config.get("owned_fields") or []),
        "saved view": set(config.get("saved_views") or []),
        "file": set(config.get("owned_paths") or [])
        | ({config["run_dir"]} if config.get("run_dir") else set()),
    }
