"""``show_detection_cam``: the sample view with the own map of the detection
selected in the App (a detection run's ``{run_key}_detections``)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.core.json import stringify
from fiftyone.server.filters import SampleFilter
from fiftyone.server.samples import paginate_samples

from gradcam_engine.audit.detection_view import show_detection_maps
from gradcam_engine.runs import cam_runs as runs
from gradcam_engine.runs.naming import chosen_detection_field, detections_field

from . import _forms


def _detection_runs(dataset) -> list[str]:
    return [
        key
        for key in runs.list_cam_runs(dataset)
        if runs.get_cam_run(dataset, key).config.get("task") == "detection"
    ]


def _selected(ctx, run_key: str) -> list[dict]:
    field = detections_field(run_key)
    return [s for s in ctx.selected_labels or [] if s.get("field") == field]


async def _modal_sample(ctx, sample_id: str) -> dict | None:
    """The sample as the App's sample view receives it, new map included.

    The App caches the open sample (Relay store, keyed by sample id and view):
    neither reload_dataset nor reload_samples fetch it again, so the map just
    written would not be drawn. The server's own query builds the sample here
    and ``open_cam_sample`` puts it into that cache (FiftyOne's
    ``useUpdateSamples``, what the App does after tagging)."""
    page = await paginate_samples(
        ctx.dataset.name,
        ctx.view._serialize(),
        None,
        1,
        sample_filter=SampleFilter(id=sample_id),
        pagination_data=False,
    )
    return stringify(page.edges[0].node.sample) if page.edges else None


class ShowDetectionCam(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="show_detection_cam",
            label="Show the selected detection's CAM",
            description=(
                "Open the sample with the own map of the detection selected in "
                "a detection run's <run>_detections"
            ),
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        keys = _detection_runs(ctx.dataset)
        choices = _forms.dropdown(keys)
        default = next(
            (k for k in keys if _selected(ctx, k)), keys[0] if keys else None
        )
        prop = inputs.enum(
            "run_key",
            choices.values(),
            default=default,
            required=True,
            label="Detection run",
            view=choices,
        )
        run_key = ctx.params.get("run_key", default)
        if not keys:
            prop.invalid = True
            prop.error_message = (
                "No detection run: run Compute CAMs with Task Detection"
            )
        elif not _selected(ctx, run_key):
            prop.invalid = True
            prop.error_message = (
                f"Select a detection of {detections_field(run_key)!r} in the App "
                "(click its box in the sample view), then run this again"
            )
        return types.Property(inputs, view=types.View(label="Detection CAM"))

    async def execute(self, ctx):
        run_key = ctx.params["run_key"]
        selected = _selected(ctx, run_key)
        if not selected:
            raise ValueError(
                f"no detection of {detections_field(run_key)!r} is selected; "
                "select one in the sample view first"
            )
        if ctx.view._is_patches:  # the App draws no label attribute there
            raise ValueError(
                "a patches view cannot show a detection's map (FiftyOne draws "
                "heatmap fields of samples only); open the dataset's sample view, "
                "click the detection's box there and run this again"
            )
        sample_ids = sorted({s["sample_id"] for s in selected})
        view = ctx.dataset.select(sample_ids)
        chosen = show_detection_maps(view, run_key, [s["label_id"] for s in selected])
        info = runs.get_cam_run(ctx.dataset, run_key)
        field = chosen_detection_field(info.fields[info.layers[-1]])
        first = next(iter(chosen))
        ctx.trigger(
            _forms.uri("open_cam_sample"),
            params={
                "sample_id": first,
                "fields": [field, detections_field(run_key)],
                "sample": await _modal_sample(ctx, first),
            },
        )
        return {"samples": chosen, "field": field}
