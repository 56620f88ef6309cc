"""The demo's small object detector, trained on the CPU in seconds.

A tiny single-shot detector with torchvision's detection convention (in eval
mode ``model(list of CHW float tensors in [0, 1])`` returns one dict per image
with ``boxes`` x1 y1 x2 y2 in input pixels, ``labels`` (1-based, 0 is the
background) and ``scores``), so ``compute_cams(..., task="detection")`` takes
it like a Faster R-CNN. A Faster R-CNN, even the mobilenet 320 one, does not
learn the demo's data from scratch in the demo's two-minute budget on two CPU
cores; this one does in seconds, and it keeps what the demo needs: a box from
local features and a class from the whole image.

Three conv blocks (``block1`` .. ``block3``, ``block3`` is ``H/8 x W/8``), then
an objectness logit and a box per grid cell (YOLO-style: the cell holding the
object's centre answers) and class logits from the globally pooled ``block3``
(image context, as a real detector's large receptive field gives its class
head). One detection per image: the most object-like cell, its best class.
Its score is ``sigmoid(objectness + class logit)``: log-odds add, and both
parts keep their gradients on one scale (a product of two saturated sigmoids
would let either part's gradient vanish).

Trained on :mod:`gradcam_engine.demo.marked_data`, where only circles carry a
corner watermark in training: the class head learns the mark as a second rule,
so the circle detections of marked images are explained partly by the mark,
outside their box.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as nnf
from torchvision.transforms import ToTensor

from . import shortcut_model
from .marked_data import MarkedSample
from .shortcut_data import CLASSES
from .shortcut_model import MEAN, STD, _block, deterministic_training, save

__all__ = [
    "DETECTOR_CLASSES",
    "DETECTOR_LAYER",
    "MarkDetector",
    "load",
    "save",
    "train_detector",
    "transforms",
]

DETECTOR_CLASSES = ["background", *CLASSES]  # label i+1 is CLASSES[i]
DETECTOR_LAYER = "block3"


class MarkDetector(nn.Module):
    """See the module docstring; ``widths``: the channels of the three blocks."""

    def __init__(
        self, num_classes: int = len(CLASSES), widths: Sequence[int] = (16, 32, 64)
    ) -> None:
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"widths must list 3 channel counts, got {widths!r}")
        self.num_classes = int(num_classes)
        self.widths = tuple(int(w) for w in widths)
        c = (3, *self.widths)
        self.block1 = _block(c[0], c[1], pool=False, stride=2)
        self.block2 = _block(c[1], c[2], pool=True)
        self.block3 = _block(c[2], c[3], pool=True)
        self.objectness = nn.Conv2d(c[3], 1, 1)
        self.box = nn.Conv2d(c[3], 4, 1)
        self.classify = nn.Linear(c[3], self.num_classes)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def heads(self, x: torch.Tensor):
        """``[B, 3, H, W]`` in [0, 1] -> objectness ``[B, h, w]``, box
        ``[B, 4, h, w]`` (raw), class logits ``[B, num_classes]``."""
        f = self.block3(self.block2(self.block1((x - self.mean) / self.std)))
        return self.objectness(f)[:, 0], self.box(f), self.classify(f.mean((2, 3)))

    def forward(self, images) -> list[dict[str, torch.Tensor]]:
        x = torch.stack(list(images))
        obj, box, logits = self.heads(x)
        gh, gw = obj.shape[-2:]
        height, width = x.shape[-2:]
        cells = obj.flatten(1).argmax(1)
        out = []
        for i, cell in enumerate(cells.tolist()):
            row, col = divmod(cell, gw)
            dx, dy, bw, bh = torch.sigmoid(box[i, :, row, col])
            cx, cy = (col + dx) * width / gw, (row + dy) * height / gh
            w, h = bw * width, bh * height
            label = int(logits[i].argmax())
            out.append(
                {
                    "boxes": torch.stack(
                        [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
                    )[None],
                    "labels": torch.tensor([label + 1]),
                    "scores": torch.sigmoid(obj[i, row, col] + logits[i, label])[None],
                }
            )
        return out


def transforms() -> ToTensor:
    """One PIL image -> float32 ``[3, H, W]`` in [0, 1] (the model normalises)."""
    return ToTensor()


def _targets(samples: Sequence[MarkedSample], grid: int):
    """Per sample: the centre cell index, the box target (centre offset in
    the cell, relative width and height) and the class index."""
    cells, boxes = [], []
    for s in samples:
        x, y, w, h = s.bbox
        cx, cy = (x + w / 2) * grid, (y + h / 2) * grid
        col, row = min(int(cx), grid - 1), min(int(cy), grid - 1)
        cells.append(row * grid + col)
        boxes.append([cx - col, cy - row, w, h])
    labels = [s.label_index for s in samples]
    return torch.tensor(cells), torch.tensor(boxes), torch.tensor(labels)


def train_detector(
    samples: Sequence[MarkedSample],
    epochs: int = 8,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 3e-3,
    threads: int | None = 1,
) -> MarkDetector:
    """Train a :class:`MarkDetector` on ``samples`` (square images; Adam,
    one-cycle schedule, CPU, deterministic given ``seed`` with ``threads=1``).
    Losses: objectness BCE over all cells, L1 on the centre cell's box, class
    BCE (one sigmoid per class, so that a class logit is log-odds, see the
    score). Returns the model in eval mode."""
    if not samples:
        raise ValueError("samples must not be empty")
    if epochs < 1 or batch_size < 1:
        raise ValueError(
            f"epochs and batch_size must be >= 1, got {epochs!r}, {batch_size!r}"
        )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MarkDetector()
    images = np.stack([s.image for s in samples])
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    grid = images.shape[1] // 8
    cells, boxes, labels = _targets(samples, grid)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(samples) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    with deterministic_training(threads):
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(samples), generator=generator)
            for i in range(0, len(samples), batch_size):
                idx = order[i : i + batch_size]
                obj, box, logits = model.heads(x_all[idx])
                obj = obj.flatten(1)
                positive = nnf.one_hot(cells[idx], obj.shape[1]).float()
                rows = torch.arange(len(idx))
                box = torch.sigmoid(box.flatten(2)[rows, :, cells[idx]])
                one_hot = nnf.one_hot(labels[idx], model.num_classes).float()
                loss = (
                    nnf.binary_cross_entropy_with_logits(obj, positive) * obj.shape[1]
                    + 5 * nnf.l1_loss(box, boxes[idx])
                    + nnf.binary_cross_entropy_with_logits(logits, one_hot)
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return model.eval()


def load(path: str | os.PathLike) -> MarkDetector:
    """Load a model written by :func:`save`, in eval mode, on the CPU."""
    return shortcut_model.load(path, MarkDetector)
