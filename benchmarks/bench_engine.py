"""Engine speed: CamEngine against a plain forward and against pytorch-grad-cam.

    .venv/bin/python benchmarks/bench_engine.py [--batch 8] [--size 224] [--reps 9]
        [--threads N]

ResNet-50 with random weights (no download), CPU. Every case is warmed up, then
the cases run interleaved (a rotating order inside each repetition) so that a
change in machine load hits them all alike. Times are medians; each ratio is the
median over repetitions of (case time / plain forward time in that repetition).
Targets are None (the predicted class), resolved as each tool does it.

Issue targets: GradCAM at layer4 <= 1.15x the forward; layer1..layer4 in one
call <= 2.3x.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from pytorch_grad_cam import GradCAM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradcam_engine import CamEngine  # noqa: E402

LAYERS = ["layer1", "layer2", "layer3", "layer4"]
TARGETS = {"layer4": 1.15, "layer1..4": 2.3}


def _cases(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], None]]:
    one = CamEngine(model, layers=["layer4"], method="gradcam")
    four = CamEngine(model, layers=LAYERS, method="gradcam")

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def library(layers: list[str]) -> None:
        # One GradCAM object per layer, as pytorch-grad-cam's API requires for
        # one map per layer. Hooks are released after each call so that they do
        # not slow down the other cases.
        for name in layers:
            with GradCAM(model, target_layers=[getattr(model, name)]) as cam:
                cam(x, targets=None)

    return {
        "forward (no grad)": forward,
        "engine gradcam layer4": lambda: one(x, None),
        "engine gradcam layer1..4": lambda: four(x, None),
        "library GradCAM layer4": lambda: library(["layer4"]),
        "library GradCAM x4 layer1..4": lambda: library(LAYERS),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    cases = _cases(model, x)
    names = list(cases)

    for fn in cases.values():  # warm-up
        fn()

    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(args.reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - start)

    base = times["forward (no grad)"]
    print(
        f"ResNet-50 (random weights), batch {args.batch}, {args.size}x{args.size}, "
        f"CPU, {torch.get_num_threads()} torch threads, {args.reps} interleaved reps"
    )
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, ", end="")
    print(f"python {platform.python_version()}")
    print(f"{'case':32s} {'median s':>9s} {'x forward':>10s}")
    ratios = {}
    for name in names:
        ratio = statistics.median(t / b for t, b in zip(times[name], base, strict=True))
        ratios[name] = ratio
        print(f"{name:32s} {statistics.median(times[name]):9.3f} {ratio:10.2f}")
    for key, limit, name in [
        ("layer4", TARGETS["layer4"], "engine gradcam layer4"),
        ("layer1..4", TARGETS["layer1..4"], "engine gradcam layer1..4"),
    ]:
        verdict = "ok" if ratios[name] <= limit else "MISSED"
        print(f"target {key}: {ratios[name]:.2f}x <= {limit}x: {verdict}")


if __name__ == "__main__":
    main()
