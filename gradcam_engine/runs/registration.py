"""Register, resume or replace a CAM run, atomically, and hold it live while
it is computed.

:func:`open_run` is the one way in for a computation (``compute_cams``, and
each shard of a scale-out run): under the run's lock (``locks.run_lock``) it
either registers a new run and claims its fields, or resumes the existing run
when its identity (model, weights fingerprint, transforms, layers...) matches,
or refuses. Either way this process then holds a lease on the run record
(``live.LiveRun``) until :func:`finish_run` / :func:`abandon_run`: delete,
rename and overwrite of the run are refused meanwhile, and a delete or rename
done through FiftyOne anyway is carried out by this process when it stops.

``overwrite=True`` never deletes the old run up front: the new run is computed
under a temporary key (``<key>_replacing_<hex>``) and :func:`finish_run` swaps
it in only once it has succeeded. The old run stays intact if the new one fails
or is killed. A failure removes the temporary run (:func:`replacement` /
:func:`abandon_run`); one whose process was killed (no live lease) is removed
by the next overwrite of the key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fiftyone as fo
import fiftyone.core.collections as foc

from . import cam_runs, live, ownership, record
from .frame_fields import declare_fields
from .locks import run_lock
from .naming import FieldNames, field_names, frame_path
from .run_parts import move_parts, remove_parts

__all__ = [
    "OpenedRun",
    "open_run",
    "finish_run",
    "replacement",
    "abandon_run",
    "hand_over",
]

logger = logging.getLogger(__name__)


@dataclass
class OpenedRun:
    """A run ready to be written."""

    run_key: str  # the key being written: ``final_key`` or a temporary key
    final_key: str  # the key the run has once :func:`finish_run` returns
    names: FieldNames  # fields of ``run_key``
    config: dict[str, Any]  # as stored
    resumed: bool
    # this process's lease on the run, released by finish_run / abandon_run
    live: live.LiveRun | None = field(default=None, repr=False, compare=False)

    @property
    def instance(self) -> str | None:
        return self.config.get("instance")


def open_run(
    samples: foc.SampleCollection,
    run_key: str,
    config: dict[str, Any],
    overwrite: bool = False,
) -> OpenedRun:
    """Register run ``run_key`` with ``config``, or resume it, atomically, and
    hold it live.

    ``config`` is a new run's config (``layers`` and the identity keys of
    ``cam_runs.IDENTITY_KEYS``). An existing run with other identity values
    raises ``ValueError`` saying what differs, unless ``overwrite``; fields of
    the run's names that it does not own are refused the same way. With
    ``overwrite`` (and something to replace), a temporary run is registered
    instead; call :func:`finish_run` when it is complete. Overwriting a run
    that another process computes raises ``live.RunIsLive``.
    """
    dataset = cam_runs.root_dataset(samples)
    cam_runs.validate_run_key(run_key)
    with run_lock(dataset, run_key):
        dataset._doc.reload("runs")  # registrations by other processes
        exists = run_key in dataset.list_runs()
        if exists and run_key not in cam_runs.list_cam_runs(dataset):
            raise ValueError(
                f"run_key {run_key!r} is already used by a non-CAM run on "
                f"{dataset.name!r}; pick another run_key"
            )
        names = _names(run_key, config)
        if overwrite:
            live.refuse_if_live(dataset, run_key, "overwrite")
            _remove_dead_replacements(dataset, run_key)
        if exists and not overwrite:
            return _held(dataset, _resume(dataset, run_key, config, names))
        conflicts = ownership.find_conflicts(dataset, run_key, fields=names.owned)
        if not exists and not conflicts:
            return _held(dataset, _register(dataset, run_key, run_key, config, names))
        if not overwrite:
            raise ValueError(
                f"compute_cams would write {', '.join(map(str, conflicts))}, which "
                f"do not belong to CAM run {run_key!r}; pick another run_key, or "
                "pass overwrite=True to replace them"
            )
        temp = f"{run_key}_replacing_{uuid.uuid4().hex[:8]}"
        names = _names(temp, config)
        return _held(dataset, _register(dataset, temp, run_key, config, names))


def _names(run_key: str, config: dict[str, Any]) -> FieldNames:
    task, frames = config.get("task"), config.get("frames")
    return field_names(run_key, list(config["layers"]), task, frames=frames)


def _held(dataset: fo.Dataset, opened: OpenedRun) -> OpenedRun:
    opened.live = live.LiveRun(dataset, record.require_record(dataset, opened.run_key))
    return opened


def finish_run(samples: foc.SampleCollection, opened: OpenedRun) -> str:
    """Release the run; swap a completed replacement in (delete the old run
    with its fields, files and views, and what else stood in the way, then
    rename the temporary run to the final key). The swap is a no-op when
    another shard of the run did it already. Returns the key. Raises
    ``live.RunGone`` if the run was deleted or renamed meanwhile (the
    delete or rename is then carried out here)."""
    dataset = cam_runs.root_dataset(samples)
    final = opened.final_key
    with run_lock(dataset, final), run_lock(dataset, opened.run_key):
        _release(dataset, opened)
        if opened.run_key == final:
            return final
        dataset._doc.reload("runs")
        if opened.run_key not in cam_runs.list_cam_runs(dataset):
            return final  # swapped in by another shard
        if final in cam_runs.list_cam_runs(dataset):
            cam_runs.delete_cam_run(dataset, final)  # with all it owned
            logger.warning("Replaced CAM run %r on %r", final, dataset.name)
        new_names = _names(final, opened.config).owned
        conflicts = ownership.find_conflicts(dataset, final, fields=new_names)
        ownership.remove_conflicts(dataset, conflicts)
        found = record.require_record(dataset, opened.run_key)
        move_parts(dataset, opened.run_key, final, found)
        _rekey(dataset, opened.run_key, final)
        cam_runs.update_run_config(dataset, final, replaces=None)
    return final


def _rekey(dataset: fo.Dataset, key: str, new_key: str) -> None:
    """Move run document ``key`` to ``new_key`` as ``dataset.rename_run`` does,
    without ``CamRun.rename``: the caller moved the parts, and the leases of
    the run's other shards (nothing pending: they are about to stop) must not
    defer the swap."""
    dataset._doc.reload("runs")
    run_docs = dataset._doc.runs
    run_doc = run_docs[key]
    del run_docs[key]  # not pop(): voxel51/fiftyone#4322
    run_doc.key = new_key
    run_docs[new_key] = run_doc
    run_doc.save()
    dataset.save()


def abandon_run(samples: foc.SampleCollection, opened: OpenedRun) -> None:
    """Release the run after a failure. A replacement this process registered
    and still holds is removed with its fields, files and views (the old run
    is untouched); a run opened under its final key keeps what it computed,
    and so does a shard of a delegated replacement (the run belongs to all its
    shards, :func:`hand_over`)."""
    if opened.live is None or not opened.live.held:
        return
    dataset = cam_runs.root_dataset(samples)
    with run_lock(dataset, opened.run_key):
        try:
            _release(dataset, opened)
        except live.RunGone:
            return  # carried out what another process asked
        if opened.run_key == opened.final_key or opened.resumed:
            return
        if opened.run_key in cam_runs.list_cam_runs(dataset):
            cam_runs.delete_cam_run(dataset, opened.run_key)
            logger.warning(
                "Removed the failed replacement %r of CAM run %r on %r",
                opened.run_key,
                opened.final_key,
                dataset.name,
            )


@contextlib.contextmanager
def replacement(samples: foc.SampleCollection, opened: OpenedRun) -> Iterator[None]:
    """Compute ``opened`` inside the block: if it raises (or is interrupted),
    the run is released and a replacement's temporary run removed
    (:func:`abandon_run`), and the error goes on; should that cleanup fail
    too, the error says what to delete."""
    try:
        yield
    except BaseException as exc:
        try:
            abandon_run(samples, opened)
        except Exception as cleanup:
            exc.add_note(
                f"Removing the failed replacement {opened.run_key!r} also failed "
                f"({cleanup!r}); delete it with dataset.delete_run({opened.run_key!r})"
            )
        raise


def hand_over(opened: OpenedRun) -> None:
    """Stop holding the run (e.g. once its delegated shards are queued: they
    compute it, each holding it live, and swap it in); :func:`abandon_run`
    then no longer removes it."""
    if opened.live is not None and opened.live.held:
        opened.live.release()


def _release(dataset: fo.Dataset, opened: OpenedRun) -> None:
    """Drop this process's lease (under the run's lock: a delete or rename
    either saw it, and was left to this process, or comes after). Carries out
    a delete or rename asked meanwhile, then raises ``live.RunGone``."""
    lease = opened.live
    if lease is None or not lease.held:
        return
    state, new_key = lease.release()
    asked = lease.config.get("removal") or {}
    if state == "live" or (state, asked) == ("renamed", {}):
        return  # a replacement swapped in by another shard of it (_rekey)
    if state == "renamed":
        found = record.find_record(dataset, new_key) or record.find_record(
            dataset, opened.run_key
        )
        if found is not None and found.instance == lease.instance:
            move_parts(dataset, opened.run_key, new_key, found)
    elif state == "deleted":
        now = record.find_record(dataset, opened.run_key)
        # a run registered since under the same key owns the fields now
        mine = now is None or now.instance == lease.instance
        remove_parts(dataset, opened.run_key, lease.config, fields=mine)
    lease.check()  # raises RunGone, saying what happened


def _remove_dead_replacements(dataset: fo.Dataset, run_key: str) -> None:
    """Delete temporary runs replacing ``run_key`` whose process died (no live
    lease); a live replacement is kept, and so is a delegated one (followed
    with ``cam_run_status``)."""
    pattern = re.compile(rf"{re.escape(run_key)}_replacing_[0-9a-f]{{8}}")
    for key in cam_runs.list_cam_runs(dataset):
        if not pattern.fullmatch(key):
            continue
        config = cam_runs.get_cam_run(dataset, key).config
        if config.get("replaces") != run_key or config.get("sharding"):
            continue  # a delegated replacement: its shards swap it in
        try:
            cam_runs.delete_cam_run(dataset, key)  # refuses a live one
        except live.RunIsLive:
            continue
        logger.warning(
            "Removed %r, a replacement of CAM run %r whose process died",
            key,
            run_key,
        )


def _resume(dataset: fo.Dataset, run_key, config, names) -> OpenedRun:
    stored = cam_runs.get_cam_run(dataset, run_key).config
    diff = cam_runs.config_differences(stored, config)
    if diff:
        changes = "; ".join(
            f"{key}: stored {old!r}, now {new!r}"
            + (" (not recorded: the run predates fingerprints)" if old is None else "")
            for key, (old, new) in diff.items()
        )
        raise ValueError(
            f"Run {run_key!r} exists with a different config ({changes}), so "
            "resuming it would mix two models' or settings' maps in one run. Pass "
            "overwrite=True to replace it, or pick another run_key."
        )
    # everything stored after creation (scores, saved views...) is kept
    ownership.claim(dataset, run_key, fields=names.owned, writer="compute_cams")
    _declare_fields(dataset, names)
    if not stored.get("instance"):
        _adopt(dataset, run_key, names)
    stored = cam_runs.get_cam_run(dataset, run_key).config
    # a resumed replacement (a shard of one, or one resumed after a kill) is
    # still swapped in under the key it replaces once it has succeeded
    final_key = stored.get("replaces") or run_key
    return OpenedRun(run_key, final_key, names, stored, resumed=True)


def _adopt(dataset: fo.Dataset, run_key: str, names: FieldNames) -> None:
    """Give a run stored by an older version an instance, and mark the samples
    it computed (or failed) as its own: they were its before any other run
    could have this key."""
    instance = record.new_instance()
    cam_runs.update_run_config(dataset, run_key, instance=instance)
    done = [
        {name: {"$exists": True, "$ne": None}}
        for name in (names.prediction, names.error)
    ]
    dataset._sample_collection.update_many(
        {"$or": done}, {"$set": {names.instance: instance}}
    )


def _register(dataset, run_key, final_key, config, names) -> OpenedRun:
    config = dict(config, owned_fields=names.owned, saved_views=[])
    if config.get("storage") == "disk":
        # unique per run (the App caches maps by path), named after the final key
        config["run_dir"] = os.path.join(
            config["output_dir"], f"{final_key}-{uuid.uuid4().hex[:12]}"
        )
    else:
        config["run_dir"] = None
    if final_key != run_key:
        config["replaces"] = final_key
    cam_runs.register_cam_run(dataset, run_key, **config)
    _declare_fields(dataset, names)
    stored = cam_runs.get_cam_run(dataset, run_key).config
    return OpenedRun(run_key, final_key, names, stored, resumed=False)


def _declare_fields(dataset: fo.Dataset, names: FieldNames) -> None:
    """All of the run's fields in one schema update (``add_sample_field`` reloads
    the dataset once per field: ~0.3 s each)."""
    heatmaps = [*names.heatmaps, *(names.chosen_detections or [])]
    schema = {name: fo.EmbeddedDocumentField(fo.Heatmap) for name in heatmaps}
    schema.update({name: fo.FloatField() for name in names.strengths})
    for name in (names.target, names.prediction):
        schema[name] = fo.EmbeddedDocumentField(fo.Classification)
    schema[names.error] = fo.StringField()
    schema[names.instance] = fo.StringField()
    schema[names.seen] = fo.EmbeddedDocumentField(fo.Detection)
    if names.detections:  # task="detection"
        schema[names.detections] = fo.EmbeddedDocumentField(fo.Detections)
    if names.labels:  # task="multilabel"
        schema[names.labels] = fo.EmbeddedDocumentField(fo.Classifications)
    if names.frames:  # frame fields of the video dataset
        schema = {frame_path(k): v for k, v in schema.items()}
    declare_fields(dataset, schema)
    if names.detections:  # the detections' attributes, once their field exists
        _declare_detection_attributes(dataset, names)


def _declare_detection_attributes(dataset: fo.Dataset, names: FieldNames) -> None:
    """Declare the explained detections' focus (float), ``error`` and ``gt_id``
    (str) attributes, so that the App's sidebar filters them; their own maps
    stay dynamic attributes (runs/detections.py)."""
    parent = f"{names.detections}.detections"
    focus = names.detection_focus or []  # a patches run stores no focus
    schema = {f"{parent}.{attr}": fo.FloatField() for attr in focus}
    schema[f"{parent}.error"] = fo.StringField()
    schema[f"{parent}.gt_id"] = fo.StringField()
    if names.frames:  # attributes of a frame field (a frames view's run)
        existing = dataset.get_frame_field_schema(flat=True)
        merge = dataset._merge_frame_field_schema
    else:
        existing, merge = (
            dataset.get_field_schema(flat=True),
            dataset._merge_sample_field_schema,
        )
    missing = {k: v for k, v in schema.items() if k not in existing}
    if missing:
        merge(missing)
