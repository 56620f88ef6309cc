"""Regenerate docs/app_panel.png and docs/app_open.png: the App on the demo's
planted-shortcut dataset with the CAM review panel open, then the sample view
its Open shows for the lowest-focus sample. Run after `make demo`:

    .venv/bin/python docs/screenshot_app.py [--dataset cam-audit-shortcut]

Needs Debian's chromium (`make browser`) and the plugin on FIFTYONE_PLUGINS_DIR
(this script links the repository into a temporary plugins directory).
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cam-audit-shortcut")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()
    dataset = fo.load_dataset(args.dataset)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    session = fo.launch_app(dataset, remote=True, port=port, auto=False)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 860})
            page.goto(f"http://localhost:{port}/datasets/{dataset.name}")
            page.get_by_text(f"{len(dataset)} samples").first.wait_for(timeout=90_000)
            dismiss = page.get_by_text("Dismiss", exact=True)
            if dismiss.count():
                dismiss.first.click()
            page.keyboard.press("Escape")  # close any popover the App opened
            page.locator("[data-cy='new-panel-btn']").first.click()
            page.get_by_text("CAM review", exact=True).first.click()
            page.get_by_text("Suspects (lowest focus)").first.wait_for(timeout=60_000)
            time.sleep(20)  # let the chart and the thumbnails draw (slow on 2 cores)
            shots = [_shot(page, pathlib.Path(args.out) / "app_panel.png")]
            page.locator("table tbody tr").first.locator("td").nth(1).click()
            page.locator("[data-cy=modal]").first.wait_for(timeout=60_000)
            time.sleep(8)  # the full-size image and its heatmap
            shots.append(_shot(page, pathlib.Path(args.out) / "app_open.png"))
            browser.close()
    finally:
        session.close()
    for path in shots:
        print(f"wrote {path}")


def _shot(page, path: pathlib.Path) -> pathlib.Path:
    page.screenshot(path=str(path))
    _shrink(str(path))
    return path


def _shrink(path: str) -> None:
    """Keep the committed PNG small: 80% size, 128-colour palette."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    image = image.resize((image.width * 4 // 5, image.height * 4 // 5), Image.LANCZOS)
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(
        path, optimize=True
    )


if __name__ == "__main__":
    main()
