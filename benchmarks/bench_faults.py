"""What honesty about every sample costs: the probe, fault isolation, exact counts.

    .venv/bin/python benchmarks/bench_faults.py [--n 48] [--batch 16] [--count 50000]

Its own mongod (a free port, a temporary directory). ResNet-18 (random
weights, 224x224) on ``n`` real photos (scikit-image, cycled), Grad-CAM at
``layer4``. Cases, after a warm-up run:

- clean: ``compute_cams`` with a model without faults;
- probe: ``runs.probe.probe_model`` alone (the one forward ``_plan_run`` adds);
- one fault: the same model raising on one marked image (in the first batch),
  which the run bisects down to that sample;
- counts: ``len(dataset)`` (MongoDB's fast count) against
  ``outcome.exact_count`` (an aggregation) on ``count`` samples.

Times depend on the machine's load: quote the ratios, measured in one run.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

from own_mongod import start_mongod  # noqa: E402  (benchmarks/ is on sys.path)

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _use_own_mongod(db_dir: pathlib.Path) -> None:
    os.environ.update(
        FIFTYONE_DATABASE_URI=start_mongod(db_dir),
        FIFTYONE_DATABASE_VALIDATION="false",
        FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_SHOW_PROGRESS_BARS="false",
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--count", type=int, default=50_000)
    args = parser.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-faults-"))
    (tmp / "db").mkdir()
    _use_own_mongod(tmp / "db")
    run(args, tmp)


def run(args, tmp: pathlib.Path) -> None:
    import fiftyone as fo
    import skimage.data
    import torch
    import torchvision
    from PIL import Image
    from torch import nn

    from gradcam_engine import compute_cams
    from gradcam_engine.engine.cam_engine import CamEngine
    from gradcam_engine.runs.outcome import exact_count
    from gradcam_engine.runs.probe import probe_model
    from gradcam_engine.sources.geometry import TransformGeometry
    from gradcam_engine.sources.models import ResizeNormalize

    names = ["chelsea", "coffee", "astronaut", "rocket", "camera", "coins"]
    paths = []
    for i in range(args.n):
        path = tmp / f"{i}.png"
        Image.fromarray(getattr(skimage.data, names[i % len(names)])()).save(path)
        paths.append(str(path))
    Image.new(
        "RGB", (451, 300), (255, 0, 255)
    )  # a size the run has seen.save(tmp / "marked.png")

    class Faulty(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            marked = (x[:, 0].mean(dim=(1, 2)) > 2.0) & (
                x[:, 1].mean(dim=(1, 2)) < -1.8
            )
            if marked.any():
                raise ValueError("marked input")
            return self.inner(x)

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    tf = ResizeNormalize(224)
    kwargs = dict(transforms=tf, batch_size=args.batch, num_workers=0, progress=False)

    def timed(ds, model, layers, key):
        start = time.perf_counter()
        summary = compute_cams(ds, model, layers=layers, run_key=key, **kwargs)
        return time.perf_counter() - start, summary

    clean_ds = fo.Dataset()
    clean_ds.add_samples([fo.Sample(filepath=p) for p in paths])
    faulty_ds = fo.Dataset()
    with_mark = list(paths)
    with_mark[args.batch // 2] = str(tmp / "marked.png")
    faulty_ds.add_samples([fo.Sample(filepath=p) for p in with_mark])

    timed(clean_ds, resnet, ["layer4"], "warmup")
    t_clean, s_clean = timed(clean_ds, resnet, ["layer4"], "clean")
    engine = CamEngine(resnet, ["layer4"])
    geometry = TransformGeometry(tf)
    start = time.perf_counter()
    for _ in range(5):
        probe_model(
            clean_ds, engine, tf, geometry, task="classification",
            target="predicted", fixed_class=None, class_names=None,
            label_field=None, prediction_field="probe_prediction",
        )  # fmt: skip
    t_probe = (time.perf_counter() - start) / 5
    t_fault, s_fault = timed(faulty_ds, Faulty(resnet), ["inner.layer4"], "fault")
    print(f"{args.n} images, batch {args.batch}, ResNet-18 224x224, CPU")
    print(f"clean run: {t_clean:.2f} s ({s_clean.headline()})")
    print(f"probe: {t_probe * 1000:.0f} ms = {t_probe / t_clean:.1%} of the clean run")
    print(
        f"one fault in batch 1: {t_fault:.2f} s = {t_fault / t_clean:.2f}x the "
        f"clean run ({s_fault.headline()})"
    )

    big = fo.Dataset()
    big.add_samples([fo.Sample(filepath=f"/bench/{i}.png") for i in range(args.count)])
    start = time.perf_counter()
    for _ in range(10):
        len(big)
    t_fast = (time.perf_counter() - start) / 10
    start = time.perf_counter()
    for _ in range(10):
        exact_count(big)
    t_exact = (time.perf_counter() - start) / 10
    print(
        f"count of {args.count:,} samples: fast {t_fast * 1000:.1f} ms, exact "
        f"{t_exact * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
