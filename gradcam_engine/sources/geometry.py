"""Transform geometry: where each pixel of the model's input came from.

A user's preprocessing (resize, center crop, pad, letterbox; torchvision,
``transforms.v2``, timm, a FiftyOne zoo model's transforms or a plain function)
is probed, never parsed: a coordinate-ramp image (red = x, green = y, blue = a
marker) is pushed through it, the per-channel normalisation is undone with a
black and a white image, and an axis-aligned affine map from input-tensor
pixels to original pixels is fitted by least squares (a grayscale transform
gets the three planes as three gray probes). The fit is cached per
original size. Random transforms (repeated calls differ), non-axis-aligned
ones (rotation, perspective: cross terms or residuals) and colour changes (a
tinted probe comes back altered) are refused. No fiftyone.

Coordinates are continuous: pixel ``i`` covers ``[i, i + 1)``;
``original_x = scale_x * input_x + offset_x``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from .threads import one_intraop_thread

__all__ = [
    "Geometry",
    "GeometryError",
    "TransformGeometry",
    "map_to_original",
]

# Reference sizes probed before a run: a landscape and a portrait photo.
REFERENCE_SIZES = ((640, 480), (480, 640))
_MARKER = 201  # blue value of the probe: padding (any fill) reads otherwise
_TINT = (200, 40, 120)  # a colour that must survive the transform unchanged
_RANDOM_REPEATS = 8  # per reference size: a coin-flip transform slips by 2**-16
_CACHE_LIMIT = 4096  # sizes remembered per process (a Geometry is ~100 bytes)


class GeometryError(ValueError):
    """The transform's geometry cannot be mapped back to the original image."""


