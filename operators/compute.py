"""``compute_cams``: one ``fo.Heatmap`` field per layer for the target view."""

from __future__ import annotations

import os
import threading

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

import gradcam_engine as ge
from gradcam_engine.runs import cam_runs as runs

from . import _forms

TARGETS = {
    "predicted": "Predicted class (the model's top class)",
    "label_field": "Ground-truth class from a label field",
    "class": "A fixed class (name or index)",
}

_MODELS: dict[str, object] = {}
_MODELS_LOCK = threading.Lock()


def _loaded_model(spec: str):
    """``load_model(spec)``, cached: forms re-resolve on every keystroke."""
    from gradcam_engine.sources.models import load_model

    with _MODELS_LOCK:
        if spec not in _MODELS:
            _MODELS[spec] = load_model(spec)
        return _MODELS[spec]


def _model_sources() -> list[str]:
    try:
        from gradcam_engine.sources.models import list_model_sources
    except ImportError:  # pragma: no cover - library not installed
        return []
    return list_model_sources()


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
        delegate: bool = False,
        delegation_target: str | None = None,
        shards: int | None = None,
    ):
        """Compute CAMs for ``sample_collection`` through the operator.

        ``model``: a model source (``list_model_sources()``, ``"zoo:<name>"``,
        ``"package.module:function"`` or a checkpoint path). ``shards`` >= 2:
        queue that many delegated shards and return their operation ids.
        """
        return _forms.call_operator(
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
            ),
            delegate=delegate,
            delegation_target=delegation_target,
        )

    def resolve_delegation(self, ctx):
        if _forms.requested_shards(ctx) > 1:
            return False  # this execution only queues the shards
        return ctx.params.get("delegate", None)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Compute CAMs for")
        _model_inputs(ctx, inputs)
        overwrite = bool(ctx.params.get("overwrite", False))
        _forms.run_key_input(ctx, inputs, allow_existing=overwrite)
        inputs.bool(
            "overwrite",
            default=False,
            label="Overwrite",
            description="Replace an existing run with the same key",
        )
        task_choices = types.RadioGroup(orientation="horizontal")
        task_choices.add_choice("classification", label="Classification")
        task_choices.add_choice("segmentation", label="Segmentation")
        inputs.enum(
            "task",
            task_choices.values(),
            default="classification",
            label="Task",
            view=task_choices,
        )
        _target_inputs(ctx, inputs)
        _storage_inputs(ctx, inputs)
        inputs.int(
            "batch_size",
            default=16,
            label="Batch size",
            description="Images per forward/backward pass",
        )
        _forms.delegate_input(inputs)
        _forms.shards_input(inputs)
        return types.Property(inputs, view=types.View(label="Compute CAMs"))

    def execute(self, ctx):
        view = ctx.target_view()
        p = ctx.params
        kwargs = dict(
            layers=p.get("layers") or None,
            method=p.get("method", "gradcam"),
            run_key=p.get("run_key", "gradcam"),
            storage=p.get("storage", "db"),
            overwrite=bool(p.get("overwrite", False)),
            batch_size=p.get("batch_size") or 16,
            task=p.get("task") or "classification",
            progress=False,
            **_target_kwargs(p),
        )
        if kwargs["storage"] == "disk":
            kwargs["output_dir"] = p.get("output_dir") or _default_output_dir(ctx)
        shards = _forms.requested_shards(ctx)
        if shards > 1:  # queue them here; workers compute (see cam_run_status)
            queued = ge.compute_cams(
                view, p["model"], delegate=True, shards=shards, **kwargs
            )
            yield ctx.ops.notify(str(queued))
            return
        if not ctx.delegated:
            kwargs["num_workers"] = 0  # no worker processes inside the App server

        yield from _forms.run_with_progress(
            ctx,
            "Computing CAMs",
            lambda report: ge.compute_cams(
                view, p["model"], progress_callback=report, **kwargs
            ),
        )
        if not ctx.delegated:
            yield ctx.ops.reload_dataset()
        info = runs.get_cam_run(ctx.dataset, kwargs["run_key"])
        return {"run_key": info.run_key, "fields": info.fields}


