"""Zero-shot CLIP classifiers: a CLIP model and class prompts -> a classifier.

``zero_shot_classifier(model, tokenizer, classes)`` encodes one prompt per
class once ("a photo of a {class}") and returns an ``nn.Module`` whose logits
are the image-text similarities CLIP itself computes
(``logit_scale * cos(image, text)``, plus SigLIP's ``logit_bias``). Every
target, score, report and App path then works unchanged; the image tower is
kept under its own name (open_clip: ``visual``, transformers:
``vision_model``), so layers read as in the CLIP model, and its token grid is
read from the model (``engine.model_layouts``).

Works with open_clip models (``encode_text``, ``visual``) and transformers
CLIP-style models (``vision_model``, ``text_model`` and their projections).
Neither package is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..engine.hooks import eval_mode
from .huggingface import ImageProcessorTransform
from .loaded import LoadedModel, ResizeNormalize

__all__ = ["CLIP_MEAN", "CLIP_STD", "ZeroShotClassifier", "zero_shot_classifier"]

# OpenAI CLIP's normalisation (open_clip's and transformers' CLIP default).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _kind(model: Any) -> str:
    if isinstance(model, nn.Module):
        if hasattr(model, "encode_text") and hasattr(model, "visual"):
            return "open_clip"
        if hasattr(model, "vision_model") and hasattr(model, "text_model"):
            return "transformers"
    raise TypeError(
        "model must be an open_clip CLIP model (with encode_text and visual) or a "
        "transformers CLIP-style model (with vision_model and text_model), got "
        f"{type(model).__name__}"
    )


def _tokens(tokenizer: Callable, prompts: list[str]) -> dict[str, torch.Tensor]:
    """``input_ids`` (and ``attention_mask``) of the prompts, from an open_clip
    tokenizer (a tensor) or a transformers one (padded, as tensors)."""
    if hasattr(tokenizer, "model_input_names"):  # a transformers tokenizer
        encoded = tokenizer(prompts, padding=True, return_tensors="pt")
    else:
        encoded = tokenizer(prompts)
    if isinstance(encoded, torch.Tensor):
        return {"input_ids": encoded}
    if isinstance(encoded, Mapping) and "input_ids" in encoded:
        keys = ("input_ids", "attention_mask")
        return {k: torch.as_tensor(encoded[k]) for k in keys if k in encoded}
    raise TypeError(
        f"tokenizer returned {type(encoded).__name__} for a list of prompts; "
        "expected token ids (a tensor) or a mapping with 'input_ids'"
    )


@torch.no_grad()
def _text_features(model: nn.Module, kind: str, tokens: dict) -> torch.Tensor:
    device = next(model.parameters()).device
    tokens = {k: v.to(device) for k, v in tokens.items()}
    with eval_mode(model):  # no dropout in the class prompts' embeddings
        if kind == "open_clip":
            features = model.encode_text(tokens["input_ids"])
        else:
            pooled = model.text_model(**tokens).pooler_output
            projection = getattr(model, "text_projection", None)
            features = pooled if projection is None else projection(pooled)
    return nn.functional.normalize(features.float(), dim=-1)


class ZeroShotClassifier(nn.Module):
    """A CLIP image tower scoring fixed class prompts: ``forward(x) -> [B, K]``
    logits, ``scale * cos(image, prompt_k) + bias``. Build it with
    :func:`zero_shot_classifier`."""

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        text_features: torch.Tensor,
        classes: list[str],
        transforms: Callable | None,
        description: str,
    ) -> None:
        super().__init__()
        self.kind = kind
        if kind == "open_clip":
            self.visual = model.visual
        else:
            self.vision_model = model.vision_model
            self.visual_projection = getattr(model, "visual_projection", None)
        scale = model.logit_scale.detach().float().exp()
        bias = getattr(model, "logit_bias", None)
        self.register_buffer("text_features", text_features.detach().clone())
        self.register_buffer("logit_scale", scale.reshape(()))
        self.register_buffer(
            "logit_bias",
            torch.zeros(()) if bias is None else bias.detach().float().reshape(()),
        )
        self.classes = list(classes)
        self.transforms = transforms
        self.description = description

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """The CLIP image embedding of ``x`` (not normalised)."""
        if self.kind == "open_clip":
            return self.visual(x)
        pooled = self.vision_model(pixel_values=x).pooler_output
        projection = self.visual_projection
        return pooled if projection is None else projection(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = nn.functional.normalize(self.image_features(x), dim=-1)
        text = self.text_features.to(features.dtype)
        return self.logit_scale * features @ text.T + self.logit_bias

    def loaded_model(self) -> LoadedModel:
        """What ``compute_cams`` uses: this module, its transforms and classes."""
        return LoadedModel(self, self.transforms, list(self.classes), self.description)


def _transforms(model: nn.Module, kind: str, preprocess: Any) -> Callable:
    """``preprocess`` as a transform (a transformers image processor is
    wrapped); by default the whole image resized to the tower's input size
    with CLIP's normalisation."""
    if preprocess is not None:
        if hasattr(preprocess, "to_json_string") and hasattr(preprocess, "preprocess"):
            return ImageProcessorTransform(preprocess)
        if not callable(preprocess):
            raise TypeError(
                f"preprocess must be a callable transform or a transformers image "
                f"processor, got {type(preprocess).__name__}"
            )
        return preprocess
    if kind == "open_clip":
        size = getattr(model.visual, "image_size", 224)
    else:
        size = getattr(model.config.vision_config, "image_size", 224)
    size = size if isinstance(size, int) else tuple(size)[:2]
    return ResizeNormalize(size, CLIP_MEAN, CLIP_STD)


def zero_shot_classifier(
    model: nn.Module,
    tokenizer: Callable,
    classes: Sequence[str],
    template: str = "a photo of a {}",
    *,
    preprocess: Any = None,
) -> ZeroShotClassifier:
    """A classifier over ``classes`` from a CLIP model: the prompts
    ``template.format(c)`` are encoded once; the logits are the image-text
    similarities the CLIP model computes.

    ``model``: open_clip (``open_clip.create_model_and_transforms(...)[0]``)
    or transformers (``CLIPModel``, SigLIP-style models with ``vision_model``
    / ``text_model``). ``tokenizer``: the model's (``open_clip.get_tokenizer``
    or a transformers tokenizer). ``preprocess``: the model's image transform
    (open_clip's preprocess, a transformers ``CLIPImageProcessor``); by
    default the whole image resized to the tower's input size with CLIP's
    normalisation. ``compute_cams(samples, classifier, ...)`` uses its
    classes and transforms.
    """
    kind = _kind(model)
    if isinstance(classes, str) or not isinstance(classes, Sequence) or not classes:
        raise ValueError(
            f"classes must be a non-empty list of class names, got {classes!r}"
        )
    names = [str(c) for c in classes]
    if len(set(names)) != len(names):
        repeated = sorted({c for c in names if names.count(c) > 1})
        raise ValueError(f"classes must be distinct; repeated: {repeated}")
    if not isinstance(template, str) or "{}" not in template:
        raise ValueError(
            f"template must be a str with one '{{}}' where the class name goes, "
            f"got {template!r} (e.g. 'a photo of a {{}}')"
        )
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be callable, got {type(tokenizer).__name__}")
    tokens = _tokens(tokenizer, [template.format(c) for c in names])
    features = _text_features(model, kind, tokens)
    description = (
        f"zero-shot {kind} {type(model).__name__}, {len(names)} classes, "
        f"template {template!r}"
    )
    transforms = _transforms(model, kind, preprocess)
    return ZeroShotClassifier(model, kind, features, names, transforms, description)
