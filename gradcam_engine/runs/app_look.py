"""How a run's fields look in the App: stored in ``dataset.app_config``.

FiftyOne draws a heatmap, when colouring by field, as a single-hue tint in the
field's colour, which vanishes over similar backgrounds. Each heatmap field
gets a perceptual colorscale instead, and the sidebar groups each run's fields:
heatmaps and focus scores open, bookkeeping (targets, predictions, errors,
strengths) folded away. A user's own colorscale, opacity or colour mode is
kept (but the App uses colorscales only when colouring by value).
"""

from __future__ import annotations

import fiftyone as fo

from .naming import FOCUS, FieldNames

__all__ = ["HEATMAP_COLORSCALE", "HEATMAP_OPACITY", "add_to_run_group", "style_run"]

# viridis: perceptually uniform and readable over any photo; also what the
# FiftyOne 1.22 App actually draws (it ignored named and listed per-field
# scales in our browser test and drew its default, viridis).
HEATMAP_COLORSCALE = "viridis"
HEATMAP_OPACITY = 0.5


def details_group(run_key: str) -> str:
    return f"{run_key} details"


def style_run(dataset: fo.Dataset, run_key: str, names: FieldNames) -> None:
    """Colorscale per heatmap field, and the run's two sidebar groups."""
    config = dataset.app_config
    scheme = config.color_scheme or fo.ColorScheme()
    scales = list(scheme.colorscales or [])
    styled = {c.get("path") for c in scales}
    scales += [
        {"path": name, "name": HEATMAP_COLORSCALE, "list": None}
        for name in names.heatmaps
        if name not in styled
    ]
    scheme.colorscales = scales
    if scheme.opacity is None:
        scheme.opacity = HEATMAP_OPACITY
    # The App draws a heatmap in its field colour when colouring by field, and
    # with its colorscale only when colouring by value (FiftyOne 1.22 looker).
    if scheme.color_by is None:
        scheme.color_by = "value"
    config.color_scheme = scheme

    details = [*names.strengths, names.target, names.prediction, names.error]
    details.append(names.seen)  # the region the model saw (a Detection)
    details.append(names.instance)  # the done marker: the run instance
    _set_groups(
        dataset,
        {run_key: (names.heatmaps, True), details_group(run_key): (details, False)},
    )
    dataset.save()


def add_to_run_group(dataset: fo.Dataset, run_key: str, paths: list[str]) -> None:
    """Put fields written later for the run in its groups: focus scores open,
    the other scores (hits, spreads, comparisons) in the folded details."""
    groups = {g.name: g for g in dataset.app_config.sidebar_groups or []}
    if run_key not in groups:
        return  # the user reorganised the sidebar: leave it alone
    details = details_group(run_key)
    wanted = {}
    for name, expanded, chosen in (
        (run_key, True, [p for p in paths if p.endswith("_" + FOCUS)]),
        (details, False, [p for p in paths if not p.endswith("_" + FOCUS)]),
    ):
        current = groups[name].paths if name in groups else []
        wanted[name] = (current + [p for p in chosen if p not in current], expanded)
    _set_groups(dataset, wanted)
    dataset.save()


def _set_groups(dataset, wanted: dict[str, tuple[list[str], bool]]) -> None:
    """Move ``paths`` into the named groups, placed just before 'labels'."""
    config = dataset.app_config
    groups = config.sidebar_groups or fo.DatasetAppConfig.default_sidebar_groups(
        dataset
    )
    moved = {p for paths, _ in wanted.values() for p in paths}
    kept = []
    for group in groups:
        if group.name in wanted:
            continue
        group.paths = [p for p in group.paths if p not in moved]
        kept.append(group)
    at = next((i for i, g in enumerate(kept) if g.name == "labels"), len(kept))
    new = [
        fo.SidebarGroupDocument(name=name, paths=list(paths), expanded=expanded)
        for name, (paths, expanded) in wanted.items()
    ]
    config.sidebar_groups = kept[:at] + new + kept[at:]
