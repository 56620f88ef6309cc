"""Real ``fiftyone delegated launch`` workers for tests: started in their own
process group on the test database, stopped by their process id."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

TESTS = pathlib.Path(__file__).resolve().parent
FIFTYONE = str(pathlib.Path(sys.executable).with_name("fiftyone"))


def worker_env(**extra: str) -> dict[str, str]:
    """This process's environment (the test database and plugin dir, set by the
    conftest) plus what the open-source launcher needs, with tests/ importable."""
    env = dict(os.environ)
    env["FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"] = "true"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def start_worker(log_path: pathlib.Path, **extra_env: str) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [FIFTYONE, "delegated", "launch"],
            env=worker_env(**extra_env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped by its id
        )


def stop_worker(worker: subprocess.Popen) -> None:
    if worker.poll() is not None:
        return
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
