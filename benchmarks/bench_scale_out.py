"""Throughput of one CAM run sharded over 1 and 2 ``fiftyone delegated launch``
workers, next to the engine's single-process throughput.

    FIFTYONE_PLUGINS_DIR=<dir holding this plugin> \\
        .venv/bin/python benchmarks/bench_scale_out.py [--images 192] [--shards 2] [--repeats 2]

Model: the bundled EfficientNet-Lite0 (source ``efficientnet-lite0-imagenet``),
224 px, layer ``_conv_head``, batch 8, real photos (scikit-image) of varied
sizes. Timing of a delegated run: from the first shard's start to the last
shard's completion as FiftyOne records them (worker start-up excluded; each
shard loads the model, which is included). Every process, this one included,
uses ``--threads`` torch threads (default 1), so that the 1- and 2-worker runs
differ only in the number of workers. The 1- and 2-worker runs alternate for
``--repeats`` rounds; a ratio compares the two runs of one round. Also measured,
for the K-GPU estimate: image decoding per core and the database's rate of
heatmap writes from one process.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

_TMP = tempfile.mkdtemp(prefix="bench-scale-out-")
os.environ["FIFTYONE_DATABASE_DIR"] = os.path.join(_TMP, "db")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")

import bench_workflow  # noqa: E402
import fiftyone as fo  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bson import ObjectId  # noqa: E402
from fiftyone.operators.delegated import DelegatedOperationService  # noqa: E402

import gradcam_engine as ge  # noqa: E402
from gradcam_engine.runs.compute import _write  # noqa: E402
from gradcam_engine.runs.storage import make_heatmap  # noqa: E402
from gradcam_engine.sources.images import ImageFiles  # noqa: E402
from gradcam_engine.sources.models import load_model  # noqa: E402

MODEL = "efficientnet-lite0-imagenet"
LAYER = "_conv_head"
BATCH = 8
FIFTYONE = str(pathlib.Path(sys.executable).with_name("fiftyone"))


def single_process(ds) -> float:
    """images/s of compute_cams in this process (warmed up on a few images)."""
    ge.compute_cams(ds.limit(BATCH), MODEL, LAYER, run_key="warm", batch_size=BATCH)
    start = time.perf_counter()
    ge.compute_cams(ds, MODEL, LAYER, run_key="local", batch_size=BATCH)
    return len(ds) / (time.perf_counter() - start)


def delegated(ds, workers: int, shards: int, run_key: str) -> float:
    """images/s of a sharded run executed by ``workers`` real workers."""
    queued = ge.compute_cams(
        ds,
        MODEL,
        LAYER,
        run_key=run_key,
        batch_size=BATCH,
        delegate=True,
        shards=shards,
    )
    env = dict(os.environ, FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS="true")
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    procs = [
        subprocess.Popen(
            [FIFTYONE, "delegated", "launch"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(workers)
    ]
    service = DelegatedOperationService()
    try:
        while ge.cam_run_status(ds, run_key)["state"] != "completed":
            time.sleep(0.5)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    ops = [service.get(ObjectId(i)) for i in queued.operation_ids]
    first = min(op.started_at for op in ops)
    last = max(op.completed_at for op in ops)
    return len(ds) / (last - first).total_seconds()


def decode_per_core(paths) -> float:
    """images/s that one core decodes and resizes (what a GPU worker's DataLoader
    processes must supply)."""
    transforms = load_model(MODEL).transforms
    files = ImageFiles(paths, transforms)
    start = time.perf_counter()
    for i in range(len(files)):
        files[i]
    return len(paths) / (time.perf_counter() - start)


def db_write_rate(ds) -> float:
    """Heatmaps/s that one process writes to the database (256 px uint8 maps)."""
    ds.add_sample_field(
        "bench_map", fo.EmbeddedDocumentField, embedded_doc_type=fo.Heatmap
    )
    rng = np.random.default_rng(0)
    ids = ds.values("id")
    yy, xx = np.mgrid[0:192, 0:256]
    maps = {}
    for sid in ids:  # smooth blobs compress like real CAMs, unlike noise
        cy, cx = rng.uniform(0, 192), rng.uniform(0, 256)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 40.0**2))
        maps[sid] = make_heatmap((255 * blob).astype(np.uint8), "db")
    start = time.perf_counter()
    for i in range(0, len(ids), BATCH):
        _write(ds, {"bench_map": {sid: maps[sid] for sid in ids[i : i + BATCH]}})
    return len(ids) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not os.environ.get("FIFTYONE_PLUGINS_DIR"):
        sys.exit("set FIFTYONE_PLUGINS_DIR to a directory holding this plugin")
    root = os.path.join(_TMP, "images")
    os.makedirs(root)
    paths = bench_workflow.write_images(root, args.images)
    ds = bench_workflow.make_dataset(paths)
    try:
        local = single_process(ds)
        rounds = [
            {w: delegated(ds, w, args.shards, f"w{w}_r{r}") for w in (1, 2)}
            for r in range(args.repeats)
        ]
        decode = decode_per_core(paths)
        writes = db_write_rate(ds)
    finally:
        ds.delete()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(bench_workflow._TMP, ignore_errors=True)
    print(
        f"{args.images} images, {args.shards} shards, {os.cpu_count()} cores, "
        f"{args.threads} torch thread(s) per process, torch {torch.__version__}"
    )
    print(f"single process (compute_cams here):   {local:6.1f} images/s")
    for r, rates in enumerate(rounds, 1):
        print(
            f"round {r}: 1 worker {rates[1]:5.1f} images/s, 2 workers "
            f"{rates[2]:5.1f} images/s, ratio {rates[2] / rates[1]:4.2f}x"
        )
    # what one worker spends per shard beyond computing: imports, model load,
    # DataLoader start-up (amortised over the shard's images)
    one = sorted(rates[1] for rates in rounds)[len(rounds) // 2]
    overhead = (args.images / one - args.images / local) / args.shards
    print(f"fixed cost per shard (1 worker vs here): {overhead:5.1f} s")
    print(f"decode + resize, one core:            {decode:6.1f} images/s")
    print(f"heatmap writes, one process:          {writes:6.1f} maps/s")


if __name__ == "__main__":
    main()
