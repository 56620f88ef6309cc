"""``cam_review``: rank samples by focus, open suspects, tag outcomes, compare runs.

The panel reads focus fields written by ``score_cams`` (``<heatmap field>_focus``)
on the App's current view; it never computes CAMs itself.
"""

from __future__ import annotations

from collections import defaultdict

import fiftyone.operators as foo
import fiftyone.operators.types as types
import numpy as np
from fiftyone import ViewField as F

from gradcam_engine.runs import cam_runs as runs

from . import _forms
from . import discovery_panel as discovery

DEFAULT_TAGS = "spurious,ok,needs-data"
CHART_LIMIT = 300  # bars in the ranking chart (the lowest focus first)
TABLE_LIMIT = 25
ALL_CLASSES = "(all classes)"


def _sources(dataset) -> dict[str, dict]:
    """``"run/layer"`` -> heatmap and focus fields, for every scored layer."""
    schema = dataset.get_field_schema()
    out = {}
    for key in runs.list_cam_runs(dataset):
        info = runs.get_cam_run(dataset, key)
        for layer, field in info.fields.items():
            focus = f"{field}_focus"
            if focus in schema:
                class_field = next(
                    (
                        f
                        for f in (info.target_field, info.prediction_field)
                        if f in schema
                    ),
                    None,
                )
                out[f"{key}/{layer}"] = dict(
                    run_key=key,
                    layer=layer,
                    heatmap=field,
                    focus=focus,
                    class_field=class_field,
                )
    return out


class CamReviewPanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name="cam_review",
            label="CAM review",
            help_markdown=(
                "Samples ranked by **focus** (fraction of CAM energy on the "
                "objects), lowest first. Click a bar or a row to open the sample "
                "with its heatmap; box-select bars to filter the grid; tag "
                "selected samples with review outcomes."
            ),
            icon="troubleshoot",
            surfaces="grid",
        )

    # ------------------------------------------------------------ events

    def on_load(self, ctx):
        state = ctx.panel.state
        sources = _sources(ctx.dataset)
        keys = list(sources)
        if state.source not in sources:
            state.source = keys[-1] if keys else None
        if state.compare not in sources:
            state.compare = None
        if not state.tags:
            state.tags = DEFAULT_TAGS
        if not state.lowest_n:
            state.lowest_n = 10
        if not state.klass:
            state.klass = ALL_CLASSES
        self._refresh(ctx)
        # the grid next to the panel, with the chosen heatmap visible
        ctx.ops.split_panel("cam_review", layout="horizontal")
        self._show_heatmap(ctx)

    def on_change_view(self, ctx):
        self._refresh(ctx)

    def on_change_selected(self, ctx):
        self._refresh_tags(ctx)

    def on_change_source(self, ctx):
        ctx.panel.state.source = ctx.params.get("value")
        ctx.panel.state.klass = ALL_CLASSES
        self._refresh(ctx)
        self._show_heatmap(ctx)

    def on_change_class(self, ctx):
        ctx.panel.state.klass = ctx.params.get("value") or ALL_CLASSES
        self._refresh(ctx)

    def on_change_compare(self, ctx):
        ctx.panel.state.compare = ctx.params.get("value")
        self._refresh_compare(ctx)

    def on_change_lowest_n(self, ctx):
        ctx.panel.state.lowest_n = ctx.params.get("value") or 10

    def on_change_tags(self, ctx):
        ctx.panel.state.tags = ctx.params.get("value") or DEFAULT_TAGS
        self._refresh_tags(ctx)

    def on_click_bar(self, ctx):
        sample_id = ctx.params.get("id")
        if sample_id is None:
            ids = ctx.panel.state.ranked_ids or []
            idx = ctx.params.get("pointIndex", ctx.params.get("point_index"))
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
        src = self._source(ctx)
        if src and row is not None and 0 <= int(row) < len(rows):
            name = rows[int(row)]["cluster"]
            ctx.ops.set_view(discovery.cluster_view(ctx, src, name))

    def show_flips(self, ctx):
        src = self._source(ctx)
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
            self._refresh(ctx)

    def show_lowest(self, ctx):
        src = self._source(ctx)
        if not src:
            return
        n = int(ctx.panel.state.lowest_n or 10)
        view = self._ranked_view(ctx, src).limit(n)
        ctx.ops.set_view(view)
        self._show_heatmap(ctx)

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

    def _source(self, ctx) -> dict | None:
        return _sources(ctx.dataset).get(ctx.panel.state.source or "")

    def _ranked_view(self, ctx, src):
        view = ctx.view.exists(src["focus"])
        klass = ctx.panel.state.klass
        if klass and klass != ALL_CLASSES and src["class_field"]:
            view = view.match(F(f"{src['class_field']}.label") == klass)
        return view.sort_by(src["focus"])

    def _show_heatmap(self, ctx):
        src = self._source(ctx)
        if not src:
            return
        heatmaps = {s["heatmap"] for s in _sources(ctx.dataset).values()}
        active = [f for f in (ctx.active_fields or []) if f not in heatmaps]
        ctx.ops.set_active_fields(fields=[*active, src["heatmap"]])

    def _open(self, ctx, sample_id):
        if not sample_id:
            return
        self._show_heatmap(ctx)
        ctx.ops.open_sample(id=sample_id)

    def _refresh(self, ctx):
        src = self._source(ctx)
        state = ctx.panel.state
        if not src:
            state.summary = (
                "No scored CAM runs on this dataset: run **Compute CAMs** and "
                "**Score CAMs** first."
            )
            return
        view = self._ranked_view(ctx, src)
        fields = ["id", "filepath", src["focus"]]
        if src["class_field"]:
            fields.append(f"{src['class_field']}.label")
        values = view.limit(CHART_LIMIT).values(fields)
        ids, paths, focus = values[0], values[1], values[2]
        labels = values[3] if src["class_field"] else [None] * len(ids)
        names = [p.rsplit("/", 1)[-1] for p in paths]

        total = view.count()
        mean = view.mean(src["focus"]) if total else None
        state.summary = (
            f"**{src['run_key']}** / `{src['layer']}`: {total} scored samples, "
            f"mean focus {mean:.3f}"
            if mean is not None
            else "no scored samples"
        )
        state.ranked_ids = ids
        state.table = [
            dict(rank=i + 1, id=sid, file=name, label=lab or "", focus=round(f, 4))
            for i, (sid, name, lab, f) in enumerate(
                zip(ids, names, labels, focus, strict=True)
            )
        ][:TABLE_LIMIT]
        ctx.panel.data.ranking = [
            dict(
                type="bar",
                name="focus",
                x=list(range(1, len(ids) + 1)),
                y=focus,
                ids=ids,
                text=[
                    f"{n} ({lab})" if lab else n
                    for n, lab in zip(names, labels, strict=True)
                ],
                hovertemplate="%{text}<br>focus %{y:.3f}<extra></extra>",
                marker=dict(color=focus, colorscale="RdYlGn", cmin=0, cmax=1),
            )
        ]
        state.clusters = discovery.cluster_rows(ctx, src)
        state.has_flips = "flip" in discovery.fields(ctx.dataset, src)
        self._refresh_classes(ctx, src)
        self._refresh_tags(ctx)
        self._refresh_compare(ctx)

    def _refresh_classes(self, ctx, src):
        if not src["class_field"]:
            ctx.panel.state.classes = []
            ctx.panel.data.per_class = []
            return
        view = ctx.view.exists(src["focus"])
        labels, focus = view.values([f"{src['class_field']}.label", src["focus"]])
        groups: dict[str, list[float]] = defaultdict(list)
        for lab, f in zip(labels, focus, strict=True):
            groups[str(lab)].append(f)
        order = sorted(groups, key=lambda k: np.mean(groups[k]))
        ctx.panel.state.classes = order
        ctx.panel.data.per_class = [
            dict(
                type="bar",
                name="mean focus",
                x=order,
                y=[float(np.mean(groups[k])) for k in order],
                text=[f"n={len(groups[k])}" for k in order],
            )
        ]

    def _refresh_tags(self, ctx):
        tags = [t.strip() for t in (ctx.panel.state.tags or "").split(",") if t.strip()]
        counts = ctx.view.count_sample_tags()
        parts = [f"`{t}`: {counts.get(t, 0)}" for t in tags]
        ctx.panel.state.tag_counts = (
            f"{len(ctx.selected)} selected. In view: " + ", ".join(parts)
        )

    def _refresh_compare(self, ctx):
        sources = _sources(ctx.dataset)
        a = sources.get(ctx.panel.state.source or "")
        b = sources.get(ctx.panel.state.compare or "")
        if not a or not b:
            ctx.panel.state.comparison = "Pick a second run/layer to compare."
            return
        view = ctx.view.exists(a["focus"]).exists(b["focus"])
        fa, fb = view.values([a["focus"], b["focus"]])
        if not fa:
            ctx.panel.state.comparison = "No samples have both scores."
            return
        xa, xb = np.asarray(fa, float), np.asarray(fb, float)
        agree = float(np.mean((xa < 0.5) == (xb < 0.5)))
        corr = float(np.corrcoef(xa, xb)[0, 1]) if len(xa) > 1 else float("nan")
        ctx.panel.state.comparison = (
            f"| | mean focus |\n|---|---|\n"
            f"| {ctx.panel.state.source} | {xa.mean():.3f} |\n"
            f"| {ctx.panel.state.compare} | {xb.mean():.3f} |\n\n"
            f"{len(xa)} samples; agreement on focus < 0.5: {agree:.0%}; "
            f"correlation {corr:.2f}"
        )

    # ------------------------------------------------------------ layout

    def render(self, ctx):
        panel = types.Object()
        state = ctx.panel.state
        keys = list(_sources(ctx.dataset))

        panel.md(
            "**CAM review**: focus = share of CAM energy on the objects", name="title"
        )
        if not keys:
            panel.md(state.summary or "No scored CAM runs.", name="summary")
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
        panel.plot(
            "ranking",
            layout=dict(
                title=dict(
                    text="Focus, lowest first (click: open; box-select: filter)"
                ),
                xaxis=dict(title="rank"),
                yaxis=dict(title="focus", range=[0, 1]),
                dragmode="select",
                height=260,
            ),
            config=dict(displayModeBar=False),
            on_click=self.on_click_bar,
            on_selected=self.on_select_bars,
            height=30,
        )

        table = types.TableView(on_click_row=self.on_click_row)
        for key, label in (
            ("rank", "#"),
            ("file", "sample"),
            ("label", "class"),
            ("focus", "focus"),
        ):
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

        if state.classes:
            panel.plot(
                "per_class",
                layout=dict(
                    title=dict(text="Mean focus per class (click: rank that class)"),
                    yaxis=dict(title="mean focus", range=[0, 1]),
                    height=220,
                ),
                config=dict(displayModeBar=False),
                on_click=self.on_click_class,
                height=25,
            )

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
