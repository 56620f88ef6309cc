"""``run_cam_shard``: the delegated operation that runs one shard of a CAM run.

Queued by ``compute_cams`` / ``score_cams`` with ``delegate=True`` (never from a
form: unlisted); a ``fiftyone delegated launch`` worker executes it. Anyone who
can use the App can queue it with any parameters, so it takes only which shard
of which run it is and runs what that run recorded
(``gradcam_engine.runs.shard_worker``), verified before anything is loaded.
"""

from __future__ import annotations

import fiftyone.operators as foo

from gradcam_engine.runs import shard_worker

from . import _forms


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
        # refuses extra, missing or malformed params before anything else
        function, run_key, token, index = shard_worker.check_params(ctx.params)
        label = f"{function} {run_key} shard {index + 1}"
        # Not a generator: a delegated operation keeps execute's return value.
        report = _forms.delegated_progress(ctx, label)
        result = shard_worker.run_shard(
            ctx.dataset, run_key, token, index, progress=report, function=function
        )
        return {"shard": index, "summary": str(result)}
