"""An isolated mongod (FiftyOne's bundled binary) for one benchmark process.

FiftyOne's embedded database service attaches to ANY running one on the machine
(tests/conftest.py says why), so a benchmark running beside a test session or
another benchmark would share and then lose it; a database URI of our own avoids
that. Set ``FIFTYONE_DATABASE_URI`` to the returned URI before importing fiftyone.
"""

from __future__ import annotations

import atexit
import importlib.util
import pathlib
import shutil
import socket
import subprocess
import time


def start_mongod(db_dir: pathlib.Path, remove_on_exit: bool = False) -> str:
    """Start mongod on a free port with its data in ``db_dir``; return its URI.

    It is stopped when the process exits (and ``db_dir`` removed when
    ``remove_on_exit``)."""
    spec = importlib.util.find_spec("fiftyone")
    binary = pathlib.Path(spec.origin).parent / "db" / "bin" / "mongod"
    db_dir = pathlib.Path(db_dir)
    db_dir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [str(binary), "--dbpath", str(db_dir), "--port", str(port)]
        + ["--bind_ip", "127.0.0.1", "--nounixsocket"]
        + ["--logpath", str(db_dir / "mongod.log")],
        stdout=subprocess.DEVNULL,
    )

    def stop() -> None:
        proc.terminate()
        proc.wait()
        if remove_on_exit:
            shutil.rmtree(db_dir, ignore_errors=True)

    atexit.register(stop)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return f"mongodb://127.0.0.1:{port}"
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"mongod did not start; see {db_dir / 'mongod.log'}")
