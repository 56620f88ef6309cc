"""Proof that the explanations mean something: ``sanity_check`` (the
cascading model-parameter randomisation test of a run, stored on the run and
shown by ``list_cam_runs`` and the HTML review) and
``deletion_insertion_cams`` (per-map faithfulness curves)."""

from __future__ import annotations

import fiftyone.operators.types as types

from .discovery import _app_model, _Discovery, _model_input


class SanityCheck(_Discovery):
    name = "sanity_check"
    label = "CAM sanity check"
    description = (
        "Randomise the model from the top layer down: do the maps change? "
        "(model-parameter randomisation test)"
    )
    action = "Check"
    progress_label = "Sanity check"
    function = "sanity_check"

    def add_inputs(self, ctx, inputs: types.Object) -> None:
        inputs.int(
            "num_samples",
            default=16,
            label="Samples",
            description="How many samples of the view are explained again",
        )
        _model_input(ctx, inputs)

    def library_kwargs(self, params):
        return dict(
            model=_app_model(params), num_samples=int(params.get("num_samples") or 16)
        )


class DeletionInsertion(_Discovery):
    name = "deletion_insertion_cams"
    label = "CAM faithfulness (deletion / insertion)"
    description = (
        "Remove / restore the most relevant pixels first: how fast does the "
        "score follow? Areas per map"
    )
    action = "Measure"
    with_layer = True
    progress_label = "Deletion / insertion"
    function = "deletion_insertion_cams"

    def add_inputs(self, ctx, inputs: types.Object) -> None:
        _model_input(ctx, inputs)

    def library_kwargs(self, params):
        return dict(model=_app_model(params))
