"""A compute_cams run in its own process, slow enough to act on while it is live.

``python live_compute.py DATASET RUN_KEY SEED [SECONDS_PER_BATCH [HOLD GATE]]``:
the tiny classifier of ``plugin_models`` with weights seeded by SEED, behind a
layer that sleeps in forward (a stand-in for a big model). Prints
``batch done/total`` after each batch write and a last line ``ok <summary>`` or
``error <type>: <message>``. With HOLD and GATE, the run stays live after its
HOLD-th batch write until the file GATE exists: the test acts on the live run
and then opens the gate, instead of hoping that sleeps last long enough.
Used by tests/test_live_runs.py.
"""

from __future__ import annotations

import os
import sys
import time

import torch
from scale_out_models import Pause
from torch import nn

CLASSES = ["a", "b", "c"]


def slow_model(seed: int, seconds: float) -> nn.Module:
    torch.manual_seed(seed)
    module = nn.Sequential()
    module.add_module("pause", Pause(seconds))
    module.add_module("stem", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()))
    module.add_module(
        "block", nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
    )
    module.add_module("pool", nn.AdaptiveAvgPool2d(1))
    module.add_module("flat", nn.Flatten())
    module.add_module("head", nn.Linear(16, len(CLASSES)))
    return module.eval()


def compute(dataset, run_key: str, model: nn.Module, **kwargs):
    from gradcam_engine import compute_cams
    from gradcam_engine.sources.models import ResizeNormalize

    return compute_cams(
        dataset,
        model,
        layers=["block"],
        run_key=run_key,
        transforms=ResizeNormalize(32),
        classes=CLASSES,
        batch_size=2,
        num_workers=0,
        progress=False,
        **kwargs,
    )


def main(argv: list[str]) -> int:
    import fiftyone as fo

    name, run_key, seed = argv[0], argv[1], int(argv[2])
    seconds = float(argv[3]) if len(argv) > 3 else 1.0
    hold, gate = (int(argv[4]), argv[5]) if len(argv) > 5 else (0, "")
    dataset = fo.load_dataset(name)
    torch.set_num_threads(1)
    batches = []

    def report(done, total):
        print(f"batch {done}/{total}", flush=True)
        batches.append(done)
        # the lease is renewed by its own thread meanwhile: the run stays live
        deadline = time.monotonic() + 300
        while len(batches) == hold and not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gate {gate} was not opened in 300 s")
            time.sleep(0.05)

    try:
        summary = compute(
            dataset, run_key, slow_model(seed, seconds), progress_callback=report
        )
    except Exception as exc:  # reported to the test, which asserts on it
        print(f"error {type(exc).__name__}: {exc}", flush=True)
        return 3
    print(f"ok {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
