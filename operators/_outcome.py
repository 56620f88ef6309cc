"""Every operator's outcome in the App, shared by all of them: progress while
it runs (``_forms.run_with_progress``), then the error (notification and
dialog) or a confirmation with counts, and the run's look in the open session
(``apply_cam_look``, js/open_cam_sample.js). See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import fiftyone.operators.types as types

from gradcam_engine.engine.errors import AdvisedError, app_message

from ._forms import run_with_progress, uri


def as_plain(result: Any) -> Any:
    """A library result as JSON-ready data (summary objects have ``as_dict``)."""
    return result.as_dict() if hasattr(result, "as_dict") else result


def run_and_report(
    ctx,
    title: str,
    label: str,
    fn: Callable[[Callable[[int, int], None]], Any],
    confirm: Callable[[Any], str],
) -> Iterator:
    """Every operator's outcome in the App: ``run_with_progress``, then

    - on failure, an error notification and an error dialog naming the cause,
      then the exception again (the App drops a generator operator's
      exception silently; Python callers and delegated runs record it);
    - on success, the new fields and colours in the open session and a
      confirmation ``"<title>: <confirm(result)>"``.

    ``result = yield from run_and_report(ctx, "Score CAMs", ...)``. A delegated
    run has no App to talk to: it reports progress on its operation only.
    """
    try:
        result = yield from run_with_progress(ctx, label, fn)
    except Exception as exc:
        if not ctx.delegated:
            message = app_message(exc)  # the App's advice (form fields), not Python's
            yield ctx.ops.notify(f"{title} failed: {message}", variant="error")
            yield ctx.ops.show_output(failure_view(title, exc).to_json(), {})
        raise
    if not ctx.delegated:
        yield from show_run_look(ctx)
        yield ctx.ops.notify(f"{title}: {confirm(result)}", variant="success")
    return result


@contextlib.contextmanager
def app_advice() -> Iterator[None]:
    """``with app_advice():`` in an operator whose exceptions the App shows
    itself (not a generator): an ``AdvisedError`` goes on with the App's
    advice in its message (``app_message``), chained to the original."""
    try:
        yield
    except AdvisedError as exc:
        raise AdvisedError(exc.problem, exc.app_advice, exc.app_advice) from exc


def failure_view(title: str, exc: Exception) -> types.Property:
    """The error dialog of a failed operator: its title and the cause, with
    the App's advice (``app_message``)."""
    outputs = types.Object()
    outputs.view(
        "failed", types.Error(label=f"{title} failed", description=app_message(exc))
    )
    return types.Property(outputs, view=types.View(label=title))


def show_run_look(ctx) -> Iterator:
    """``yield from show_run_look(ctx)``: ``run_look`` in a generator operator."""
    yield run_look(ctx)


def run_look(ctx):
    """Show what a run wrote (or a rename or delete changed) in the open
    session: the colour scheme and the sidebar groups stored on the dataset
    (the App reads them only when a dataset is opened) and the fields (the
    dataset reloaded), in one browser-side step, ``apply_cam_look``
    (js/open_cam_sample.js): one redraw of the grid, not one per change."""
    scheme = session_color_scheme(ctx.dataset)  # reloads ctx.dataset
    groups = [
        dict(name=g.name, paths=list(g.paths), expanded=g.expanded)
        for g in ctx.dataset.app_config.sidebar_groups or []
    ]
    return ctx.trigger(
        uri("apply_cam_look"),
        params={"color_scheme": scheme, "sidebar_groups": groups},
    )


def session_color_scheme(dataset) -> dict[str, Any] | None:
    """``dataset.app_config.color_scheme`` in the App's shape (camelCase;
    unset entries left to the App's defaults), or None when there is none."""
    dataset.reload()  # the run saved it through another handle
    scheme = dataset.app_config.color_scheme
    if scheme is None:
        return None
    names = {
        "color_by": "colorBy",
        "color_pool": "colorPool",
        "colorscales": "colorscales",
        "default_colorscale": "defaultColorscale",
        "default_mask_targets_colors": "defaultMaskTargetsColors",
        "fields": "fields",
        "label_tags": "labelTags",
        "multicolor_keypoints": "multicolorKeypoints",
        "opacity": "opacity",
        "show_skeletons": "showSkeletons",
    }
    out = {app: getattr(scheme, py, None) for py, app in names.items()}
    out["id"] = str(scheme.id) if getattr(scheme, "id", None) else None
    return {k: v for k, v in out.items() if v is not None}
