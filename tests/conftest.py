"""Test session setup: an isolated FiftyOne database and the plugin on FIFTYONE_PLUGINS_DIR.

Environment variables are set before anything imports fiftyone.
"""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS

ROOT = pathlib.Path(__file__).resolve().parents[1]
# bundled images (both.png: the GradCAM lesson photo), package data of the demo
DATA = ROOT / "gradcam_engine" / "demo" / "data"

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


def _stop_database_and_clean_up() -> None:
    """Stop the embedded mongod before deleting its directory (deleting it under a
    running mongod makes it abort). Registered before fiftyone is imported, so it
    runs after FiftyOne's own exit handlers, which still use the database."""
    database = sys.modules.get("fiftyone.core.odm.database")
    service = getattr(database, "_db_service", None)
    if service is not None:
        database._disconnect()
        service.stop()
    shutil.rmtree(_TMP, ignore_errors=True)


atexit.register(_stop_database_and_clean_up)


@pytest.fixture(scope="session")
def artifacts_dir() -> pathlib.Path:
    """Where tests leave files worth looking at (screenshots, reports)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium driven by playwright. Browser tests fail, never
    skip, when it is missing: `make test` installs it (`make browser`).

    Module-scoped: while playwright's sync API is open, its event loop counts as
    running, and ``foo.execute_operator`` would return an asyncio Task instead of
    a result in later test modules."""
    assert os.path.exists(CHROMIUM), (
        f"{CHROMIUM} is missing: run `make browser` (apt-get install -y chromium); "
        "browser tests do not skip"
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch and one BLAS thread for a module: on 2 cores shared with other
    processes (DataLoader workers, mongod), the thread pools spin against each
    other and one thread is several times faster."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tmp_root() -> pathlib.Path:
    return _TMP
