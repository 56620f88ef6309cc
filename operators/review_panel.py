"""``cam_review``: rank samples by focus, open suspects, tag outcomes, compare runs.

The panel reads focus fields written by ``score_cams`` (``<heatmap field>_focus``)
on the App's current view; it never computes CAMs itself.
"""

from __future__ import annotations

import json
import math
import threading

import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import _forms
from . import discovery_panel as discovery
from . import review_charts as charts
from . import review_data as data
from . import review_objects as objects
from .review_data import ALL_CLASSES

DEFAULT_TAGS = "spurious,ok,needs-data"


class CamReviewPanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name="cam_review",
            label="CAM review",
            help_markdown=(
                "Samples ranked by **focus** (fraction of CAM energy on the "
                "objects), lowest first. Click a bar or a row to open the sample "
                "with its heatmap and boxes; box-select bars to filter the grid; "
                "tag selected samples with review outcomes. Detection, patches "
                "and multi-label runs also list their objects: Open shows one "
                "object's own map."
            ),
            icon="troubleshoot",
            surfaces="grid",
        )

    # ------------------------------------------------------------ events

    def on_load(self, ctx):
        state = ctx.panel.state
        sources = data.sources(ctx.dataset)
        if state.source not in sources:
            state.source = data.default_source(sources)
        if state.compare not in sources:
            state.compare = None
        if not state.tags:
            state.tags = DEFAULT_TAGS
        if not state.lowest_n:
            state.lowest_n = 10
        if not state.klass:
            state.klass = ALL_CLASSES
        state.keys = list(sources)
        _is_new_view(ctx)  # the view this refresh shows
        self._refresh(ctx, sources)
        objects.refresh(ctx)
        # the grid next to the panel, with the chosen heatmap visible
        ctx.ops.split_panel("cam_review", layout="horizontal")

    def on_change_view(self, ctx):
        # The App sends one event per part of the view (stages, filters,
        # extended selection) for one change: refresh once per actual view.
        if not _is_new_view(ctx):
            return
        self._refresh(ctx, data.sources(ctx.dataset))
        objects.refresh(ctx)

    def on_change_selected(self, ctx):
        self._refresh_tags(ctx)

    def on_change_source(self, ctx):
        value = ctx.params.get("value")
        if value == ctx.panel.state.source:
            return  # the form reporting its initial value: nothing changed
        ctx.panel.state.source = value
        ctx.panel.state.klass = ALL_CLASSES
        sources = data.sources(ctx.dataset)
        self._refresh(ctx, sources)

    def on_change_class(self, ctx):
        value = ctx.params.get("value") or ALL_CLASSES
        if value == ctx.panel.state.klass:
            return  # the form reporting its initial value: nothing changed
        ctx.panel.state.klass = value
        self._refresh(ctx, data.sources(ctx.dataset))

    def on_change_compare(self, ctx):
        ctx.panel.state.compare = ctx.params.get("value")
        self._refresh_compare(ctx, data.sources(ctx.dataset))

    def on_change_objects(self, ctx):
        value = ctx.params.get("value")
        if value == ctx.panel.state.obj_source:
            return  # the form reporting its initial value: nothing changed
        ctx.panel.state.obj_source = value
        ctx.panel.state.obj_class = objects.ALL
        objects.refresh(ctx)

    def on_change_object_class(self, ctx):
        value = ctx.params.get("value") or objects.ALL
        if value == ctx.panel.state.obj_class:
            return
        ctx.panel.state.obj_class = value
        objects.refresh(ctx)

    def on_click_object(self, ctx):
        objects.open_row(ctx)

    def on_change_lowest_n(self, ctx):
        ctx.panel.state.lowest_n = ctx.params.get("value") or 10

    def on_change_tags(self, ctx):
        ctx.panel.state.tags = ctx.params.get("value") or DEFAULT_TAGS
        self._refresh_tags(ctx)

    def on_click_bar(self, ctx):
        sample_id = ctx.params.get("id")  # the bar's entry in the trace's ids
        if sample_id is None:
            ids = ctx.panel.state.ranked_ids or []
            idx = ctx.params.get("idx")  # the App's name for Plotly's pointIndex
            if idx is not None and 0 <= int(idx) < len(ids):
                sample_id = ids[int(idx)]
        self._open(ctx, sample_id)

    def on_click_row(self, ctx):
        rows = ctx.panel.state.table or []
        row = ctx.params.get("row")
        if row is not None and 0 <= int(row) < len(rows):
            self._open(ctx, rows[int(row)]["id"])

    def on_click_cluster(self, ctx):
        rows, row = ctx.panel.state.clusters or [], ctx.params.get("row")
        src = data.sources(ctx.dataset).get(ctx.panel.state.source or "")
        if src and row is not None and 0 <= int(row) < len(rows):
            name = rows[int(row)]["cluster"]
            ctx.ops.set_view(discovery.cluster_view(ctx, src, name))

    def show_flips(self, ctx):
        src = data.sources(ctx.dataset).get(ctx.panel.state.source or "")
        if src:
            ctx.ops.set_view(discovery.flip_view(ctx, src))

    def on_select_bars(self, ctx):
        ids = [p.get("id") for p in ctx.params.get("data") or [] if p.get("id")]
        if ids:
            ctx.ops.set_view(ctx.dataset.select(ids, ordered=True))

    def on_click_class(self, ctx):
        klass = ctx.params.get("x")
        if klass is not None:
            ctx.panel.state.klass = str(klass)
            self._refresh(ctx, data.sources(ctx.dataset))

    def show_lowest(self, ctx):
        sources = data.sources(ctx.dataset)
        src = sources.get(ctx.panel.state.source or "")
        if not src:
            return
        n = int(ctx.panel.state.lowest_n or 10)
        ctx.ops.set_view(
            data.ranked_view(ctx.view, src, ctx.panel.state.klass).limit(n)
        )
        self._show_heatmap(ctx, sources)

    def reset_view(self, ctx):
        ctx.ops.clear_view()

    def tag_selected(self, ctx):
        tag = ctx.params.get("tag")
        if tag and ctx.selected:
            ctx.dataset.select(ctx.selected).tag_samples(tag)
            ctx.ops.reload_samples()
            ctx.ops.notify(f"Tagged {len(ctx.selected)} samples '{tag}'")
        self._refresh_tags(ctx)

    # ------------------------------------------------------------ data

    def _show_heatmap(self, ctx, sources) -> None:
        """Only the chosen heatmap and the objects it is scored against, in
        the grid (left alone when already so: each change redraws every tile)."""
        src = sources.get(ctx.panel.state.source or "")
        if src and sorted(ctx.active_fields or []) != sorted(_fields_of(src)):
            ctx.ops.set_active_fields(fields=_fields_of(src))

    def _open(self, ctx, sample_id):
        """The sample view with exactly the chosen heatmap and its boxes.

        ``open_cam_sample`` is a browser-side operator (js/open_cam_sample.js):
        no Python operator can set the sample view's fields in FiftyOne 1.22.
        The grid's fields are left as they are.
        """
        src = data.sources(ctx.dataset).get(ctx.panel.state.source or "")
        if not sample_id or not src:
            return
        ctx.trigger(
            _forms.uri("open_cam_sample"),
            params={"sample_id": sample_id, "fields": _fields_of(src)},
        )

    def _refresh(self, ctx, sources):
        state = ctx.panel.state
        src = sources.get(state.source or "")
        if not src:
            state.summary = (
                "No scored CAM runs on this dataset: run **Compute CAMs** and "
                "**Score CAMs** first."
            )
            return
        values = data.ranking(ctx.view, src, state.klass)
        ids = values["id"]
        state.summary = (
            f"**{src['run_key']}** / `{src['layer']}`: {values['total']} scored "
            f"samples, mean focus {values['mean']:.3f}"
            if values["total"]
            else f"**{src['run_key']}** / `{src['layer']}`: no scored samples"
        ) + (f"; sanity check {src['sanity']}" if src.get("sanity") else "")
        missing = data.unscored(ctx.view, src, state.klass)
        if missing:  # say why, rather than leave samples out silently
            state.summary += f"\n\n{missing}"
        state.ranked_ids = ids
        state.rank_tick = max(1, math.ceil(len(ids) / 10))
        state.table = data.table_rows(values)
        state.heatmap = src["heatmap"]
        state.clusters = discovery.cluster_rows(ctx, src)
        state.cluster_help = discovery.cluster_help(ctx, src)
        state.has_flips = "flip" in discovery.fields(ctx.dataset, src)
        order, means, counts = data.per_class(ctx.view, src)
        state.classes = order
        charts.replace(  # fresh series names: no stale tail (review_charts)
            ctx,
            {
                "ranking": data.ranking_chart(values),
                "per_class": data.per_class_chart(order, means, counts),
            },
        )
        self._refresh_tags(ctx)
        self._refresh_compare(ctx, sources)

    def _refresh_tags(self, ctx):
        tags = [t.strip() for t in (ctx.panel.state.tags or "").split(",") if t.strip()]
        counts = ctx.view.count_sample_tags()
        parts = [f"`{t}`: {counts.get(t, 0)}" for t in tags]
        ctx.panel.state.tag_counts = (
            f"{len(ctx.selected)} selected. In view: " + ", ".join(parts)
        )

    def _refresh_compare(self, ctx, sources):
        state = ctx.panel.state
        a = sources.get(state.source or "")
        b = sources.get(state.compare or "")
        if not a or not b:
            state.comparison = "Pick a second run/layer to compare."
            return
        state.comparison = data.comparison(ctx.view, a, b, state.source, state.compare)

    # ------------------------------------------------------------ layout

    def render(self, ctx):
        panel = types.Object()
        state = ctx.panel.state
        keys = state.keys or list(data.sources(ctx.dataset))

        panel.md(
            "**CAM review**: focus = share of CAM energy on the objects", name="title"
        )
        if not keys:
            panel.md(state.summary or "No scored CAM runs.", name="summary")
            self._render_objects(panel, state)
            return types.Property(panel, view=types.GridView(orientation="vertical"))

        pick = panel.h_stack("pick", gap=2)
        run_choices = _forms.dropdown(keys, "Run / layer")
        pick.enum(
            "source",
            run_choices.values(),
            default=state.source,
            view=run_choices,
            on_change=self.on_change_source,
        )
        class_choices = _forms.dropdown([ALL_CLASSES, *(state.classes or [])], "Class")
        pick.enum(
            "klass",
            class_choices.values(),
            default=state.klass or ALL_CLASSES,
            view=class_choices,
            on_change=self.on_change_class,
        )

        panel.md(state.summary or "", name="summary")
        charts.render_ranking(panel, state, self.on_click_bar, self.on_select_bars)

        table = types.TableView(on_click_row=self.on_click_row)
        for key, label in data.COLUMNS.items():
            table.add_column(key, label=label)
        table.add_row_action(
            "open", self.on_click_row, label="Open", icon="open_in_new"
        )
        panel.list("table", types.Object(), view=table, label="Suspects (lowest focus)")

        lowest = panel.h_stack("lowest", gap=2)
        lowest.int(
            "lowest_n",
            default=state.lowest_n or 10,
            label="N",
            on_change=self.on_change_lowest_n,
        )
        lowest.btn(
            "show_lowest",
            label="Show lowest N in grid",
            on_click=self.show_lowest,
            variant="contained",
        )
        lowest.btn(
            "reset_view",
            label="Reset view",
            on_click=self.reset_view,
            variant="outlined",
        )

        discovery.render(panel, state, self.on_click_cluster, self.show_flips)

        charts.render_per_class(panel, state, self.on_click_class)
        self._render_objects(panel, state)

        panel.md("#### Review outcomes", name="tags_title")
        panel.str(
            "tags",
            default=state.tags or DEFAULT_TAGS,
            label="Tags (comma-separated)",
            on_change=self.on_change_tags,
        )
        buttons = panel.h_stack("tag_buttons", gap=1)
        for tag in [
            t.strip() for t in (state.tags or DEFAULT_TAGS).split(",") if t.strip()
        ]:
            buttons.btn(
                f"tag_{tag}",
                label=f"Tag selected: {tag}",
                on_click=self.tag_selected,
                params={"tag": tag},
                variant="outlined",
                disabled=not ctx.selected,
            )
        panel.md(state.tag_counts or "", name="tag_counts")

        panel.md("#### Compare", name="compare_title")
        cmp_choices = _forms.dropdown(keys, "Compare with")
        panel.enum(
            "compare",
            cmp_choices.values(),
            default=state.compare,
            view=cmp_choices,
            on_change=self.on_change_compare,
        )
        panel.md(state.comparison or "", name="comparison")

        return types.Property(
            panel, view=types.GridView(orientation="vertical", gap=2, padding=1)
        )

    def _render_objects(self, panel, state) -> None:
        objects.render(
            panel,
            state,
            self.on_change_objects,
            self.on_change_object_class,
            self.on_click_object,
        )


# panel id -> signature of the view it last showed. Kept in the server, not in
# the panel's state: the App sends the three events of one view change at
# once, each with the state as it was before any of them.
_SHOWN: dict[str, str] = {}
_SHOWN_LOCK = threading.Lock()


def _is_new_view(ctx) -> bool:
    """Whether the view (its stages and filters) differs from the one the
    panel last showed; records it."""
    signature = json.dumps(
        [ctx.dataset_name, ctx.view._serialize(), ctx.request_params.get("filters")],
        sort_keys=True,
        default=str,
    )
    with _SHOWN_LOCK:
        if _SHOWN.get(ctx.panel_id) == signature:
            return False
        _SHOWN[ctx.panel_id] = signature
        return True


def _fields_of(src: dict) -> list[str]:
    """The fields a review shows: the heatmap, the objects it is scored
    against and, for a detection run, its explained detections."""
    extra = [f for f in (src["boxes"], src.get("detections")) if f]
    return [src["heatmap"], *extra]
