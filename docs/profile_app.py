"""Profile the App with the CAM review panel open: for each step (open the
panel, Show lowest N, select tiles, Reset view), the panel's operator calls
and their server times, and the page's long tasks (``longtask`` entries: the
main thread blocked for over 50 ms). Run on a dataset with scored CAM runs,
e.g. after `make demo`:

    .venv/bin/python docs/profile_app.py [--dataset cam-audit-shortcut]

Needs Debian's chromium (`make browser`); links the repository into a
temporary plugins directory, as docs/screenshot_app.py does.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
_plugins = pathlib.Path(tempfile.mkdtemp(prefix="cam-audit-plugins-"))
(_plugins / "cam-audit").symlink_to(ROOT, target_is_directory=True)
os.environ["FIFTYONE_PLUGINS_DIR"] = str(_plugins)
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")  # no analytics banner
sys.path.insert(0, str(ROOT / "tests"))

import fiftyone as fo  # noqa: E402
from chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

LONG_TASKS = """window.__long = [];
new PerformanceObserver(list => list.getEntries().forEach(
    e => window.__long.push(e.duration))).observe({type: 'longtask', buffered: true});"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cam-audit-shortcut")
    parser.add_argument("--settle", type=float, default=8.0, help="s per step")
    args = parser.parse_args()
    dataset = fo.load_dataset(args.dataset)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    session = fo.launch_app(dataset, remote=True, port=port, auto=False)
    calls: list[tuple[str, float]] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)[:160]))
            page.on("requestfinished", lambda req: _record(req, calls))
            page.add_init_script(LONG_TASKS)
            page.goto(f"http://localhost:{port}/datasets/{dataset.name}")
            page.get_by_text(f"{len(dataset)} samples").first.wait_for(timeout=90_000)
            page.keyboard.press("Escape")

            def step(name: str) -> None:
                time.sleep(args.settle)
                long = page.evaluate("() => window.__long.splice(0)")
                done = calls[:]
                calls.clear()
                names = sorted({c for c, _ in done})
                print(
                    f"{name}: {len(done)} panel/operator calls "
                    f"({sum(t for _, t in done):.0f} ms server), {len(long)} long "
                    f"tasks ({sum(long):.0f} ms, longest {max(long, default=0):.0f} "
                    f"ms); {names}"
                )

            step("load")
            page.locator("[data-cy='new-panel-btn']").first.click()
            page.get_by_text("CAM review", exact=True).first.click()
            page.get_by_text("Suspects (lowest focus)").first.wait_for(timeout=90_000)
            step("open panel")
            page.get_by_text("Show lowest N in grid").first.click()
            step("show lowest N")
            # select three tiles (through the session: the same App state
            # change as ticking them; the tiles' checkboxes show on hover only)
            shown = session.view if session.view is not None else dataset
            session.select_samples(ids=shown.limit(3).values("id"))
            step("select 3 tiles")
            page.get_by_text("Reset view").first.click()
            step("reset view")
            print("page errors:", errors or "none")
            browser.close()
    finally:
        session.close()


def _record(request, calls: list) -> None:
    if "/operators/execute" not in request.url:
        return
    body = json.loads(request.post_data or "{}")
    name = body.get("operator_uri", "").split("/")[-1]
    timing = request.timing
    calls.append((name, timing["responseEnd"] - timing["requestStart"]))


if __name__ == "__main__":
    main()
