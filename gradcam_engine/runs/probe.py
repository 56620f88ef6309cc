"""The model's output on one probe sample, checked before a run registers.

``compute_cams`` decodes the first pending sample with the run's transforms
and runs ONE forward pass: an output the run cannot use (a tuple, a dict
without ``"out"``, a wrong shape, a target class the model does not have; a
Hugging Face output object is read through its ``.logits``)
is refused here, naming what the model returned and how to fix it, before
anything is registered, declared or written. A sample-specific fault (the
model raises on that one image) is not a reason to refuse the run: the next
samples are probed, and the run isolates the fault per sample.

The verdict is remembered per process for the same model object with the same
weights (fingerprint) and the same input shape: a second run of that model
(another method, other layers, the App's next operator) skips the forward
(~0.13-0.23 s for a ResNet-50 on one image, issue 23).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import fiftyone.core.collections as foc
import torch

from ..engine.cam_engine import CamEngine
from ..engine.detection import check_detector_output
from ..engine.errors import AdvisedError
from ..engine.hooks import eval_mode
from ..sources.images import ImageFiles
from ..sources.threads import one_intraop_thread

__all__ = ["probe_model"]

# Samples tried when the model raises on the first: a model that raises on
# this many pending and as many first samples is taken as broken, not one
# sample.
_PROBES = 3
_DETECTOR_HINT = (
    " task='detection' needs a detector in torchvision's convention: in eval "
    "mode model(list of CHW tensors) -> one dict per image with 'boxes', "
    "'labels' and 'scores'."
)


def probe_model(
    samples: foc.SampleCollection,
    engine: CamEngine,
    transforms,
    geometry,
    *,
    task: str,
    target: Any,
    fixed_class: int | None,
    class_names: Sequence[str] | None,
    label_field: str | None,
    prediction_field: str,
    weights: str | None = None,
) -> None:
    """Run the model once on the first pending sample and check its output.

    Raises ``TypeError`` for an output of the wrong kind, ``ValueError`` for a
    wrong shape or a target class out of range, ``RuntimeError`` when the model
    raises on each of the first ``_PROBES`` decodable samples. Does nothing
    when no sample can be decoded (the run records those samples' errors).
    ``weights``: the model's weights fingerprint, to reuse an earlier verdict.
    """
    paths = _candidates(samples, prediction_field)
    first_fault: tuple[str, Exception] | None = None
    for path in paths:
        _, tensor, _, error, _ = ImageFiles([path], transforms, geometry)[0]
        if error is not None:
            continue  # a bad file is that sample's error, not the model's
        try:
            num_classes = _output_classes(engine, tensor, task, path, weights)
        except _ModelRaised as raised:  # maybe this one sample: probe the next
            first_fault = first_fault or (path, raised.__cause__)
            continue
        if task != "detection":  # no class count in a detector's output
            _check_classes(
                samples,
                num_classes,
                target,
                fixed_class,
                class_names,
                label_field,
                task,
            )
        return
    if first_fault is not None:
        path, exc = first_fault
        raise RuntimeError(
            f"model raised on each of the first samples probed (the first, "
            f"{path!r}: {type(exc).__name__}: {exc}); nothing was registered. "
            "Check that the model runs on the output of the transforms (input "
            "size, channels, device)." + (_DETECTOR_HINT if task == "detection" else "")
        ) from exc


class _ModelRaised(Exception):
    """The model raised on the probe sample (the cause)."""


def _output_classes(engine, tensor, task: str, path: str, weights) -> int:
    """The class count K of the model's output on ``tensor`` (0 for a
    detector), checked, or remembered from an earlier probe of this model."""
    key = (
        weights,
        _forwards(engine.model),
        tuple(tensor.shape),
        str(tensor.dtype),
        task,
        str(engine.device),
    )
    num_classes = _VERDICTS.get(engine.model, key) if weights else None
    if num_classes is not None:
        return num_classes
    try:
        output = _forward(engine, tensor[None], task)
    except Exception as exc:
        raise _ModelRaised from exc
    if task == "detection":
        check_detector_output(output, 1, f" on a probe sample ({path!r})")
        num_classes = 0
    else:
        num_classes = _check_output(output, task, path)
    if weights:
        _VERDICTS.put(engine.model, key, num_classes)
    return num_classes


def _forwards(model: torch.nn.Module) -> tuple:
    """Every submodule's ``forward``, its own or its class's: a model whose
    code was patched between runs (``model.fc.forward = ...``) is probed
    again. ~0.1 ms for a ResNet-50."""
    return tuple(m.__dict__.get("forward") or type(m).forward for m in model.modules())


class _Verdicts:
    """Output class counts of models that passed the probe, by model object
    (weakly: a deleted model is forgotten) and key."""

    _LIMIT = 16

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple, tuple[weakref.ref, int]] = OrderedDict()
        self._lock = threading.Lock()  # the App's server runs operators in threads

    def get(self, model, key: tuple) -> int | None:
        with self._lock:
            entry = self._entries.get((id(model), *key))
            if entry is None or entry[0]() is not model:
                return None
            self._entries.move_to_end((id(model), *key))
            return entry[1]

    def put(self, model, key: tuple, num_classes: int) -> None:
        with self._lock:
            self._entries[(id(model), *key)] = (weakref.ref(model), num_classes)
            while len(self._entries) > self._LIMIT:
                self._entries.popitem(last=False)


_VERDICTS = _Verdicts()


def _candidates(samples, prediction_field: str) -> list[str]:
    """Filepaths of the first pending samples, then of the first samples: a
    resume whose only pending samples are ones the model raised on before
    probes a sample it computed, and an overwrite recomputes done ones."""
    paths = []
    if prediction_field in samples.get_field_schema():
        pending = samples.exists(prediction_field, False)
        paths = pending.limit(_PROBES).values("filepath")
    paths += samples.limit(_PROBES).values("filepath")
    return list(dict.fromkeys(paths))


def _forward(engine: CamEngine, x: torch.Tensor, task: str):
    x = x.to(engine.device)
    # One image: on a busy machine torch's thread team made this one forward
    # 3-15x slower than one thread (0.6-3.5 s against 0.2 s for a ResNet-50).
    with torch.no_grad(), eval_mode(engine.model), one_intraop_thread():
        # torchvision's detectors take a list of CHW images
        return engine.model(list(x) if task == "detection" else x)


def _check_output(output, task: str, path: str) -> int:
    """The number of classes K of a usable output; raises otherwise."""
    where = f"on a probe sample ({path!r})"
    wrap = "Wrap the model in an nn.Module whose forward returns the logits tensor"
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        output = output.logits  # a Hugging Face output object (a dict too)
    elif isinstance(output, dict) and "out" in output:
        output = output["out"]  # torchvision segmentation models
    elif isinstance(output, tuple | list):
        raise TypeError(
            f"model returned a {type(output).__name__} of {len(output)} {where}; "
            f"CAMs need one tensor of logits. {wrap} (e.g. forward: return "
            "model(x)[0], if the logits come first)."
        )
    elif isinstance(output, dict):
        raise TypeError(
            f"model returned a dict without an 'out' entry {where} (keys: "
            f"{sorted(map(str, output))}); {wrap}."
        )
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"model returned {type(output).__name__} {where}; expected a tensor "
            f"of logits. {wrap}."
        )
    shape = tuple(output.shape)
    expected = {"classification": 2, "multilabel": 2, "segmentation": 4}[task]
    if output.ndim != expected or shape[0] != 1 or shape[1] < 1:
        needs = "[B, K, H, W]" if task == "segmentation" else "[B, K]"
        hint = ""
        if output.ndim in (2, 4) and output.ndim != expected:
            other = "segmentation" if output.ndim == 4 else "classification"
            hint = f" For {other} logits pass task={other!r}."
        raise ValueError(
            f"model returned logits of shape {shape} for one image {where}; "
            f"task={task!r} needs {needs} (one row per image, K classes).{hint} "
            f"{wrap} in that shape."
        )
    return int(shape[1])


def _check_classes(
    samples, num_classes, target, fixed_class, class_names, label_field, task
) -> None:
    """Every class the run will explain must be an output of the model."""
    if fixed_class is not None and not 0 <= fixed_class < num_classes:
        which = (
            f"class index {fixed_class} of classes"
            if isinstance(target, str)
            else "a class index"
        )
        raise AdvisedError(
            f"target={target!r} is {which}, but the model has {num_classes} "
            f"outputs (0..{num_classes - 1});",
            python=(
                "pass a class index in that range, or classes=[...] matching the "
                "model's outputs."
            ),
            app="type a class index in that range in 'Class'.",
        )
    if task not in ("classification", "multilabel") or target != "label":
        return
    indices = {}
    path = f"{label_field}.classifications.label" if task == "multilabel" else None
    for label in samples.distinct(path or f"{label_field}.label"):
        if class_names and label in class_names:
            indices[label] = list(class_names).index(label)
        elif not class_names and str(label).isdigit():
            indices[label] = int(label)
    beyond = {k: v for k, v in indices.items() if v >= num_classes}
    if beyond:
        shown = ", ".join(f"{k!r} (index {v})" for k, v in list(beyond.items())[:5])
        raise AdvisedError(
            f"label_field {label_field!r} holds labels whose class index is not "
            f"an output of the model ({num_classes} outputs): {shown}.",
            python="Pass classes=[...] listing exactly the model's outputs in order.",
            app=(
                "The model source's class names do not match its outputs: ask "
                "the admin to fix the source, or set 'Explain' to 'Predicted "
                "class'."
            ),
        )
