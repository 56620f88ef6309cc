"""``run_cam_shard``: the delegated operation that runs one shard of a CAM run.

Queued by ``compute_cams`` / ``score_cams`` with ``delegate=True`` (never from a
form: unlisted); a ``fiftyone delegated launch`` worker executes it.
"""

from __future__ import annotations

import fiftyone.operators as foo

import gradcam_engine as ge

from . import _forms

# function name -> the keyword that takes a (done, total) progress callback
_PROGRESS_KEYWORD = {"compute_cams": "progress", "score_cams": "progress"}


class RunCamShard(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="run_cam_shard",
            label="CAM run shard",
            description="One shard of a delegated compute_cams or score_cams run",
            unlisted=True,
            allow_immediate_execution=False,
            allow_delegated_execution=True,
        )

    def resolve_delegation(self, ctx):
        return True

    def execute(self, ctx):
        p = ctx.params
        function, shard = p["function"], p["shard"]
        if function not in _PROGRESS_KEYWORD:
            raise ValueError(
                f"function must be one of {sorted(_PROGRESS_KEYWORD)}, got {function!r}"
            )
        label = f"{function} {p['run_key']} shard {shard['index'] + 1}/{shard['count']}"
        # Not a generator: a delegated operation keeps execute's return value.
        report = _forms.delegated_progress(ctx, label)
        # the operation's progress replaces the queued call's (progress=False)
        kwargs = {**p["kwargs"], _PROGRESS_KEYWORD[function]: report}
        result = getattr(ge, function)(ctx.view, shard=shard, **kwargs)
        return {"shard": shard["index"], "summary": str(result)}
