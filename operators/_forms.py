"""Form and execution helpers shared by the CAM-audit operators.

Nothing here knows about torch hooks: the helpers build form inputs, validate
them on the form (``prop.invalid = True``), run a library call while reporting
progress, and resolve the view an operator acts on.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from gradcam_engine.runs import cam_runs as runs

PLUGIN_NAME = "@cam-audit/cam-audit"
# The object fields a heatmap can be scored or tested against (boxes, masks).
GT_KINDS = (fo.Detections, fo.Segmentation, fo.Polylines)


def delegable_config(name: str, label: str, description: str) -> foo.OperatorConfig:
    """Config of a long-running operator: dynamic form, progress from a
    generator, runnable immediately or by a delegated-operation worker."""
    return foo.OperatorConfig(
        name=name,
        label=label,
        description=description,
        dynamic=True,
        execute_as_generator=True,
        allow_immediate_execution=True,
        allow_delegated_execution=True,
    )


def dropdown(names, label: str | None = None) -> types.DropdownView:
    """A dropdown offering each of ``names``, shown as it is."""
    view = types.DropdownView(label=label) if label else types.DropdownView()
    for name in names:
        view.add_choice(name, label=name)
    return view


def uri(name: str) -> str:
    """The full URI of one of this plugin's operators."""
    return f"{PLUGIN_NAME}/{name}"


# ---------------------------------------------------------------- views


def view_ctx(sample_collection) -> dict[str, Any]:
    """The ``ctx`` dict for ``foo.execute_operator`` that targets ``sample_collection``."""
    return dict(view=sample_collection.view())


def call_operator(
    operator: foo.Operator,
    sample_collection,
    params: dict[str, Any],
    delegate: bool = False,
    delegation_target: str | None = None,
):
    """Run ``operator`` from Python through FiftyOne's operator machinery.

    ``params`` set to None are dropped so that the form's defaults apply.
    """
    params = {k: v for k, v in params.items() if v is not None}
    return foo.execute_operator(
        operator.uri,
        view_ctx(sample_collection),
        params=params,
        request_delegation=delegate,
        delegation_target=delegation_target,
    )


# ---------------------------------------------------------------- run keys


def run_key_input(
    ctx,
    inputs: types.Object,
    name: str = "run_key",
    default: str = "gradcam",
    label: str = "Run key",
    must_exist: bool = False,
    allow_existing: bool = False,
) -> str | None:
    """A run-key text input validated as a field-name prefix.

    ``allow_existing``: an existing run is fine (e.g. overwrite); otherwise an
    existing run key is an error on the form.
    """
    prop = inputs.str(
        name,
        default=default,
        required=True,
        label=label,
        description=(
            "Prefix of every field the run writes: letters, digits and `_`, "
            "not starting with a digit or `_`"
        ),
    )
    value = ctx.params.get(name, default)
    if value is None:
        return None
    try:
        runs.validate_run_key(value)
    except ValueError as exc:
        prop.invalid = True
        prop.error_message = str(exc)
        return None
    if not allow_existing and value in ctx.dataset.list_runs():
        prop.invalid = True
        prop.error_message = (
            f"A run named {value!r} already exists on this dataset: choose another "
            "key, rename or delete the existing run, or tick 'Overwrite'"
        )
        return None
    return value


def cam_run_choice(
    ctx,
    inputs: types.Object,
    name: str = "run_key",
    label: str = "CAM run",
    required: bool = True,
) -> str | None:
    """A dropdown of the dataset's CAM runs; a message when there are none."""
    keys = runs.list_cam_runs(ctx.dataset)
    if not keys:
        prop = inputs.view(
            f"{name}_none",
            types.Warning(
                label="No CAM runs on this dataset",
                description="Run 'Compute CAMs' first",
            ),
        )
        prop.invalid = True
        return None
    choices = types.DropdownView()
    for key in keys:
        info = runs.get_cam_run(ctx.dataset, key)
        choices.add_choice(
            key, label=key, description=f"{info.method} on {', '.join(info.layers)}"
        )
    default = keys[-1] if len(keys) == 1 else None
    inputs.enum(
        name,
        choices.values(),
        default=default,
        required=required,
        label=label,
        view=choices,
    )
    return ctx.params.get(name, default)


def layer_choice(
    ctx, inputs: types.Object, run_key: str | None, name: str = "layer"
) -> str | None:
    """A dropdown of the layers of ``run_key`` (None: all layers)."""
    if not run_key:
        return None
    info = runs.get_cam_run(ctx.dataset, run_key)
    choices = types.DropdownView()
    for layer in info.layers:
        choices.add_choice(layer, label=layer, description=info.fields[layer])
    default = info.layers[-1] if info.layers else None
    inputs.enum(
        name,
        choices.values(),
        default=default,
        label="Layer",
        view=choices,
    )
    return ctx.params.get(name, default)


def run_inputs(
    ctx, inputs: types.Object, action: str, layer: bool = False
) -> str | None:
    """The head of a form acting on a CAM run: the target view (``action``:
    "Score", "Cluster"...), the run and, with ``layer``, one of its layers.
    Returns the chosen run key (None while there is none)."""
    inputs.view_target(ctx, action_description=action)
    key = cam_run_choice(ctx, inputs)
    if layer:
        layer_choice(ctx, inputs, key)
    return key