def _target_kwargs(params: dict) -> dict:
    """Map the form's target choice onto ``compute_cams`` arguments."""
    target = params.get("target", "predicted")
    if target == "label_field":
        return dict(target="label", label_field=params.get("label_field"))
    if target == "class":
        value = params.get("target_class")
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        return dict(target=value)
    return dict(target="predicted")


def _default_output_dir(ctx) -> str:
    return os.path.join(fo.config.default_dataset_dir, "cam_audit", ctx.dataset.name)


def _model_inputs(ctx, inputs: types.Object) -> None:
    sources = _model_sources()
    model_view = types.AutocompleteView(
        label="Model",
        description=(
            "A registered model source, 'zoo:<name>', 'package.module:function' "
            "or a checkpoint path"
        ),
    )
    for name in sources:
        model_view.add_choice(name, label=name)
    default_model = sources[0] if sources else None
    model_prop = inputs.str(
        "model", default=default_model, required=True, view=model_view
    )

    method_choices = _forms.dropdown(ge.list_methods())
    inputs.enum(
        "method",
        method_choices.values(),
        default="gradcam",
        label="Method",
        view=method_choices,
    )

    spec = ctx.params.get("model", default_model)
    if not spec:
        return
    try:
        loaded = _loaded_model(spec)
    except Exception as exc:  # shown on the form, not swallowed
        model_prop.invalid = True
        model_prop.error_message = f"Cannot load model {spec!r}: {exc}"
        return
    module = loaded.module
    defaults = getattr(loaded, "default_layers", None) or ge.default_layers(module)
    layer_view = types.AutocompleteView(
        label="Layers",
        description=f"Modules of {loaded.description or type(module).__name__}",
    )
    for name in ge.layer_names(module):
        layer_view.add_choice(name, label=name)
    layers_prop = inputs.list(
        "layers", types.String(), default=defaults, view=layer_view
    )
    chosen = ctx.params.get("layers") or defaults
    unknown = [name for name in chosen if name not in set(ge.layer_names(module))]
    if unknown:
        layers_prop.invalid = True
        layers_prop.error_message = (
            f"Unknown layers {unknown}; pick module names of the model"
        )


def _target_inputs(ctx, inputs: types.Object) -> None:
    radio = types.RadioGroup(orientation="horizontal")
    for key, text in TARGETS.items():
        radio.add_choice(key, label=text)
    inputs.enum(
        "target",
        radio.values(),
        default="predicted",
        label="Explain",
        view=radio,
    )
    target = ctx.params.get("target", "predicted")
    if target == "label_field":
        kinds = (
            (fo.Segmentation,)
            if ctx.params.get("task") == "segmentation"
            else (fo.Classification,)
        )
        fields = _forms.label_field_choices(ctx.dataset, kinds)
        choices = _forms.dropdown(fields)
        prop = inputs.enum(
            "label_field",
            choices.values(),
            required=True,
            label="Label field",
            view=choices,
        )
        if not fields:
            prop.invalid = True
            prop.error_message = f"The dataset has no {kinds[0].__name__} field"
    elif target == "class":
        inputs.str(
            "target_class",
            required=True,
            label="Class",
            description="A class name of the model, or a class index",
        )


def _storage_inputs(ctx, inputs: types.Object) -> None:
    radio = types.RadioGroup(orientation="horizontal")
    radio.add_choice("db", label="Database", description="uint8 maps inline")
    radio.add_choice("disk", label="Disk", description="PNG files + map_path")
    inputs.enum("storage", radio.values(), default="db", label="Storage", view=radio)
    if ctx.params.get("storage", "db") == "disk":
        inputs.str(
            "output_dir",
            default=_default_output_dir(ctx),
            label="Output directory",
            description="Heatmap PNGs go to <output_dir>/<run_key>-<run id>/",
        )
