"""The plan of a run: what ``compute_cams`` checked and built before writing
anything (``compute._plan_run``), and what the streaming step (``stream.py``)
reads. Its own module so that ``compute`` and ``stream`` do not import each
other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fiftyone as fo
import torch
from PIL import Image

from ..engine.cam_engine import CamEngine
from ..sources.geometry import TransformGeometry
from .naming import FieldNames

__all__ = ["RunPlan"]


@dataclass
class RunPlan:
    """Everything a run needs, checked before anything is written."""

    dataset: fo.Dataset
    run_key: str
    engine: CamEngine
    transforms: Callable[[Image.Image], torch.Tensor]
    geometry: TransformGeometry
    class_names: list[str] | None
    fixed_class: int | None
    names: FieldNames
    config: dict[str, Any]
    live: Any = None  # live.LiveRun once the run is opened: checked per batch
