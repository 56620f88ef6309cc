"""A tiny classifier importable as the model entry point ``plugin_models:build_model``.

Used by the operator tests (tests/ is put on ``sys.path`` and on the
delegated worker's ``PYTHONPATH``). Random but seeded weights: the tests check
the plumbing, not what the model looks at.
"""

import torch
from torch import nn

from gradcam_engine.sources.models import ResizeNormalize

CLASSES = ["cat", "coffee", "rocket"]


def build_model():
    torch.manual_seed(0)
    module = nn.Sequential()
    module.add_module("stem", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()))
    module.add_module(
        "block", nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
    )
    module.add_module("pool", nn.AdaptiveAvgPool2d(1))
    module.add_module("flat", nn.Flatten())
    module.add_module("head", nn.Linear(16, len(CLASSES)))
    return module.eval(), ResizeNormalize(64), list(CLASSES)


def broken_model():
    """A registered source that fails when loaded (its weights are missing)."""
    raise RuntimeError("broken-test-model: its weights file is missing")
