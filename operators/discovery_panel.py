"""The review panel's discovery section: heatmap clusters (``cluster_cams``) of
the chosen run/layer with their size, class mix, background-flip rate and mean
ROAD, a click on a cluster filters the grid to it, and a button shows the
samples whose prediction flips without the background (``background_test``)."""

from __future__ import annotations

from collections import defaultdict

import fiftyone.operators.types as types
from fiftyone import ViewField as VF

from gradcam_engine.runs import cam_runs as runs
from gradcam_engine.runs.naming import clusters_brain_key


def fields(dataset, src: dict) -> dict[str, str]:
    """The discovery fields of ``src`` (a panel source) present on the dataset."""
    schema = dataset.get_field_schema()
    names = {
        "cluster": f"{src['heatmap']}_cluster",
        "flip": f"{src['run_key']}_bg_flip",
        "road": f"{src['heatmap']}_road",
    }
    return {k: v for k, v in names.items() if v in schema}


def cluster_rows(ctx, src: dict) -> list[dict]:
    """One row per cluster of ``src`` in the current view (empty without)."""
    found = fields(ctx.dataset, src)
    if "cluster" not in found:
        return []
    info = runs.get_cam_run(ctx.dataset, src["run_key"])
    stored = (info.config.get("clusters") or {}).get(src["heatmap"]) or {}
    mix = {c["name"]: c["class_mix"] for c in stored.get("clusters", [])}
    paths = [found[k] for k in ("cluster", "flip", "road") if k in found]
    columns = dict(zip(paths, ctx.view.values(paths), strict=True))
    stats: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for i, name in enumerate(columns[found["cluster"]]):
        if name is None:
            continue
        stats[name]["n"].append(1)
        for key in ("flip", "road"):
            value = columns[found[key]][i] if key in found else None
            if value is not None:
                stats[name][key].append(float(value))
    return [
        dict(
            cluster=name,
            size=len(s["n"]),
            classes=", ".join(
                f"{k} {v}" for k, v in list(mix.get(name, {}).items())[:3]
            ),
            flip_rate=_mean(s["flip"], pct=True),
            road=_mean(s["road"]),
        )
        for name, s in sorted(stats.items())
    ]


def _mean(values: list[float], pct: bool = False) -> str:
    if not values:
        return ""
    mean = sum(values) / len(values)
    return f"{mean:.0%}" if pct else f"{mean:.3f}"


def cluster_view(ctx, src: dict, name: str):
    return ctx.view.match(VF(f"{src['heatmap']}_cluster") == name)


def flip_view(ctx, src: dict):
    return ctx.view.match(VF(f"{src['run_key']}_bg_flip") == True)  # noqa: E712


def cluster_help(ctx, src: dict) -> str:
    """The section's help with the names this run really has: its cluster
    field and, when ``cluster_cams`` made one, the Embeddings panel's brain
    key (never a placeholder)."""
    found = fields(ctx.dataset, src)
    if "cluster" not in found:
        return ""
    info = runs.get_cam_run(ctx.dataset, src["run_key"])
    stored = (info.config.get("clusters") or {}).get(src["heatmap"]) or {}
    key = stored.get("brain_key", clusters_brain_key(src["heatmap"]))
    if key and key in ctx.dataset.list_brain_runs():
        return (
            "One strategy per cluster; plot them in the Embeddings panel (brain "
            f"key `{key}`, colour by `{found['cluster']}`)."
        )
    return f"One strategy per cluster (field `{found['cluster']}`)."


def render(panel: types.Object, state, on_click_cluster, show_flips) -> None:
    """Adds the section when the chosen source has clusters or flips."""
    if not state.clusters and not state.has_flips:
        return
    panel.md(
        "#### Heatmap clusters (no boxes needed)\n" + (state.cluster_help or ""),
        name="clusters_title",
    )
    if state.clusters:
        table = types.TableView(on_click_row=on_click_cluster)
        for key, label in (
            ("cluster", "cluster"),
            ("size", "samples"),
            ("classes", "class mix"),
            ("flip_rate", "flips w/o background"),
            ("road", "mean ROAD"),
        ):
            table.add_column(key, label=label)
        panel.list("clusters", types.Object(), view=table, label="Clusters")
    if state.has_flips:
        panel.btn(
            "show_flips",
            label="Show samples that flip without their background",
            on_click=show_flips,
            variant="outlined",
        )
