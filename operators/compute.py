"""``compute_cams``: one ``fo.Heatmap`` field per layer for the target view."""

from __future__ import annotations

import os

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

import gradcam_engine as ge
from gradcam_engine.runs import cam_runs as runs
from gradcam_engine.runs import trust

from . import _forms, _outcome
from . import compute_form as form


class ComputeCams(foo.Operator):
    @property
    def config(self):
        return _forms.delegable_config(
            "compute_cams",
            "Compute CAMs",
            "Class activation maps (one Heatmap field per layer)",
        )

    def __call__(
        self,
        sample_collection,
        model: str,
        layers: list[str] | None = None,
        method: str = "gradcam",
        run_key: str = "gradcam",
        target: str = "predicted",
        task: str = "classification",
        label_field: str | None = None,
        target_class: str | None = None,
        storage: str = "db",
        output_dir: str | None = None,
        batch_size: int | None = None,
        overwrite: bool = False,
        score: bool = False,
        gt_field: str | None = None,
        delegate: bool = False,
        delegation_target: str | None = None,
        shards: int | None = None,
        confidence_thresh: float = 0.5,
        max_detections: int = 20,
    ):
        """Compute CAMs for ``sample_collection`` through the operator.

        ``model``: a registered model source (``list_model_sources()``) or
        ``"zoo:<name>"``; an entry point or a file only when the admin allows
        them, and ``output_dir`` under FiftyOne's dataset directory or an
        admin's root (``gradcam_engine.runs.trust``: operators are the App's
        path; Python callers call ``compute_cams``). ``shards`` >= 2:
        queue that many delegated shards and return their operation ids.
        ``score``: run ``score_cams`` against ``gt_field`` afterwards.
        """
        result = _forms.call_operator(
            self,
            sample_collection,
            dict(
                model=model,
                layers=layers,
                method=method,
                run_key=run_key,
                target=target,
                task=task,
                label_field=label_field,
                target_class=target_class,
                storage=storage,
                output_dir=output_dir,
                batch_size=batch_size,
                overwrite=overwrite,
                shards=shards,
                score=score,
                gt_field=gt_field,
                confidence_thresh=confidence_thresh,
                max_detections=max_detections,
            ),
            delegate=delegate,
            delegation_target=delegation_target,
        )
        # a generator's return value is dropped by FiftyOne: read the outcome
        # that the run recorded
        if not delegate and result.result is None and result.error is None:
            result.result = runs.get_cam_run(sample_collection, run_key).config.get(
                "outcome"
            )
        return result

    def resolve_delegation(self, ctx):
        return _forms.shards_delegation(ctx)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Compute CAMs for")
        form.model_inputs(ctx, inputs)
        run_key = form.run_key_inputs(ctx, inputs)
        form.task_inputs(ctx, inputs)
        form.target_inputs(ctx, inputs)
        if ctx.params.get("task") in ("detection", "multilabel"):
            _detection_inputs(inputs, ctx.params["task"])
        form.storage_inputs(ctx, inputs, _default_output_dir(ctx))
        inputs.int(
            "batch_size",
            default=16,
            label="Batch size",
            description="Images per forward/backward pass",
        )
        form.score_inputs(ctx, inputs)
        form.fields_notice(ctx, inputs, run_key)
        _forms.delegate_input(inputs)
        _forms.shards_input(inputs)
        return types.Property(inputs, view=types.View(label="Compute CAMs"))

    def execute(self, ctx):
        p = ctx.params
        # the App's trust boundary, before anything is imported, read or
        # registered (the form checks the same; a worker checks again)
        model = trust.check_app_model(p.get("model"))
        view = ctx.target_view()
        kwargs = dict(
            layers=p.get("layers") or None,
            method=p.get("method", "gradcam"),
            run_key=p.get("run_key") or form.free_run_key(ctx.dataset),
            storage=p.get("storage", "db"),
            overwrite=bool(p.get("overwrite", False)),
            batch_size=p.get("batch_size") or 16,
            task=p.get("task") or "classification",
            progress=False,
            **form.target_kwargs(p),
        )
        if kwargs["task"] in ("detection", "multilabel"):
            kwargs["confidence_thresh"] = float(p.get("confidence_thresh", 0.5))
        if kwargs["task"] == "detection":
            kwargs["max_detections"] = int(p.get("max_detections") or 20)
        if form.patches_field(view) and kwargs["target"] == "label":
            kwargs["label_field"] = form.patches_field(view)  # the crops' labels
        if kwargs["storage"] == "disk":
            output_dir = p.get("output_dir") or _default_output_dir(ctx)
            kwargs["output_dir"] = trust.check_app_output_dir(output_dir)
        shards = _forms.requested_shards(ctx)
        if shards > 1:  # queue them here; workers compute (see cam_run_status)
            queued = ge.compute_cams(
                view, model, delegate=True, shards=shards, **kwargs
            )
            yield ctx.ops.notify(str(queued))
            return
        if not ctx.delegated:
            kwargs["num_workers"] = 0  # no worker processes inside the App server

        scored: list[str] = []

        def run(report):
            summary = ge.compute_cams(view, model, **{**kwargs, "progress": report})
            if p.get("score") and p.get("gt_field"):
                scores = ge.score_cams(view, summary.run_key, gt_field=p["gt_field"])
                scored.extend(_outcome.as_plain(scores)["fields"])
            return summary

        # Raises before any write when the run cannot work, and CamRunFailed
        # when no sample succeeded: run_and_report shows it in the App.
        summary = yield from _outcome.run_and_report(
            ctx,
            "Compute CAMs",
            "Computing CAMs",
            run,
            confirm=lambda summary: summary.headline(),
        )
        result = summary.as_dict()
        result["fields"] += [f for f in scored if f not in result["fields"]]
        if not ctx.delegated:
            yield ctx.ops.show_output(_outcome_view(result).to_json(), result)
        return result


def _outcome_view(result: dict) -> types.Property:
    """How the App shows a finished run (errors raise instead: see execute)."""
    outputs = types.Object()
    outputs.str("headline", label="Outcome")
    if result.get("errors"):  # no empty heading on a clean run
        outputs.list("errors", types.String(), label="Most common errors")
    outputs.list("fields", types.String(), label="Fields written")
    return types.Property(outputs, view=types.View(label="CAM run"))


def _detection_inputs(inputs: types.Object, task: str) -> None:
    what = "detections scoring" if task == "detection" else "labels whose sigmoid is"
    inputs.float(
        "confidence_thresh",
        default=0.5,
        label="Confidence threshold",
        description=f"Explain the {what} at least this (Explain: predicted)",
    )
    if task != "detection":
        return
    inputs.int(
        "max_detections",
        default=20,
        label="Detections per image",
        description="At most this many detections explained per image, best first",
    )


def _default_output_dir(ctx) -> str:
    return os.path.join(fo.config.default_dataset_dir, "cam_audit", ctx.dataset.name)
