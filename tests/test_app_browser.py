"""The CAM review panel in the real FiftyOne App, driven by headless Chromium.

Needs Debian's chromium at /usr/bin/chromium (``apt-get install chromium``) and
the ``playwright`` package; a missing browser is a failure, never a skip.
Screenshots go to ``artifacts/`` (``app_panel.png`` is the README's picture).
"""

from __future__ import annotations

import pathlib
import socket
import sys
import time

import fiftyone as fo
import pytest

TESTS = pathlib.Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from test_operators import MODEL, PHOTOS, make_dataset  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scored_dataset(tmp_root):
    import gradcam_engine as ge

    ds = make_dataset(tmp_root / "app_images", "cam-app")
    ge.compute_cams(ds, MODEL, layers=["stem", "block"], run_key="cam", progress=False)
    ge.score_cams(ds, "cam", gt_field="ground_truth")
    yield ds
    ds.delete()


@pytest.fixture(scope="module")
def app_url(scored_dataset):
    port = _free_port()
    session = fo.launch_app(scored_dataset, remote=True, port=port, auto=False)
    try:
        yield f"http://localhost:{port}/datasets/{scored_dataset.name}", session
    finally:
        session.close()


APP_RACES = ("detached ArrayBuffer", "entry is loading")


def _wait_for_grid(page, n: int, timeout: float = 90) -> None:
    page.get_by_text(f"{n} samples").first.wait_for(timeout=timeout * 1000)
    dismiss = page.get_by_text("Dismiss", exact=True)
    if dismiss.count():
        dismiss.first.click()


def test_review_panel_ranks_opens_and_filters(
    app_url, browser, artifacts_dir, scored_dataset
):
    url, session = app_url
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    _wait_for_grid(page, len(PHOTOS))
    page.screenshot(path=str(artifacts_dir / "app_grid.png"))

    # open the panel from the "+" new-panel menu
    page.locator("[data-cy='new-panel-btn']").first.click()
    page.get_by_text("CAM review", exact=True).first.click()
    page.get_by_text("Suspects (lowest focus)").first.wait_for(timeout=60_000)
    page.get_by_text("Show lowest N in grid").first.wait_for(timeout=30_000)

    # the ranking: lowest focus first, from the database
    focus = scored_dataset.values("cam_block_focus")
    names = [pathlib.Path(p).name for p in scored_dataset.values("filepath")]
    lowest = min(zip(focus, names, strict=True))[1]
    first_row = page.locator("table tbody tr").first
    first_row.wait_for(timeout=30_000)
    assert lowest in first_row.inner_text()
    time.sleep(3)  # let the plotly chart and heatmaps draw
    page.screenshot(path=str(artifacts_dir / "app_panel.png"))

    # clicking a suspect opens it in the modal
    first_row.get_by_text(lowest).click()
    page.wait_for_function(
        "() => new URL(window.location.href).searchParams.has('id')"
        " || !!document.querySelector('[data-cy=modal]')",
        timeout=30_000,
    )
    time.sleep(2)
    page.screenshot(path=str(artifacts_dir / "app_modal.png"))
    page.keyboard.press("Escape")
    time.sleep(1)

    # "Show lowest N" filters the grid (the session's view follows the App)
    page.get_by_text("Show lowest N in grid").first.click()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and session.view is None:
        time.sleep(0.5)
    assert session.view is not None, "the App's view did not change"
    assert len(session.view) == min(10, len(PHOTOS))
    assert session.view.first().filepath.endswith(lowest)
    page.screenshot(path=str(artifacts_dir / "app_lowest.png"))
    # Known transient errors of the App itself while it redraws: its looker
    # reports a detached ArrayBuffer for heatmap thumbnails, and Recoil throws
    # "entry is loading" when a state entry is read mid-update. Every other
    # page error fails the test.
    ours = [e for e in errors if not any(known in e for known in APP_RACES)]
    (artifacts_dir / "app_page_errors.txt").write_text("\n".join(errors))
    assert not ours, ours
