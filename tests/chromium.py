"""Where Debian's Chromium lives and the flags it needs here (no side effects,
so that scripts outside the test session can import it)."""

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
