"""A tiny classifier that takes a fixed time per batch, as a real model does, so
that the scale-out test can watch shards overlap and kill a worker mid-shard.

Model source ``scale_out_models:build_slow_model`` (tests/ is on the workers'
``PYTHONPATH``).
"""

import time

from plugin_models import build_model
from torch import nn

SECONDS_PER_BATCH = 1.0


class Pause(nn.Module):
    """Identity that sleeps: a stand-in for a big model's compute time."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x


def build_slow_model():
    module, _, classes = build_model()
    slow = nn.Sequential()
    slow.add_module("pause", Pause(SECONDS_PER_BATCH))
    for name, child in module.named_children():
        slow.add_module(name, child)
    from gradcam_engine.sources.models import ResizeNormalize

    return slow.eval(), ResizeNormalize(32), list(classes)
