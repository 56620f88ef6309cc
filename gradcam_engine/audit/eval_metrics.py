"""CAM figures of a run over a collection, as FiftyOne's Model Evaluation
panel shows custom metrics (one number each): the mean focus, the share of
low-focus predictions and the background flip rate.

The operators in ``operators/eval_metrics.py`` register them as FiftyOne
custom evaluation metrics (``fiftyone.operators.EvaluationMetric``), so that

    dataset.evaluate_classifications(
        "predictions", gt_field="ground_truth", eval_key="eval",
        custom_metrics={"@cam-audit/cam-audit/cam_mean_focus": {"run_key": "gradcam"}},
    )

stores them on the evaluation and the panel lists them beside accuracy. The
panel of FiftyOne 1.22 shows a custom metric as one value (no per-class
breakdown): ``class_report`` has the per-class figures.

FiftyOne 1.22 keeps custom metrics when it reloads binary classification
(``method="binary"``), detection and regression results, but not "simple"
(multiclass) or top-k classification results:
``BaseClassificationResults._from_dict`` (``fiftyone/utils/eval/base.py``)
drops ``custom_metrics``, and the panel always reloads. The values are still
on the results object that ``evaluate_classifications`` returns.
"""

from __future__ import annotations

import fiftyone.core.collections as foc
import numpy as np

from ..runs import cam_runs as runs
from .writer_steps import resolve_layer

__all__ = ["CAM_METRICS", "cam_metric", "pick_run"]

# name -> (label, lower is better)
CAM_METRICS: dict[str, tuple[str, bool]] = {
    "mean_focus": ("CAM mean focus", False),
    "low_focus_share": ("CAM low-focus share", True),
    "bg_flip_rate": ("CAM background flip rate", True),
}


def pick_run(samples: foc.SampleCollection, run_key: str | None) -> str:
    """``run_key``, or the dataset's only CAM run when None."""
    if run_key:
        return runs.get_cam_run(samples, run_key).run_key
    keys = runs.list_cam_runs(samples)
    if len(keys) != 1:
        raise ValueError(
            f"run_key: the dataset has {len(keys)} CAM runs ({keys}); pass "
            "run_key=<one of them> in the metric's kwargs"
        )
    return keys[0]


def cam_metric(
    samples: foc.SampleCollection,
    name: str,
    run_key: str | None = None,
    layer: str | None = None,
    low_focus: float = 0.3,
) -> float | None:
    """The CAM figure ``name`` (``CAM_METRICS``) of run ``run_key`` over
    ``samples``: ``mean_focus`` and ``low_focus_share`` (focus below
    ``low_focus``) of ``layer`` (default the run's last) need ``score_cams``;
    ``bg_flip_rate`` needs ``background_test``. None where nothing was scored.
    """
    if name not in CAM_METRICS:
        raise ValueError(f"name must be one of {list(CAM_METRICS)}, got {name!r}")
    info = runs.get_cam_run(samples, pick_run(samples, run_key))
    if name == "bg_flip_rate":
        field = f"{info.run_key}_bg_flip"
    else:
        field = f"{info.fields[resolve_layer(info, layer)]}_focus"
    if field not in samples.get_field_schema():
        step = "background_test" if name == "bg_flip_rate" else "score_cams"
        raise ValueError(
            f"run {info.run_key!r} has no field {field!r}: run {step} on it first"
        )
    values = np.array([v for v in samples.values(field) if v is not None], dtype=float)
    if not len(values):
        return None
    if name == "low_focus_share":
        return float(np.mean(values < low_focus))
    return float(values.mean())
