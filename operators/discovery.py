"""Discovery without boxes and its proof: ``cluster_cams`` (heatmap clusters and
an Embeddings-panel plot), ``background_test`` (objects kept, background
replaced, model rerun) and ``road_cams`` (faithfulness of each map)."""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

import gradcam_engine as ge

from . import _forms

GT_KINDS = (fo.Detections, fo.Segmentation, fo.Polylines)
BY_CHOICES = {"predicted": "Predicted class", "label": "Label field", "none": "All"}
FILLS = ("blur", "mean", "gray", "noise")  # gradcam_engine.audit.counterfactual


class _Discovery(foo.Operator):
    """Shared plumbing: delegation, run choice, ``__call__`` through FiftyOne."""

    def __call__(self, sample_collection, run_key: str, delegate=False, **params):
        return _forms.call_operator(
            self, sample_collection, dict(run_key=run_key, **params), delegate=delegate
        )

    def resolve_delegation(self, ctx):
        return ctx.params.get("delegate", None)

    def _run(self, ctx, label: str, fn, *args, **kwargs):
        """``fn(view, run_key, *args, progress=..., **kwargs)`` with progress."""
        view, key = ctx.target_view(), ctx.params["run_key"]
        yield from _forms.run_with_progress(
            ctx, label, lambda report: fn(view, key, *args, progress=report, **kwargs)
        )
        if not ctx.delegated:
            yield ctx.ops.reload_dataset()


def _model_input(inputs: types.Object) -> None:
    inputs.str(
        "model",
        label="Model source",
        description="Default: the run's own model source",
    )


class ClusterCams(_Discovery):
    @property
    def config(self):
        return _forms.delegable_config(
            "cluster_cams",
            "Cluster CAMs",
            "Group the heatmaps into strategies (SpRAy) and plot them in the "
            "Embeddings panel",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Cluster")
        key = _forms.cam_run_choice(ctx, inputs)
        _forms.layer_choice(ctx, inputs, key)
        choices = _forms.dropdown(BY_CHOICES)
        inputs.enum(
            "by", choices.values(), default="predicted", label="Within", view=choices
        )
        inputs.int(
            "n_clusters",
            label="Clusters per group",
            description="Empty: chosen by the silhouette",
        )
        _forms.delegate_input(inputs)
        return types.Property(inputs, view=types.View(label="Cluster CAMs"))

    def execute(self, ctx):
        by = ctx.params.get("by", "predicted")
        kwargs = dict(
            layer=ctx.params.get("layer"),
            by=None if by == "none" else by,
            n_clusters=ctx.params.get("n_clusters") or None,
        )
        yield from self._run(ctx, "Clustering CAMs", ge.cluster_cams, **kwargs)


class BackgroundTest(_Discovery):
    @property
    def config(self):
        return _forms.delegable_config(
            "background_test",
            "Background test",
            "Keep the objects, replace the background, and see if the prediction holds",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Test")
        _forms.cam_run_choice(ctx, inputs)
        fields = _forms.label_field_choices(ctx.dataset, GT_KINDS)
        choices = _forms.dropdown(fields)
        inputs.enum(
            "gt_field",
            choices.values(),
            required=True,
            label="Objects",
            description="Detections, Segmentation or Polylines field: kept as is",
            view=choices,
        )
        fills = _forms.dropdown(FILLS)
        inputs.enum(
            "fill", fills.values(), default="blur", label="Background", view=fills
        )
        _model_input(inputs)
        _forms.delegate_input(inputs)
        return types.Property(inputs, view=types.View(label="Background test"))

    def execute(self, ctx):
        params = ctx.params
        yield from self._run(
            ctx,
            "Background test",
            ge.background_test,
            params["gt_field"],
            params.get("model") or None,
            fill=params.get("fill", "blur"),
        )


class RoadCams(_Discovery):
    @property
    def config(self):
        return _forms.delegable_config(
            "road_cams",
            "CAM faithfulness (ROAD)",
            "Does each map point at what the model needs? ROAD per map",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Measure")
        key = _forms.cam_run_choice(ctx, inputs)
        _forms.layer_choice(ctx, inputs, key)
        _model_input(inputs)
        _forms.delegate_input(inputs)
        return types.Property(inputs, view=types.View(label="CAM faithfulness"))

    def execute(self, ctx):
        params = ctx.params
        yield from self._run(
            ctx, "ROAD", ge.road_cams, params.get("layer"), params.get("model") or None
        )
