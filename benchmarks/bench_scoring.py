"""Scoring speed: score_cams against reading the maps, and against a naive loop.

    .venv/bin/python benchmarks/bench_scoring.py [--n 10000] [--map 64] [--layers 2]

A throwaway dataset (isolated database) of ``n`` samples with one box each and
``layers`` heatmap fields of ``map x map`` uint8 maps stored in the database.
Cases, each run once after a warm-up on 200 samples:

- read: ``values()`` of every heatmap field (what any bulk scorer must pay);
- score_cams: focus + hit + spread (+ layer agreement), written back;
- naive: the obvious per-sample loop (``iter_samples(autosave=True)``, focus
  only, one layer), on ``min(n, 2000)`` samples and scaled to ``n``.

Times depend on the machine's load: quote the ratios, measured in one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault(
    "FIFTYONE_DATABASE_DIR", tempfile.mkdtemp(prefix="bench-scoring-")
)
os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fiftyone as fo  # noqa: E402
import numpy as np  # noqa: E402

from gradcam_engine import runs  # noqa: E402
from gradcam_engine.audit.scoring import score_cams  # noqa: E402
from gradcam_engine.runs.naming import heatmap_field  # noqa: E402
from gradcam_engine.runs.storage import heatmap_to_float  # noqa: E402

BOX = [0.25, 0.25, 0.5, 0.5]


def build(n: int, size: int, n_layers: int, seed: int = 0) -> fo.Dataset:
    rng = np.random.default_rng(seed)
    layers = [f"layer{i + 1}" for i in range(n_layers)]
    fields = [heatmap_field("bench", layer) for layer in layers]
    samples = []
    for i in range(n):
        sample = fo.Sample(
            filepath=f"/bench/{i}.png",
            gt=fo.Detections(detections=[fo.Detection(label="x", bounding_box=BOX)]),
        )
        for field in fields:
            sample[field] = fo.Heatmap(
                map=rng.integers(0, 256, (size, size), dtype=np.uint8), range=[0, 255]
            )
        samples.append(sample)
    ds = fo.Dataset()
    ds.add_samples(samples)
    runs.register_cam_run(
        ds,
        "bench",
        method="gradcam",
        layers=layers,
        storage="db",
        output_dir=None,
        owned_fields=fields,
    )
    return ds


def naive(ds: fo.Dataset, field: str) -> None:
    for sample in ds.iter_samples(autosave=True):
        m = heatmap_to_float(sample[field])
        h, w = m.shape
        mask = np.zeros((h, w), bool)
        for det in sample.gt.detections:
            x, y, bw, bh = det.bounding_box
            mask[
                round(y * h) : round((y + bh) * h), round(x * w) : round((x + bw) * w)
            ] = 1
        sample[field + "_naive_focus"] = float(m[mask].sum() / m.sum())


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--map", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()

    warm = build(200, args.map, args.layers)
    score_cams(warm, "bench", "gt")
    naive(warm, heatmap_field("bench", "layer1"))

    t0 = time.perf_counter()
    ds = build(args.n, args.map, args.layers)
    setup = time.perf_counter() - t0
    fields = list(runs.get_cam_run(ds, "bench").fields.values())
    t_read = timed(lambda: ds.values(fields, _raw=True))
    summary = {}
    t_score = timed(lambda: summary.update(score_cams(ds, "bench", "gt")))
    n_naive = min(args.n, 2000)
    t_naive = timed(lambda: naive(ds.limit(n_naive), fields[0])) * args.n / n_naive

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"n={args.n}, {args.layers} layers of {args.map}x{args.map} maps (db), "
        f"setup {setup:.1f}s"
    )
    print(f"read maps (values, raw):      {t_read:7.2f}s")
    print(
        f"score_cams (all scores):      {t_score:7.2f}s  = {t_score / t_read:.1f}x read"
    )
    print(
        f"naive loop (1 layer, focus):  {t_naive:7.2f}s  = {t_naive / t_score:.1f}x "
        f"score_cams (scaled from {n_naive})"
    )
    print(f"score_cams: {args.n / t_score:,.0f} samples/s; fields {summary['fields']}")


if __name__ == "__main__":
    main()
