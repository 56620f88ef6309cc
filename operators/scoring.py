"""``score_cams`` (focus of each heatmap on the objects) and the per-class report."""

from __future__ import annotations

import math
import warnings

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

import gradcam_engine as ge

from . import _forms, _outcome


class ScoreCams(foo.Operator):
    @property
    def config(self):
        return _forms.delegable_config(
            "score_cams",
            "Score CAMs",
            "Focus: the fraction of heatmap energy inside the objects",
        )

    def __call__(
        self,
        sample_collection,
        run_key: str,
        gt_field: str | None = None,
        delegate: bool = False,
        delegation_target: str | None = None,
        shards: int | None = None,
    ):
        return _forms.call_operator(
            self,
            sample_collection,
            dict(run_key=run_key, gt_field=gt_field, shards=shards),
            delegate=delegate,
            delegation_target=delegation_target,
        )

    def resolve_delegation(self, ctx):
        return _forms.shards_delegation(ctx)

    def resolve_input(self, ctx):
        inputs = types.Object()
        if _forms.run_inputs(ctx, inputs, "Score"):
            _forms.gt_field_input(
                ctx,
                inputs,
                "Detections (boxes), Segmentation (mask) or Polylines field; "
                "empty: only ground-truth-free scores (spread, agreement)",
            )
        _forms.delegate_input(inputs)
        _forms.shards_input(inputs)
        return types.Property(inputs, view=types.View(label="Score CAMs"))

    def execute(self, ctx):
        view = ctx.target_view()
        run_key = ctx.params["run_key"]
        kwargs = dict(gt_field=ctx.params.get("gt_field"))
        shards = _forms.requested_shards(ctx)
        if shards > 1:  # queue them here; workers compute (see cam_run_status)
            queued = ge.score_cams(
                view, run_key, delegate=True, shards=shards, **kwargs
            )
            yield ctx.ops.notify(str(queued))
            return
        yield from _outcome.run_and_report(
            ctx,
            "Score CAMs",
            "Scoring CAMs",
            lambda report: ge.score_cams(view, run_key, progress=report, **kwargs),
            confirm=_score_confirmation,
        )


def _score_confirmation(result) -> str:
    """'5 samples of gradcam scored; mean focus block 0.42; 6 fields written'."""
    out = _outcome.as_plain(result)
    focus = ", ".join(
        f"{layer} {value:.2f}"
        for layer, value in (out.get("mean_focus") or {}).items()
        if value is not None
    )
    parts = [f"{out.get('num_samples', 0)} samples of {out.get('run_key')} scored"]
    if focus:
        parts.append(f"mean focus {focus}")
    parts.append(f"{len(out.get('fields') or [])} fields written")
    return "; ".join(parts)


class CamClassReport(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="cam_class_report",
            label="CAM class report",
            description="Mean focus per class: which classes rely on the background",
            dynamic=True,
        )

    def __call__(
        self,
        sample_collection,
        run_key: str,
        layer: str | None = None,
        label_field: str | None = None,
    ):
        """Returns ``{"rows": [...]}``, one dict per class."""
        result = _forms.call_operator(
            self,
            sample_collection,
            dict(run_key=run_key, layer=layer, label_field=label_field),
        )
        return result.result

    def resolve_input(self, ctx):
        inputs = types.Object()
        _forms.run_inputs(ctx, inputs, "Report on", layer=True)
        fields = _forms.label_field_choices(
            ctx.dataset, (fo.Classification, fo.Detections)
        )
        choices = _forms.dropdown(fields)
        inputs.enum(
            "label_field",
            choices.values(),
            label="Class field",
            description="Group by this field's labels (default: the run's target)",
            view=choices,
        )
        return types.Property(inputs, view=types.View(label="CAM class report"))

    def execute(self, ctx):
        with warnings.catch_warnings(), _outcome.app_advice():
            warnings.simplefilter("ignore", UserWarning)  # the dialog shows it
            frame = ge.class_report(
                ctx.target_view(),
                ctx.params["run_key"],
                layer=ctx.params.get("layer"),
                label_field=ctx.params.get("label_field"),
            )
        note = frame.attrs.get("note")
        frame = frame.reset_index()
        frame.columns = [str(c) for c in frame.columns]
        rows = [
            {k: _jsonable(v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")
        ]
        return {"columns": list(frame.columns), "rows": rows, "note": note}

    def resolve_output(self, ctx):
        outputs = types.Object()
        note = (ctx.results or {}).get("note")
        if note:  # e.g. the labels are not the model's classes: no accuracy
            outputs.view("note", types.Warning(label="Accuracy", description=note))
        columns = (ctx.results or {}).get("columns") or []
        table = types.TableView()
        for column in columns:
            table.add_column(column, label=column)
        outputs.list("rows", types.Object(), label="Per-class focus", view=table)
        return types.Property(outputs, view=types.View(label="CAM class report"))


def _jsonable(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float):  # a table for people: 0.532, not 0.53204917
        return round(value, 3)
    return value
