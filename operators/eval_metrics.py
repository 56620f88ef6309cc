"""CAM figures as FiftyOne custom evaluation metrics (the Model Evaluation
panel): ``cam_mean_focus``, ``cam_low_focus_share``, ``cam_bg_flip_rate``.
Each computes one number over the evaluated collection from a CAM run
(``run_key`` in the metric's kwargs; the dataset's only run by default)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from gradcam_engine.audit.eval_metrics import CAM_METRICS, cam_metric
from gradcam_engine.runs import cam_runs as runs


class _CamMetric(foo.EvaluationMetric):
    metric: str  # a key of CAM_METRICS

    @property
    def config(self):
        label, lower = CAM_METRICS[self.metric]
        config = foo.EvaluationMetricConfig(
            name=f"cam_{self.metric}",
            label=label,
            description=f"{label} of a CAM run over the evaluated samples",
            eval_types=["classification", "detection", "segmentation"],
            lower_is_better=lower,
            unlisted=True,
        )
        # FiftyOne 1.22 stores the flag it reads from ``config.kwargs``
        # (base.compute_custom_metrics), not the attribute it sets.
        config.kwargs["lower_is_better"] = lower
        return config

    def resolve_input(self, ctx):
        inputs = types.Object()
        keys = runs.list_cam_runs(ctx.dataset)
        choices = types.DropdownView()
        for key in keys:
            choices.add_choice(key, label=key)
        inputs.enum(
            "run_key",
            keys,
            default=keys[0] if len(keys) == 1 else None,
            label="CAM run",
            view=choices,
        )
        return types.Property(inputs)

    def compute(self, samples, results, run_key=None, layer=None, low_focus=0.3):
        return cam_metric(samples, self.metric, run_key, layer, low_focus)


class CamMeanFocus(_CamMetric):
    metric = "mean_focus"


class CamLowFocusShare(_CamMetric):
    metric = "low_focus_share"


class CamBgFlipRate(_CamMetric):
    metric = "bg_flip_rate"
