"""Regenerate docs/preprocessing_before_after.jpg: where a center-crop heatmap lands.

The bundled pretrained EfficientNet-Lite0 looks at scikit-image's cat photo
(451x300) through the standard eval transform Resize(256) + CenterCrop(224) +
Normalize. "Before": the crop's Grad-CAM stretched over the whole photo (what
compute_cams did before it knew the geometry). "After": mapped back through
the probed geometry; the dashed yellow box is what the model saw. Runs offline:

    .venv/bin/python docs/preprocessing_before_after.py
"""

from __future__ import annotations

import io
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from gradcam_engine import CamEngine  # noqa: E402
from gradcam_engine.audit.export import _draw_seen_box, overlay_heatmap  # noqa: E402
from gradcam_engine.runs.storage import to_uint8_map  # noqa: E402
from gradcam_engine.sources.geometry import TransformGeometry  # noqa: E402
from gradcam_engine.sources.models import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_model,
)

OUT = pathlib.Path(__file__).resolve().parent / "preprocessing_before_after.jpg"


def main() -> None:
    loaded = load_model("efficientnet-lite0-imagenet")
    eval_transform = T.Compose(
        [
            T.Resize(256),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    photo = Image.fromarray(skimage.data.chelsea())
    geometry = TransformGeometry(eval_transform)(photo.size)
    with CamEngine(loaded.module, ["_conv_head"], "gradcam") as engine:
        cam = engine(eval_transform(photo)[None], [None])[0, 0].numpy()
    before = to_uint8_map(cam, photo.size, 512) / 255.0
    after = to_uint8_map(cam, photo.size, 512, geometry) / 255.0
    seen = geometry.seen_box_relative()
    panels = [
        ("the photo; dashed: what the model saw", _draw_seen_box(photo, seen)),
        ("before: the crop's map stretched", overlay_heatmap(photo, before)),
        (
            "after: mapped back to the photo",
            _draw_seen_box(overlay_heatmap(photo, after), seen),
        ),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.1), dpi=100)
    for ax, (title, image) in zip(axes, panels, strict=True):
        ax.imshow(np.asarray(image))
        ax.set_title(title, fontsize=11)
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    # JPEG: a quarter of the PNG's size; a 256-colour PNG bands the overlays
    Image.open(buf).convert("RGB").save(OUT, quality=88, optimize=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
