"""The App's trust boundary: what an operator may ask the server to load or write.

Python callers of the library are trusted (they run code anyway). App users
are not: every operator that takes a model or an output directory checks it
here, before anything is imported, read, registered or written.

- A model from the App is a registered model source (``register_model_source``,
  the bundled and demo ones, and the admin's ``model_sources`` below) or a
  FiftyOne zoo name (``"zoo:<name>"``). A ``package.module:function`` entry
  point or a file path is refused unless the admin opts in
  (``allow_code_models``). ``allow_pickle`` never comes from the App.
- An output directory from the App resolves (``..`` and symlinks followed)
  inside ``fo.config.default_dataset_dir`` or an admin's ``output_roots``.

The admin's settings, read by the process that runs the operator (the App
server, or a delegated worker), never from a dataset (App users can edit a
dataset's App config): the plugin's entry of FiftyOne's App config,
``fo.app_config.plugins["@cam-audit/cam-audit"]`` (the ``plugins`` key of
``~/.fiftyone/app_config.json`` or ``FIFTYONE_APP_CONFIG_PATH``), and
environment variables, which add to it:

=====================  ===============================  ======================
setting                environment variable             value
=====================  ===============================  ======================
``allow_code_models``  ``CAM_AUDIT_ALLOW_CODE_MODELS``  true: entry points and
                                                        files from the App
``model_sources``      ``CAM_AUDIT_MODEL_SOURCES``      ``{name: spec}`` /
                                                        ``name=spec,name=spec``
``output_roots``       ``CAM_AUDIT_OUTPUT_ROOTS``       list of directories /
                                                        ``os.pathsep``-joined
=====================  ===============================  ======================
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import threading
from typing import Any

import fiftyone as fo

from ..sources.models import list_model_sources, load_model, register_model_source
from .sharding import PLUGIN_NAME

__all__ = [
    "ALLOW_CODE_ENV",
    "MODEL_SOURCES_ENV",
    "OUTPUT_ROOTS_ENV",
    "NotAllowedFromApp",
    "admin_settings",
    "allow_code_models",
    "app_model_error",
    "check_app_model",
    "check_app_output_dir",
    "check_output_dir",
    "model_spec_kind",
    "output_roots",
    "register_admin_sources",
]

logger = logging.getLogger(__name__)

ALLOW_CODE_ENV = "CAM_AUDIT_ALLOW_CODE_MODELS"
MODEL_SOURCES_ENV = "CAM_AUDIT_MODEL_SOURCES"
OUTPUT_ROOTS_ENV = "CAM_AUDIT_OUTPUT_ROOTS"
_TRUE = {"1", "true", "yes", "on"}
_ENTRY_POINT = re.compile(r"[A-Za-z_][\w.]*:[\w.]+")
# admin source name -> spec, as registered by this process (idempotent reloads;
# the App server resolves forms in several threads at once)
_ADMIN_SOURCES: dict[str, str] = {}
_ADMIN_LOCK = threading.Lock()
_CLASHES: set[tuple[str, str]] = set()  # warned once each


class NotAllowedFromApp(ValueError):
    """An operator asked for something only a Python caller or an admin may."""


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut for messages (a refused value may be 100 KB)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


# ------------------------------------------------------------ admin settings


def admin_settings() -> dict[str, Any]:
    """The plugin's entry of this process's FiftyOne App config (admin-owned)."""
    settings = (getattr(fo.app_config, "plugins", None) or {}).get(PLUGIN_NAME)
    return dict(settings) if isinstance(settings, dict) else {}


def allow_code_models() -> bool:
    """Whether the admin lets App users pass entry points and model files."""
    env = os.environ.get(ALLOW_CODE_ENV, "").strip().lower() in _TRUE
    return env or admin_settings().get("allow_code_models") is True


def output_roots() -> list[str]:
    """Directories (real paths) under which App users may write heatmap files:
    FiftyOne's dataset directory plus the admin's ``output_roots``."""
    roots = [fo.config.default_dataset_dir]
    configured = admin_settings().get("output_roots") or []
    roots += [configured] if isinstance(configured, str) else list(configured)
    roots += [r for r in os.environ.get(OUTPUT_ROOTS_ENV, "").split(os.pathsep) if r]
    return list(dict.fromkeys(os.path.realpath(os.path.expanduser(r)) for r in roots))


def _admin_source_specs() -> dict[str, str]:
    specs = dict(admin_settings().get("model_sources") or {})
    for item in os.environ.get(MODEL_SOURCES_ENV, "").split(","):
        name, sep, spec = item.partition("=")
        if item.strip() and not sep:
            raise ValueError(
                f"{MODEL_SOURCES_ENV}: {item!r} is not 'name=package.module:function'"
            )
        if sep:
            specs[name.strip()] = spec.strip()
    return specs


def register_admin_sources() -> list[str]:
    """Register the admin's ``model_sources`` (name -> entry point or file) as
    model sources, so that App users pick them by name. Idempotent; a name
    already registered otherwise is left alone (logged). Returns the names."""
    names = []
    with _ADMIN_LOCK:
        for name, spec in _admin_source_specs().items():
            if _ADMIN_SOURCES.get(name) == spec:
                names.append(name)
                continue
            if name in list_model_sources():
                if (name, spec) in _CLASHES:
                    continue
                _CLASHES.add((name, spec))
                logger.warning(
                    "model_sources: %r is already a registered model source; the "
                    "admin's %r is ignored",
                    name,
                    spec,
                )
                continue
            register_model_source(name, _admin_loader(spec))
            _ADMIN_SOURCES[name] = spec
            names.append(name)
    return names


def _admin_loader(spec: str):
    def load():
        return load_model(spec)  # never allow_pickle: a file stays weights-only

    return load


# ------------------------------------------------------------ models


def model_spec_kind(spec: str) -> str:
    """What ``load_model(spec)`` would do with the str ``spec``, decided from
    the string alone (no import, no file access): ``"registered"``, ``"zoo"``,
    ``"entry_point"`` (imports and calls code) or ``"file"`` (reads a file; also
    any unknown name, which ``load_model`` would look for on disk)."""
    if spec in list_model_sources():
        return "registered"
    if spec.startswith("zoo:") and spec[4:].strip():
        return "zoo"
    if _ENTRY_POINT.fullmatch(spec):
        return "entry_point"
    return "file"


def app_model_error(spec: Any) -> str | None:
    """Why an App user may not load ``spec`` (None: allowed)."""
    if not isinstance(spec, str) or not spec.strip():
        return f"model must be the name of a model source, got {_short(spec)}"
    register_admin_sources()
    kind = model_spec_kind(spec)
    if kind in ("registered", "zoo") or allow_code_models():
        return None
    what = {
        "entry_point": "an entry point (code to import and call)",
        "file": "not a registered model source: a file path or an unknown name",
    }[kind]
    close = difflib.get_close_matches(spec[:200], list_model_sources(), n=3)
    if close:
        what += f" (did you mean {', '.join(map(repr, close))}?)"
    return (
        f"model {_short(spec)} is {what}. From the App, model is one of the "
        f"registered model sources {list_model_sources()} or a FiftyOne zoo name "
        "('zoo:<name>'). Python callers can pass it to compute_cams directly. "
        "An admin can name it as a source (plugin setting 'model_sources': "
        f"{{'<name>': {_short(spec)}}} in fo.app_config.plugins[{PLUGIN_NAME!r}], "
        f"or {MODEL_SOURCES_ENV}='<name>=<spec>'), or allow entry points and "
        "files from the App ('allow_code_models': true, or "
        f"{ALLOW_CODE_ENV}=true on the App server and its workers)"
    )


def check_app_model(spec: Any) -> str:
    """Raise :class:`NotAllowedFromApp` unless an App user may load ``spec``."""
    error = app_model_error(spec)
    if error:
        raise NotAllowedFromApp(error)
    return spec


# ------------------------------------------------------------ output locations


def check_output_dir(output_dir: str | os.PathLike) -> str:
    """Any caller: ``output_dir`` must be, or be creatable as, a directory (an
    existing file, or a file on its way, is refused before any run exists).
    Returns the absolute path."""
    path = os.path.abspath(os.fspath(output_dir))
    probe = path
    while not os.path.exists(probe):  # the deepest part that exists
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        where = "is a file" if probe == path else f"lies under the file {probe!r}"
        raise ValueError(
            f"output_dir {path!r} {where}: heatmap PNGs need a directory; pass "
            "the path of a directory (it is created if missing)"
        )
    return path


def check_app_output_dir(output_dir: Any) -> str:
    """An App user's ``output_dir``, resolved (relative to FiftyOne's dataset
    directory; ``..`` and symlinks followed): refused unless it lies inside
    :func:`output_roots`. Returns the resolved path."""
    if not isinstance(output_dir, str) or not output_dir.strip():
        raise NotAllowedFromApp(
            f"output_dir must be a directory path, got {_short(output_dir)}"
        )
    base = fo.config.default_dataset_dir
    real = os.path.realpath(os.path.join(base, os.path.expanduser(output_dir)))
    roots = output_roots()
    if not any(os.path.commonpath([real, root]) == root for root in roots):
        raise NotAllowedFromApp(
            f"output_dir {_short(output_dir)} resolves to {_short(real)}, outside "
            f"the directories the App may write to ({', '.join(roots)}). Pick a "
            "directory under them; an admin adds roots with the plugin setting "
            f"'output_roots' (fo.app_config.plugins[{PLUGIN_NAME!r}]) or "
            f"{OUTPUT_ROOTS_ENV}"
        )
    return check_output_dir(real)
