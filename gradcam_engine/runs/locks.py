"""A per-run lock in FiftyOne's own MongoDB, so that check-then-act steps on a
run (register or resume, claim fields, swap in a replacement) are atomic across
threads, processes and machines that share the database.

The lock is one document ``{_id: "<dataset id>:<run key>", owner, expires}`` in
the ``gradcam_engine_run_locks`` collection. Taking it is an insert (the unique
``_id`` is the precondition) or, when its holder died, an update conditioned on
``expires < now``. :func:`run_lock` holds it only for the few database calls of
a registration, never while maps are computed. A replacement run holds its
temporary key's lock for as long as it computes (:func:`hold_lock`, renewed by a
thread), so that a later overwrite can tell a live replacement from one whose
process died.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import fiftyone.core.collections as foc
import fiftyone.core.odm as foo
from pymongo.errors import DuplicateKeyError

__all__ = ["LOCK_COLLECTION", "Lease", "hold_lock", "is_locked", "run_lock"]

LOCK_COLLECTION = "gradcam_engine_run_locks"
# A holder that died leaves its lock; after this long anyone may take it over.
_LEASE = timedelta(minutes=5)
_held = threading.local()
logger = logging.getLogger(__name__)


@contextlib.contextmanager
def run_lock(
    samples: foc.SampleCollection, run_key: str, timeout: float = 120.0
) -> Iterator[None]:
    """Hold the lock of ``run_key`` on ``samples``' dataset for the ``with`` block.

    Re-entrant within a thread. Waits up to ``timeout`` seconds for another
    holder, then raises ``TimeoutError`` naming it.
    """
    dataset = samples._root_dataset
    lock_id = f"{dataset._doc.id}:{run_key}"
    held = _held_ids()
    if lock_id in held:
        yield
        return
    locks = foo.get_db_conn()[LOCK_COLLECTION]
    token = uuid.uuid4().hex
    _acquire(locks, lock_id, token, run_key, dataset.name, timeout)
    held.add(lock_id)
    try:
        yield
    finally:
        held.discard(lock_id)
        locks.delete_one({"_id": lock_id, "owner": token})


class Lease:
    """The lock of one run key held across calls (see :func:`hold_lock`); a
    daemon thread renews its expiry until :meth:`release`."""

    def __init__(self, locks, lock_id: str, token: str) -> None:
        self._locks, self._id, self._token = locks, lock_id, token
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew, name=f"lease {lock_id}", daemon=True
        )
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(_LEASE.total_seconds() / 10):
            try:
                self._locks.update_one(
                    {"_id": self._id, "owner": self._token},
                    {"$set": {"expires": datetime.now(timezone.utc) + _LEASE}},
                )
            except Exception:  # the next tick tries again; the lease lasts 5 min
                logger.warning("Could not renew the lock %s", self._id, exc_info=True)

    @property
    def held(self) -> bool:
        return not self._stop.is_set()

    def release(self) -> None:
        """Stop renewing and delete the lock (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        _held_ids().discard(self._id)
        self._locks.delete_one({"_id": self._id, "owner": self._token})


def hold_lock(
    samples: foc.SampleCollection, run_key: str, timeout: float = 120.0
) -> Lease:
    """Take the lock of ``run_key`` and keep it (renewed) until the returned
    :class:`Lease` is released; in this thread, :func:`run_lock` on the same
    key meanwhile enters at once. If the process dies, the lock expires."""
    dataset = samples._root_dataset
    lock_id = f"{dataset._doc.id}:{run_key}"
    locks = foo.get_db_conn()[LOCK_COLLECTION]
    token = uuid.uuid4().hex
    _acquire(locks, lock_id, token, run_key, dataset.name, timeout)
    _held_ids().add(lock_id)
    return Lease(locks, lock_id, token)


def is_locked(samples: foc.SampleCollection, run_key: str) -> bool:
    """Whether someone (this thread included) holds the lock of ``run_key``:
    its document exists and has not expired."""
    dataset = samples._root_dataset
    lock_id = f"{dataset._doc.id}:{run_key}"
    if lock_id in _held_ids():
        return True
    doc = foo.get_db_conn()[LOCK_COLLECTION].find_one({"_id": lock_id})
    if doc is None:
        return False
    expires = doc["expires"]
    if expires.tzinfo is None:  # pymongo returns naive UTC datetimes by default
        expires = expires.replace(tzinfo=timezone.utc)
    return expires >= datetime.now(timezone.utc)


def _held_ids() -> set[str]:
    held = getattr(_held, "ids", None)
    if held is None:
        held = _held.ids = set()
    return held


def _acquire(locks, lock_id, token, run_key, dataset_name, timeout) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        now = datetime.now(timezone.utc)
        mine = {
            "owner": token,
            "expires": now + _LEASE,
            "holder": f"pid {os.getpid()} on {socket.gethostname()}",
        }
        try:
            locks.insert_one({"_id": lock_id, **mine})
            return
        except DuplicateKeyError:
            taken = locks.find_one_and_update(
                {"_id": lock_id, "expires": {"$lt": now}}, {"$set": mine}
            )
            if taken is not None:
                return
        if time.monotonic() > deadline:
            holder = (locks.find_one({"_id": lock_id}) or {}).get("holder", "?")
            raise TimeoutError(
                f"Run {run_key!r} on dataset {dataset_name!r} is locked by {holder} "
                f"(registering or replacing it) for more than {timeout} s. If that "
                f"process died, the lock expires {_LEASE} after it was taken."
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
