"""The plugin in the real FiftyOne App, driven by headless Chromium, as a reviewer
uses it: the compute form's error for a run that cannot work, readable heatmaps,
the review panel, its Open, switching runs, and no console errors on the way.

Needs Debian's chromium at /usr/bin/chromium (``apt-get install chromium``) and
the ``playwright`` package; a missing browser is a failure, never a skip.
Screenshots of every step go to ``artifacts/`` (``app_panel.png`` is the
README's picture).
"""

from __future__ import annotations

import io
import os
import pathlib
import socket
import sys
import time

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

TESTS = pathlib.Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from test_operators import MODEL, PHOTOS, make_dataset  # noqa: E402

STORAGE = os.environ.get("CAM_TEST_STORAGE", "db")
# Messages of a closed network (Chromium's own fetches), not of the App.
OFFLINE = ("ERR_NAME_NOT_RESOLVED", "ERR_INTERNET_DISCONNECTED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scored_dataset(tmp_root):
    import gradcam_engine as ge

    ds = make_dataset(tmp_root / "app_images", "cam-app")
    for key in ("cam", "cam_b"):
        ge.compute_cams(
            ds, MODEL, layers=["block", "stem"], run_key=key, progress=False
        )
        ge.score_cams(ds, key, gt_field="ground_truth")
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


@pytest.fixture()
def page(app_url, browser):
    """A page that records every page error and console error."""
    url, _ = app_url
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(f"pageerror: {exc}"))
    page.on(
        "console",
        lambda msg: (
            msg.type == "error"
            and not any(o in msg.text for o in OFFLINE)
            and page.errors.append(f"console: {msg.text}")
        ),
    )
    page.goto(url)
    page.get_by_text(f"{len(PHOTOS)} samples").first.wait_for(timeout=90_000)
    # A sample view left open on the module's session (an earlier test's Open)
    # would cover the banner: close it first.
    page.keyboard.press("Escape")
    dismiss = page.get_by_text("Dismiss", exact=True)
    if dismiss.count():
        dismiss.first.click(force=True)
    page.keyboard.press("Escape")
    yield page
    page.close()


def _shot(page, artifacts_dir, name: str) -> np.ndarray:
    png = page.screenshot(path=str(artifacts_dir / f"app_{name}.png"))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _settled_shot(page, artifacts_dir, name: str, most: float) -> np.ndarray:
    """A screenshot once the page has stopped drawing (two screenshots 0.3 s
    apart are equal), or after ``most`` s (the fixed wait this replaces)."""
    deadline = time.monotonic() + most
    last = page.screenshot()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = page.screenshot()
        if now == last:
            break
        last = now
    return _shot(page, artifacts_dir, name)


# Recoil's "entry is loading" is the App reading its own state mid-update;
# it is transient and draws nothing wrong. Everything else fails the test.
APP_RACES = ("entry is loading",)


def _no_errors(page, artifacts_dir, name: str) -> None:
    (artifacts_dir / f"app_{name}_errors.txt").write_text("\n".join(page.errors))
    ours = [e for e in page.errors if not any(r in e for r in APP_RACES)]
    assert not ours, ours


def _open_panel(page) -> None:
    page.locator("[data-cy='new-panel-btn']").first.click()
    page.get_by_text("CAM review", exact=True).first.click()
    page.get_by_text("Suspects (lowest focus)").first.wait_for(timeout=60_000)


def _is_checked(scope, field: str) -> bool:
    row = scope.get_by_text(field, exact=True).first
    box = row.locator("xpath=ancestor::*[.//input[@type='checkbox']][1]")
    return box.locator("input[type='checkbox']").first.is_checked()


def _checked(page, field: str) -> bool:
    """Whether ``field``'s checkbox is ticked in the open sample's sidebar."""
    return _is_checked(page.locator("[data-cy=modal]"), field)


