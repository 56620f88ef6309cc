"""``cam_run_status``: a CAM run's progress and its delegated shards, with the
FiftyOne CLI commands that recover a dead shard."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

import gradcam_engine as ge

from . import _forms

_SHARD_COLUMNS = (
    "index",
    "state",
    "done",
    "errors",
    "pending",
    "operation_id",
    "recover",
)


class CamRunStatus(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="cam_run_status",
            label="CAM run status",
            description="Samples done, pending and failed; state of each delegated shard",
            dynamic=True,
        )

    def __call__(self, sample_collection, run_key: str):
        """Returns ``cam_run_status(sample_collection, run_key)`` through the operator."""
        result = _forms.call_operator(self, sample_collection, dict(run_key=run_key))
        return result.result

    def resolve_input(self, ctx):
        inputs = types.Object()
        _forms.run_inputs(ctx, inputs, "Status of")
        return types.Property(inputs, view=types.View(label="CAM run status"))

    def execute(self, ctx):
        status = ge.cam_run_status(ctx.target_view(), ctx.params["run_key"])
        for row in status["shards"]:
            row["recover"] = row["recover"] or ""
        return status

    def resolve_output(self, ctx):
        outputs = types.Object()
        for key in ("state", "total", "done", "errors", "pending"):
            outputs.str(key, label=key.capitalize())
        if not (ctx.results or {}).get("shards"):
            # a run computed in one process: no empty "Delegated shards" table
            return types.Property(outputs, view=types.View(label="CAM run status"))
        table = types.TableView()
        for key in _SHARD_COLUMNS:
            table.add_column(key, label=key.replace("_", " "))
        outputs.list("shards", types.Object(), label="Delegated shards", view=table)
        outputs.view(
            "help",
            types.Notice(
                label=(
                    "A shard whose worker died stays 'running': run the 'recover' "
                    "commands (fiftyone delegated fail <id>, then fiftyone "
                    "delegated rerun <id>); the rerun computes only the shard's "
                    "samples not done yet"
                )
            ),
        )
        return types.Property(outputs, view=types.View(label="CAM run status"))
