"""Field names: the one place where the fields a CAM run writes are named (no
fiftyone here). A run ``R`` writes per layer a heatmap field ``F =
heatmap_field(R, layer)`` and fields named after ``F`` (its strength, scores,
cluster...), plus fields named after ``R`` (target, prediction, error...).
A new per-run or per-map field gets its name here, by one of the two helpers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MAX_RUN_KEY_LENGTH",
    "MAX_SLUG_LENGTH",
    "slug",
    "heatmap_field",
    "map_field",
    "run_field",
    "strength_field",
    "focus_field",
    "hit_field",
    "spread_field",
    "cluster_field",
    "clusters_brain_key",
    "road_field",
    "deletion_field",
    "insertion_field",
    "FOCUS",
    "detections_field",
    "labels_field",
    "detection_focus_attribute",
    "detection_map_attribute",
    "chosen_detection_field",
    "FieldNames",
    "FRAMES_PREFIX",
    "field_names",
    "frame_path",
]

_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")
# Field names are "<run key>_<layer slug>_<suffix>": the caps keep them
# readable in the App's sidebar (and a 100 KB key out of the database).
MAX_RUN_KEY_LENGTH = 64
MAX_SLUG_LENGTH = 64

# Suffixes of the fields named after a heatmap field F (F + "_" + suffix).
STRENGTH, FOCUS, HIT, SPREAD = "strength", "focus", "hit", "spread"
CLUSTER, CLUSTERS, ROAD = "cluster", "clusters", "road"
DELETION, INSERTION = "deletion", "insertion"
# Suffixes of the fields named after a run key R (R + "_" + suffix).
TARGET, PREDICTION, ERROR, SEEN, INSTANCE = (
    "target",
    "prediction",
    "error",
    "seen",
    "instance",
)
# task="detection": the explained detections, and per layer the attributes
# of each one (named after the layer only, so that they survive a rename).
DETECTIONS, MAP = "detections", "map"
# task="multilabel": the explained labels (their attributes named as above)
LABELS = "labels"
LAYER_AGREEMENT, BG_FLIP, BG_DROP, BG_FLIP_RATE = (
    "layer_agreement",
    "bg_flip",
    "bg_drop",
    "bg_flip_rate",
)


def slug(name: str) -> str:
    """Make ``name`` safe for a field name: each run of characters other than
    ``[A-Za-z0-9]`` becomes one ``"_"``; ``"_"`` is stripped at both ends.

    >>> slug("_blocks.15")
    'blocks_15'
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    result = _NON_ALNUM.sub("_", name).strip("_")
    if len(result) > MAX_SLUG_LENGTH:
        shown = f"{name[:40]!r}... ({len(name)} characters)"
        raise ValueError(
            f"name {shown} makes a field-name part of {len(result)} characters; "
            f"at most {MAX_SLUG_LENGTH}, so that field names stay readable. Pick "
            "a shorter layer (module) name"
        )
    if not result:
        raise ValueError(
            f"name {name!r} has no letters or digits to build a field name from"
        )
    return result


def heatmap_field(run_key: str, layer: str) -> str:
    """The ``fo.Heatmap`` field that holds ``layer``'s maps for run ``run_key``."""
    return f"{run_key}_{slug(layer)}"


def map_field(heatmap: str, suffix: str) -> str:
    """A field about each map of heatmap field ``heatmap``, e.g. its focus."""
    return f"{heatmap}_{suffix}"


def run_field(run_key: str, suffix: str) -> str:
    """A field about each sample of run ``run_key``, e.g. its prediction."""
    return f"{run_key}_{suffix}"


def strength_field(heatmap: str) -> str:
    """float: the max of the raw (unnormalised) map."""
    return map_field(heatmap, STRENGTH)


def focus_field(heatmap: str) -> str:
    """float: share of the map's energy inside the ground-truth objects."""
    return map_field(heatmap, FOCUS)


def hit_field(heatmap: str) -> str:
    """bool: the map's peak lies inside an object."""
    return map_field(heatmap, HIT)


def spread_field(heatmap: str) -> str:
    """float: how spread out the map is."""
    return map_field(heatmap, SPREAD)


def cluster_field(heatmap: str) -> str:
    """str: the map's cluster, ``"<group>/<k>"`` (``cluster_cams``)."""
    return map_field(heatmap, CLUSTER)


def clusters_brain_key(heatmap: str) -> str:
    """The fiftyone-brain visualization of the maps' clusters."""
    return map_field(heatmap, CLUSTERS)


def road_field(heatmap: str) -> str:
    """float: ROAD faithfulness of the map (``road_cams``)."""
    return map_field(heatmap, ROAD)


def deletion_field(heatmap: str) -> str:
    """float: area under the deletion curve (``deletion_insertion_cams``)."""
    return map_field(heatmap, DELETION)


