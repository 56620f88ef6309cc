"""Registry of CAM methods: lower-case name -> pytorch-grad-cam class."""

from __future__ import annotations

import difflib

import pytorch_grad_cam as pgc
from pytorch_grad_cam.base_cam import BaseCAM

__all__ = ["METHODS", "register_method", "list_methods", "get_method"]

METHODS: dict[str, type] = {}


def register_method(name: str, cam_class: type) -> type:
    """Make ``cam_class`` selectable as ``name``. Registering a name twice raises."""
    if not isinstance(name, str) or name != name.lower() or not name:
        raise ValueError(
            f"method name must be a non-empty lower-case str, got {name!r}"
        )
    if name in METHODS:
        raise ValueError(
            f"method {name!r} is already registered ({METHODS[name].__name__})"
        )
    METHODS[name] = cam_class
    return cam_class


def list_methods() -> list[str]:
    """Names of every registered method, sorted."""
    return sorted(METHODS)


def get_method(name: str) -> type:
    """The class registered as ``name``; a miss suggests the closest names."""
    if not isinstance(name, str):
        raise TypeError(
            f"method must be a str such as 'gradcam', got {type(name).__name__}"
        )
    key = name.strip().lower()
    if key in METHODS:
        return METHODS[key]
    close = difflib.get_close_matches(key, METHODS, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"Unknown CAM method {name!r}.{hint} Valid methods: {', '.join(list_methods())}"
    )


for _name, _cls in {
    "gradcam": pgc.GradCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "hirescam": pgc.HiResCAM,
    "gradcam-elementwise": pgc.GradCAMElementWise,
    "xgradcam": pgc.XGradCAM,
    "layercam": pgc.LayerCAM,
    "eigencam": pgc.EigenCAM,
    "eigengradcam": pgc.EigenGradCAM,
    "kpcacam": pgc.KPCA_CAM,
    "scorecam": pgc.ScoreCAM,
    "ablationcam": pgc.AblationCAM,
    "fullgrad": pgc.FullGrad,
    "shapleycam": pgc.ShapleyCAM,
    "fem": pgc.FEM,
    "randomcam": pgc.RandomCAM,
    "segeigencam": pgc.SegEigenCAM,
    "finercam": pgc.FinerCAM,
    "sess": pgc.SESS,
}.items():
    register_method(_name, _cls)

# Methods whose classes are not BaseCAM subclasses wrap a base method and take
# no ``aug_smooth`` argument.
WRAPPERS = frozenset(cls for cls in METHODS.values() if not issubclass(cls, BaseCAM))
