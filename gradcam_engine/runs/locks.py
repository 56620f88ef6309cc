"""A per-run lock in FiftyOne's own MongoDB, so that check-then-act steps on a
run (register or resume, claim fields, swap in a replacement, delete or rename
against a live computation) are atomic across threads, processes and machines
that share the database.

The lock is one document ``{_id: "<dataset id>:<run key>", owner, expires}`` in
the ``gradcam_engine_run_locks`` collection. Taking it is an insert (the unique
``_id`` is the precondition) or, when its holder died, an update conditioned on
``expires < now``. :func:`run_lock` holds it only for a few database calls,
never while maps are computed: a computation holds its run *live* instead, by
a lease on the run record (``live.LiveRun``).
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

__all__ = ["LOCK_COLLECTION", "run_lock"]

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