def gt_field_input(
    ctx,
    inputs: types.Object,
    description: str,
    required: bool = False,
    name: str = "gt_field",
) -> None:
    """A dropdown of the dataset's object fields (``GT_KINDS``), defaulting to
    ``ground_truth`` when it is one, else to the only one there is."""
    fields = label_field_choices(ctx.dataset, GT_KINDS)
    choices = dropdown(fields)
    default = "ground_truth" if "ground_truth" in fields else None
    if default is None and len(fields) == 1:
        default = fields[0]
    inputs.enum(
        name,
        choices.values(),
        default=default,
        required=required,
        label="Objects",
        description=description,
        view=choices,
    )


def label_field_choices(dataset, kinds: tuple) -> list[str]:
    """Names of the top-level label fields of ``dataset`` of the given kinds."""
    schema = dataset.get_field_schema(embedded_doc_type=kinds)
    return sorted(schema)


def delegate_input(inputs: types.Object) -> None:
    """An optional 'run in the background' checkbox (honored by ``resolve_delegation``)."""
    inputs.bool(
        "delegate",
        default=False,
        label="Delegate execution",
        description="Queue the run for a delegated worker (`fiftyone delegated launch`)",
        view=types.CheckboxView(),
    )


def shards_input(inputs: types.Object) -> None:
    """How many delegated operations to split the run into (2+: queued at once)."""
    inputs.int(
        "shards",
        default=1,
        label="Shards",
        description=(
            "2 or more: queue this many delegated operations over disjoint parts "
            "of the view, one per worker (`fiftyone delegated launch`); follow "
            "them with 'CAM run status'"
        ),
    )


def requested_shards(ctx) -> int:
    """The form's shard count; 2+ means queue shards from an immediate execution."""
    return int(ctx.params.get("shards") or 1)


def shards_delegation(ctx) -> bool | None:
    """``resolve_delegation`` of an operator with a Shards input: an execution
    that queues 2+ shards runs immediately; otherwise the Delegate checkbox."""
    if requested_shards(ctx) > 1:
        return False  # this execution only queues the shards
    return ctx.params.get("delegate", None)


# ---------------------------------------------------------------- progress

_DONE = object()


def _progress_message(label: str, done: int, total: int) -> tuple[float, str]:
    fraction = done / total if total else 1.0
    return fraction, f"{label}: {done}/{total}"


def delegated_progress(ctx, label: str) -> Callable[[int, int], None]:
    """A ``(done, total)`` callback storing progress on the delegated operation."""

    def report(done: int, total: int) -> None:
        progress, text = _progress_message(label, done, total)
        ctx.set_progress(progress=progress, label=text)

    return report


# Seconds between progress messages of an immediate run (a notification stays
# about 3 s on screen).
NOTIFY_EVERY = 3.0


def run_with_progress(
    ctx, label: str, fn: Callable[[Callable[[int, int], None]], Any]
) -> Iterator:
    """Run ``fn(progress_callback)``, reporting ``done/total`` as progress.

    A generator: ``result = yield from run_with_progress(ctx, ...)``.

    Delegated: the callback calls ``ctx.set_progress`` (stored on the run).
    Immediate: ``fn`` runs in a worker thread and this generator yields a
    notification every ``NOTIFY_EVERY`` seconds ("label: done/total"). Not the
    App's ``set_progress``: FiftyOne 1.22 draws it in its output dialog, whose
    only button is "Done", which would be offered while the run goes on. The
    operator shows that dialog (``show_output``) once the run has finished.
    """

    if ctx.delegated:
        return fn(delegated_progress(ctx, label))

    updates: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def worker() -> None:
        try:
            outcome["result"] = fn(lambda done, total: updates.put((done, total)))
        except BaseException as exc:  # re-raised in the operator's thread
            outcome["error"] = exc
        finally:
            updates.put(_DONE)

    thread = threading.Thread(target=worker, name=f"cam-audit {label}", daemon=True)
    thread.start()
    last, latest, shown = None, None, None
    while True:
        item = updates.get()
        if item is _DONE:
            break
        latest = item
        now = time.monotonic()
        if last is not None and now - last < NOTIFY_EVERY:
            continue  # only the latest update matters
        last, shown = now, item
        yield ctx.ops.notify(_progress_message(label, *item)[1])
    if latest is not None and latest != shown:
        # the last count, not one skipped before it ("16/17" stayed on
        # screen after the run had finished)
        yield ctx.ops.notify(_progress_message(label, *latest)[1])
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def run_and_reload(
    ctx, label: str, fn: Callable[[Callable[[int, int], None]], Any]
) -> Iterator:
    """``run_with_progress``, then reload the App's dataset to show the new
    fields (immediate runs only). The plugin's operators use
    ``_outcome.run_and_report`` instead (errors and confirmations too)."""
    result = yield from run_with_progress(ctx, label, fn)
    if not ctx.delegated:
        yield ctx.ops.reload_dataset()
    return result
