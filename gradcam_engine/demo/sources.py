"""The demo's model sources, so that the App (and any script) can rerun the
demo's runs by name: ``demo-shortcut-cnn``, ``demo-control-cnn`` (trained by
``make demo``, loaded from its cache), ``clever-hans-cnn`` and
``demo-mark-detector``.

:func:`register` is the entry point of group ``gradcam_engine.model_sources``
(pyproject.toml): ``sources.models`` loads that group on its first lookup, so
that the library never imports the demo (imports go one way) and the names
still resolve in every process where the package is installed (App server,
delegated workers). The demo also calls it itself, so that it runs from a
source checkout. Loaders import the demo's modules only when called.
"""

from __future__ import annotations

from collections.abc import Callable

from ..sources.models import LoadedModel, list_model_sources, register_model_source

__all__ = ["register"]


def _shortcut_source(kind: str) -> Callable[[], LoadedModel]:
    def load() -> LoadedModel:
        from . import datasets, shortcut_data, shortcut_model

        models = datasets.shortcut_models()
        return LoadedModel(
            module=getattr(models, kind),
            transforms=shortcut_model.transforms(),
            classes=list(shortcut_data.CLASSES),
            description=f"demo-{kind}-cnn",
            default_layers=["block4"],
        )

    return load


def _clever_hans_source() -> LoadedModel:
    from . import clever_hans

    return clever_hans.load_source()


def _detector_source() -> LoadedModel:
    from . import detection_case

    return detection_case.load_detector_source()


def register() -> None:
    """Register the demo's model sources (once: names already there are kept)."""
    sources = {
        "demo-shortcut-cnn": _shortcut_source("shortcut"),
        "demo-control-cnn": _shortcut_source("control"),
        "clever-hans-cnn": _clever_hans_source,
        "demo-mark-detector": _detector_source,
    }
    registered = set(list_model_sources())
    for name, loader in sources.items():
        if name not in registered:
            register_model_source(name, loader)
