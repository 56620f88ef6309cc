"""The user's FiftyOne evaluations of fields a run owns (e.g.
``dataset.evaluate_detections("R_detections", gt_field=..., eval_key="eval")``):
deleted with the run, moved with it on a rename.

FiftyOne leaves an evaluation pointing at a field that is gone (its App panel
and ``load_evaluation_view`` then fail) when the field is deleted or renamed
under it. An evaluation of a run's predictions means nothing without them, so
deleting the run deletes it through ``delete_evaluation`` (which also removes
its marks on the ground truth and its ``<eval>_tp/fp/fn`` fields) and logs
that; renaming the run points the evaluation at the renamed field.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import fiftyone as fo
import fiftyone.core.evaluation as foev

__all__ = ["evaluations_of", "remove_evaluations", "move_evaluations"]

logger = logging.getLogger(__name__)

# the fields an evaluation config names (FiftyOne's evaluation configs)
_FIELD_ENTRIES = ("pred_field", "gt_field")


def evaluations_of(
    dataset: fo.Dataset, fields: Iterable[str], entries: Iterable[str] = _FIELD_ENTRIES
) -> dict[str, str]:
    """``{eval_key: field}``, in FiftyOne's order of the evaluations: those
    whose predictions or ground truth (``entries`` of their config) is one of
    ``fields``."""
    fields = set(fields)
    found = {}
    for eval_key in dataset.list_evaluations():
        config = dataset.get_evaluation_info(eval_key).config
        for entry in entries:
            if getattr(config, entry, None) in fields:
                found[eval_key] = getattr(config, entry)
                break
    return found


def remove_evaluations(dataset: fo.Dataset, run_key: str, fields: list[str]) -> None:
    """Delete the evaluations of ``fields`` (run ``run_key``'s) before the
    fields go, so that FiftyOne's cleanup still finds what it marked."""
    for eval_key, field in evaluations_of(dataset, fields).items():
        dataset.delete_evaluation(eval_key)
        logger.warning(
            "Deleted evaluation %r of %r with run %r (its predictions are gone)",
            eval_key,
            field,
            run_key,
        )


def move_evaluations(dataset: fo.Dataset, renames: dict[str, str]) -> None:
    """Point the evaluations of renamed fields (old -> new) at the new names;
    their marks moved with the labels."""
    for eval_key in evaluations_of(dataset, renames):
        config = dataset.get_evaluation_info(eval_key).config
        for entry in _FIELD_ENTRIES:
            old = getattr(config, entry, None)
            if old in renames:
                setattr(config, entry, renames[old])
        foev.EvaluationMethod.update_run_config(dataset, eval_key, config)
        # results loaded before hold the old config
        dataset._evaluation_cache.pop(eval_key, None)