@dataclass(frozen=True)
class Geometry:
    """Axis-aligned affine map from input-tensor pixels to original pixels."""

    image_size: tuple[int, int]  # (width, height) of the original image
    input_size: tuple[int, int]  # (width, height) of the model input
    scale: tuple[float, float]  # original pixels per input pixel, (x, y)
    offset: tuple[float, float]  # original coordinate of input coordinate 0

    def seen_box(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of the original the input covers, in original
        pixels, clipped to the image (cropped-away parts are outside it)."""
        box = []
        for axis in (0, 1):
            ends = (
                self.offset[axis],
                self.offset[axis] + self.scale[axis] * self.input_size[axis],
            )
            lo, hi = min(ends), max(ends)
            box.append((max(0.0, lo), min(float(self.image_size[axis]), hi)))
        (x0, x1), (y0, y1) = box
        return x0, y0, max(x0, x1), max(y0, y1)

    def seen_box_relative(self) -> list[float]:
        """The seen box as FiftyOne's ``[x, y, width, height]`` in [0, 1]."""
        x0, y0, x1, y1 = self.seen_box()
        width, height = self.image_size
        return [
            round(x0 / width, 4),
            round(y0 / height, 4),
            round((x1 - x0) / width, 4),
            round((y1 - y0) / height, 4),
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able and rounded, so that equal transforms describe equal."""
        return {
            "image_size": list(self.image_size),
            "input_size": list(self.input_size),
            "scale": [round(v, 3) for v in self.scale],
            "offset": [round(v, 2) for v in self.offset],
            "seen_box": self.seen_box_relative(),
        }


def map_to_original(
    cam: np.ndarray, geometry: Geometry, out_size: tuple[int, int]
) -> np.ndarray:
    """Resample a ``[h, w]`` map on the input grid onto the original image at
    ``out_size`` ``(width, height)``; pixels the model never saw are 0.

    Bilinear, by OpenCV's ``warpAffine`` as pytorch-grad-cam resizes its maps
    (``cv2.resize``, no antialiasing): one call places and scales the map,
    2-4x faster than PIL's resize (4 maps an image, issue 23). A uint8 map
    stays uint8, any other is resampled as float32."""
    cam = np.asarray(cam)
    if cam.dtype != np.uint8:
        cam = cam.astype(np.float32, copy=False)
    if cam.shape != geometry.input_size[::-1]:
        raise ValueError(
            f"cam has shape {cam.shape}; the geometry's input is "
            f"{geometry.input_size[1]}x{geometry.input_size[0]} (height x width)"
        )
    out_w, out_h = out_size
    out = np.zeros((out_h, out_w), dtype=cam.dtype)
    seen = geometry.seen_box()
    spans = []
    for axis, out_n in ((0, out_w), (1, out_h)):
        step = geometry.image_size[axis] / out_n  # original pixels per output pixel
        i0 = min(max(round(seen[axis] / step), 0), out_n)
        i1 = min(max(round(seen[axis + 2] / step), 0), out_n)
        n_in = geometry.input_size[axis]
        ends = [
            (i * step - geometry.offset[axis]) / geometry.scale[axis] for i in (i0, i1)
        ]
        if geometry.scale[axis] < 0:  # a flip: read the map mirrored
            cam = np.flip(cam, axis=1 - axis)
            ends = [n_in - e for e in ends]
        spans.append((i0, i1, *(min(max(e, 0.0), float(n_in)) for e in ends)))
    (i0, i1, u0, u1), (j0, j1, v0, v1) = spans
    if i1 <= i0 or j1 <= j0:
        return out
    # output pixel k of the seen box spans input [u0, u1] in equal steps;
    # OpenCV indexes pixel centres
    sx, sy = (u1 - u0) / (i1 - i0), (v1 - v0) / (j1 - j0)
    matrix = np.array([[sx, 0, u0 + 0.5 * sx - 0.5], [0, sy, v0 + 0.5 * sy - 0.5]])
    out[j0:j1, i0:i1] = cv2.warpAffine(
        np.ascontiguousarray(cam),
        matrix,
        (i1 - i0, j1 - j0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,  # half a pixel past the edge: the edge
    )
    return out


def describe(obj: Any) -> str:
    """A short name for messages: the class name, or a function's name."""
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    parts = getattr(obj, "transforms", None)
    if isinstance(parts, list | tuple) and parts:
        name += "[" + ", ".join(type(p).__name__ for p in parts) + "]"
    return name


def _transformed(
    transforms: Callable[[Image.Image], Any], img: Image.Image
) -> np.ndarray:
    """``transforms(img)`` as a float64 array, on one thread (one image: see
    sources/threads.py)."""
    with one_intraop_thread():
        out = transforms(img)
    arr = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out
    return np.asarray(arr, dtype=np.float64)


class TransformGeometry:
    """Probes ``transforms`` (PIL RGB -> ``[C, H, W]`` tensor) once per original
    size and returns its :class:`Geometry`. Picklable when ``transforms`` is,
    so that DataLoader workers keep their own cache.

    Construction calibrates the normalisation and refuses random or
    non-mappable transforms with :class:`GeometryError`.
    """

    def __init__(self, transforms: Callable[[Image.Image], Any]) -> None:
        if not callable(transforms):
            raise TypeError(
                f"transforms must be callable, got {type(transforms).__name__}"
            )
        self.transforms = transforms
        self._cache: dict[tuple[int, int], Geometry] = {}
        size = REFERENCE_SIZES[0]
        black = self._call(Image.new("RGB", size, (0, 0, 0)), size)
        white = self._call(Image.new("RGB", size, (255, 255, 255)), size)
        # Per output channel: output = gain * value + bias (the normalisation).
        channels = black.shape[0]
        diff = (white - black).reshape(channels, -1)
        seen = np.abs(diff).max(axis=0) > 0.5 * np.abs(diff).max()
        self._gain = np.median(diff[:, seen], axis=1) / 255.0
        self._bias = np.median(black.reshape(channels, -1)[:, seen], axis=1)
        if np.any(np.abs(self._gain) < 1e-9):
            raise GeometryError(
                f"transforms {describe(transforms)} do not pass image values "
                "through; cannot locate the input's pixels in the original"
            )
        self._check_deterministic()

        def comes_back(colour: tuple[int, int, int]) -> bool:
            out = self._call(Image.new("RGB", size, colour), size)
            back = np.median(out.reshape(channels, -1)[:, seen], axis=1) - self._bias
            expected = colour if channels == 3 else colour[:1] * channels
            return np.abs(back / self._gain - expected).max() <= 3.0

        # One RGB probe per size needs colours to come back unmixed; grayscale
        # (1 or 3 channels) needs three gray probes. Brightness or contrast
        # changes would be misread as positions: refused.
        if channels == 3 and comes_back(_TINT):
            self._gray = False
        elif comes_back((_MARKER,) * 3) and comes_back((90, 90, 90)):
            self._gray = True
        else:
            raise GeometryError(
                f"transforms {describe(transforms)} change colours: only a "
                "per-channel scale and shift (Normalize) or a grayscale "
                "conversion can be undone, not brightness, contrast or jitter"
            )
        for reference_size in REFERENCE_SIZES:  # rotation, perspective raise here
            self(reference_size)

    def reference(self) -> dict[str, Any]:
        """JSON-able geometry at the reference sizes, for the run config."""
        return {
            "method": "ramp-probe",
            "sizes": {f"{w}x{h}": self((w, h)).to_dict() for w, h in REFERENCE_SIZES},
        }

    def __call__(self, image_size: tuple[int, int]) -> Geometry:
        size = (int(image_size[0]), int(image_size[1]))
        geometry = self._cache.get(size)
        if geometry is None:
            geometry = self._fit(size)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[size] = geometry
        return geometry

    # -- probing -------------------------------------------------------------------

    def _call(self, img: Image.Image, size: tuple[int, int]) -> np.ndarray:
        try:
            arr = _transformed(self.transforms, img)
        except Exception as exc:
            raise GeometryError(
                f"transforms {describe(self.transforms)} raised on a "
                f"{size[0]}x{size[1]} probe image: {exc!r}"
            ) from exc
        if arr.ndim != 3:
            raise GeometryError(
                f"transforms {describe(self.transforms)} returned shape "
                f"{tuple(arr.shape)}; expected a [C, H, W] tensor"
            )
        return arr

    def behaves_as_probed(self, transforms: Callable[[Image.Image], Any]) -> bool:
        """Whether ``transforms`` gives the very tensor these were probed to
        give on the first reference ramp: one call, to reuse this probe for
        another run (a transform changed in place since gives another)."""
        size = REFERENCE_SIZES[0]
        try:
            out = _transformed(transforms, _ramp_image(size))
        except Exception:  # probed again, which reports what fails
            return False
        first = self._ramp_outputs[size]
        return out.shape == first.shape and np.allclose(out, first, atol=1e-5)

    def _check_deterministic(self) -> None:
        self._ramp_outputs: dict[tuple[int, int], np.ndarray] = {}
        for size in REFERENCE_SIZES:
            probe = _ramp_image(size)
            first = self._ramp_outputs[size] = self._call(probe, size)
            for _ in range(_RANDOM_REPEATS):
                again = self._call(probe, size)
                if again.shape != first.shape or not np.allclose(
                    again, first, atol=1e-5
                ):
                    raise GeometryError(
                        f"transforms {describe(self.transforms)} are random: two "
                        "calls on the same image gave different tensors (e.g. "
                        "RandomResizedCrop, RandomHorizontalFlip, ColorJitter). "
                        "CAMs need the deterministic evaluation preprocessing; "
                        "pass transforms=<eval transforms> (timm: "
                        "create_transform(..., is_training=False))"
                    )

    def _probe(self, size: tuple[int, int]) -> np.ndarray:
        """Decoded ``[3, H, W]``: x-ramp value, y-ramp value, marker value."""
        ramps = _ramp_image(size)
        if self._gray:
            arr = np.asarray(ramps)
            planes = [Image.fromarray(arr[..., c]).convert("RGB") for c in range(3)]
        else:
            planes = [ramps]
        decoded = []
        for img in planes:
            out = self._call(img, size)
            if out.shape[0] != len(self._gain):
                raise GeometryError(
                    f"transforms {describe(self.transforms)} returned "
                    f"{out.shape[0]} channels for a {size[0]}x{size[1]} image"
                )
            values = (out - self._bias[:, None, None]) / self._gain[:, None, None]
            decoded.append(values.mean(axis=0, keepdims=True) if self._gray else values)
        return np.concatenate(decoded)

    def _fit(self, size: tuple[int, int]) -> Geometry:
        values = self._probe(size)
        height, width = values.shape[1:]
        valid = np.abs(values[2] - _MARKER) < 3.0  # not padding
        for axis in (0, 1):
            # An upscale replicates the edge pixels: half an original pixel at
            # each end reads the end value, off the line; fit between them.
            ends = np.clip(_ramp_coordinates(size[axis])[[0, -1]], 0, 255)
            inside = (values[axis] > ends[0] + 0.5) & (values[axis] < ends[1] - 0.5)
            if size[axis] > 1 and (valid & inside).sum() >= 4:
                valid &= inside
        interior = _erode(valid, 2)  # filters blur the border with the padding
        if interior.sum() < 4:
            interior = valid
        vs, us = np.nonzero(interior)
        if len(us) < 4 or np.ptp(us) < 1 or np.ptp(vs) < 1:
            raise GeometryError(
                f"transforms {describe(self.transforms)}: too few pixels of a "
                f"{size[0]}x{size[1]} image reach the model input"
            )
        design = np.stack([us + 0.5, vs + 0.5, np.ones(len(us))], axis=1)
        # Least squares by the 3x3 normal equations, shared by both axes: the
        # same solution as np.linalg.lstsq (well conditioned: pixel coordinates
        # and a constant) at a fraction of its cost, once per image size.
        gram = design.T @ design
        scale, offset = [], []
        for axis in (0, 1):
            # ramp value v encodes the original coordinate (v + 0.5) * n / 256
            n = size[axis]
            if n == 1:  # no ramp to read; the stored map is 1 pixel wide anyway
                scale.append(1.0 / (width if axis == 0 else height))
                offset.append(0.0)
                continue
            coords = (values[axis][interior] + 0.5) * n / 256.0
            coef = _solve_normal(gram, design.T @ coords, design, coords)
            residual = np.abs(design @ coef - coords).max()
            other = abs(coef[1 - axis]) * (height if axis == 0 else width)
            tolerance = 2.0 + 0.01 * n  # 8-bit ramp: n / 256 per level
            if other > tolerance or residual > tolerance + n / 256.0:
                raise GeometryError(
                    f"transforms {describe(self.transforms)} are not an "
                    f"axis-aligned resize/crop/pad on a {size[0]}x{size[1]} image "
                    f"(rotation, shear or perspective?): the fit is off by "
                    f"{max(other, residual):.1f} pixels. Only such geometry "
                    "can be mapped back to the original image"
                )
            if not abs(coef[axis]) > 1e-9:  # also catches NaN
                raise GeometryError(
                    f"transforms {describe(self.transforms)} collapse the "
                    f"{'xy'[axis]} axis of a {size[0]}x{size[1]} image"
                )
            scale.append(float(coef[axis]))
            offset.append(float(coef[2]))
        return Geometry(size, (width, height), tuple(scale), tuple(offset))


def _solve_normal(gram, rhs, design, coords) -> np.ndarray:
    """Least-squares coefficients from the normal equations; falls back to
    ``lstsq`` when they are singular (all points on one line: refused later)."""
    try:
        return np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(design, coords, rcond=None)[0]


def _ramp_coordinates(n: int) -> np.ndarray:
    """The level pixel i of an n-pixel ramp stands for, unrounded: level v
    reads as coordinate (v + 0.5) * n / 256 (8 bits for the whole side)."""
    return (np.arange(n) + 0.5) * 256.0 / n - 0.5


def _ramp_image(size: tuple[int, int]) -> Image.Image:
    """x ramp in red, y ramp in green, the marker in blue. Along a side of
    more than 64 pixels, each level is rounded up or down at random, in
    proportion to its fraction (dithering), so that a level is right on
    average over any few pixels: with plain
    rounding, a downscale by a whole factor averages the same phase of the
    rounding error everywhere and the fit read it as an offset of up to a
    fifth of an input pixel (a blank first column on some whole-image maps).
    PIL's 8-bit two-pass resize rounds between its passes, which leaves up to
    ~0.08 (at 224, 0.05) of an input pixel; per-row dither kept through the
    first pass, and an ordered (Bayer) dither, measured worse."""
    width, height = size
    dither = _dither(height, width)
    levels = np.empty((2, height, width), dtype=np.float32)
    for axis, n, coords in (
        (0, width, _ramp_coordinates(width)[None, :]),
        (1, height, _ramp_coordinates(height)[:, None]),
    ):
        # a few pixels' fit would read the dither's noise: plain rounding
        np.add(coords, dither[axis] if n > _PLAIN_RAMP else 0.5, out=levels[axis])
    np.clip(np.floor(levels, out=levels), 0, 255, out=levels)
    arr = np.empty((height, width, 3), dtype=np.uint8)
    arr[..., 0], arr[..., 1] = levels  # one plane at a time: 3x faster
    arr[..., 2] = _MARKER
    return Image.fromarray(arr, "RGB")


_PLAIN_RAMP = 64  # pixels on a side, at most, for a ramp rounded plainly
_DITHER_TILE = 1024  # wider than any resize filter: reads as random
_DITHER = np.random.default_rng(0).random(
    (2, _DITHER_TILE, _DITHER_TILE), dtype=np.float32
)


def _dither(height: int, width: int) -> np.ndarray:
    """A fixed field of uniform [0, 1) values (one made per process, 8 MB,
    tiled past 1024 pixels): the same probe image for the same size."""
    if height > _DITHER_TILE or width > _DITHER_TILE:
        reps = (1, -(-height // _DITHER_TILE), -(-width // _DITHER_TILE))
        return np.tile(_DITHER, reps)[:, :height, :width]
    return _DITHER[:, :height, :width]


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        shrunk = out.copy()
        shrunk[1:, :] &= out[:-1, :]
        shrunk[:-1, :] &= out[1:, :]
        shrunk[:, 1:] &= out[:, :-1]
        shrunk[:, :-1] &= out[:, 1:]
        out = shrunk
    return out
