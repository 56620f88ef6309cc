"""A small CNN for the planted-shortcut dataset, trained on the CPU in seconds.

Stages are named ``block1`` .. ``block4`` so CAM layers can be chosen by name;
``block4`` (the last conv block, 8x8 for a 64x64 input) is the default layer.
No ImageNet statistics: inputs are scaled with :data:`MEAN` and :data:`STD`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torchvision import transforms as T

from ..engine.hooks import eval_mode
from .shortcut_data import CLASSES, ShortcutSample

__all__ = [
    "DEFAULT_LAYER",
    "MEAN",
    "STD",
    "ShortcutCNN",
    "evaluate",
    "load",
    "predict",
    "preprocess",
    "save",
    "train_classifier",
    "transforms",
]

MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
STD: tuple[float, float, float] = (0.25, 0.25, 0.25)
DEFAULT_LAYER = "block4"


def _block(c_in: int, c_out: int, pool: bool, stride: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.MaxPool2d(2)] if pool else []
    layers += [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    return nn.Sequential(*layers)


class ShortcutCNN(nn.Module):
    """Four conv blocks (``block1`` .. ``block4``), global average pool, ``fc``.

    Input float ``[B, 3, H, W]`` (see :func:`preprocess`); output logits
    ``[B, num_classes]``. ``block1`` convolves with stride 2, blocks 2 and 3
    start with a 2x max-pool, so ``block3`` and ``block4`` are ``H/8 x W/8``.
    """

    def __init__(
        self, num_classes: int = len(CLASSES), widths: Sequence[int] = (16, 32, 64, 64)
    ) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths must list 4 channel counts, got {widths!r}")
        self.num_classes = int(num_classes)
        self.widths = tuple(int(w) for w in widths)
        c = (3, *self.widths)
        self.block1 = _block(c[0], c[1], pool=False, stride=2)
        self.block2 = _block(c[1], c[2], pool=True)
        self.block3 = _block(c[2], c[3], pool=True)
        self.block4 = _block(c[3], c[4], pool=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c[4], self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def preprocess(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` (or a list of ``[H, W, 3]``) -> float32 ``[B, 3, H, W]``."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(
            f"images must be uint8 [B, H, W, 3], got shape {tuple(array.shape)}"
        )
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float()
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255.0
    return (x - mean) / std


def transforms() -> T.Compose:
    """The same normalisation for one PIL image: -> float32 ``[3, H, W]``."""
    return T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])


@contextlib.contextmanager
def deterministic_training(threads: int | None):
    """Deterministic algorithms and ``threads`` torch threads (None: as set)
    for a training loop, restored afterwards: the demo's models come out the
    same on every run of the same machine type."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    previous_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(previous_threads)


def train_classifier(
    samples: Sequence[ShortcutSample],
    epochs: int = 6,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 3e-3,
    threads: int | None = 1,
    verbose: bool = False,
    num_classes: int = len(CLASSES),
    hflip: bool = True,
) -> ShortcutCNN:
    """Train a :class:`ShortcutCNN` on ``samples`` (Adam, one-cycle schedule,
    random horizontal flips unless ``hflip=False``, CPU). Returns the model in
    eval mode. ``num_classes``: the model's outputs (labels ``0..num_classes-1``).

    ``threads``: torch's intra-op thread count while training, restored
    afterwards; the default 1 makes the weights depend only on ``seed`` (not
    on the core count) and is as fast as more threads for this small model.
    ``None`` keeps torch's current setting.
    """
    if not samples:
        raise ValueError("samples must not be empty")
    if epochs < 1 or batch_size < 1:
        raise ValueError(
            f"epochs and batch_size must be >= 1, got {epochs!r}, {batch_size!r}"
        )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ShortcutCNN(num_classes=num_classes)
    x_all = preprocess([s.image for s in samples])
    y_all = torch.tensor([s.label_index for s in samples])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(samples) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    with deterministic_training(threads):
        model.train()
        for epoch in range(epochs):
            order = torch.randperm(len(samples), generator=generator)
            total = 0.0
            for i in range(0, len(samples), batch_size):
                idx = order[i : i + batch_size]
                x = x_all[idx]
                flip = torch.rand(len(idx), generator=generator) < 0.5
                if hflip:  # drawn either way: the random stream stays the same
                    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
                loss = loss_fn(model(x), y_all[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(idx)
            if verbose:
                print(
                    f"epoch {epoch + 1}/{epochs} loss {total / len(samples):.4f} "
                    f"({time.perf_counter() - start:.1f}s)"
                )
    return model.eval()


@torch.no_grad()
def predict(
    model: nn.Module, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 256
) -> np.ndarray:
    """Predicted class indices, int64 ``[N]``, for uint8 ``[N, H, W, 3]`` images."""
    with eval_mode(model):
        out = [
            model(preprocess(images[i : i + batch_size])).argmax(1)
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def evaluate(model: nn.Module, samples: Sequence[ShortcutSample]) -> dict[str, float]:
    """Accuracy overall and on background-agreeing / -disagreeing samples.

    Returns ``{"accuracy", "accuracy_agree", "accuracy_disagree", "n",
    "n_agree", "n_disagree"}``; an accuracy over no samples is NaN.
    """
    pred = predict(model, [s.image for s in samples])
    correct = pred == np.array([s.label_index for s in samples], dtype=np.int64)
    agrees = np.array([s.agrees for s in samples], dtype=bool)

    def acc(sel: np.ndarray) -> float:
        return float(correct[sel].mean()) if sel.any() else float("nan")

    return {
        "accuracy": acc(np.ones_like(agrees)),
        "accuracy_agree": acc(agrees),
        "accuracy_disagree": acc(~agrees),
        "n": len(samples),
        "n_agree": int(agrees.sum()),
        "n_disagree": int((~agrees).sum()),
    }


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Save the weights and architecture arguments with ``torch.save``."""
    config = {"num_classes": model.num_classes, "widths": list(model.widths)}
    torch.save({"config": config, "state_dict": model.state_dict()}, path)


def load(path: str | os.PathLike, model_class: type[nn.Module] = ShortcutCNN):
    """Load a model written by :func:`save` (a ``model_class`` built from
    ``num_classes`` and ``widths``), in eval mode, on the CPU."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = model_class(**checkpoint["config"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
