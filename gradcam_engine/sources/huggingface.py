"""Hugging Face ``transformers`` image classifiers as model sources.

An ``AutoModelForImageClassification``-style module (ViT, DeiT, Swin,
ConvNeXt, ResNet, ...) is used as it is: the engine reads the logits from its
output object (``engine.targets.select_output``) and its token grid from its
config (``engine.model_layouts``); here come its class names (``id2label``)
and its default transform, the model's image processor (its geometry is
probed like any transform's, ``sources/geometry.py``).

transformers is imported only by :func:`load_hf_classifier`: a module the
caller built is recognised by duck typing.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from PIL import Image
from torch import nn

from .loaded import IMAGENET_MEAN, IMAGENET_STD, LoadedModel, ResizeNormalize

__all__ = [
    "ImageProcessorTransform",
    "from_hf_model",
    "hf_classes",
    "is_hf_model",
    "load_hf_classifier",
]

# What transformers names the labels of a config that was given none.
_DEFAULT_LABEL = re.compile(r"LABEL_\d+")


def is_hf_model(module: Any) -> bool:
    """A ``transformers`` ``PreTrainedModel`` (judged without importing it)."""
    return (
        isinstance(module, nn.Module)
        and type(module).__module__.startswith("transformers.")
        and hasattr(getattr(module, "config", None), "to_dict")
    )


class ImageProcessorTransform:
    """A Hugging Face image processor as a transform: PIL RGB image -> float
    ``[3, H, W]`` (its resize, crop, rescale and normalisation). Picklable
    when the processor is, so that it runs in DataLoader workers."""

    def __init__(self, processor: Any) -> None:
        if not callable(processor):
            raise TypeError(
                "processor must be a Hugging Face image processor (callable), got "
                f"{type(processor).__name__}"
            )
        self.processor = processor

    def __call__(self, img: Image.Image) -> torch.Tensor:
        out = self.processor(images=img.convert("RGB"), return_tensors="pt")
        return torch.as_tensor(out["pixel_values"][0]).float()

    def __repr__(self) -> str:
        # the processor's settings (size, crop, mean, std) make the fingerprint
        settings = getattr(self.processor, "to_json_string", None)
        text = settings() if callable(settings) else repr(self.processor)
        return f"ImageProcessorTransform({type(self.processor).__name__} {text})"


def hf_classes(module: nn.Module) -> list[str] | None:
    """Class names from ``config.id2label`` in index order; None when the config
    holds transformers' placeholders (``LABEL_0``...), so that integer labels
    and ``classes=[...]`` work as for any module."""
    id2label = getattr(module.config, "id2label", None) or {}
    labels = [str(id2label[k]) for k in sorted(id2label, key=int)]
    if not labels or all(_DEFAULT_LABEL.fullmatch(label) for label in labels):
        return None
    return labels


def _config_transform(module: nn.Module) -> ResizeNormalize:
    """Without a processor: the whole image resized to the config's input size,
    ImageNet normalisation (the processors of ResNet and ConvNeXt use it; ViT's
    use 0.5: pass the processor)."""
    size = getattr(module.config, "image_size", None) or 224
    size = size if isinstance(size, int) else tuple(size)[:2]
    return ResizeNormalize(size, IMAGENET_MEAN, IMAGENET_STD)


def _local_processor(module: nn.Module):
    """The processor saved next to a model loaded from a local directory
    (never a hub download: runs may be offline)."""
    path = getattr(module.config, "_name_or_path", "") or ""
    if not path or not os.path.isdir(path):
        return None
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError):  # the directory holds no processor
        return None


def from_hf_model(
    module: nn.Module, processor: Any = None, description: str | None = None
) -> LoadedModel:
    """A :class:`LoadedModel` for a transformers image classifier: transforms
    from ``processor`` (else the one saved with a local model, else the
    config's input size), classes from ``config.id2label``."""
    if not is_hf_model(module):
        raise TypeError(
            "module must be a transformers PreTrainedModel (e.g. "
            f"AutoModelForImageClassification), got {type(module).__name__}"
        )
    processor = processor if processor is not None else _local_processor(module)
    transforms = (
        ImageProcessorTransform(processor)
        if processor is not None
        else _config_transform(module)
    )
    name = getattr(module.config, "_name_or_path", "") or module.config.model_type
    return LoadedModel(
        module=module,
        transforms=transforms,
        classes=hf_classes(module),
        description=description or f"transformers {type(module).__name__} ({name})",
    )


def load_hf_classifier(name_or_path: str, **kwargs: Any) -> LoadedModel:
    """``AutoModelForImageClassification.from_pretrained(name_or_path)`` with
    its ``AutoImageProcessor``, ready for ``compute_cams`` (register it as a
    source: ``register_model_source("my-vit", lambda: load_hf_classifier(p))``).
    ``kwargs`` go to the model's ``from_pretrained``."""
    try:
        from transformers import AutoImageProcessor, AutoModelForImageClassification
    except ImportError as exc:
        raise ImportError(
            "Hugging Face models need transformers: pip install "
            "'fiftyone-cam-audit[hf]' (or pip install transformers)"
        ) from exc
    try:
        module = AutoModelForImageClassification.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as exc:  # ValueError: not a valid hub name
        raise ValueError(
            f"Cannot load a transformers image classifier from {name_or_path!r}: "
            f"{exc}. Pass a directory written by model.save_pretrained(...) or a "
            "hub name that is in the local cache (hub downloads need a network)."
        ) from exc
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError):  # no processor saved: the config's input size
        processor = None
    return from_hf_model(module.eval(), processor, f"transformers {name_or_path}")
