"""Clustering speed: cluster_cams on 10,000 stored maps.

    .venv/bin/python benchmarks/bench_clusters.py [--n 10000] [--map 64]

A throwaway dataset (isolated database) of ``n`` samples, two predicted
classes, one heatmap field of ``map x map`` uint8 maps in the database: a blob
on the "object" at a random place, and on a third of one class's samples a
second blob in the top-left corner (a planted cue). Cases, each once after a
warm-up on 500 samples:

- read: ``values()`` of the heatmap field (what any bulk reader must pay);
- spray: ``map_vectors`` + ``cluster_maps`` per class on maps in memory;
- cluster_cams: read, cluster, write ``F_cluster`` (no visualization);
- cluster_cams + PCA visualization (fiftyone-brain), and + t-SNE on 1,000.

Also prints the purity and recall of the cue cluster. Times depend on the
machine's load: quote the ratios, measured in one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FIFTYONE_DATABASE_DIR", tempfile.mkdtemp(prefix="bench-clu-"))
os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fiftyone as fo  # noqa: E402
import numpy as np  # noqa: E402

from gradcam_engine.audit import spray  # noqa: E402
from gradcam_engine.audit.clusters import cluster_cams  # noqa: E402
from gradcam_engine.runs.cam_runs import register_cam_run  # noqa: E402
from gradcam_engine.runs.naming import heatmap_field  # noqa: E402

FIELD = heatmap_field("bench", "layer4")


def make_maps(n: int, size: int, seed: int = 0):
    """uint8 maps ``[n, size, size]``, class labels, and the cue truth."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    labels = np.where(np.arange(n) % 2 == 0, "circle", "cross")
    cue = (labels == "circle") & (rng.uniform(size=n) < 1 / 3)
    maps = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        cx, cy = rng.uniform(0.35, 0.85, 2)
        m = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02)
        if cue[i]:
            m = 0.5 * m + np.exp(-((xx - 0.1) ** 2 + (yy - 0.1) ** 2) / 0.005)
        m = m + 0.05 * rng.uniform(size=m.shape)
        maps[i] = np.clip(m / m.max() * 255, 0, 255).astype(np.uint8)
    return maps, labels, cue


def build(maps, labels) -> fo.Dataset:
    ds = fo.Dataset()
    ds.add_samples(
        [
            fo.Sample(
                filepath=f"/bench/{i}.png",
                **{
                    FIELD: fo.Heatmap(map=m, range=[0, 255]),
                    "bench_prediction": fo.Classification(label=str(lab)),
                },
            )
            for i, (m, lab) in enumerate(zip(maps, labels, strict=True))
        ]
    )
    register_cam_run(
        ds,
        "bench",
        method="gradcam",
        layers=["layer4"],
        storage="db",
        output_dir=None,
        owned_fields=[FIELD, "bench_prediction"],
    )
    return ds


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def spray_only(maps, labels):
    vectors = spray.map_vectors(list(maps.astype(np.float32) / 255))
    out = np.empty(len(maps), dtype=object)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        ks = spray.cluster_maps(vectors[idx])
        out[idx] = [f"{label}/{k}" for k in ks]
    return out


def purity_recall(names, cue) -> tuple[float, float, str]:
    names = np.asarray(names, dtype=object)
    best = max(set(names), key=lambda c: (cue & (names == c)).sum())
    members = names == best
    hits = (cue & members).sum()
    return hits / members.sum(), hits / cue.sum(), best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--map", type=int, default=64)
    args = parser.parse_args()
    print(f"{platform.python_version()} numpy {np.__version__}, {os.cpu_count()} cpus")
    warm_maps, warm_labels, _ = make_maps(500, args.map, seed=1)
    cluster_cams(build(warm_maps, warm_labels), "bench", visualization=None)
    maps, labels, cue = make_maps(args.n, args.map)
    ds = build(maps, labels)
    rows = []
    t, _ = timed(lambda: ds.values(FIELD, _raw=True))
    rows.append(("read the maps (values, raw)", t))
    t, names = timed(lambda: spray_only(maps, labels))
    rows.append(("spray: vectors + clusters per class, in memory", t))
    p, r, best = purity_recall(names, cue)
    print(f"spray: cue cluster {best}: purity {p:.3f}, recall {r:.3f}")
    t, _ = timed(lambda: cluster_cams(ds, "bench", visualization=None))
    rows.append(("cluster_cams (read, cluster, write)", t))
    p, r, best = purity_recall(ds.values(f"{FIELD}_cluster"), cue)
    print(f"cluster_cams: cue cluster {best}: purity {p:.3f}, recall {r:.3f}")
    t, _ = timed(lambda: cluster_cams(ds, "bench", visualization="pca"))
    rows.append(("cluster_cams + PCA visualization", t))
    half = ds.limit(min(1000, len(ds)))
    t, _ = timed(lambda: cluster_cams(half, "bench", visualization="tsne"))
    rows.append((f"cluster_cams + t-SNE visualization ({len(half)} samples)", t))
    base = rows[0][1]
    print(f"\n{args.n} maps of {args.map}x{args.map}\n| case | time | ratio |")
    print("|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.2f} s | {t / base:.1f}x the read |")


if __name__ == "__main__":
    main()
