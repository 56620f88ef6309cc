"""The review panel's two charts: the ranking (focus per sample, lowest
first) and the mean focus per class; their Plotly layout and their names.

The App copies a plot's data into the panel's state and draws
``merge(state, data)``, index by index: a shorter new series kept the old
one's tail (stale bars), also when the state was cleared first (the copy is
made again while the new data is on its way). Each refresh draws its series
under new names (``chart``), so nothing old is merged in.
"""

from __future__ import annotations

CHARTS = ("ranking", "per_class")
# Plotly: keep titles inside the figure, and let the mouse wheel scroll the
# panel instead of zooming the chart.
_PLOT_CONFIG = dict(displayModeBar=False, scrollZoom=False)
_MARGIN = dict(t=48, l=56, r=16, b=40)


def chart(name: str, rev: int | None) -> str:
    return f"{name}_{rev or 0}"


def replace(ctx, data: dict) -> None:
    """Empty the previous refresh's series and set ``data`` (chart name ->
    Plotly traces) under the new revision's names."""
    state = ctx.panel.state
    old = state.chart_rev or 0
    state.chart_rev = rev = old + 1
    for name in CHARTS:
        state.set(chart(name, old), None)
        ctx.panel.data.set(chart(name, old), None)
    for name, traces in data.items():
        ctx.panel.data.set(chart(name, rev), traces)


def _plot(panel, state, name, title, height, on_click, **extra) -> None:
    """One chart of the panel: its title inside, the y axis a focus in [0, 1]."""
    layout = dict(title=dict(text=title, font=dict(size=13)), margin=_MARGIN)
    layout.update(extra.pop("layout"))
    panel.plot(
        chart(name, state.chart_rev),
        layout=layout,
        config=_PLOT_CONFIG,
        on_click=on_click,
        height=height,
        **extra,
    )


def render_ranking(panel, state, on_click, on_selected) -> None:
    _plot(
        panel,
        state,
        "ranking",
        "Focus, lowest first (click: open; box-select: filter)",
        30,
        on_click,
        on_selected=on_selected,
        layout=dict(
            xaxis=dict(title="rank", tick0=1, dtick=state.rank_tick or 1),
            yaxis=dict(title="focus", range=[0, 1], fixedrange=True),
            dragmode="select",
            height=280,
        ),
    )


def render_per_class(panel, state, on_click) -> None:
    if not state.classes:
        return
    _plot(
        panel,
        state,
        "per_class",
        "Mean focus per class (click: rank that class)",
        25,
        on_click,
        layout=dict(
            yaxis=dict(title="mean focus", range=[0, 1], fixedrange=True),
            xaxis=dict(fixedrange=True),
            height=240,
        ),
    )
