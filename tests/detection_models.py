"""A known-truth detector for the detection tests, importable by delegated
workers as the model entry point ``detection_models:build_known_truth``
(tests/ is on their ``PYTHONPATH``).

It follows torchvision's detection convention, and what each of its scores
depends on is known: box A's score only on the pixels inside A, box B's only
on a patch P elsewhere.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.transforms import ToTensor

CLASSES = ["background", "A", "B"]


def regions(h: int, w: int) -> dict[str, tuple[int, int, int, int]]:
    """xyxy integer boxes: A and B (the detections), P (B's evidence)."""
    return {
        "A": (w // 10, h // 10, 4 * w // 10, 4 * h // 10),
        "B": (6 * w // 10, 6 * h // 10, 9 * w // 10, 9 * h // 10),
        "P": (w // 10, 6 * h // 10, 4 * w // 10, 9 * h // 10),
    }


class KnownTruthDetector(nn.Module):
    """torchvision's convention: ``model(list of CHW)`` -> per image
    ``{"boxes", "labels", "scores"}``. Box A (label 1) scores the mean of
    feature channel 0 inside A; box B (label 2) the mean of channel 1 inside
    P, outside B. ``features`` (1x1 conv, identity) is the layer explained."""

    def __init__(self, detach_scores: bool = False) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(3)[:, :, None, None])
        self.detach_scores = detach_scores

    def forward(self, images):
        f = self.features(torch.stack(list(images)))
        h, w = f.shape[-2:]
        r = regions(h, w)

        def mean(channel, box):
            x0, y0, x1, y1 = box
            return f[:, channel, y0:y1, x0:x1].mean(dim=(1, 2))

        scores = torch.stack(
            [torch.sigmoid(4 * mean(0, r["A"])), torch.sigmoid(4 * mean(1, r["P"]))],
            dim=1,
        )
        if self.detach_scores:
            scores = scores.detach()
        boxes = torch.tensor([r["A"], r["B"]], dtype=torch.float32)
        return [
            {"boxes": boxes, "labels": torch.tensor([1, 2]), "scores": s}
            for s in scores
        ]


def known_truth_image(h: int, w: int) -> np.ndarray:
    """Red fills A, green fills P, a little noise everywhere."""
    rng = np.random.default_rng(h * w)
    img = rng.uniform(0, 0.01, size=(h, w, 3))
    r = regions(h, w)
    x0, y0, x1, y1 = r["A"]
    img[y0:y1, x0:x1, 0] = 1.0
    x0, y0, x1, y1 = r["P"]
    img[y0:y1, x0:x1, 1] = 1.0
    return (img * 255).astype(np.uint8)


def build_known_truth():
    """A model source: ``(module, transforms, classes)``."""
    return KnownTruthDetector().eval(), ToTensor(), list(CLASSES)


def build_torchvision_detector():
    """A model source: torchvision's Faster R-CNN (MobileNetV3-FPN), seeded
    random weights, a small internal canvas and few proposals (fast on CPU).
    Its detections are real: every box scores about 1/3 (the softmax of an
    untrained head over 3 classes), above a confidence_thresh of 0.3."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=len(CLASSES),
        min_size=96,
        max_size=128,
        rpn_pre_nms_top_n_test=50,
        rpn_post_nms_top_n_test=20,
    )
    return model.eval(), ToTensor(), list(CLASSES)