def _eventually(check, timeout: float = 20.0) -> bool:
    """Poll ``check`` until true or ``timeout`` s: the App applies fields
    asynchronously, later on a loaded 2-core machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return check()


def _assert_sample_view_shows(page, artifacts_dir, name: str, heatmap: str) -> None:
    """The sample view has exactly ``heatmap`` and the boxes switched on."""
    others = ("cam_block", "cam_stem", "cam_b_block", "cam_b_stem", "label")
    shown = _eventually(
        lambda: _checked(page, heatmap) and _checked(page, "ground_truth")
    )
    on = [f for f in others if f != heatmap and _checked(page, f)]
    (artifacts_dir / f"app_{name}_sample_view.txt").write_text(
        f"{heatmap} and ground_truth ticked: {shown}; other fields ticked: {on}\n"
    )
    assert shown, f"{heatmap} or ground_truth is not ticked in the sample view"
    assert not on, f"the sample view also shows {on}"


def _toggle(scope, field: str) -> None:
    row = scope.get_by_text(field, exact=True).first
    box = row.locator("xpath=ancestor::*[.//input[@type='checkbox']][1]")
    box.locator("input[type='checkbox']").first.click(force=True)


def _pick_source(page, name: str) -> None:
    page.get_by_text("Run / layer", exact=True).first.locator(
        "xpath=following::*[@role='combobox' or @aria-haspopup='listbox'][1]"
    ).click()
    page.get_by_role("option", name=name, exact=True).click()


def test_compute_form_shows_why_a_run_cannot_work(page, artifacts_dir, scored_dataset):
    page.keyboard.press("`")
    page.get_by_placeholder("Search operations by name...").fill("Compute CAMs")
    page.get_by_text("Compute CAMs", exact=True).first.click()
    page.get_by_text("Ground-truth class from a label field").first.click()
    page.get_by_text("Label field", exact=True).first.wait_for(timeout=30_000)
    _shot(page, artifacts_dir, "form")
    # the first Classification field ('label') is preselected
    page.get_by_role("button", name="Execute").click()
    # EfficientNet's ImageNet classes have no 'cat', 'coffee' or 'rocket'
    message = page.get_by_text("not classes of the model").first
    try:
        message.wait_for(timeout=120_000)
    finally:
        _shot(page, artifacts_dir, "form_executed")
    _shot(page, artifacts_dir, "form_error")
    # what to do in the App (the form's fields), not Python's classes=[...]
    shown = page.locator("body").inner_text()
    assert "'Label field'" in shown and "classes=[" not in shown, shown[-2000:]
    assert "gradcam" not in scored_dataset.list_runs()
    assert "gradcam_label" not in scored_dataset.get_field_schema()


def test_review_panel_opens_the_selected_heatmap_without_errors(
    page, app_url, artifacts_dir, scored_dataset
):
    _, session = app_url
    _shot(page, artifacts_dir, "grid")
    _open_panel(page)
    first_row = page.locator("table tbody tr").first
    first_row.wait_for(timeout=30_000)

    # the default source is the last run's first layer, ranked lowest first
    focus = scored_dataset.values("cam_b_block_focus")
    names = [pathlib.Path(p).name for p in scored_dataset.values("filepath")]
    lowest = min(zip(focus, names, strict=True))[1]
    assert lowest in first_row.inner_text()
    truth = scored_dataset.match(fo.ViewField("filepath").ends_with(lowest)).first()
    assert truth.label.label in first_row.inner_text()  # ground truth beside it
    _settled_shot(page, artifacts_dir, "panel", 3)  # the chart and heatmaps drawn

    # switch run: the table follows
    _pick_source(page, "cam/block")
    focus = scored_dataset.values("cam_block_focus")
    lowest = min(zip(focus, names, strict=True))[1]
    # precondition of the colour check below: this map has lows and highs
    opened = scored_dataset.match(fo.ViewField("filepath").ends_with(lowest)).first()
    values = opened.cam_block.map
    assert (values < 60).mean() > 0.05 and (values > 180).mean() > 0.05
    # the panel has switched (cam and cam_b are the same model's maps: the
    # table's first row alone does not tell the runs apart, and an Open before
    # the switch would open cam_b's heatmap)
    page.wait_for_function(
        "() => document.body.innerText.includes('cam** / `block`')"
        " || document.body.innerText.includes('cam / block')",
        timeout=30_000,
    )
    page.wait_for_function(
        "name => document.querySelector('table tbody tr')?.innerText.includes(name)",
        arg=lowest,
        timeout=30_000,
    )
    _settled_shot(page, artifacts_dir, "panel_switched", 2)

    # Open: the sample view shows exactly the selected heatmap and the boxes,
    # whatever the grid shows (here: FiftyOne's default fields)
    grid_before = {f: _is_checked(page, f) for f in ("cam_block", "label")}
    page.locator("table tbody tr").first.get_by_text(lowest).click()
    modal = page.locator("[data-cy=modal]")
    modal.first.wait_for(timeout=30_000)
    _assert_sample_view_shows(page, artifacts_dir, "open", "cam_block")

    # the heatmap draws with a colorscale, not a single-hue tint: it brightens
    # the image towards yellow in some places (high values) and darkens it
    # towards purple in others (low values)
    def colours(on, off):
        delta = on - off
        yellow = (delta[..., 0] > 30) & (delta[..., 1] > 30)
        purple = (delta[..., 0] < -20) & (delta[..., 1] < -20)
        return yellow, purple

    # "on" once the sample view has stopped drawing (was a fixed 2 s), then
    # "off" until the heatmap is gone (was a fixed 3 s). A loaded machine may
    # not have drawn the heatmap when "on" was taken: then it is switched on
    # again and both are taken again.
    open_errors = None  # page errors before this test redraws the view itself
    for _ in range(3):
        on = _settled_shot(page, artifacts_dir, "open", 10)
        _toggle(modal, "cam_block")
        deadline = time.monotonic() + 10
        while True:
            off = _shot(page, artifacts_dir, "open_heatmap_off")
            yellow, purple = colours(on, off)
            drawn = yellow.sum() > 500 and purple.sum() > 500
            if drawn or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        if open_errors is None:
            open_errors = list(page.errors)
        if drawn:
            break
        _toggle(modal, "cam_block")
    assert yellow.sum() > 500 and purple.sum() > 500, (yellow.sum(), purple.sum())
    # The panel's Open must not make FiftyOne's looker lose its buffers. Switching
    # the heatmap on again while the view still draws (the retry above) can, in
    # FiftyOne alone (tests/chromium.py, "looker-detached"): not counted here.
    assert not [e for e in open_errors if "DataCloneError" in e or "detached" in e]
    page.mouse.click(5, 500)  # the backdrop closes the sample view
    page.locator("[data-cy=modal]").first.wait_for(state="detached", timeout=30_000)
    _settled_shot(page, artifacts_dir, "grid_after_open", 2)
    # Open leaves the grid's fields alone
    assert {f: _is_checked(page, f) for f in grid_before} == grid_before

    # Open again, another run: the sample view's own fields (cam_block was
    # switched off by hand above) give way to the newly selected heatmap
    _pick_source(page, "cam_b/stem")
    page.wait_for_function(
        "() => document.body.innerText.includes('cam_b** / `stem`')"
        " || document.body.innerText.includes('cam_b / stem')",
        timeout=30_000,
    )
    page.locator("table tbody tr").nth(1).locator("td").nth(1).click()
    modal.first.wait_for(timeout=30_000)
    _assert_sample_view_shows(page, artifacts_dir, "open_again", "cam_b_stem")
    _shot(page, artifacts_dir, "open_again")
    page.mouse.click(5, 500)
    modal.first.wait_for(state="detached", timeout=30_000)

    # "Show lowest N" filters the grid (the session's view follows the App)
    page.get_by_text("Show lowest N in grid").first.click()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and session.view is None:
        time.sleep(0.5)
    assert session.view is not None, "the App's view did not change"
    assert len(session.view) == min(10, len(PHOTOS))
    _settled_shot(page, artifacts_dir, "lowest", 3)
    # ... and shows the chosen heatmap and the boxes in the grid
    hidden = ("cam_block", "cam_stem", "cam_b_block", "label")
    _eventually(
        lambda: (
            _is_checked(page, "cam_b_stem")
            and _is_checked(page, "ground_truth")
            and not any(_is_checked(page, f) for f in hidden)
        )
    )
    assert _is_checked(page, "cam_b_stem") and _is_checked(page, "ground_truth")
    for other in ("cam_block", "cam_stem", "cam_b_block", "label"):
        assert not _is_checked(page, other), other
    _no_errors(page, artifacts_dir, "panel")


def test_compute_form_offers_done_only_once_the_run_finished(
    page, artifacts_dir, scored_dataset
):
    from gradcam_engine.runs import cam_runs as runs

    before = set(scored_dataset.list_runs())
    page.keyboard.press("`")
    page.get_by_placeholder("Search operations by name...").fill("Compute CAMs")
    page.get_by_text("Compute CAMs", exact=True).first.click()
    batch = page.get_by_text("Batch size", exact=True).first
    batch.wait_for(timeout=30_000)
    batch.locator("xpath=following::input[1]").fill("1")  # one update per image
    time.sleep(1)
    page.get_by_role("button", name="Execute").click()

    done = page.get_by_role("button", name="Done")
    progress_seen, deadline = False, time.monotonic() + 240
    while not done.count() and time.monotonic() < deadline:
        progress_seen |= page.get_by_text("Computing CAMs:").count() > 0
        time.sleep(0.2)
    assert done.count(), "the run never finished in the App"
    # the moment Done is offered, the run has finished and recorded its outcome
    scored_dataset.reload()
    new = set(scored_dataset.list_runs()) - before
    assert len(new) == 1, new
    outcome = runs.get_cam_run(scored_dataset, new.pop()).config.get("outcome")
    assert outcome is not None, "Done was offered before the run finished"
    _shot(page, artifacts_dir, "form_done")
    assert page.get_by_text("5 computed").count()
    assert progress_seen, "no progress was shown while the run went on"
    _no_errors(page, artifacts_dir, "form_done")
