"""How a run's fields look in the App: stored in ``dataset.app_config``.

FiftyOne draws a heatmap, when colouring by field, as a single-hue tint in the
field's colour, which vanishes over similar backgrounds. Each heatmap field
gets a perceptual colorscale instead, and the sidebar groups each run's fields:
heatmaps and focus scores open, bookkeeping (targets, predictions, errors,
strengths) folded away. A user's own colorscale, opacity or colour mode is
kept (but the App uses colorscales only when colouring by value).

Tiles show the run's main heatmap and the objects by default, not its
bookkeeping labels (``app_config.active_fields``: FiftyOne's default shows
every non-dense label, i.e. each run's target, prediction and seen box, and
no heatmap). A rename or delete of the run moves or removes all of it
(``rename_run_look`` / ``remove_run_look``, called by ``CamRun``).
"""

from __future__ import annotations

import fiftyone as fo

from .naming import FOCUS, FieldNames

__all__ = [
    "HEATMAP_COLORSCALE",
    "HEATMAP_OPACITY",
    "add_to_run_group",
    "remove_run_look",
    "rename_run_look",
    "style_run",
]

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
    shown = [*names.heatmaps, *([names.detections] if names.detections else [])]
    _set_groups(
        dataset,
        {run_key: (shown, True), details_group(run_key): (details, False)},
    )
    _set_active_fields(dataset, run_key, names)
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


def _set_active_fields(dataset: fo.Dataset, run_key: str, names: FieldNames) -> None:
    """Tiles: the run's main heatmap on (instead of other CAM runs' heatmaps:
    overlaid, one hides the other), its target, prediction and seen box off.
    A user's own setting is amended, never replaced: in exclude mode the
    bookkeeping is excluded, in include mode the heatmap is included."""
    config = dataset.app_config
    quiet = {names.target, names.prediction, names.seen}
    quiet |= _other_runs_heatmaps(dataset, run_key)
    main = names.heatmaps[:1] + ([names.detections] if names.detections else [])
    active = config.active_fields
    if active is None:  # FiftyOne's default: every non-dense label
        active = fo.DatasetAppConfig.default_active_fields(dataset)
        active.exclude = False
    paths = list(active.paths or [])
    if active.exclude:
        paths += [p for p in sorted(quiet) if p not in paths]
        paths = [p for p in paths if p not in main]
    else:
        paths = [p for p in paths if p not in quiet]
        paths += [p for p in main if p not in paths]
    active.paths = paths
    config.active_fields = active


def _other_runs_heatmaps(dataset: fo.Dataset, run_key: str) -> set[str]:
    """The heatmap fields of the dataset's other CAM runs (no import of
    cam_runs, which imports this module)."""
    out: set[str] = set()
    for key in dataset.list_runs():
        config = dataset.get_run_info(key).config
        if key != run_key and getattr(config, "kind", None) == "cam_audit":
            out.update((getattr(config, "fields", None) or {}).values())
    return out


def rename_run_look(
    dataset: fo.Dataset, run_key: str, new_key: str, field_renames: dict[str, str]
) -> None:
    """After FiftyOne renamed the run's fields (it moves their paths inside
    sidebar groups and active fields itself): rename the run's sidebar groups
    and move its colour settings to the new field names."""
    config = dataset.app_config
    names = {run_key: new_key, details_group(run_key): details_group(new_key)}
    for group in config.sidebar_groups or []:
        group.name = names.get(group.name, group.name)
        group.paths = [field_renames.get(p, p) for p in group.paths]
    if config.active_fields is not None:
        config.active_fields.paths = [
            field_renames.get(p, p) for p in config.active_fields.paths or []
        ]
    scheme = config.color_scheme
    if scheme is not None:  # lists reassigned: in-place edits may not be saved
        if scheme.colorscales:
            scheme.colorscales = [_moved(c, field_renames) for c in scheme.colorscales]
        if scheme.fields:
            scheme.fields = [_moved(f, field_renames) for f in scheme.fields]
    dataset.save()


def _moved(entry: dict, field_renames: dict[str, str]) -> dict:
    path = entry.get("path")
    return {**entry, "path": field_renames.get(path, path)}


def remove_run_look(dataset: fo.Dataset, run_key: str, fields: list[str]) -> None:
    """After the run's ``fields`` were deleted: remove its sidebar groups (when
    nothing else was put in them) and the colour settings of its fields."""
    config = dataset.app_config
    gone = set(fields)
    mine = {run_key, details_group(run_key)}
    if config.sidebar_groups:
        kept = []
        for group in config.sidebar_groups:
            group.paths = [p for p in group.paths if p not in gone]
            if group.name in mine and not group.paths:
                continue
            kept.append(group)
        config.sidebar_groups = kept
    if config.active_fields is not None:
        config.active_fields.paths = [
            p for p in config.active_fields.paths or [] if p not in gone
        ]
    scheme = config.color_scheme
    if scheme is not None:
        if scheme.colorscales:
            scheme.colorscales = [
                c for c in scheme.colorscales if c.get("path") not in gone
            ]
        if scheme.fields:
            scheme.fields = [f for f in scheme.fields if f.get("path") not in gone]
    dataset.save()
