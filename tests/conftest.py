"""Test session setup: an isolated FiftyOne database and the plugin on FIFTYONE_PLUGINS_DIR.

Environment variables are set before anything imports fiftyone.
"""

import os
import pathlib
import shutil
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "data"  # bundled images (both.png: the GradCAM lesson photo)

_TMP = pathlib.Path(tempfile.mkdtemp(prefix="cam-audit-tests-"))
_PLUGINS = _TMP / "plugins"
_PLUGINS.mkdir()
# FiftyOne finds a plugin by walking FIFTYONE_PLUGINS_DIR for fiftyone.yml and
# follows symlinks, so the repository itself is the installed plugin.
(_PLUGINS / "cam-audit").symlink_to(ROOT, target_is_directory=True)

os.environ.update(
    FIFTYONE_DATABASE_DIR=str(_TMP / "db"),
    FIFTYONE_PLUGINS_DIR=str(_PLUGINS),
    FIFTYONE_DO_NOT_TRACK="true",
    FIFTYONE_DATABASE_VALIDATION="false",
    FIFTYONE_SHOW_PROGRESS_BARS="false",
)

ARTIFACTS = ROOT / "artifacts"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def artifacts_dir() -> pathlib.Path:
    """Where tests leave files worth looking at (screenshots, reports)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def tmp_root() -> pathlib.Path:
    return _TMP
