"""Where Debian's Chromium lives and the flags it needs here, and the console
errors of its pages (no side effects, so that scripts outside the test session
can import it)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlparse

CHROMIUM = "/usr/bin/chromium"
# The closed network refuses Chromium's background connections; these flags
# stop it from trying (see ENVIRONMENT.md).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Errors that are not the plugin's, each matched exactly (a pattern for the
# whole message), each with the reason it is not ours. Anything else that a
# page logs as an error fails the test that was running (tests/conftest.py).
NOT_OURS: dict[str, re.Pattern] = {
    # Recoil (FiftyOne's state library) reading an atom mid-update; transient,
    # thrown and caught inside the App's own components, draws nothing wrong.
    "recoil": re.compile(r"entry is loading"),
    # FiftyOne's looker transfers a decoded heatmap's buffer to its worker and
    # reuses it when a tile or the sample view is redrawn meanwhile
    # (docs/ARCHITECTURE.md, "Freezes"; reproduced without the plugin's code).
    "looker-detached": re.compile(
        r"(TypeError: )?Cannot perform Construct on a detached ArrayBuffer"
    ),
    # (the console message may carry the looker's stack: "\n    at ...")
    "looker-clone": re.compile(
        r"DataCloneError: (Failed to execute 'postMessage' on 'Worker': )?"
        r"An (ArrayBuffer|ImageBitmap) is detached and could not be cloned\."
        r"(\n\s+at [^\n]*)*"
    ),
}
# A resource outside this machine (the App's fonts, Chromium's own fetches)
# that the closed network refuses: the request's host is not local.
_OFFLINE = re.compile(
    r"Failed to load resource: net::ERR_(NAME_NOT_RESOLVED|INTERNET_DISCONNECTED)"
)
_LOCAL = {"localhost", "127.0.0.1", ""}


@dataclass
class ConsoleError:
    kind: str  # "console" or "pageerror"
    text: str
    url: str = ""  # where the console message came from (the script or resource)

    def __str__(self) -> str:
        where = f" ({self.url})" if self.url else ""
        return f"{self.kind}: {self.text}{where}"

    def known(self) -> str | None:
        """The name of the ``NOT_OURS`` entry this error is, or None."""
        for name, pattern in NOT_OURS.items():
            if pattern.fullmatch(self.text):
                return name
        if _OFFLINE.fullmatch(self.text) and urlparse(self.url).hostname not in _LOCAL:
            return "offline"
        return None


@dataclass
class ConsoleErrors:
    """Every console error and page error of the pages it watches, in order."""

    seen: list[ConsoleError] = field(default_factory=list)

    def watch(self, page) -> None:
        page.on("console", self._console)
        page.on("pageerror", self._page_error)

    def _console(self, msg) -> None:
        if msg.type == "error":
            url = (msg.location or {}).get("url", "")
            self.seen.append(ConsoleError("console", msg.text, url))

    def _page_error(self, exc) -> None:
        self.seen.append(ConsoleError("pageerror", _error_text(exc)))

    def ours(self, since: int = 0) -> list[ConsoleError]:
        """The errors after the first ``since`` that are not known noise."""
        return [e for e in self.seen[since:] if e.known() is None]


def _error_text(exc) -> str:
    """A page error as "<name>: <message>" (playwright's Error has both)."""
    name, message = getattr(exc, "name", ""), getattr(exc, "message", str(exc))
    return f"{name}: {message}" if name and name != "Error" else message


class WatchedBrowser:
    """A playwright ``Browser`` whose new pages report their errors to
    ``errors``; everything else is the browser's own."""

    def __init__(self, browser, errors: ConsoleErrors) -> None:
        self._browser, self.errors = browser, errors

    def new_page(self, *args, **kwargs):
        page = self._browser.new_page(*args, **kwargs)
        self.errors.watch(page)
        return page

    def __getattr__(self, name: str):
        return getattr(self._browser, name)


# The test session's collector: one list for every browser module.
SESSION_ERRORS = ConsoleErrors()
