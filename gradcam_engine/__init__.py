"""CAM audits for FiftyOne datasets.

The engine (``CamEngine``, ``METHODS``, targets, layers) is pure torch. The
dataset workflow (``compute_cams``, ``score_cams``, runs) imports FiftyOne and is
loaded on first use, so that scripts using only the engine stay light.
"""

from __future__ import annotations

import importlib

from .engine import CamEngine, CamResult
from .layers import default_layers, layer_names, resolve_layers
from .methods import METHODS, get_method, list_methods, register_method
from .naming import heatmap_field, slug
from .reshape import token_layout
from .targets import MaskSumTarget

__version__ = "0.1.0"

# name -> module that defines it; imported lazily because it imports fiftyone.
_WORKFLOW = {
    "compute_cams": ".workflow",
    "CamRunSummary": ".workflow",
    "list_cam_runs": ".runs",
    "get_cam_run": ".runs",
    "rename_cam_run": ".runs",
    "delete_cam_run": ".runs",
    "load_model": ".model_sources",
    "list_model_sources": ".model_sources",
    "register_model_source": ".model_sources",
    "score_cams": ".scoring",
    "class_report": ".report",
    "save_review_views": ".report",
    "export_review": ".export",
}

__all__ = [
    "CamEngine",
    "CamResult",
    "METHODS",
    "MaskSumTarget",
    "default_layers",
    "get_method",
    "heatmap_field",
    "layer_names",
    "list_methods",
    "register_method",
    "resolve_layers",
    "slug",
    "token_layout",
    *_WORKFLOW,
]


def __getattr__(name: str):
    if name in _WORKFLOW:
        return getattr(importlib.import_module(_WORKFLOW[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
