"""Robust image decoding: any file PIL can read -> an 8-bit RGB PIL image.

Handles EXIF orientation, 16-bit and float images (scaled to 8 bits by their
dtype's range), palette and grayscale images, CMYK JPEGs and transparency
(composited on white). No fiftyone; ``ImageFiles`` feeds a torch DataLoader.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageOps

from .threads import one_intraop_thread

__all__ = [
    "MAX_PIXELS",
    "DecodedBatch",
    "ImageFiles",
    "collate",
    "load_rgb",
    "to_rgb",
]

# Decompression-bomb guard. PIL warns above Image.MAX_IMAGE_PIXELS (~89 MP) and
# refuses at twice that; we decode up to that hard limit (a 6000x4000 photo is
# 24 MP) without the warning and refuse larger files with a clear error. PIL's
# global setting is read, never changed.
MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)

_BACKGROUND = (255, 255, 255)


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """16-bit / 32-bit / float data -> uint8, scaled by the dtype's nominal range."""
    if mode.startswith("I;16") or arr.dtype == np.uint16:
        return (arr.astype(np.float32) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    arr = arr.astype(np.float64)
    if mode == "F" and arr.size and np.nanmin(arr) >= 0 and np.nanmax(arr) <= 1:
        lo, hi = 0.0, 1.0
    elif mode != "F" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        lo, hi = 0.0, 65535.0 if arr.max() > 255 else 255.0
    else:
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    scaled = (arr - lo) / max(hi - lo, 1e-12) * 255.0
    return np.clip(np.nan_to_num(scaled) + 0.5, 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert an already-opened (and EXIF-transposed) image to 8-bit RGB."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(img), mode), "L").convert(
            "RGB"
        )
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, _BACKGROUND)
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    if mode == "L" and "transparency" in img.info:
        return to_rgb(img.convert("LA"))
    # L, 1, CMYK, YCbCr, LAB, HSV...: PIL's own conversions.
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` to an 8-bit RGB image, EXIF orientation applied.

    Raises ``FileNotFoundError`` for a missing file and ``OSError`` (with the
    path) for an unreadable, truncated or oversized one.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image file not found: {path!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise OSError(
                    f"Image {path!r} has {width}x{height} pixels, more than "
                    f"gradcam_engine.images.MAX_PIXELS={MAX_PIXELS}; raise that "
                    "limit if the file is trusted"
                )
            img.load()  # a truncated file fails here (LOAD_TRUNCATED_IMAGES off)
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except OSError as exc:
        if str(path) in str(exc):
            raise
        raise OSError(f"Cannot decode image {path!r}: {exc}") from exc
    except (ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise OSError(f"Cannot decode image {path!r}: {exc}") from exc


# -- streaming for the workflow: decode in DataLoader workers -------------------------


@dataclass
class DecodedBatch:
    """A batch of decoded images; failed images have ``tensors[i] is None``.

    ``groups``: ``(rows, stacked)`` per input shape (first-seen order), the
    decoded rows of that shape stacked into one ``[N, C, H, W]`` tensor;
    ``tensors[i]`` is a view into its group's tensor.
    """

    indices: list[int]
    tensors: list  # CHW float tensors or None
    sizes: list  # (width, height) of the original (EXIF-rotated) image, or None
    errors: list  # None or an error message
    geometries: list  # sources.geometry.Geometry of each input, or None
    groups: list = field(default_factory=list)  # [(rows, [N, C, H, W] tensor)]

    def pin_memory(self) -> DecodedBatch:
        """Page-locked copies of the stacked inputs (the DataLoader calls this
        with ``pin_memory=True``): their copy to a GPU can then overlap work."""
        self.groups = [(rows, stacked.pin_memory()) for rows, stacked in self.groups]
        self.tensors = [None] * len(self.tensors)  # views of the unpinned copies
        for rows, stacked in self.groups:
            for k, i in enumerate(rows):
                self.tensors[i] = stacked[k]
        return self


class ImageFiles:
    """A map-style dataset over file paths: item ``i`` ->
    ``(i, tensor, size, error, geometry)``.

    Decoding or transform failures become error messages, so that one bad file
    never stops a run. ``geometry`` (optional, original size -> ``Geometry``,
    e.g. a ``TransformGeometry``) locates each input in its original image;
    each worker keeps its own per-size cache. Picklable; works with forked
    DataLoader workers.
    """

    def __init__(self, filepaths: list[str], transforms, geometry=None) -> None:
        self.filepaths = filepaths
        self.transforms = transforms
        self.geometry = geometry

    def __len__(self) -> int:
        return len(self.filepaths)

    def __getitem__(self, index: int):
        with one_intraop_thread():  # one image: torch's thread team only waits
            return self._item(index)

    def _item(self, index: int):
        path = self.filepaths[index]
        try:
            img = load_rgb(path)
        except (OSError, ValueError) as exc:
            return index, None, None, f"{type(exc).__name__}: {exc}", None
        try:
            tensor = self.transforms(img)
        except Exception as exc:  # user transforms: report, do not stop the run
            message = f"transforms failed on {path!r}: {exc!r}"
            return index, None, img.size, message, None
        if self.geometry is None:
            return index, tensor, img.size, None, None
        try:
            geometry = self.geometry(img.size)
        except ValueError as exc:  # this size cannot be mapped back: skip it
            return index, None, img.size, f"{path!r}: {exc}", None
        shape = (int(tensor.shape[-1]), int(tensor.shape[-2]))
        if shape != geometry.input_size:
            message = (
                f"transforms gave a {shape[0]}x{shape[1]} input for {path!r} but "
                f"{geometry.input_size[0]}x{geometry.input_size[1]} for a probe of "
                "the same size: they depend on the image content, so the heatmap "
                "cannot be placed"
            )
            return index, None, img.size, message, None
        return index, tensor, img.size, None, geometry


def collate(items) -> DecodedBatch:
    """Stack the decoded images per input shape; failed ones stay ``None``.

    Runs in the DataLoader worker, so the main process receives one shared
    tensor per shape instead of stacking (a copy of the whole batch) itself.
    """
    with one_intraop_thread():  # a copy of the batch (see sources/threads.py)
        return _collate(items)


def _collate(items) -> DecodedBatch:
    indices, tensors, sizes, errors, geometries = (
        list(column) for column in zip(*items, strict=True)
    )
    by_shape: dict[tuple, list[int]] = {}
    for i, tensor in enumerate(tensors):
        if tensor is not None:
            by_shape.setdefault(tuple(tensor.shape), []).append(i)
    groups = []
    for rows in by_shape.values():
        stacked = torch.stack([tensors[i] for i in rows])
        groups.append((rows, stacked))
        for k, i in enumerate(rows):
            tensors[i] = stacked[k]
    return DecodedBatch(indices, tensors, sizes, errors, geometries, groups)
