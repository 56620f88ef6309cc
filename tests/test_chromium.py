"""The browser tests' console-error collector (tests/chromium.py): it sees
console errors and page errors, and lets through only FiftyOne's known noise."""

from __future__ import annotations

from chromium import ConsoleErrors


def test_console_errors_are_caught_and_only_known_noise_is_let_through(browser):
    errors = ConsoleErrors()
    # a page of its own context: the session's collector must not see these
    context = browser.new_context()
    try:
        page = context.new_page()
        errors.watch(page)
        page.goto("data:text/html,<p>plugin</p>")
        page.evaluate("console.error('cam-audit: the panel failed')")
        # the looker's DataCloneError as logged with its stack: known; with
        # anything else after it: not
        clone = (
            "DataCloneError: Failed to execute 'postMessage' on 'Worker': An "
            "ImageBitmap is detached and could not be cloned."
        )
        for tail in ("\n    at I8.loadSample (http://localhost/a.js:1:2)", "\nours"):
            page.evaluate(f"console.error({clone + tail!r})")
        for thrown in (
            "new Error('entry is loading')",
            "new TypeError('Cannot perform Construct on a detached ArrayBuffer')",
            "new DOMException('An ArrayBuffer is detached and could not be "
            "cloned.', 'DataCloneError')",
            "new TypeError('undefined is not a function')",
        ):
            page.evaluate(f"setTimeout(() => {{ throw {thrown} }}, 0)")
        page.wait_for_function("() => true")
        page.wait_for_timeout(500)
    finally:
        context.close()
    assert len(errors.seen) == 7, [str(e) for e in errors.seen]
    assert [str(e) for e in errors.ours()] == [
        "console: cam-audit: the panel failed",
        f"console: {clone}\nours",
        "pageerror: TypeError: undefined is not a function",
    ]
