"""Test session setup: an isolated FiftyOne database and the plugin on FIFTYONE_PLUGINS_DIR.

Environment variables are set before anything imports fiftyone.
"""

import atexit
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS, SESSION_ERRORS, WatchedBrowser

ROOT = pathlib.Path(__file__).resolve().parents[1]
# bundled images (both.png: the GradCAM lesson photo), package data of the demo
DATA = ROOT / "gradcam_engine" / "demo" / "data"

# Under pytest-xdist (`make test` runs two workers) every worker is a test
# session of its own: it imports this file, so it has its own mongod, temporary
# directory, FiftyOne datasets and free ports. What workers share is on disk:
# the trained-model cache (tests/trained_models.py: locked, atomic writes),
# artifacts/ (one file per test module), the checkout (test_layout's wheel
# build) and ~/.cache.
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if XDIST_WORKERS > 1:
    # One torch/BLAS thread per worker and per process a test starts (workers,
    # kernels, child interpreters inherit it): two workers with two threads
    # each on 2 cores spin against each other. Read when torch is imported.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

_TMP = pathlib.Path(tempfile.mkdtemp(prefix="cam-audit-tests-"))
_PLUGINS = _TMP / "plugins"
_PLUGINS.mkdir()
# FiftyOne finds a plugin by walking FIFTYONE_PLUGINS_DIR for fiftyone.yml and
# follows symlinks, so the repository itself is the installed plugin.
(_PLUGINS / "cam-audit").symlink_to(ROOT, target_is_directory=True)


def _start_own_mongod(db_dir: pathlib.Path) -> tuple[subprocess.Popen, str]:
    """This session's own mongod (FiftyOne's bundled binary) on a free port.

    FiftyOne's embedded database service is found by command line, machine-wide:
    a process attaches to ANY running one, whatever its FIFTYONE_DATABASE_DIR,
    so concurrent test sessions (and their delegated workers) would share one
    mongod and lose it when its owner exits. A database_uri skips that service.
    """
    import importlib.util
    import socket

    spec = importlib.util.find_spec("fiftyone")
    mongod = pathlib.Path(spec.origin).parent / "db" / "bin" / "mongod"
    db_dir.mkdir(parents=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [str(mongod), "--dbpath", str(db_dir), "--port", str(port)]
        + ["--bind_ip", "127.0.0.1", "--nounixsocket"]
        + ["--logpath", str(db_dir / "mongod.log")],
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # not killed with a test's process group
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"mongodb://127.0.0.1:{port}"
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"mongod did not start; see {db_dir / 'mongod.log'}")


_MONGOD, _DATABASE_URI = _start_own_mongod(_TMP / "db")

os.environ.update(
    FIFTYONE_DATABASE_URI=_DATABASE_URI,
    FIFTYONE_DATABASE_DIR=str(_TMP / "db"),
    FIFTYONE_PLUGINS_DIR=str(_PLUGINS),
    FIFTYONE_DO_NOT_TRACK="true",
    FIFTYONE_DATABASE_VALIDATION="false",
    FIFTYONE_SHOW_PROGRESS_BARS="false",
    # where the App may write heatmap files (runs/trust.py), inside this session
    FIFTYONE_DEFAULT_DATASET_DIR=str(_TMP / "fiftyone"),
    # the deployment's model sources the operator tests pick by name (the App
    # refuses entry points; workers inherit them), and one whose loader raises:
    # an operator that fails after its form accepted it (the App must say why)
    CAM_AUDIT_MODEL_SOURCES="plugin-test-model=plugin_models:build_model,"
    "broken-test-model=plugin_models:broken_model",
)

ARTIFACTS = ROOT / "artifacts"


def _stop_database_and_clean_up() -> None:
    """Stop this session's mongod before deleting its directory (deleting it under
    a running mongod makes it abort). Registered before fiftyone is imported, so
    it runs after FiftyOne's own exit handlers, which still use the database."""
    database = sys.modules.get("fiftyone.core.odm.database")
    if database is not None:
        database._disconnect()
    _MONGOD.terminate()
    try:
        _MONGOD.wait(timeout=30)
    except subprocess.TimeoutExpired:
        _MONGOD.kill()
        _MONGOD.wait()
    shutil.rmtree(_TMP, ignore_errors=True)


atexit.register(_stop_database_and_clean_up)


# Under xdist the longest test files go first (`--dist loadfile
# --no-loadscope-reorder` hands each worker the next file when it is done): the
# short files then fill the end and no worker is left alone with a long one.
# Measured in BENCHMARKS.md "Test suite". A new slow file (browser, notebook,
# worker processes, fresh interpreters) belongs in this list; other browser
# modules (test_app_*.py) come right after it.
SLOWEST_FILES_FIRST = (
    "test_app_browser.py",
    "test_notebooks.py",
    "test_app_review.py",
    "test_live_runs.py",
    "test_demo_datasets.py",
    "test_detection.py",
    "test_detection_operators.py",
    "test_app_discovery.py",
    "test_app_eval_metrics.py",
    "test_proof.py",
    "test_discovery.py",
    "test_engine.py",
    "test_scale_out.py",
    "test_layout.py",
    "test_operators.py",
    "test_geometry.py",
    "test_app_outcomes.py",
    "test_demo_clever_hans.py",
    "test_handwritten.py",
    "test_engine_models.py",
    "test_faults.py",
    "test_runs.py",
)


def pytest_collection_modifyitems(config, items):
    if XDIST_WORKERS <= 1:
        return

    def rank(item) -> int:
        name = item.path.name
        if name in SLOWEST_FILES_FIRST:
            return SLOWEST_FILES_FIRST.index(name)
        return len(SLOWEST_FILES_FIRST) + (not name.startswith("test_app_"))

    items.sort(key=rank)  # stable: each file's tests keep their order


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
            # every page's console errors go to SESSION_ERRORS (checked per test)
            yield WatchedBrowser(b, SESSION_ERRORS)
        finally:
            b.close()


_ERRORS_BEFORE = pytest.StashKey[int]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    item.stash[_ERRORS_BEFORE] = len(SESSION_ERRORS.seen)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test fails on any console or page error of a browser page during its
    setup or run that is not known noise (chromium.NOT_OURS): none may come
    from the plugin (js/, its panel or its operators)."""
    result = yield
    ours = SESSION_ERRORS.ours(item.stash.get(_ERRORS_BEFORE, 0))
    if ours:
        pytest.fail(
            "console errors in the browser (not FiftyOne's known noise, see "
            "tests/chromium.py):\n" + "\n".join(map(str, ours)),
            pytrace=False,
        )
    return result


def pytest_sessionfinish(session):
    """Every console error the browser tests saw, and which were known noise
    (artifacts/console_errors.txt), when there were any."""
    if SESSION_ERRORS.seen:
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "console_errors.txt").write_text(
            "".join(f"[{e.known() or 'ours'}] {e}\n" for e in SESSION_ERRORS.seen)
        )


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
