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
        images.append(torch.from_numpy(np.asarray(img)).permute(2, 0, 1) / 255.0)
    return torch.stack(images)


def best_of(repeats: int, fn) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", default="gradcam")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, box_score_thresh=0.0
    ).eval()
    x = batch(args.batch)

    def forward():
        with torch.no_grad():
            model(list(x))

    base = best_of(args.repeats, forward)
    print(f"plain forward, batch {args.batch}: {base:.3f} s (1.00x)")
    for k in (1, 2, 5, 10):
        engine = DetectionCamEngine(
            model, ["backbone"], args.method, confidence_thresh=0.0, max_detections=k
        )
        t = best_of(args.repeats, lambda e=engine: e.compute(x))
        per = (t - base) / (k * base)
        print(
            f"{args.method}, {k:2d} detection(s)/image: {t:.3f} s ({t / base:.2f}x; "
            f"each detection ~{per:.2f} forwards)"
        )
    engine = DetectionCamEngine(
        model, ["backbone"], "eigencam", confidence_thresh=0.0, max_detections=10
    )
    t = best_of(args.repeats, lambda: engine.compute(x))
    print(f"eigencam, 10 detections/image: {t:.3f} s ({t / base:.2f}x)")


if __name__ == "__main__":
    main()
