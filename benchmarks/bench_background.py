"""The background test against the counterfactual truth, on two shortcut sets.

    .venv/bin/python benchmarks/bench_background.py [--n-train 1000] [--n-test 200]

For each generator (``marked``: gradient backgrounds and a white-square mark
in a fixed corner, :mod:`gradcam_engine.demo.marked_data`; ``textured``:
natural textures and a striped triangle anywhere along two edges,
:mod:`gradcam_engine.demo.textured_marks`) the small CNN is trained on
``n_train`` images where only circles carry the mark, then on ``n_test`` test
images (half marked) Grad-CAM runs and ``background_test`` replaces the
background of the object boxes with each fill alone. The truth of "the mark
caused this prediction": the prediction changes when the same image is drawn
without the mark. Printed: agreement (share of samples where the flag equals
the truth) for each fill alone and for each set of at least two fills at each
``min_flip_rate``, then for the library's defaults. An isolated mongod is
started (and stopped) by the script.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from pathlib import Path

from own_mongod import start_mongod  # noqa: E402  (benchmarks/ is on sys.path)

TMP = Path(tempfile.mkdtemp(prefix="bench-bg-"))


os.environ.update(
    FIFTYONE_DATABASE_URI=start_mongod(TMP / "db", remove_on_exit=True),
    FIFTYONE_SHOW_PROGRESS_BARS="false",
    FIFTYONE_DO_NOT_TRACK="true",
    FIFTYONE_DATABASE_VALIDATION="false",
)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from gradcam_engine.audit.backgrounds import (  # noqa: E402
    ALL_FILLS,
    DEFAULT_FILLS,
    DEFAULT_MIN_FLIP_RATE,
)
from gradcam_engine.audit.model_checks import background_test  # noqa: E402
from gradcam_engine.demo import marked_data, textured_marks  # noqa: E402
from gradcam_engine.demo import shortcut_model as sm  # noqa: E402
from gradcam_engine.demo.clever_hans import marked_dataset  # noqa: E402
from gradcam_engine.demo.shortcut_data import CLASSES  # noqa: E402
from gradcam_engine.runs.compute import compute_cams  # noqa: E402

GENERATORS = {
    "marked": marked_data.generate_marked,
    "textured": textured_marks.generate_textured,
}


def audited(name: str, n_train: int, n_test: int, seed: int = 0):
    """(dataset, model, truth in dataset order) for one generator."""
    generate = GENERATORS[name]
    model = sm.train_classifier(generate(n_train, "train", seed=seed), seed=seed)
    test = generate(n_test, "test", seed=seed + 1)
    ds = marked_dataset(f"bench-bg-{name}", test, TMP / name)
    compute_cams(
        ds,
        model,
        layers=["block4"],
        run_key="cam",
        transforms=sm.transforms(),
        classes=list(CLASSES),
        num_workers=0,
        progress=False,
    )
    by_stem = {s.name: s for s in test}
    ordered = [by_stem[Path(p).stem] for p in ds.values("filepath")]
    truth = sm.predict(model, np.stack([s.image for s in ordered])) != sm.predict(
        model, np.stack([s.clean for s in ordered])
    )
    return ds, model, truth


def per_fill(ds, model) -> np.ndarray:
    """bool ``[N, len(ALL_FILLS)]``: the flip under each fill alone."""
    cols = []
    for fill in ALL_FILLS:
        background_test(
            ds,
            "cam",
            "objects",
            model,
            fill=fill,
            transforms=sm.transforms(),
            overwrite=True,
        )
        cols.append(np.asarray(ds.values("cam_bg_flip"), dtype=bool))
    return np.stack(cols, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=200)
    args = parser.parse_args()
    rows: dict[tuple, dict[str, float]] = {}
    for name in GENERATORS:
        ds, model, truth = audited(name, args.n_train, args.n_test)
        flips = per_fill(ds, model)
        print(
            f"\n== {name}: {int(truth.sum())} of {len(truth)} predictions caused by the mark"
        )
        for k in range(1, len(ALL_FILLS) + 1):
            for combo in itertools.combinations(range(len(ALL_FILLS)), k):
                rate = flips[:, combo].mean(axis=1)
                for t in sorted({*np.arange(1, k + 1) / k}):
                    agree = float(np.mean((rate >= t - 1e-9) == truth))
                    rows.setdefault((combo, round(t, 3)), {})[name] = agree
        summary = background_test(
            ds, "cam", "objects", model, transforms=sm.transforms(), overwrite=True
        )
        flag = np.asarray(ds.values("cam_bg_flip"), dtype=bool)
        print(
            f"defaults {list(DEFAULT_FILLS)} min_flip_rate {DEFAULT_MIN_FLIP_RATE}: "
            f"agreement {np.mean(flag == truth):.3f}, flagged {int(flag.sum())}, "
            f"true {int(truth.sum())}, per fill {summary['fill_flip_rates']}"
        )
    print("\nfills | min_flip_rate | " + " | ".join(GENERATORS) + " | worst")
    ranked = sorted(rows.items(), key=lambda kv: -min(kv[1].values()))
    for (combo, t), agree in ranked[:25] + [kv for kv in ranked if len(kv[0][0]) == 1]:
        fills = "+".join(ALL_FILLS[i] for i in combo)
        vals = " | ".join(f"{agree[g]:.3f}" for g in GENERATORS)
        print(f"{fills} | {t:.2f} | {vals} | {min(agree.values()):.3f}")


if __name__ == "__main__":
    main()
