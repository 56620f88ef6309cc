"""Real-data validity of the focus score: scikit-learn's handwritten digits.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_digits.py [--epochs 8]

Digits nobody here drew (``sklearn.datasets.load_digits``, 8x8) are upscaled
3x and placed at a random spot of a 64x64 noisy grey canvas; a 10x10 patch
whose colour encodes a class is drawn elsewhere. A cue model
(``ShortcutCNN``, 10 classes) trains on 1,200 digits where 90% carry the patch
of their own class; on the 597 held-out digits every image carries the patch
of a uniformly random class. Truth per prediction of the cue model: cue-reliant
when removing the patch changes it, digit-reliant otherwise. Score: Grad-CAM
focus (share of the map's energy inside the digit's box) at each layer;
printed: the AUROC of focus for "digit-reliant" (1.0: every digit-reliant
prediction has higher focus than every cue-reliant one). Pure torch + numpy:
no FiftyOne (the focus is the same arithmetic as ``score_cams``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradcam_engine import CamEngine  # noqa: E402
from gradcam_engine.demo.shortcut_model import ShortcutCNN, preprocess  # noqa: E402

SIZE, SCALE, PATCH = 64, 3, 10
PALETTE = np.array(
    [
        [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [0, 0, 128],
    ]
)  # fmt: skip


def draw(
    digit: np.ndarray, cue: int | None, rng
) -> tuple[np.ndarray, np.ndarray, list]:
    """(image, the same without the patch, the digit's pixel box x0, y0, x1, y1)."""
    canvas = np.clip(110 + 25 * rng.standard_normal((SIZE, SIZE, 3)), 0, 255)
    side = 8 * SCALE
    big = Image.fromarray((digit / 16 * 255).astype(np.uint8)).resize((side, side))
    ink = np.asarray(big, dtype=np.float32)[..., None] / 255
    x0, y0 = rng.integers(0, SIZE - side + 1, 2)
    region = canvas[y0 : y0 + side, x0 : x0 + side]
    canvas[y0 : y0 + side, x0 : x0 + side] = (1 - ink) * region + ink * 250
    clean = canvas.astype(np.uint8)
    image = clean.copy()
    if cue is not None:
        while True:  # the patch keeps clear of the digit's box
            px, py = rng.integers(0, SIZE - PATCH + 1, 2)
            if (
                px + PATCH <= x0
                or px >= x0 + side
                or py + PATCH <= y0
                or py >= y0 + side
            ):
                break
        image[py : py + PATCH, px : px + PATCH] = PALETTE[cue]
    return image, clean, [int(x0), int(y0), int(x0 + side), int(y0 + side)]


def train(images: np.ndarray, labels: np.ndarray, epochs: int, seed: int = 0):
    torch.manual_seed(seed)
    model = ShortcutCNN(num_classes=10)
    x_all, y_all = preprocess(images), torch.as_tensor(labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = epochs * ((len(x_all) + 31) // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_all), generator=gen)
        for i in range(0, len(x_all), 32):
            idx = order[i : i + 32]
            loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--p-cue", type=float, default=0.9)
    parser.add_argument("--control", action="store_true")
    parser.add_argument("--methods", nargs="+", default=["gradcam", "layercam"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    digits = load_digits()
    rng = np.random.default_rng(0)
    n_train = 1200
    train_imgs, train_y = [], []
    for img, y in zip(digits.images[:n_train], digits.target[:n_train], strict=True):
        cue = int(y) if rng.uniform() < args.p_cue else None
        train_imgs.append(draw(img, cue, rng)[0])
        train_y.append(int(y))
    model = train(np.stack(train_imgs), np.array(train_y), args.epochs)
    control = None
    if args.control:
        plain = [
            draw(img, None, np.random.default_rng(i))[0]
            for i, img in enumerate(digits.images[:n_train])
        ]
        control = train(np.stack(plain), np.array(train_y), args.epochs, seed=1)
    test = [
        draw(img, int(rng.integers(10)), rng) + (int(y),)
        for img, y in zip(digits.images[n_train:], digits.target[n_train:], strict=True)
    ]
    images = np.stack([t[0] for t in test])
    cleans = np.stack([t[1] for t in test])
    labels = np.array([t[3] for t in test])
    with torch.no_grad():
        pred = model(preprocess(images)).argmax(1).numpy()
        pred_clean = model(preprocess(cleans)).argmax(1).numpy()
    digit_reliant = pred == pred_clean
    print(
        f"test {len(test)}: accuracy with patch {np.mean(pred == labels):.3f}, "
        f"without {np.mean(pred_clean == labels):.3f}; digit-reliant "
        f"{digit_reliant.sum()}, cue-reliant {(~digit_reliant).sum()}"
    )
    layers = ["block2", "block3", "block4"]
    boxes = [t[2] for t in test]
    for method in args.methods:
        with CamEngine(model, layers=layers, method=method) as engine:
            maps = torch.cat(
                [
                    engine(
                        preprocess(images[i : i + 64]),
                        [int(p) for p in pred[i : i + 64]],
                    )
                    for i in range(0, len(images), 64)
                ]
            ).numpy()
        scores = {layer: focus(maps[:, j], boxes) for j, layer in enumerate(layers)}
        scores["block3+block4 (mean)"] = (scores["block3"] + scores["block4"]) / 2
        if control is not None:  # agreement with a model that never saw the cue
            with CamEngine(control, layers=layers, method=method) as engine:
                ref = torch.cat(
                    [
                        engine(
                            preprocess(images[i : i + 64]),
                            [int(p) for p in pred[i : i + 64]],
                        )
                        for i in range(0, len(images), 64)
                    ]
                ).numpy()
            for j, layer in enumerate(layers):
                a = maps[:, j].reshape(len(maps), -1)
                b = ref[:, j].reshape(len(ref), -1)
                a = a / np.maximum(a.sum(1, keepdims=True), 1e-9)
                b = b / np.maximum(b.sum(1, keepdims=True), 1e-9)
                scores[f"{layer} overlap with control"] = np.minimum(a, b).sum(1)
        for name, score in scores.items():
            auroc = roc_auc_score(digit_reliant, score)
            print(f"{method} {name}: AUROC of focus for digit-reliant {auroc:.3f}")


def focus(maps: np.ndarray, boxes: list) -> np.ndarray:
    """Share of each map's energy inside its digit's box (0 for an empty map)."""
    out = []
    for m, (x0, y0, x1, y1) in zip(maps, boxes, strict=True):
        total = m.sum()
        out.append(m[y0:y1, x0:x1].sum() / total if total > 0 else 0.0)
    return np.array(out)


if __name__ == "__main__":
    main()
