"""``show_detection_cam``: the sample view with the own map of a chosen object
of a per-object run: a detection (or patch) of ``{run_key}_detections``, or a
label of a multi-label run's ``{run_key}_labels``. The object is the one
selected in the App's sample view, or the one the review panel passes
(``object_id`` and ``sample_id``: its per-object list's Open)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.core.json import stringify
from fiftyone.server.filters import SampleFilter
from fiftyone.server.samples import paginate_samples

from gradcam_engine.audit.object_maps import object_store, show_object_maps
from gradcam_engine.audit.writer_steps import resolve_layer
from gradcam_engine.runs import cam_runs as runs

from . import _forms


def _object_runs(dataset) -> list[str]:
    """The runs that explain objects (detections, patches, labels)."""
    return [
        key
        for key in runs.list_cam_runs(dataset)
        if object_store(runs.get_cam_run(dataset, key)) is not None
    ]


def _field(ctx, run_key: str) -> str:
    return object_store(runs.get_cam_run(ctx.dataset, run_key)).field


def _selected(ctx, run_key: str) -> list[dict]:
    """The objects the panel passes, else those selected in the App."""
    if ctx.params.get("object_id") and ctx.params.get("sample_id"):
        return [
            {"label_id": ctx.params["object_id"], "sample_id": ctx.params["sample_id"]}
        ]
    field = _field(ctx, run_key)
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
                "Open the sample with the own map of the detection (or label) "
                "selected in a run's <run>_detections (or <run>_labels)"
            ),
            dynamic=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        keys = _object_runs(ctx.dataset)
        choices = _forms.dropdown(keys)
        default = next(
            (k for k in keys if _selected(ctx, k)), keys[0] if keys else None
        )
        prop = inputs.enum(
            "run_key",
            choices.values(),
            default=default,
            required=True,
            label="Run",
            view=choices,
        )
        run_key = ctx.params.get("run_key", default)
        if not keys:
            prop.invalid = True
            prop.error_message = (
                "No detection or multi-label run: run Compute CAMs with Task "
                "Detection or Multi-label"
            )
        elif run_key not in keys:
            prop.invalid = True
            prop.error_message = f"{run_key!r} is not a detection or multi-label run"
        elif not _selected(ctx, run_key):
            prop.invalid = True
            prop.error_message = (
                f"Select a label of {_field(ctx, run_key)!r} in the App (click "
                "its box or tag in the sample view), then run this again"
            )
        return types.Property(inputs, view=types.View(label="Detection CAM"))

    async def execute(self, ctx):
        run_key = ctx.params["run_key"]
        selected = _selected(ctx, run_key)
        if not selected:
            raise ValueError(
                f"no label of {_field(ctx, run_key)!r} is selected; select one "
                "in the sample view first"
            )
        if ctx.view._is_patches:  # the App draws no label attribute there
            raise ValueError(
                "a patches view cannot show a detection's map (FiftyOne draws "
                "heatmap fields of samples only); open the dataset's sample view, "
                "click the detection's box there and run this again"
            )
        info = runs.get_cam_run(ctx.dataset, run_key)
        store = object_store(info)
        layer = resolve_layer(info, ctx.params.get("layer"))
        sample_ids = sorted({s["sample_id"] for s in selected})
        view = ctx.dataset.select(sample_ids)
        ids = [s["label_id"] for s in selected]
        chosen = show_object_maps(view, run_key, ids, layer)
        field = store.chosen_field(info.fields[layer])
        first = next(iter(chosen))
        ctx.trigger(
            _forms.uri("open_cam_sample"),
            params={
                "sample_id": first,
                "fields": [field, store.field],
                "sample": await _modal_sample(ctx, first),
            },
        )
        return {"samples": chosen, "field": field}
