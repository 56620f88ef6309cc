"""Discovery without boxes and its proof: ``cluster_cams`` (heatmap clusters and
an Embeddings-panel plot), ``background_test`` (objects kept, background
replaced, model rerun) and ``road_cams`` (faithfulness of each map).

Each operator says what it is (name, labels, form head) and adds only its own
inputs and keyword arguments; ``_Discovery`` builds the form around them and
runs the one library call with progress.
"""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

import gradcam_engine as ge
from gradcam_engine.runs import trust

from . import _forms, _outcome

BY_CHOICES = {"predicted": "Predicted class", "label": "Label field", "none": "All"}
# gradcam_engine.audit.backgrounds (not imported here: it imports torch);
# "several" leaves the library's measured default set of fills.
FILLS = ("several", "blur", "mean", "gray", "noise", "swap")


class _Discovery(foo.Operator):
    """A delegable operator on one CAM run: view, run (and layer), the
    operator's own inputs, Delegate; executes ``gradcam_engine.<function>(view,
    run_key, progress=..., **library_kwargs(params))``."""

    name: str  # the operator's name (URI suffix)
    label: str  # its label, and the form's title
    description: str
    action: str  # "Cluster" -> "Cluster the whole dataset / the current view"
    with_layer: bool = False  # a Layer dropdown of the chosen run
    progress_label: str  # "<progress_label>: done/total"
    function: str  # the gradcam_engine function (looked up on execution: no
    # torch import when the plugin loads)

    @property
    def config(self):
        return _forms.delegable_config(self.name, self.label, self.description)

    def __call__(self, sample_collection, run_key: str, delegate=False, **params):
        return _forms.call_operator(
            self, sample_collection, dict(run_key=run_key, **params), delegate=delegate
        )

    def resolve_delegation(self, ctx):
        return ctx.params.get("delegate", None)

    def resolve_input(self, ctx):
        inputs = types.Object()
        _forms.run_inputs(ctx, inputs, self.action, layer=self.with_layer)
        self.add_inputs(ctx, inputs)
        _forms.delegate_input(inputs)
        return types.Property(inputs, view=types.View(label=self.label))

    def execute(self, ctx):
        view, key = ctx.target_view(), ctx.params["run_key"]
        kwargs = self.library_kwargs(ctx.params)
        if self.with_layer:
            kwargs["layer"] = ctx.params.get("layer")
        fn = getattr(ge, self.function)
        yield from _outcome.run_and_report(
            ctx,
            self.label,
            self.progress_label,
            lambda report: fn(view, key, progress=report, **kwargs),
            confirm=lambda result: self.confirmation(_outcome.as_plain(result)),
        )

    def add_inputs(self, ctx, inputs: types.Object) -> None:
        """The operator's own inputs, between the run and Delegate."""

    def library_kwargs(self, params: dict[str, Any]) -> dict[str, Any]:
        """The operator's own keyword arguments of ``function``."""
        return {}

    def confirmation(self, result: dict[str, Any]) -> str:
        """What the App says when ``function`` returned ``result``."""
        return f"wrote {', '.join(result.get('fields') or []) or 'nothing'}"


def _model_input(ctx, inputs: types.Object) -> None:
    prop = inputs.str(
        "model",
        label="Model source",
        description="Default: the run's own model source",
    )
    error = ctx.params.get("model") and trust.app_model_error(ctx.params["model"])
    if error:  # judged by its text alone: nothing imported or read
        prop.invalid, prop.error_message = True, error


def _app_model(params: dict[str, Any]) -> str | None:
    """The form's model, allowed from the App (``trust``), or None: the run's
    own source, recorded by whoever computed the run."""
    model = params.get("model") or None
    return None if model is None else trust.check_app_model(model)


class ClusterCams(_Discovery):
    name = "cluster_cams"
    label = "Cluster CAMs"
    description = (
        "Group the heatmaps into strategies (SpRAy) and plot them in the "
        "Embeddings panel"
    )
    action = "Cluster"
    with_layer = True
    progress_label = "Clustering CAMs"
    function = "cluster_cams"

    def add_inputs(self, ctx, inputs):
        choices = _forms.dropdown(BY_CHOICES)
        inputs.enum(
            "by", choices.values(), default="predicted", label="Within", view=choices
        )
        inputs.int(
            "n_clusters",
            label="Clusters per group",
            description="Empty: chosen by the silhouette",
        )

    def confirmation(self, result):
        sizes = {
            field: (len(clusters), sum(c["size"] for c in clusters))
            for field, clusters in (result.get("clusters") or {}).items()
        }
        text = "; ".join(
            f"{n} samples of {field} in {k} clusters" for field, (k, n) in sizes.items()
        )
        keys = result.get("brain_keys") or []
        if keys:
            text += f" (Embeddings panel: {', '.join(keys)})"
        return text or "no heatmaps to cluster"

    def library_kwargs(self, params):
        by = params.get("by", "predicted")
        return dict(
            by=None if by == "none" else by,
            n_clusters=params.get("n_clusters") or None,
        )


class BackgroundTest(_Discovery):
    name = "background_test"
    label = "Background test"
    description = (
        "Keep the objects, replace the background, and see if the prediction holds"
    )
    action = "Test"
    progress_label = "Background test"
    function = "background_test"

    def add_inputs(self, ctx, inputs):
        _forms.gt_field_input(
            ctx,
            inputs,
            "Detections, Segmentation or Polylines field: kept as is",
            required=True,
        )
        fills = _forms.dropdown(FILLS)
        inputs.enum(
            "fill", fills.values(), default="several", label="Background", view=fills
        )
        _model_input(ctx, inputs)

    def confirmation(self, result):
        rate = result.get("flip_rate")
        flips = "n/a" if rate is None else f"{rate:.0%}"
        return (
            f"{result.get('num_tested', 0)} samples tested; the prediction changed "
            f"without the background on {flips}"
        )

    def library_kwargs(self, params):
        fill = params.get("fill") or "several"
        return dict(
            gt_field=params["gt_field"],
            model=_app_model(params),
            **({} if fill == "several" else {"fill": fill}),
        )


class RoadCams(_Discovery):
    name = "road_cams"
    label = "CAM faithfulness (ROAD)"
    description = "Does each map point at what the model needs? ROAD per map"
    action = "Measure"
    with_layer = True
    progress_label = "ROAD"
    function = "road_cams"

    def add_inputs(self, ctx, inputs):
        _model_input(ctx, inputs)

    def confirmation(self, result):
        means = ", ".join(
            f"{layer} {value:.3f}"
            for layer, value in (result.get("mean_road") or {}).items()
            if value is not None
        )
        return f"mean ROAD {means}" if means else "no maps to measure"

    def library_kwargs(self, params):
        return dict(model=_app_model(params))