def insertion_field(heatmap: str) -> str:
    """float: area under the insertion curve (``deletion_insertion_cams``)."""
    return map_field(heatmap, INSERTION)


def detections_field(run_key: str) -> str:
    """``fo.Detections``: the detections run ``run_key`` explained (task="detection")."""
    return run_field(run_key, DETECTIONS)


def labels_field(run_key: str) -> str:
    """``fo.Classifications``: the labels run ``run_key`` explained
    (task="multilabel"), each carrying its own map like a detection."""
    return run_field(run_key, LABELS)


def detection_focus_attribute(layer: str) -> str:
    """float attribute of an explained detection: the share of its own map's
    energy inside its own box, for ``layer``."""
    return f"{slug(layer)}_{FOCUS}"


def detection_map_attribute(layer: str) -> str:
    """``fo.Heatmap`` attribute of an explained detection: its own map for
    ``layer`` over the whole original image."""
    return f"{slug(layer)}_{MAP}"


def chosen_detection_field(heatmap: str) -> str:
    """``fo.Heatmap``: the own map of the detection last chosen on each sample
    (``show_detection_maps``), drawn by the App like any heatmap field."""
    return map_field(heatmap, "detection")


def chosen_label_field(heatmap: str) -> str:
    """``fo.Heatmap``: the own map of the label last chosen on each sample of
    a multi-label run (``show_label_maps``, the review panel's Open)."""
    return map_field(heatmap, "label")


@dataclass
class FieldNames:
    """The fields ``compute_cams`` writes for one run."""

    heatmaps: list[str]
    strengths: list[str]
    target: str
    prediction: str
    error: str
    seen: str  # fo.Detection: the box of the original image the model saw
    # the run instance that computed (or failed) the sample: its done marker
    instance: str = ""
    # task="detection": the fo.Detections field of the explained detections,
    # and the float focus attribute of each for every layer
    detections: str | None = None
    detection_focus: list[str] | None = None
    # task="detection", "patches" or "multilabel": per layer the fo.Heatmap
    # field of the own map of the object (detection, patch, label) chosen on
    # each sample (audit/object_maps.py), declared with the run so that an
    # open App knows it before it is written
    chosen_detections: list[str] | None = None
    # task="multilabel": the fo.Classifications field of the explained labels
    labels: str | None = None
    # a run on a frames view: the fields are frame fields of the video
    # dataset; the names above are the frames view's, ``owned`` the dataset's
    frames: bool = False

    @property
    def owned(self) -> list[str]:
        owned = [
            *self.heatmaps,
            *self.strengths,
            self.target,
            self.prediction,
            self.error,
            self.seen,
            self.instance,
        ]
        owned += [self.detections] if self.detections else []
        owned += self.chosen_detections or []
        owned += [self.labels] if self.labels else []
        return [frame_path(f) for f in owned] if self.frames else owned


# A video dataset's frame fields, as FiftyOne names them on the dataset.
FRAMES_PREFIX = "frames."


def frame_path(name: str) -> str:
    """Frame field ``name`` as a path of the video dataset: ``frames.<name>``."""
    return name if name.startswith(FRAMES_PREFIX) else FRAMES_PREFIX + name


def field_names(
    run_key: str,
    layers: list[str],
    task: str | None = "classification",
    frames: bool = False,
) -> FieldNames:
    """The fields of run ``run_key``; ``task="detection"`` adds
    ``{run_key}_detections``, ``task="multilabel"`` ``{run_key}_labels``
    (``task`` None: a run stored before tasks); ``frames``: a run on a frames
    view, whose owned fields are ``frames.<name>`` of the video dataset."""
    heatmaps = [heatmap_field(run_key, layer) for layer in layers]
    if len(set(heatmaps)) != len(heatmaps):
        raise ValueError(
            f"layers {layers} give clashing field names {heatmaps}; pick layers "
            "whose names differ in letters or digits"
        )
    return FieldNames(
        heatmaps=heatmaps,
        strengths=[strength_field(name) for name in heatmaps],
        target=run_field(run_key, TARGET),
        prediction=run_field(run_key, PREDICTION),
        error=run_field(run_key, ERROR),
        seen=run_field(run_key, SEEN),
        instance=run_field(run_key, INSTANCE),
        # a patches run stores its crops' maps like detections (patch_runs.py)
        detections=(
            detections_field(run_key) if task in ("detection", "patches") else None
        ),
        detection_focus=(
            [detection_focus_attribute(layer) for layer in layers]
            if task == "detection"
            else None
        ),
        chosen_detections=(
            [chosen_detection_field(name) for name in heatmaps]
            if task in ("detection", "patches")
            else [chosen_label_field(name) for name in heatmaps]
            if task == "multilabel"
            else None
        ),
        labels=labels_field(run_key) if task == "multilabel" else None,
        frames=bool(frames),
    )
