"""What a model source gives ``compute_cams``: :class:`LoadedModel`, and the
bare module's default transform :class:`ResizeNormalize`.

Its own module so that the model adapters (``huggingface``, ``zero_shot``)
and the source registry (``models``) share them without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadedModel",
    "ResizeNormalize",
    "Transforms",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Transforms = Callable[[Image.Image], torch.Tensor]


class ResizeNormalize:
    """PIL RGB image -> float ``[3, H, W]``: resize the WHOLE image (no crop, so a
    map covers the whole image), scale to [0, 1], normalise. Picklable, so it
    works in DataLoader workers."""

    def __init__(
        self,
        size: int | tuple[int, int] = 224,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        height, width = self.size
        img = img.convert("RGB").resize((width, height), Image.BILINEAR)
        # In numpy, into a contiguous [3, H, W] array: the same values as torch's
        # (x / 255 - mean) / std, but torch's thread pool made these small ops
        # ~15x slower in the main process, and a permuted (channels-last) result
        # made every later torch.stack of a batch a slow strided copy.
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)
        out = np.divide(x, np.float32(255.0), dtype=np.float32, order="C")
        out -= np.asarray(self.mean, dtype=np.float32)[:, None, None]
        out /= np.asarray(self.std, dtype=np.float32)[:, None, None]
        return torch.from_numpy(out)

    def __repr__(self) -> str:
        return f"ResizeNormalize(size={self.size}, mean={self.mean}, std={self.std})"


@dataclass
class LoadedModel:
    """A model ready for ``compute_cams``."""

    module: nn.Module
    transforms: Transforms | None = None
    classes: list[str] | None = None
    description: str = ""
    default_layers: list[str] | None = field(default=None)
