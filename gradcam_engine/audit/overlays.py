"""Pictures for the HTML review: a heatmap blended over an image, boxes,
placeholders, and images as data URIs (shared by the sample and the
detection review pages)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["data_uri", "draw_boxes", "overlay_heatmap", "placeholder"]


def overlay_heatmap(
    image: Image.Image, heatmap: np.ndarray, alpha: float = 0.5
) -> Image.Image:
    """Blend ``heatmap`` (float ``[h, w]`` in [0, 1], any size) over ``image``
    with matplotlib's jet colormap; ``alpha`` is the heatmap's opacity."""
    from matplotlib import colormaps

    rgb = image.convert("RGB")
    resized = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(
        rgb.size, Image.BILINEAR
    )
    colours = colormaps["jet"](np.clip(np.asarray(resized), 0.0, 1.0))[..., :3]
    base = np.asarray(rgb, dtype=np.float32) / 255.0
    out = (1.0 - alpha) * base + alpha * colours
    return Image.fromarray(np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8))


def data_uri(image: Image.Image, fmt: str = "JPEG") -> str:
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buf, format="JPEG", quality=82, optimize=True)
        mime = "image/jpeg"
    else:
        image.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def placeholder(size: int, text: str) -> Image.Image:
    img = Image.new("RGB", (size, size * 3 // 4), (90, 90, 90))
    ImageDraw.Draw(img).text((8, 8), text[:40], fill=(255, 255, 255))
    return img


def draw_boxes(image: Image.Image, detections) -> Image.Image:
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    for det in detections.detections or []:
        x, y, bw, bh = det.bounding_box
        draw.rectangle(
            [x * w, y * h, (x + bw) * w - 1, (y + bh) * h - 1],
            outline=(255, 255, 255),
            width=2,
        )
    return out
