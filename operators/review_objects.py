"""The review panel's per-object list: the explained objects of a detection,
patches or multi-label run (detections, crops, labels), lowest focus first;
a row's Open shows the sample with that object's own map.

One mechanism for every kind of object: the rows come from
``audit.object_maps.object_rows`` and Open triggers ``show_detection_cam``
with the object's id (it writes the map to the run-owned
``{R}_<slug>_detection`` / ``{R}_<slug>_label`` and hands the fresh sample to
the browser-side ``open_cam_sample``), as the App's own selection does.
"""

from __future__ import annotations

import fiftyone.operators.types as types

from gradcam_engine.audit.object_maps import object_rows, object_store
from gradcam_engine.runs import cam_runs as runs

from . import _forms
from .review_data import ALL_CLASSES as ALL

LIMIT = 25
KINDS = {"detection": "detections", "patches": "patches", "multilabel": "labels"}
# key -> header; "predicted" and "eval" only where the run has them
COLUMNS = {
    "rank": "#",
    "file": "sample",
    "label": "label",
    "predicted": "predicted",
    "confidence": "confidence",
    "focus": "focus",
    "eval": "eval",
}


def sources(dataset) -> dict[str, dict]:
    """``"run/layer"`` -> the run and layer, for every layer of every run
    that explains objects (scored or not: their focus is per object) and
    whose objects field exists (not a run being deleted or not yet written)."""
    out = {}
    schema = dataset.get_field_schema()
    for key in runs.list_cam_runs(dataset):
        info = runs.get_cam_run(dataset, key)
        store = object_store(info)
        if store is None or store.field not in schema:
            continue
        for layer in info.layers:
            out[f"{key}/{layer}"] = dict(run_key=key, layer=layer, task=store.task)
    return out


def refresh(ctx) -> None:
    """The list of the chosen run/layer's objects in the current view."""
    state = ctx.panel.state
    all_sources = sources(ctx.dataset)
    state.obj_keys = list(all_sources)
    if state.obj_source not in all_sources:
        state.obj_source = next(reversed(all_sources), None)  # the newest run
        state.obj_class = ALL
    src = all_sources.get(state.obj_source or "")
    if not src:
        state.obj_rows, state.obj_summary = [], ""
        return
    every = object_rows(ctx.view, src["run_key"], src["layer"])
    state.obj_classes = sorted({str(r["label"]) for r in every})
    klass = state.obj_class if state.obj_class in state.obj_classes else ALL
    rows = [r for r in every if klass == ALL or str(r["label"]) == klass]
    focused = [r["focus"] for r in rows if r["focus"] is not None]
    kind = KINDS[src["task"]]
    state.obj_summary = f"{len(rows)} explained {kind} in view" + (
        f", mean focus {sum(focused) / len(focused):.3f}"
        if focused
        else " (no focus: Score CAMs scores labels against boxes)"
        if src["task"] == "multilabel"
        else ""
    )
    state.obj_task = src["task"]
    state.obj_has_eval = any(r.get("eval") for r in rows)
    state.obj_rows = [_row(i, r) for i, r in enumerate(rows[:LIMIT])]


def _row(i: int, r: dict) -> dict:
    def rounded(x):
        return "" if x is None else round(float(x), 4)

    return dict(
        rank=i + 1,
        file=r["filepath"].rsplit("/", 1)[-1],
        label=str(r["label"]),
        predicted=str(r.get("predicted") or ""),
        confidence=rounded(r["confidence"]),
        focus=rounded(r["focus"]),
        eval=r.get("eval") or "",
        sample_id=r["sample_id"],
        object_id=r["object_id"],
    )


def open_row(ctx) -> None:
    """Open the sample of the clicked row with that object's own map."""
    state = ctx.panel.state
    rows, row = state.obj_rows or [], ctx.params.get("row")
    src = sources(ctx.dataset).get(state.obj_source or "")
    if not src or row is None or not 0 <= int(row) < len(rows):
        return
    chosen = rows[int(row)]
    ctx.trigger(
        _forms.uri("show_detection_cam"),
        params={
            "run_key": src["run_key"],
            "layer": src["layer"],
            "object_id": chosen["object_id"],
            "sample_id": chosen["sample_id"],
        },
    )


def render(panel, state, on_change_source, on_change_class, on_click_row) -> None:
    """The section: run/layer and class choices, the list, its Open."""
    if not state.obj_keys:
        return
    panel.md("#### Objects (lowest focus first)", name="obj_title")
    pick = panel.h_stack("obj_pick", gap=2)
    run_choices = _forms.dropdown(state.obj_keys, "Run / layer (objects)")
    pick.enum(
        "obj_source",
        run_choices.values(),
        default=state.obj_source,
        view=run_choices,
        on_change=on_change_source,
    )
    class_choices = _forms.dropdown([ALL, *(state.obj_classes or [])], "Object class")
    pick.enum(
        "obj_class",
        class_choices.values(),
        default=state.obj_class or ALL,
        view=class_choices,
        on_change=on_change_class,
    )
    panel.md(state.obj_summary or "", name="obj_summary")
    table = types.TableView(on_click_row=on_click_row)
    for key, label in COLUMNS.items():
        if key == "predicted" and state.obj_task != "patches":
            continue
        if key == "eval" and not state.obj_has_eval:
            continue
        table.add_column(key, label=label)
    table.add_row_action("open", on_click_row, label="Open", icon="open_in_new")
    panel.list("obj_rows", types.Object(), view=table, label="Objects")
