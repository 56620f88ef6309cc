"""Whether a label field's names are the model's class names.

A class report groups by a label field and counts a sample correct when the
run's prediction equals its label. When the labels name other things than
the model's classes ("cat" for an ImageNet model that predicts "tabby"),
every such class would read accuracy 0: ``foreign_labels`` finds them, so
that the report leaves their accuracy empty and says why.
"""

from __future__ import annotations

from collections.abc import Iterable

import fiftyone.core.collections as foc

from ..runs import cam_runs as runs

__all__ = ["foreign_labels", "foreign_note"]


def foreign_labels(
    samples: foc.SampleCollection,
    info: runs.CamRunInfo,
    labels: Iterable[str],
    prediction_field: str,
) -> tuple[list[str], str]:
    """The ``labels`` that are not classes of the run's model, and how that
    was decided: against the class names the run recorded, or (a long list
    is recorded as a digest) against the labels the run predicted or
    explained on the whole dataset."""
    labels = sorted({str(x) for x in labels})
    recorded = info.config.get("classes")
    if isinstance(recorded, list):
        known, basis = set(map(str, recorded)), "the model's class names"
    else:
        dataset = runs.root_dataset(samples)
        schema = dataset.get_field_schema()
        known = set()
        for field in (prediction_field, info.target_field):
            if field in schema:
                known.update(map(str, dataset.distinct(f"{field}.label")))
        basis = "the classes the run predicted or explained"
    return [x for x in labels if x not in known], basis


def foreign_note(label_field: str, foreign: list[str], basis: str) -> str:
    """What the report says about ``foreign`` labels (App and Python)."""
    shown = ", ".join(map(repr, foreign[:8]))
    more = f" and {len(foreign) - 8} more" if len(foreign) > 8 else ""
    return (
        f"The labels {shown}{more} of {label_field!r} are not among {basis}: "
        "the model cannot predict them, so their accuracy is left empty. Group "
        "by a field whose labels are the model's class names to measure it."
    )
