"""List, rename and delete CAM runs (a run owns its heatmap and score fields)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from gradcam_engine.audit.sanity_line import sanity_line
from gradcam_engine.runs import cam_runs as runs
from gradcam_engine.runs.evaluations import evaluations_of

from . import _forms, _outcome

COLUMNS = (
    "run_key",
    "model",
    "target",
    "method",
    "layers",
    "status",
    "sanity",
    "fields",
)


def _run_summary(dataset, key: str) -> dict:
    info = runs.get_cam_run(dataset, key)
    config = info.config
    target = config.get("target")
    if target == "label":
        target = f"label in {config.get('label_field')}"
    done, failed = dataset.count(info.prediction_field), dataset.count(info.error_field)
    total = config.get("num_samples")
    status = f"{done} done, {failed} failed" + (f" of {total}" if total else "")
    if total and done == total:
        status = f"complete ({done})"
    return {
        "run_key": key,
        "model": str(config.get("model_source") or config.get("model") or ""),
        "target": str(target),
        "method": info.method,
        "layers": ", ".join(info.layers),
        "status": status,
        "sanity": sanity_line(config.get("sanity")),
        "fields": ", ".join(info.fields.values()),
        "storage": info.storage,
    }


class ListCamRuns(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="list_cam_runs",
            label="List CAM runs",
            description="The CAM runs of this dataset and the fields they own",
            dynamic=True,
        )

    def __call__(self, sample_collection):
        """Returns ``{"runs": [...]}`` (one dict per run) through the operator."""
        result = _forms.call_operator(self, sample_collection, {})
        return result.result

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view(
            "info",
            types.Notice(label="Lists the CAM runs of this dataset"),
        )
        return types.Property(inputs, view=types.View(label="List CAM runs"))

    def execute(self, ctx):
        keys = runs.list_cam_runs(ctx.dataset)
        return {"runs": [_run_summary(ctx.dataset, key) for key in keys]}

    def resolve_output(self, ctx):
        outputs = types.Object()
        table = types.TableView()
        for key in COLUMNS:
            table.add_column(key, label=key.replace("_", " "))
        outputs.list("runs", types.Object(), label="CAM runs", view=table)
        return types.Property(outputs, view=types.View(label="CAM runs"))


class RenameCamRun(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="rename_cam_run",
            label="Rename CAM run",
            description="Rename a CAM run and every field it owns",
            dynamic=True,
        )

    def __call__(self, sample_collection, run_key: str, new_run_key: str):
        return _forms.call_operator(
            self, sample_collection, dict(run_key=run_key, new_run_key=new_run_key)
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        key = _forms.cam_run_choice(ctx, inputs)
        if key:
            _forms.run_key_input(
                ctx, inputs, name="new_run_key", default=None, label="New run key"
            )
        return types.Property(inputs, view=types.View(label="Rename CAM run"))

    def execute(self, ctx):
        info = runs.rename_cam_run(
            ctx.dataset, ctx.params["run_key"], ctx.params["new_run_key"]
        )
        _outcome.run_look(ctx)  # groups and colours follow the run
        return {"run_key": info.run_key, "fields": info.fields}


class DeleteCamRun(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="delete_cam_run",
            label="Delete CAM run",
            description="Delete a CAM run, its fields and its heatmap files",
            dynamic=True,
        )

    def __call__(self, sample_collection, run_key: str):
        return _forms.call_operator(self, sample_collection, dict(run_key=run_key))

    def resolve_input(self, ctx):
        inputs = types.Object()
        key = _forms.cam_run_choice(ctx, inputs)
        if key:
            info = runs.get_cam_run(ctx.dataset, key)
            inputs.view(
                "warning",
                types.Warning(
                    label=f"Deletes {len(info.owned_fields)} fields",
                    description=", ".join(info.owned_fields),
                ),
            )
            evals = evaluations_of(ctx.dataset, info.owned_fields)
            if evals:  # the user's own runs: say they go too
                inputs.view(
                    "evaluations",
                    types.Warning(
                        label=f"Deletes {len(evals)} evaluations of its fields",
                        description=", ".join(
                            f"{k} (of {f})" for k, f in sorted(evals.items())
                        ),
                    ),
                )
        return types.Property(inputs, view=types.View(label="Delete CAM run"))

    def execute(self, ctx):
        key = ctx.params["run_key"]
        owned = runs.get_cam_run(ctx.dataset, key).owned_fields
        evals = sorted(evaluations_of(ctx.dataset, owned))
        runs.delete_cam_run(ctx.dataset, key)
        _outcome.run_look(ctx)  # groups and colours follow the run
        return {"deleted": key, "evaluations": evals}
