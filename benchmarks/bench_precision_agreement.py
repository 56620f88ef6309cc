"""How closely reduced-precision Grad-CAM maps rank like fp32 ones, and why.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_precision_agreement.py

The demo's EfficientNet-Lite0 on four real photos (both.png, chelsea,
coffee, astronaut) at its two demo layers. For each layer: one fp32 pass and
one autocast pass (bf16, fp16) capture the layer's activations A and the
gradients G of the predicted class; Grad-CAM (ReLU of the gradient-weighted
channel sum, bilinear to 224x224) is computed in fp32 from each pair, and
from the mixed pairs (A of one pass with G of the other), which tells whether
the activations or the gradients carry the loss. Also a bf16 pass that runs
in fp32 from the layer on (autocast switched off in the layer's hook: the
backward to the layer in fp32, at bf16 activations): what computing the
gradients in fp32 would buy without giving up bf16 upstream. Prints the
Spearman correlation with the all-fp32 map per photo, then, for bf16, the
Pearson correlation, the share of zero (tied) pixels and the Spearman over
the fp32 map's upper half (are ties in flat regions what drags Spearman
down?). CPU; a few minutes (fp16 is slow on a CPU). Results in
BENCHMARKS.md.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import pearsonr, spearmanr
from skimage import data as skdata

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradcam_engine.demo.main import PHOTO_LAYERS, PHOTO_MODEL  # noqa: E402
from gradcam_engine.sources.models import load_model  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def capture(model, x, layer: str, precision: str, fp32_after: bool = False):
    """A and G (float32) at ``layer`` for the predicted classes; ``fp32_after``:
    autocast off from the layer on (the rest of the forward, and so the
    backward to the layer, in fp32)."""
    store = {}

    def hook(module, inputs, output):
        store["a"] = output.detach()
        if fp32_after:
            store["a"] = store["a"].float()
            torch.set_autocast_enabled("cpu", False)  # the autocast exit restores it
        store["a"].requires_grad_(True)
        return store["a"].clone()

    handle = model.get_submodule(layer).register_forward_hook(hook)
    dtype = DTYPES[precision]
    try:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=bool(dtype)):
            out = model(x)
    finally:
        handle.remove()
    classes = out.float().argmax(dim=1)
    (grad,) = torch.autograd.grad(out[torch.arange(len(x)), classes].sum(), store["a"])
    return store["a"].detach().float(), grad.float()


def gradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=(224, 224), mode="bilinear", align_corners=False)[
        :, 0
    ]


def main() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    loaded = load_model(PHOTO_MODEL)
    model = loaded.module.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    images = [Image.open(ROOT / "gradcam_engine/demo/data/both.png").convert("RGB")]
    images += [
        Image.fromarray(getattr(skdata, n)())
        for n in ("chelsea", "coffee", "astronaut")
    ]
    x = torch.stack([loaded.transforms(img) for img in images])
    for layer in PHOTO_LAYERS:
        a32, g32 = capture(model, x, layer, "fp32")
        reference = gradcam(a32, g32)
        for precision in ("bf16", "fp16"):
            a, g = capture(model, x, layer, precision)
            pairs = {
                precision: (a, g),
                f"{precision} A + fp32 G": (a, g32),
                f"fp32 A + {precision} G": (a32, g),
            }
            if precision == "bf16":
                pairs["bf16, fp32 from the layer on"] = capture(
                    model, x, layer, precision, fp32_after=True
                )
            for name, (act, grad) in pairs.items():
                cam = gradcam(act, grad)
                rho = [
                    spearmanr(reference[i].flatten(), cam[i].flatten()).statistic
                    for i in range(len(x))
                ]
                print(f"{layer:>11} {name:>29}: {np.round(rho, 4).tolist()}")
            if precision == "bf16":
                ties(layer, reference, gradcam(a, g))


def ties(layer: str, reference: torch.Tensor, cam: torch.Tensor) -> None:
    """Pearson, zero (tied) share, Spearman over the fp32 map's upper half."""
    for i in range(len(cam)):
        ref, got = reference[i].flatten().numpy(), cam[i].flatten().numpy()
        upper = ref >= np.median(ref)
        print(
            f"{layer:>11} bf16 photo {i}: pearson {pearsonr(ref, got).statistic:.4f}, "
            f"zeros fp32 {np.mean(ref == 0):.2f} bf16 {np.mean(got == 0):.2f}, "
            f"spearman upper half {spearmanr(ref[upper], got[upper]).statistic:.4f}"
        )


if __name__ == "__main__":
    main()
