"""A run's fields when they may be frame fields: a run on a frames view
(``video.to_frames()``) writes frame fields of the video dataset, listed in its
``owned_fields`` as ``frames.<name>`` (FiftyOne's path of a frame field).

FiftyOne's ``delete_sample_fields`` / ``rename_sample_fields`` /
``get_field_schema`` know sample fields only; these helpers check, declare,
delete and rename a run's fields of either kind, so that ownership, rename
and delete work the same for both.
"""

from __future__ import annotations

from collections.abc import Iterable

import fiftyone as fo
import fiftyone.core.video as fov

from .naming import FRAMES_PREFIX, frame_path

__all__ = [
    "declare_fields",
    "declare_run_fields",
    "delete_fields",
    "existing_fields",
    "is_frames",
    "rename_fields",
    "view_schema",
    "writable",
]


def is_frames(samples) -> bool:
    """``samples`` is a frames view (``to_frames``) of a video collection (not
    the generated dataset behind one, which is ``_is_frames`` too)."""
    return isinstance(samples, fov.FramesView)


def existing_fields(dataset: fo.Dataset) -> set[str]:
    """The dataset's sample fields and, on a video dataset, its frame fields
    as ``frames.<name>``."""
    names = set(dataset.get_field_schema())
    if dataset._has_frame_fields():
        names |= {frame_path(f) for f in dataset.get_frame_field_schema() or {}}
    return names


def _by_kind(entries: dict) -> tuple[dict, dict]:
    """``entries`` keyed by field name -> (sample-field entries, frame-field
    entries keyed without ``frames.``)."""
    sample = {k: v for k, v in entries.items() if not k.startswith(FRAMES_PREFIX)}
    frame = {
        k[len(FRAMES_PREFIX) :]: v
        for k, v in entries.items()
        if k.startswith(FRAMES_PREFIX)
    }
    return sample, frame


def delete_fields(dataset: fo.Dataset, names: Iterable[str]) -> None:
    """Delete sample fields and ``frames.<name>`` frame fields."""
    sample, frame = (list(d) for d in _by_kind(dict.fromkeys(names)))
    if sample:
        dataset.delete_sample_fields(sample)
    if frame:
        dataset.delete_frame_fields(frame)


def rename_fields(dataset: fo.Dataset, mapping: dict[str, str]) -> None:
    """Rename sample fields and ``frames.<name>`` frame fields (a frame field
    stays a frame field)."""
    sample, frame = _by_kind(mapping)
    frame = {o: n.removeprefix(FRAMES_PREFIX) for o, n in frame.items()}
    if sample:
        dataset.rename_sample_fields(sample)
    if frame:
        dataset.rename_frame_fields(frame)


def declare_fields(dataset: fo.Dataset, schema: dict[str, fo.Field]) -> None:
    """Declare the missing ones of ``schema`` (name -> field), ``frames.<name>``
    as frame fields; one schema update per kind (``add_sample_field`` reloads
    the dataset once per field)."""
    existing = existing_fields(dataset)
    missing = {k: v for k, v in schema.items() if k not in existing}
    sample, frame = _by_kind(missing)
    if sample:
        dataset._merge_sample_field_schema(sample)
    if frame:
        dataset._merge_frame_field_schema(frame)


def view_schema(frames_view, names: Iterable[str]) -> None:
    """Declare on a frames view's own (generated) dataset the frame fields
    ``names`` (``frames.`` or not) that the video dataset declares, so that the
    view reads what a run writes through it (FiftyOne syncs values, not
    schemas, from the video to the view)."""
    names = [n.removeprefix(FRAMES_PREFIX) for n in names]
    source = frames_view._root_dataset.get_frame_field_schema() or {}
    own = frames_view._frames_dataset
    present = set(own.get_field_schema())
    missing = {n: source[n] for n in names if n in source and n not in present}
    if missing:
        own._merge_sample_field_schema(missing)


def writable(samples):
    """Where a writer sets values by sample id: a frames view itself (its
    ids are frame ids; FiftyOne syncs its writes to the video), else the
    root dataset."""
    return samples if is_frames(samples) else samples._root_dataset


def declare_run_fields(dataset: fo.Dataset, info, schema: dict[str, fo.Field]) -> None:
    """Declare the missing ones of ``schema`` for CAM run ``info`` (a
    ``CamRunInfo``): frame fields for a run on a frames view (``schema``
    names them as the view does), sample fields otherwise."""
    if info.config.get("frames"):
        schema = {frame_path(k): v for k, v in schema.items()}
    declare_fields(dataset, schema)
