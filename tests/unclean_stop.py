"""Run by test_faults.py in its own process: a CAM run resumed after its
database was killed (SIGKILL) and restarted, which leaves MongoDB's fast count
(``len(dataset)``) reading 0. Prints one JSON line with what the counts read.

Usage: python unclean_stop.py DB_DIR IMAGE [IMAGE ...]
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mongod(db_dir: pathlib.Path, port: int) -> subprocess.Popen:
    spec = importlib.util.find_spec("fiftyone")
    binary = pathlib.Path(spec.origin).parent / "db" / "bin" / "mongod"
    proc = subprocess.Popen(
        [str(binary), "--dbpath", str(db_dir), "--port", str(port)]
        + ["--bind_ip", "127.0.0.1", "--nounixsocket"]
        + ["--logpath", str(db_dir / "mongod.log")],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"mongod did not start; see {db_dir / 'mongod.log'}")


def main(db_dir: pathlib.Path, images: list[str]) -> dict:
    db_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    mongod = _mongod(db_dir, port)
    os.environ.update(
        FIFTYONE_DATABASE_URI=f"mongodb://127.0.0.1:{port}",
        FIFTYONE_DATABASE_VALIDATION="false",
        FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_SHOW_PROGRESS_BARS="false",
    )
    try:
        import fiftyone as fo
        import torch
        from torch import nn

        import gradcam_engine as ge
        from gradcam_engine.sources.models import ResizeNormalize

        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        kwargs = dict(
            layers=["1"], run_key="cam", transforms=ResizeNormalize(32),
            num_workers=0, progress=False,
        )  # fmt: skip
        ds = fo.Dataset("unclean", persistent=True)
        ds.add_samples([fo.Sample(filepath=p) for p in images])
        ge.compute_cams(ds.limit(2), model, **kwargs)
        time.sleep(1.5)  # past the journal's commit interval (100 ms)
        mongod.send_signal(signal.SIGKILL)
        mongod.wait()
        mongod = _mongod(db_dir, port)
        fast = len(ds)
        summary = ge.compute_cams(ds, model, **kwargs)
        return {
            "fast_count": fast,
            "exact_count": ds.count("id"),
            "summary": summary.as_dict(),
            "num_samples": summary.num_samples,
            "status": ge.cam_run_status(ds, "cam"),
        }
    finally:
        mongod.terminate()
        mongod.wait()


if __name__ == "__main__":
    result = main(pathlib.Path(sys.argv[1]), sys.argv[2:])
    print(json.dumps(result, default=str))
    sys.stdout.flush()
    os._exit(0)  # FiftyOne's exit handlers would wait for the stopped database
