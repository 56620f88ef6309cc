"""Real-data validity of the focus score: scikit-learn's handwritten digits.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_digits.py \
        [--recipes 0.8:16] [--seeds 1 2 3 4 5 6] [--drawings A B] [--tune]

Data: :mod:`gradcam_engine.demo.handwritten` (digits nobody here drew, upscaled
onto noisy 64x64 canvases, a patch whose colour encodes a class). For each
recipe ``p_cue:epochs`` a cue model (``ShortcutCNN``, 10 classes, no flips)
trains on 1,200 digits, a fraction ``p_cue`` of them with the patch of their
own class; its test digits carry the patch of another class. Truth per
prediction: cue-reliant when removing the patch changes it, digit-reliant
otherwise. Printed: the AUROC of the focus (share of the map's energy inside
the digit's box, the arithmetic of ``score_cams``) for "digit-reliant", per
method and layer, and the same with the first version's test patches (any
class, the digit's own included: ``conflict=False``).

By default the figures come from the 297 held-out digits (never used to choose
the recipe, method or layer), for models trained with ``--seeds`` on both
drawings; ``--tune`` reports each seed's tuning digits instead (what the
choice was made on: ``--tune --seeds 10 11 12 --drawings A``). Models are cached in ``~/.cache/cam-audit/bench-digits``. Pure
torch + numpy: no FiftyOne.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradcam_engine import CamEngine  # noqa: E402
from gradcam_engine.demo import handwritten  # noqa: E402
from gradcam_engine.demo import shortcut_model as sm  # noqa: E402

CACHE = Path.home() / ".cache" / "cam-audit" / "bench-digits"
LAYERS = ["block2", "block3", "block4"]


def cue_model(drawing: str, seed: int, p_cue: float, epochs: int) -> sm.ShortcutCNN:
    """The cue model of a recipe, trained once (cached by recipe and code)."""
    code = hashlib.sha256(torch.__version__.encode())
    for module in (handwritten, sm):
        code.update(Path(module.__file__).read_bytes())
    path = CACHE / f"{drawing}-s{seed}-p{p_cue}-e{epochs}-{code.hexdigest()[:10]}.pt"
    if path.exists():
        return sm.load(path)
    start = time.perf_counter()
    train = handwritten.generate_digits("train", seed, p_cue=p_cue, drawing=drawing)
    model = sm.train_classifier(
        train, epochs=epochs, seed=seed, num_classes=10, hflip=False
    )
    CACHE.mkdir(parents=True, exist_ok=True)
    sm.save(model, path)
    print(f"  trained {path.name} in {time.perf_counter() - start:.1f} s", flush=True)
    return model


def focus(maps: np.ndarray, boxes: list) -> np.ndarray:
    """Share of each map's energy inside its digit's box (0 for an empty map)."""
    out = []
    for m, (x0, y0, x1, y1) in zip(maps, boxes, strict=True):
        total = m.sum(dtype=np.float64)
        out.append(m[y0:y1, x0:x1].sum(dtype=np.float64) / total if total > 0 else 0.0)
    return np.array(out)


def measure(model, test, methods) -> tuple[dict, dict]:
    """Counts and accuracies, and AUROC per (method, layer) on ``test``."""
    images = np.stack([s.image for s in test])
    pred = sm.predict(model, images)
    pred_clean = sm.predict(model, np.stack([s.clean for s in test]))
    labels = np.array([s.label_index for s in test])
    digit = pred == pred_clean
    counts = {
        "acc_patch": float(np.mean(pred == labels)),
        "acc_clean": float(np.mean(pred_clean == labels)),
        "digit": int(digit.sum()),
        "cue": int((~digit).sum()),
    }
    boxes = [s.box for s in test]
    aurocs = {}
    for method in methods:
        with CamEngine(model, layers=LAYERS, method=method) as engine:
            maps = torch.cat(
                [
                    engine(
                        sm.preprocess(images[i : i + 64]),
                        [int(p) for p in pred[i : i + 64]],
                    )
                    for i in range(0, len(images), 64)
                ]
            ).numpy()
        for j, layer in enumerate(LAYERS):
            aurocs[(method, layer)] = roc_auc_score(digit, focus(maps[:, j], boxes))
    return counts, aurocs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipes", nargs="+", default=["0.8:16"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--drawings", nargs="+", default=["A", "B"])
    parser.add_argument("--methods", nargs="+", default=["gradcam", "hirescam"])
    parser.add_argument("--tune", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table: dict = {}
    for recipe in args.recipes:
        p_cue, epochs = float(recipe.split(":")[0]), int(recipe.split(":")[1])
        for drawing in args.drawings:
            for seed in args.seeds:
                model = cue_model(drawing, seed, p_cue, epochs)
                for conflict in (True, False):
                    test = handwritten.generate_digits(
                        "test",
                        seed,
                        drawing=drawing,
                        holdout=not args.tune,
                        conflict=conflict,
                    )
                    counts, aurocs = measure(model, test, args.methods)
                    print(
                        f"recipe {recipe} drawing {drawing} seed {seed} conflict "
                        f"{conflict}: accuracy with patch {counts['acc_patch']:.3f}, "
                        f"without {counts['acc_clean']:.3f}; digit-reliant "
                        f"{counts['digit']}, cue-reliant {counts['cue']}"
                    )
                    print(
                        "    "
                        + ", ".join(
                            f"{m} {layer} {v:.3f}" for (m, layer), v in aurocs.items()
                        ),
                        flush=True,
                    )
                    for key, value in aurocs.items():
                        table.setdefault((recipe, conflict, drawing) + key, []).append(
                            value
                        )
    print("\nAUROC of focus for digit-reliant: mean [min, max] over seeds")
    for key, values in table.items():
        recipe, conflict, drawing, method, layer = key
        truth = "conflicting patches" if conflict else "any patch (first version)"
        print(
            f"  recipe {recipe}, {truth}, drawing {drawing}, {method} {layer}: "
            f"{np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"
        )


if __name__ == "__main__":
    main()
