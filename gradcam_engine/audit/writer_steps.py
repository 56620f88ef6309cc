"""What every audit writer (``score_cams``, ``cluster_cams``, ``background_test``,
``road_cams``, the class report) does around its own maths: pick the run's
layers from what the caller named, report progress, and write its columns back
in bulk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import fiftyone.core.collections as foc
import fiftyone.core.utils as fou

from ..runs import cam_runs as runs
from ..runs.arguments import progress_args
from ..runs.writes import set_fields

__all__ = ["progress_reporter", "resolve_layer", "run_layers", "write_columns"]


def run_layers(info: runs.CamRunInfo, layers: str | Sequence[str] | None) -> list[str]:
    """``layers`` (layer names or heatmap field names, one or a list) -> the
    run's layer names, in the order given, without repeats; None -> all."""
    if layers is None:
        return list(info.layers)
    if isinstance(layers, str):
        layers = [layers]
    by_field = {f: layer for layer, f in info.fields.items()}
    resolved = []
    for layer in layers:
        if layer in info.fields:
            resolved.append(layer)
        elif layer in by_field:
            resolved.append(by_field[layer])
        else:
            raise ValueError(
                f"layers: {layer!r} is not a layer of run {info.run_key!r}; "
                f"its layers are {info.layers} (fields {list(info.fields.values())})"
            )
    return list(dict.fromkeys(resolved))


def resolve_layer(info: runs.CamRunInfo, layer: str | None) -> str:
    """``layer`` (a layer name or its heatmap field) -> layer name; None -> the
    run's last layer (usually the deepest, the classic Grad-CAM layer)."""
    if layer is None:
        if not info.layers:
            raise ValueError(f"Run {info.run_key!r} has no layers")
        return info.layers[-1]
    if layer in info.fields or layer in info.fields.values():
        return run_layers(info, layer)[0]
    raise ValueError(
        f"layer {layer!r} is not a layer of run {info.run_key!r}; its layers are "
        f"{info.layers} (fields {list(info.fields.values())})"
    )


def progress_reporter(
    progress: bool | Callable[[int, int], Any], total: int
) -> Callable[[int], None]:
    """``progress`` as a writer takes it -> ``report(done)``: a callable
    ``progress(done, total)`` is called; True draws FiftyOne's progress bar
    (closed when ``done`` reaches ``total``); False does nothing."""
    bar, callback = progress_args(progress)  # checks its type
    if callback is not None:
        return lambda done: callback(done, total)
    if bar:
        bar = fou.ProgressBar(total=total)
        bar.start()

        def update(done: int) -> None:
            bar.set_iteration(done)
            if done >= total:
                bar.close()

        return update
    return lambda done: None


def write_columns(
    samples: foc.SampleCollection, ids: list[str], columns: dict[str, list]
) -> None:
    """Write ``{field: values in the order of ids}``: one bulk update per sample
    setting every field (several times faster than one ``set_values`` per
    field). The fields must already be declared."""
    names = list(columns)
    set_fields(
        samples,
        {sid: {name: columns[name][k] for name in names} for k, sid in enumerate(ids)},
    )
