"""compute_cams vs the seed workflow, and vs the bare engine, measured in one run.

The seed workflow is what users write today from the Voxel51 blog: one
pytorch-grad-cam ``GradCAM`` object per layer, one image per call,
``sample[field] = fo.Heatmap(map=...)`` and ``sample.save()`` per sample.

    .venv/bin/python benchmarks/bench_workflow.py [--images 48] [--size 224]

Prints seconds and the ratios seed / compute_cams (target >= 7x) and
compute_cams / bare engine on the same already-decoded batches (target <= 1.15x).
Only ratios are meaningful (CPU only, shared machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

_TMP = tempfile.mkdtemp(prefix="bench-workflow-")
os.environ.setdefault("FIFTYONE_DATABASE_DIR", os.path.join(_TMP, "db"))
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")

import fiftyone as fo  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from pytorch_grad_cam import GradCAM  # noqa: E402

from gradcam_engine import CamEngine, compute_cams  # noqa: E402
from gradcam_engine.sources.images import load_rgb  # noqa: E402
from gradcam_engine.sources.models import ResizeNormalize  # noqa: E402

LAYERS = ["layer1", "layer2", "layer3", "layer4"]
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "coins",
    "horse",
    "moon",
    "page",
    "immunohistochemistry",
    "hubble_deep_field",
    "colorwheel",
)


def write_images(root: str, count: int) -> list[str]:
    """``count`` real photos (skimage), resized to varied sizes, as JPEG and PNG."""
    paths = []
    for i in range(count):
        name = PHOTOS[i % len(PHOTOS)]
        arr = getattr(skimage.data, name)()
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        img = Image.fromarray(arr).convert("RGB")
        longest = 320 + 40 * (i % 5)
        scale = longest / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)))
        path = os.path.join(root, f"{i:03d}_{name}.{'jpg' if i % 2 else 'png'}")
        img.save(path)
        paths.append(path)
    return paths


def make_dataset(paths: list[str]) -> fo.Dataset:
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    return ds


def seed_workflow(ds: fo.Dataset, model: torch.nn.Module, transforms) -> None:
    """The blog's loop: per layer a GradCAM object; per sample one call per layer."""
    cams = {
        layer: GradCAM(model=model, target_layers=[model.get_submodule(layer)])
        for layer in LAYERS
    }
    for sample in ds:
        x = transforms(Image.open(sample.filepath).convert("RGB"))[None]
        for layer, cam in cams.items():
            grayscale = cam(input_tensor=x, targets=None)[0]
            sample[f"seed_{layer}"] = fo.Heatmap(map=grayscale)
        sample.save()
    for cam in cams.values():
        cam.activations_and_grads.release()


def bare_engine(batches: list[torch.Tensor], model: torch.nn.Module) -> None:
    with CamEngine(model, LAYERS) as engine:
        for x in batches:
            engine.compute(x, None)


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def _transforms(kind: str, size: int):
    if kind == "ours":
        return ResizeNormalize(size)
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(size * 8 // 7),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-seed", action="store_true")
    parser.add_argument(
        "--transforms",
        choices=("ours", "torchvision"),
        default="ours",
        help="ours: ResizeNormalize (the default for a bare nn.Module); "
        "torchvision: Resize(size * 8 / 7) + CenterCrop + ToTensor + Normalize, "
        "what most users pass",
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    transforms = _transforms(args.transforms, args.size)
    root = os.path.join(_TMP, "images")
    os.makedirs(root)
    paths = write_images(root, args.images)
    batches = [
        torch.stack([transforms(load_rgb(p)) for p in paths[i : i + args.batch_size]])
        for i in range(0, len(paths), args.batch_size)
    ]

    # warm-up: first torch calls are several times slower
    warm = make_dataset(paths[:2])
    seed_workflow(warm, model, transforms)
    bare_engine([batches[0][:2]], model)
    compute_cams(warm, model, LAYERS, progress=False, transforms=transforms)
    warm.delete()

    # compute_cams and the bare engine alternate; the best of each is kept, so
    # that load from other processes on a shared machine hits both alike.
    t_engine, t_cams = float("inf"), float("inf")
    for i in range(args.rounds):
        t_engine = min(t_engine, timed(bare_engine, batches, model))
        ds_cams = make_dataset(paths)
        t_cams = min(
            t_cams,
            timed(
                compute_cams,
                ds_cams,
                model,
                LAYERS,
                run_key=f"cams{i}",
                transforms=transforms,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                progress=False,
            ),
        )
        ds_cams.delete()
    t_seed = float("nan")
    if not args.skip_seed:
        ds_seed = make_dataset(paths)
        t_seed = timed(seed_workflow, ds_seed, model, transforms)
        ds_seed.delete()

    print(
        f"{args.images} images, ResNet-50 (weights=None), {args.size}x{args.size}, "
        f"layers {', '.join(LAYERS)}, batch {args.batch_size}, torch threads "
        f"{torch.get_num_threads()}"
    )
    print(f"transforms         {args.transforms}")
    if not args.skip_seed:
        print(f"seed workflow      {t_seed:8.2f} s")
    print(f"compute_cams       {t_cams:8.2f} s")
    print(f"bare engine        {t_engine:8.2f} s  (already-decoded batches)")
    if not args.skip_seed:
        print(f"seed / compute_cams         = {t_seed / t_cams:5.2f}x  (target >= 7)")
    print(f"compute_cams / bare engine  = {t_cams / t_engine:5.2f}x  (target <= 1.15)")
    shutil.rmtree(root, ignore_errors=True)  # the database dir goes with mongod


if __name__ == "__main__":
    main()
