"""The CAM engine: pure torch (plus numpy and pytorch-grad-cam), no FiftyOne.

``CamEngine`` runs any pytorch-grad-cam method on any ``nn.Module`` and returns
one map per requested layer, all from one forward and one backward pass for the
gradient methods. The modules below it each do one step: ``layers`` (find
modules by dotted name), ``hooks`` (capture outputs inside a ``with``),
``reshape`` (tokens -> spatial grids), ``targets`` (what to explain),
``methods`` (the method registry) and ``cam_images`` (per-method arithmetic).
"""

from .cam_engine import CamEngine, CamResult
from .detection import DetectionCamEngine, DetectionCamResult
from .detection_targets import DetectionScoreTarget
from .layers import default_layers, layer_names, resolve_layers, suggest_layers
from .methods import METHODS, get_method, list_methods, register_method
from .reshape import token_layout
from .targets import MaskSumTarget

__all__ = [
    "METHODS",
    "CamEngine",
    "CamResult",
    "DetectionCamEngine",
    "DetectionCamResult",
    "DetectionScoreTarget",
    "MaskSumTarget",
    "default_layers",
    "get_method",
    "layer_names",
    "suggest_layers",
    "list_methods",
    "register_method",
    "resolve_layers",
    "token_layout",
]
