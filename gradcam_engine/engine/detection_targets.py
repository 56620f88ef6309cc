"""Detector targets and box arithmetic, in pytorch-grad-cam's style (pure torch).

A torchvision-convention detector returns, per image, ``{"boxes": [N, 4] xyxy
input pixels, "labels": [N], "scores": [N]}``. :class:`DetectionScoreTarget`
scores one detection of such an output the way pytorch-grad-cam's
``FasterRCNNBoxScoreTarget`` matches boxes (same label, IoU above a threshold);
``match_detection`` picks the model's detection that explains a box.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torchvision
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

__all__ = [
    "DetectionScoreTarget",
    "box_coverage",
    "box_focus",
    "match_detection",
    "predicted_detections",
]


class DetectionScoreTarget(FasterRCNNBoxScoreTarget):
    """The score of the detection of ``label`` that best overlaps ``box``
    (IoU above ``iou_threshold``), 0 when there is none.

    ``FasterRCNNBoxScoreTarget`` sums IoU + score over several boxes and takes
    the best-IoU box of any label (then drops it if the label differs): a
    Faster R-CNN often returns near-identical boxes of several classes, so one
    detection's target would read 0. Here the match is among the detections
    of ``label`` only, and the value is that detection's score (its IoU is
    added only with ``add_iou=True``, as the library does), so that its
    gradient is the detection's own.
    """

    def __init__(
        self,
        label: int,
        box: Sequence[float] | torch.Tensor,
        iou_threshold: float = 0.5,
        add_iou: bool = False,
    ) -> None:
        box = torch.as_tensor(box, dtype=torch.float32).reshape(1, 4)
        super().__init__([int(label)], box, iou_threshold)
        self.add_iou = bool(add_iou)

    def __call__(self, model_outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        scores = model_outputs["scores"]
        index, iou = match_detection(
            model_outputs, self.labels[0], self.bounding_boxes[0], self.iou_threshold
        )
        if index is None:
            return scores.new_zeros(())
        value = scores[index]
        return value + iou if self.add_iou else value

    def __repr__(self) -> str:
        box = [round(float(v), 1) for v in self.bounding_boxes[0]]
        return f"DetectionScoreTarget(label={self.labels[0]}, box={box})"


def match_detection(
    outputs: Mapping[str, torch.Tensor],
    label: int,
    box: Sequence[float] | torch.Tensor,
    iou_threshold: float = 0.5,
) -> tuple[int | None, torch.Tensor | None]:
    """``(index, IoU)`` of the detection of class ``label`` in ``outputs`` that
    overlaps ``box`` (xyxy, the outputs' pixels) most, if that IoU is at least
    ``iou_threshold``; ``(None, None)`` otherwise."""
    boxes = outputs["boxes"]
    same = (outputs["labels"] == int(label)).nonzero().flatten()
    if not len(same):
        return None, None
    box = torch.as_tensor(box, device=boxes.device, dtype=boxes.dtype).reshape(1, 4)
    ious = torchvision.ops.box_iou(box, boxes[same].detach())[0]
    best = int(ious.argmax())
    if float(ious[best]) < iou_threshold:
        return None, None
    return int(same[best]), ious[best]


def predicted_detections(
    outputs: Mapping[str, torch.Tensor], confidence_thresh: float, max_detections: int
) -> list[int]:
    """Indices of the detections scoring at least ``confidence_thresh``, best
    first, at most ``max_detections``."""
    scores = outputs["scores"].detach()
    order = torch.argsort(scores, descending=True)
    kept = [int(i) for i in order if float(scores[i]) >= confidence_thresh]
    return kept[:max_detections]


def box_coverage(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[N, H, W]`` share of each pixel covered by each xyxy box (pixels are
    unit squares; boxes in the same pixel coordinates, clipped to the image)."""
    boxes = boxes.float()

    def axis(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
        start = torch.arange(n, dtype=torch.float32, device=boxes.device)
        cover = torch.minimum(hi[:, None], start + 1) - torch.maximum(
            lo[:, None], start
        )
        return cover.clamp(0, 1)

    xs = axis(boxes[:, 0], boxes[:, 2], width)  # [N, W]
    ys = axis(boxes[:, 1], boxes[:, 3], height)  # [N, H]
    return ys[:, :, None] * xs[:, None, :]


def box_focus(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Share of each map's energy inside its box: ``maps`` ``[N, L, H, W]``
    (non-negative), ``boxes`` ``[N, 4]`` xyxy in the maps' pixels -> ``[N, L]``
    in [0, 1]; 0 for an all-zero map (the same sum as ``score_cams``' focus)."""
    height, width = maps.shape[-2:]
    cover = box_coverage(boxes, height, width)[:, None]  # [N, 1, H, W]
    inside = (maps * cover).sum(dim=(2, 3))
    total = maps.sum(dim=(2, 3))
    return torch.where(total > 0, inside / total.clamp(min=1e-12), 0.0).clamp(0, 1)
