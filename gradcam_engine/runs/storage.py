"""Heatmap storage: compact uint8 maps in the database, or PNG files on disk.

Maps arrive as float arrays in [0, 1] at the model's input size; they are
mapped back onto the original image (longest side capped at ``max_size``)
through the transform's geometry, so that the App lays them over the whole
image where the model looked; what the model never saw is 0.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import cv2
import fiftyone as fo
import fiftyone.core.collections as foc
import numpy as np
from PIL import Image

from ..sources.geometry import Geometry, map_to_original

__all__ = [
    "STORAGE_MODES",
    "to_uint8_map",
    "make_heatmap",
    "load_heatmaps",
    "heatmap_to_float",
]

STORAGE_MODES = ("db", "disk")
_RANGE = [0, 255]


def to_uint8_map(
    cam: np.ndarray,
    image_size: tuple[int, int],
    max_size: int = 256,
    geometry: Geometry | None = None,
) -> np.ndarray:
    """Map a ``[h, w]`` float map in [0, 1] (or uint8 0..255) onto the original
    image, longest side at most ``max_size``; returns uint8 ``[H', W']``.

    ``image_size`` is ``(width, height)`` of the original (EXIF-rotated) image.
    ``geometry`` places the map where the input came from (parts of the image
    the model never saw are 0); without it the map is stretched over the
    whole image.
    """
    cam = np.asarray(cam)
    if cam.dtype != np.uint8:  # maps encoded on the device are uint8 already
        cam = np.clip(np.rint(cam.astype(np.float32) * 255.0), 0, 255)
        cam = cam.astype(np.uint8)
    width, height = image_size
    scale = min(1.0, max_size / max(width, height))
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    if geometry is None:  # bilinear, as map_to_original and pytorch-grad-cam
        return cv2.resize(cam, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return map_to_original(cam, geometry, (out_w, out_h))


def make_heatmap(
    map_u8: np.ndarray, storage: str, path: str | None = None
) -> fo.Heatmap:
    """A ``fo.Heatmap`` holding ``map_u8`` inline (``"db"``) or as a PNG at ``path``."""
    if storage == "db":
        return fo.Heatmap(map=map_u8, range=_RANGE)
    if storage == "disk":
        if not path:
            raise ValueError("disk storage needs a path for each heatmap")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(map_u8, mode="L").save(path, optimize=False)
        return fo.Heatmap(map_path=path, range=_RANGE)
    raise ValueError(f"storage must be one of {STORAGE_MODES}, got {storage!r}")


def heatmap_to_float(heatmap: fo.Heatmap | dict | None) -> np.ndarray | None:
    """The map of a stored heatmap as float32 in [0, 1] (None if absent)."""
    if heatmap is None:
        return None
    get = (
        heatmap.get
        if isinstance(heatmap, dict)
        else lambda k: getattr(heatmap, k, None)
    )
    arr = get("map")
    if arr is None and get("map_path"):
        arr = np.asarray(Image.open(get("map_path")))
    if arr is None:
        return None
    stored_uint8 = np.asarray(arr).dtype == np.uint8
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[..., 0]
    lo, hi = get("range") or ([0.0, 255.0] if arr.max() > 1 else [0.0, 1.0])
    scaled = (arr - lo) / max(hi - lo, 1e-12)
    if stored_uint8 and lo == 0 and hi == 255:  # already within [0, 1]
        return scaled  # (a pass less per map: score_cams reads thousands)
    return np.clip(scaled, 0.0, 1.0)


def load_heatmaps(
    samples: foc.SampleCollection, field: str, batch_size: int = 256
) -> Iterator[tuple[list[str], list[np.ndarray | None]]]:
    """Stream ``(sample ids, float maps)`` of a heatmap field in batches, reading
    the database in bulk rather than one sample at a time."""
    ids = samples.values("id")
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        view = samples.select(chunk, ordered=True)
        heatmaps = view.values(field)
        yield chunk, [heatmap_to_float(h) for h in heatmaps]


def iter_chunks(items: Iterable, size: int) -> Iterator[list]:
    """Split ``items`` into lists of at most ``size``."""
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
