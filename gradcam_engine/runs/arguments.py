"""``compute_cams``'s argument checks: each raises before anything is written,
naming the argument, the value and what would be valid."""

from __future__ import annotations

import difflib
import hashlib
import warnings
from collections.abc import Callable
from typing import Any

import fiftyone as fo
import numpy as np

from ..engine.errors import AdvisedError
from .storage import STORAGE_MODES

__all__ = [
    "TASKS",
    "check_args",
    "check_collection",
    "check_label_field",
    "describe_classes",
    "fixed_class",
    "progress_args",
]

ProgressCallback = Callable[[int, int], Any]

TASKS = ("classification", "segmentation", "detection", "multilabel")
_LABEL_TYPES = {
    "classification": fo.Classification,
    "segmentation": fo.Segmentation,
    "detection": fo.Detections,
    "multilabel": fo.Classifications,
}


def check_args(task, target, label_field, storage, batch_size, max_size) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if storage not in STORAGE_MODES:
        raise ValueError(f"storage must be one of {STORAGE_MODES}, got {storage!r}")
    if isinstance(target, bool) or not isinstance(target, str | int | np.integer):
        raise TypeError(
            "target must be 'predicted', 'label', an int class index or a class name, "
            f"got {type(target).__name__}: {target!r}"
        )
    if task == "detection" and target not in ("predicted", "label"):
        raise ValueError(
            f"task='detection' explains detections: target must be 'predicted' "
            f"(the model's detections) or 'label' (the boxes of label_field), "
            f"got {target!r}"
        )
    if task == "multilabel" and target not in ("predicted", "label"):
        raise ValueError(
            f"task='multilabel' explains several labels per image: target must "
            f"be 'predicted' (every class whose sigmoid is >= confidence_thresh) "
            f"or 'label' (every label of label_field), got {target!r}"
        )
    if target == "label" and not label_field:
        raise ValueError("target='label' needs label_field=<name of the label field>")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"max_size must be a positive int, got {max_size!r}")


def check_collection(samples) -> None:
    """Refuse a collection the run cannot write back to: evaluation patches
    and clips views (their samples are generated), and video or 3D
    collections. A patches view is explained crop by crop (patch_runs.py), a
    frames view frame by frame (frame_fields.py)."""
    if type(samples).__name__ == "EvaluationPatchesView":
        raise ValueError(
            "samples is an evaluation patches view (to_evaluation_patches): "
            "its patches pair ground truth with predictions. Explain the crops "
            "of one field with dataset.to_patches(<field>) instead."
        )
    if getattr(samples, "_is_clips", False):
        raise ValueError(
            "samples is a clips view (to_clips): compute_cams explains images, "
            "not video clips. Run it on the clips' frames view instead: "
            "clips.to_frames() (sample_frames=True if the frames have no "
            "image files yet); the maps become frame fields of the videos."
        )
    media_type = getattr(samples, "media_type", "image")
    if media_type not in ("image", "group"):
        raise ValueError(
            f"samples holds {media_type!r} media; compute_cams explains images "
            "(media_type 'image'). For videos, run it on their frames view: "
            "dataset.to_frames() (sample_frames=True if the frames have no "
            "image files yet); the maps become frame fields of the videos."
        )


def fixed_class(target, class_names) -> int | None:
    """The class index when ``target`` names one class for every sample."""
    if isinstance(target, int | np.integer):
        return int(target)
    if target in ("predicted", "label"):
        return None
    if not class_names or target not in class_names:
        known = "the model has no class names" if not class_names else ""
        close = difflib.get_close_matches(target, class_names or [], n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise AdvisedError(
            f"target {target!r} is not 'predicted', 'label', an int or a known class "
            f"name{'; ' + known if known else ''}.{hint}",
            python="Pass classes=[...] to name the model's classes.",
            app="Type one of the model's class names or a class index in 'Class'.",
        )
    return list(class_names).index(target)


def check_label_field(samples, task, target, label_field) -> None:
    if not label_field:
        return
    schema = samples.get_field_schema()
    expected = _LABEL_TYPES[task]
    if label_field not in schema:
        raise ValueError(
            f"label_field {label_field!r} does not exist on this collection; "
            f"{expected.__name__} fields: "
            f"{sorted(samples.get_field_schema(embedded_doc_type=expected))}"
        )
    doc_type = getattr(schema[label_field], "document_type", None)
    if doc_type is not expected:
        raise ValueError(
            f"label_field {label_field!r} holds {getattr(doc_type, '__name__', doc_type)}; "
            f"task={task!r} needs a fo.{expected.__name__} field"
        )
    if task == "classification" and target != "label":
        raise ValueError(
            f"label_field={label_field!r} is only used with target='label' for "
            f"classification (got target={target!r})"
        )


def describe_classes(class_names) -> list[str] | str | None:
    if class_names is None:
        return None
    if len(class_names) <= 50:
        return list(class_names)
    digest = hashlib.sha1("\n".join(map(str, class_names)).encode()).hexdigest()[:12]
    return f"{len(class_names)} classes (sha1 {digest})"


def progress_args(
    progress: bool | ProgressCallback,
    progress_callback: ProgressCallback | None = None,
) -> tuple[bool, ProgressCallback | None]:
    """The one ``progress`` argument of every public function -> ``(draw a
    progress bar, callback)``: True draws FiftyOne's bar, False nothing, a
    callable is called as ``progress(done, total)`` (and no bar is drawn).

    ``progress_callback`` is ``compute_cams``'s former keyword for the
    callable: still accepted, with a ``DeprecationWarning``.
    """
    if progress_callback is not None:
        warnings.warn(
            "progress_callback= is deprecated; pass the callable as "
            "progress=<callable (done, total)>",
            DeprecationWarning,
            stacklevel=3,
        )
        if not callable(progress_callback):
            raise TypeError(
                "progress_callback must be a callable (done, total), got "
                f"{type(progress_callback).__name__}: {progress_callback!r}"
            )
        if callable(progress):
            raise ValueError(
                "progress and progress_callback are both callables; pass only "
                "progress=<callable (done, total)>"
            )
        return False, progress_callback
    if callable(progress):
        return False, progress
    if isinstance(progress, bool):
        return progress, None
    raise TypeError(
        "progress must be True (a progress bar), False (nothing) or a callable "
        f"(done, total), got {type(progress).__name__}: {progress!r}"
    )
