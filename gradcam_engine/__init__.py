"""CAM audits for FiftyOne datasets.

The engine (``CamEngine``, ``METHODS``, targets, layers) is pure torch. The
dataset workflow (``compute_cams``, ``score_cams``, runs) imports FiftyOne and is
loaded on first use, so that scripts using only the engine stay light.
"""

from __future__ import annotations

import importlib

from .engine import (
    METHODS,
    CamEngine,
    CamResult,
    DetectionCamEngine,
    DetectionScoreTarget,
    MaskSumTarget,
    default_layers,
    get_method,
    layer_names,
    list_methods,
    register_method,
    resolve_layers,
    suggest_layers,
    token_layout,
)
from .runs.naming import heatmap_field, slug

__version__ = "0.1.0"

# name -> module that defines it; imported lazily because it imports fiftyone.
_WORKFLOW = {
    "compute_cams": ".runs.compute",
    "CamRunSummary": ".runs.outcome",
    "CamRunFailed": ".runs.outcome",
    "QueuedRun": ".runs.sharding",
    "cam_run_status": ".runs.status",
    "list_cam_runs": ".runs.cam_runs",
    "get_cam_run": ".runs.cam_runs",
    "rename_cam_run": ".runs.cam_runs",
    "delete_cam_run": ".runs.cam_runs",
    "RunIsLive": ".runs.live",
    "RunGone": ".runs.live",
    "load_model": ".sources.models",
    "list_model_sources": ".sources.models",
    "register_model_source": ".sources.models",
    "load_hf_classifier": ".sources.huggingface",
    "zero_shot_classifier": ".sources.zero_shot",
    "score_cams": ".audit.scoring",
    "ScoreSummary": ".audit.score_summary",
    "class_report": ".audit.report",
    "save_review_views": ".audit.report",
    "export_review": ".audit.export",
    "cluster_cams": ".audit.clusters",
    "background_test": ".audit.model_checks",
    "road_cams": ".audit.model_checks",
    "sanity_check": ".audit.sanity",
    "deletion_insertion_cams": ".audit.faithfulness",
    "show_label_maps": ".audit.label_maps",
    "score_label_maps": ".audit.label_maps",
}

__all__ = [
    "CamEngine",
    "CamResult",
    "DetectionCamEngine",
    "DetectionScoreTarget",
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
    "suggest_layers",
    "token_layout",
    *_WORKFLOW,
]


def __getattr__(name: str):
    if name in _WORKFLOW:
        return getattr(importlib.import_module(_WORKFLOW[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
