"""A trained Clever-Hans CNN and a CAM run ``"hans"`` on marked test images,
shared by test_discovery.py and test_app_discovery.py."""

from __future__ import annotations

import uuid

from trained_models import trained

from gradcam_engine.demo import marked_data as md
from gradcam_engine.demo import shortcut_model as sm
from gradcam_engine.demo.clever_hans import marked_dataset
from gradcam_engine.demo.shortcut_data import CLASSES
from gradcam_engine.runs.compute import compute_cams


def marked_run(directory, n_test: int, prefix: str):
    """``(dataset, model, test samples)``: the model trained on 1,000 marked
    training images (seeded; trained once for all tests), Grad-CAM at
    ``block4`` as run ``"hans"``."""
    model = trained("marked", 1000, "train", seed=0)
    test = md.generate_marked(n_test, "test", seed=1)
    ds = marked_dataset(f"{prefix}-{uuid.uuid4().hex[:8]}", test, directory)
    compute_cams(
        ds,
        model,
        layers=["block4"],
        run_key="hans",
        transforms=sm.transforms(),
        classes=list(CLASSES),
        num_workers=0,
        progress=False,
    )
    return ds, model, test
