"""Run state: a run being computed is **live**. Each computing process holds a
lease in the run record (``config.live.<token> = {holder, pid, host,
expires}``, seconds since the epoch), renewed by a thread of :class:`LiveRun`;
a process that dies stops renewing and its lease expires (or, on the same
machine, counts as gone at once). Delete, rename and overwrite of a live run
are refused (:func:`refuse_if_live`); the computing process checks before each
batch write that its run instance still stands (:meth:`LiveRun.check`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from .record import RunRecord, find_record, runs_collection

__all__ = [
    "LEASE_SECONDS",
    "RunGone",
    "RunIsLive",
    "LiveRun",
    "live_holders",
    "refuse_if_live",
]

logger = logging.getLogger(__name__)

# Seconds a lease lasts unless renewed; renewed every tenth of it. A process
# that died frees its runs after this long. The environment variable exists so
# that a test can kill a process and see its lease expire in seconds.
LEASE_SECONDS = float(os.environ.get("GRADCAM_ENGINE_LEASE_SECONDS", "120"))


class RunIsLive(RuntimeError):
    """An action that would break a run another process is computing."""


class RunGone(RuntimeError):
    """The run instance this process computes was deleted or renamed meanwhile."""


def live_holders(config: dict[str, Any], now: float | None = None) -> list[str]:
    """The processes whose lease on this run has not expired."""
    now = time.time() if now is None else now
    leases = config.get("live") or {}
    return sorted(
        lease.get("holder", "?")
        for lease in leases.values()
        if isinstance(lease, dict)
        and float(lease.get("expires", 0)) > now
        and not _died_here(lease)
    )


def _died_here(lease: dict) -> bool:
    """Whether the lease's process ran on this machine and is gone (then there
    is no need to wait for its lease to expire)."""
    if lease.get("host") != socket.gethostname() or not lease.get("pid"):
        return False
    try:
        os.kill(int(lease["pid"]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's process: alive
        return False
    return False


def refuse_if_live(dataset, run_key: str, action: str, ignore: str | None = None):
    """Raise :class:`RunIsLive` naming the computing processes, if any (leases
    other than ``ignore``, this process's own token)."""
    record = find_record(dataset, run_key)
    if record is None:
        return
    config = dict(record.config)
    if ignore is not None:
        config["live"] = {
            t: v for t, v in (config.get("live") or {}).items() if t != ignore
        }
    holders = live_holders(config)
    if holders:
        raise RunIsLive(
            f"Cannot {action} CAM run {run_key!r} on {dataset.name!r}: it is being "
            f"computed by {', '.join(holders)}. Wait until it has finished (follow "
            f"it with cam_run_status), or stop that process: a stopped process's "
            f"lease expires within {LEASE_SECONDS:g} s."
        )


class LiveRun:
    """This process's lease on a run it computes: taken on creation, renewed by
    a daemon thread, released by :meth:`release`. :meth:`check` (before each
    batch write) raises :class:`RunGone` if the run instance was deleted or
    renamed by someone else meanwhile (FiftyOne's ``delete_run`` /
    ``rename_run`` go ahead whatever ``cleanup`` / ``rename`` say: they mark
    a live run ``config.removal`` first, see ``cam_runs.CamRun``)."""

    def __init__(self, dataset, record: RunRecord) -> None:
        self.dataset, self.doc_id, self.key = dataset, record.id, record.key
        self.instance = record.instance
        self.config = record.config  # as last seen: what to clean up if deleted
        self.token = uuid.uuid4().hex[:16]
        self.holder = f"pid {os.getpid()} on {socket.gethostname()}"
        self._stop = threading.Event()
        self._renew_once()
        self._thread = threading.Thread(
            target=self._renew, name=f"lease {record.key}", daemon=True
        )
        self._thread.start()

    @property
    def held(self) -> bool:
        return not self._stop.is_set()

    def _renew_once(self) -> bool:
        lease = {
            "holder": self.holder,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "expires": time.time() + LEASE_SECONDS,
        }
        done = runs_collection().update_one(
            {"_id": self.doc_id, "config.instance": self.instance},
            {"$set": {f"config.live.{self.token}": lease}},
        )
        return done.matched_count == 1

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 10):
            try:
                if not self._renew_once():
                    return  # the run is gone; check() tells the computation
            except Exception:  # the next tick tries again
                logger.warning("Could not renew the lease on %r", self.key, exc_info=1)

    def state(self) -> tuple[str, str | None]:
        """``("live", None)``, ``("deleted", None)`` or ``("renamed", new key)``."""
        doc = runs_collection().find_one({"_id": self.doc_id}, {"key": 1, "config": 1})
        config = (doc or {}).get("config") or {}
        if doc is None or config.get("instance") != self.instance:
            return "deleted", None
        self.config = config
        removal = config.get("removal") or {}
        if removal.get("action") == "delete":
            return "deleted", None
        new_key = removal.get("new_key") if removal.get("action") == "rename" else None
        if doc["key"] != self.key or new_key:
            return "renamed", new_key or doc["key"]
        return "live", None

    def check(self) -> None:
        """Raise :class:`RunGone` if this run instance was deleted, or renamed
        away from the key this process writes."""
        state, new_key = self.state()
        if state == "deleted":
            raise RunGone(
                f"CAM run {self.key!r} on {self.dataset.name!r} was deleted by "
                "another process while this one computed it; stopped without "
                "writing more"
            )
        if state == "renamed":
            raise RunGone(
                f"CAM run {self.key!r} on {self.dataset.name!r} was renamed to "
                f"{new_key!r} by another process while this one computed it; "
                f"stopped. Resume it with run_key={new_key!r}"
            )

    def release(self) -> tuple[str, str | None]:
        """Stop renewing and drop this process's lease (idempotent). Returns
        :meth:`state` as it was when the lease was dropped (call under the
        run's lock, so that a delete or rename either saw the lease or comes
        after)."""
        if self._stop.is_set():
            return "live", None
        self._stop.set()
        state = self.state()
        runs_collection().update_one(
            {"_id": self.doc_id}, {"$unset": {f"config.live.{self.token}": ""}}
        )
        return state
