"""``open_cam_sample``: open a sample in the App's sample view with the grid's
active fields (the review panel's Open).

FiftyOne 1.22 keeps separate active fields for the sample view. Its
``set_active_fields`` operator always sets the grid's (it asks the App's
``modal`` atom, which nothing sets), and ``open_sample`` opens the sample with
the sample view's own fields. Only two paths copy the grid's fields into the
sample view: clicking a tile, and the server's ``setSample`` event (what
``session.sample_id = ...`` sends from Python). This operator sends that
event; the panel calls ``set_active_fields`` first. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio

import fiftyone.operators as foo


class OpenCamSample(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="open_cam_sample",
            label="Open sample with the grid's fields",
            unlisted=True,
        )

    async def execute(self, ctx):
        # async: runs on the App server's event loop, where events are queued
        sample_id = ctx.params.get("sample_id")
        if not sample_id:
            return
        try:
            from fiftyone.core.session.events import SetSample
            from fiftyone.server.events import dispatch_event
        except ImportError:  # no local App server (e.g. another deployment)
            ctx.ops.open_sample(id=sample_id)
            return
        settle = float(ctx.params.get("settle") or 0)
        if settle > 0:  # let the grid redraw with its new fields first
            await asyncio.sleep(settle)
        # to every App on this server, as session.sample_id = ... does
        await dispatch_event(None, SetSample(sample_id=sample_id))
