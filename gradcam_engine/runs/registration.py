"""Register, resume or replace a CAM run, atomically.

:func:`open_run` is the one way in for a computation (``compute_cams``, and
each shard of a scale-out run): under the run's lock (``locks.run_lock``) it
either registers a new run and claims its fields, or resumes the existing run
when its identity (model, weights fingerprint, transforms, layers...) matches,
or refuses. Of two simultaneous calls on one key, the first registers and the
second resumes (same config) or refuses (different config); nothing is
orphaned.

``overwrite=True`` never deletes the old run up front: the new run is computed
under a temporary key (``<key>_replacing_<hex>``) and :func:`finish_run` swaps
it in only once it has succeeded. The old run stays intact if the new one fails
or is killed. A failure removes the temporary run (:func:`replacement` /
:func:`abandon_run`); one whose process was killed is removed by the next
overwrite of the key. The replacement holds its temporary key's lock while it
computes (``locks.hold_lock``), so that a live one is never taken for dead.
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

from . import cam_runs, ownership
from .batch_fields import FieldNames, field_names
from .locks import Lease, hold_lock, is_locked, run_lock

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
    # a replacement's hold on its temporary key, released by finish_run / abandon_run
    lease: Lease | None = field(default=None, repr=False, compare=False)


def open_run(
    samples: foc.SampleCollection,
    run_key: str,
    config: dict[str, Any],
    overwrite: bool = False,
) -> OpenedRun:
    """Register run ``run_key`` with ``config``, or resume it, atomically.

    ``config`` is a new run's config (``layers`` and the identity keys of
    ``cam_runs.IDENTITY_KEYS``). An existing run with other identity values
    raises ``ValueError`` saying what differs, unless ``overwrite``; fields of
    the run's names that it does not own are refused the same way. With
    ``overwrite`` (and something to replace), a temporary run is registered
    instead; call :func:`finish_run` when it is complete.
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
        names = field_names(run_key, list(config["layers"]))
        if overwrite:
            _remove_dead_replacements(dataset, run_key)
        if exists and not overwrite:
            return _resume(dataset, run_key, config, names)
        conflicts = ownership.find_conflicts(dataset, run_key, fields=names.owned)
        if not exists and not conflicts:
            return _register(dataset, run_key, run_key, config, names)
        if not overwrite:
            raise ValueError(
                f"compute_cams would write {', '.join(map(str, conflicts))}, which "
                f"do not belong to CAM run {run_key!r}; pick another run_key, or "
                "pass overwrite=True to replace them"
            )
    temp = f"{run_key}_replacing_{uuid.uuid4().hex[:8]}"
    lease = hold_lock(dataset, temp)  # held until finish_run or abandon_run
    try:
        opened = _register(
            dataset, temp, run_key, config, field_names(temp, config["layers"])
        )
    except BaseException:
        lease.release()
        raise
    opened.lease = lease
    return opened


def finish_run(samples: foc.SampleCollection, opened: OpenedRun) -> str:
    """Swap a completed replacement in: delete the old run (fields, files,
    views) and what else stood in the way, and rename the temporary run to the
    final key. A no-op for a run opened under its final key, or already
    swapped in (by another shard of it). Returns the key."""
    if opened.run_key == opened.final_key:
        return opened.final_key
    dataset = cam_runs.root_dataset(samples)
    final = opened.final_key
    try:
        with run_lock(dataset, final), run_lock(dataset, opened.run_key):
            dataset._doc.reload("runs")
            if opened.run_key not in dataset.list_runs():
                return final
            if final in dataset.list_runs():
                cam_runs.delete_cam_run(dataset, final)  # with all it owned
                logger.warning("Replaced CAM run %r on %r", final, dataset.name)
            new_names = field_names(final, opened.config["layers"]).owned
            conflicts = ownership.find_conflicts(dataset, final, fields=new_names)
            ownership.remove_conflicts(dataset, conflicts)
            cam_runs.rename_cam_run(dataset, opened.run_key, final)
            cam_runs.update_run_config(dataset, final, replaces=None)
    finally:
        hand_over(opened)
    return final


def abandon_run(samples: foc.SampleCollection, opened: OpenedRun) -> None:
    """Remove a replacement that failed: its temporary run with its fields,
    files and views; the old run is untouched. Only for a replacement this
    process registered and still holds: a no-op for a run opened under its
    final key (a new or resumed run keeps what it computed), for a shard of a
    delegated replacement (the run belongs to all its shards), and after
    :func:`hand_over`."""
    if opened.lease is None or not opened.lease.held:
        return
    dataset = cam_runs.root_dataset(samples)
    try:
        with run_lock(dataset, opened.run_key):
            dataset._doc.reload("runs")
            if opened.run_key in dataset.list_runs():
                cam_runs.delete_cam_run(dataset, opened.run_key)
                logger.warning(
                    "Removed the failed replacement %r of CAM run %r on %r",
                    opened.run_key,
                    opened.final_key,
                    dataset.name,
                )
    finally:
        hand_over(opened)


@contextlib.contextmanager
def replacement(samples: foc.SampleCollection, opened: OpenedRun) -> Iterator[None]:
    """Compute ``opened`` inside the block: if it raises (or is interrupted), a
    replacement's temporary run is removed (:func:`abandon_run`) and the error
    goes on; should that cleanup fail too, the error says what to delete. On
    success the replacement keeps its lock until :func:`finish_run`."""
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
    """Stop holding a replacement's lock (e.g. once its delegated shards are
    queued: they compute it and swap it in); :func:`abandon_run` then no
    longer removes it. A no-op for any other run."""
    if opened.lease is not None:
        opened.lease.release()


def _remove_dead_replacements(dataset: fo.Dataset, run_key: str) -> None:
    """Delete temporary runs replacing ``run_key`` whose process died (their
    lock is free or expired); a live replacement holds its lock and is kept,
    and so is a delegated one (followed with ``cam_run_status``)."""
    pattern = re.compile(rf"{re.escape(run_key)}_replacing_[0-9a-f]{{8}}")
    for key in cam_runs.list_cam_runs(dataset):
        if not pattern.fullmatch(key):
            continue
        config = cam_runs.get_cam_run(dataset, key).config
        if config.get("replaces") != run_key or config.get("sharding"):
            continue  # a delegated replacement: its shards swap it in
        if is_locked(dataset, key):
            continue  # a live replacement: it removes itself if it fails
        try:
            with run_lock(dataset, key, timeout=0):
                cam_runs.delete_cam_run(dataset, key)
        except TimeoutError:
            continue  # taken meanwhile
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
    stored = cam_runs.get_cam_run(dataset, run_key).config
    # a resumed replacement (a shard of one, or one resumed after a kill) is
    # still swapped in under the key it replaces once it has succeeded
    final_key = stored.get("replaces") or run_key
    return OpenedRun(run_key, final_key, names, stored, resumed=True)


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
    schema = {name: fo.EmbeddedDocumentField(fo.Heatmap) for name in names.heatmaps}
    schema.update({name: fo.FloatField() for name in names.strengths})
    for name in (names.target, names.prediction):
        schema[name] = fo.EmbeddedDocumentField(fo.Classification)
    schema[names.error] = fo.StringField()
    schema[names.seen] = fo.EmbeddedDocumentField(fo.Detection)
    existing = dataset.get_field_schema()
    missing = {k: v for k, v in schema.items() if k not in existing}
    if missing:
        dataset._merge_sample_field_schema(missing)
