"""What one explained detection costs, relative to a plain forward of the detector.

    .venv/bin/python benchmarks/bench_detection.py [--batch 4] [--repeats 3]

torchvision's ``fasterrcnn_mobilenet_v3_large_320_fpn`` (random weights,
3 classes, every box kept), photos from scikit-image at 240x320, layer
``backbone`` (its FPN levels). Prints, per setting, seconds per batch and the
ratio to one plain forward (no gradients) of the same batch: the engine's
forward with gradients, then ``k`` detections per image (one backward per
detection rank: ``1 + k`` passes). Only ratios are meaningful (CPU only).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import skimage.data
import torch
import torchvision
from PIL import Image

from gradcam_engine import DetectionCamEngine

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def batch(n: int) -> torch.Tensor:
    images = []
    for k in range(n):
        img = getattr(skimage.data, PHOTOS[k % len(PHOTOS)])()
        img = Image.fromarray(img).convert("RGB").resize((320, 240))
        images.append(torch.from_numpy(np.array(img)).permute(2, 0, 1) / 255.0)
    return torch.stack(images)


def paired(repeats: int, base_fn, fn) -> tuple[float, float]:
    """Best of ``repeats`` for ``base_fn`` and ``fn``, timed alternately so
    that a shared machine's load drifts into both alike."""
    base_fn(), fn()  # warm up (oneDNN builds its kernels per shape)
    base, times = [], []
    for _ in range(repeats):
        for sink, call in ((base, base_fn), (times, fn)):
            start = time.perf_counter()
            call()
            sink.append(time.perf_counter() - start)
    return min(base), min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, box_score_thresh=0.0
    ).eval()
    x = batch(args.batch)

    def forward():
        with torch.no_grad():
            model(list(x))

    print(f"batch {args.batch} at 240x320, {args.threads} torch thread(s)")
    for method, k in [("gradcam", 1), ("gradcam", 2), ("gradcam", 5)] + [
        ("gradcam", 10),
        ("layercam", 5),
        ("eigencam", 10),
    ]:
        engine = DetectionCamEngine(
            model, ["backbone"], method, confidence_thresh=0.0, max_detections=k
        )
        base, t = paired(args.repeats, forward, lambda e=engine: e.compute(x))
        ratio = t / base
        per = (ratio - 1) / k
        print(
            f"{method:9s} {k:2d} detection(s)/image: {t:.3f} s vs plain forward "
            f"{base:.3f} s = {ratio:.2f}x (each detection +{per:.2f} forward)"
        )


if __name__ == "__main__":
    main()
