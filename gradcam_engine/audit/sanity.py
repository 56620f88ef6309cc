"""Does the explanation depend on the model? The model-parameter randomisation
test (MPRT) of a CAM run.

Adebayo et al. (2018, "Sanity Checks for Saliency Maps") showed that some
saliency methods give nearly the same maps for a model whose weights were
randomised: such maps describe the input (edges, contrast), not the model.
:func:`sanity_check` follows Quantus' ``MPRT`` (``quantus.metrics.randomisation
.model_parameter_randomisation``): layers are re-initialised one after another
from the top (the logits) down, cumulatively ("cascading"), with their own
``reset_parameters()`` under a fixed seed; after each step the run's method
explains the same inputs (the same target classes) and the maps are compared
with the trained model's by Spearman rank correlation and SSIM (Quantus'
``similarity_func`` choices, ``quantus.functions.similarity_func``). A method
whose maps depend on the model changes them: low similarity passes.

Verdict per layer of the run: the similarity once the cascade has reached that
layer (every parameterised module from the top down to and including the
layer's own is randomised): the map of a layer is computed from that layer's
activations and the gradients from above, so this is the first step at which
all that the map is made of is random. It passes when the mean Spearman and
the mean SSIM over the sampled inputs are both below ``max_similarity``.

Stored on the run's config under ``"sanity"`` (``update_run_config``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import fiftyone.core.collections as foc
import numpy as np
import torch
from PIL import Image
from scipy import stats
from skimage.metrics import structural_similarity

from ..engine.cam_engine import CamEngine
from ..engine.hooks import eval_mode
from ..runs import cam_runs as runs
from .metrics import group_by_shape
from .model_checks import _class_index, _load_rgb, _model_for_run
from .writer_steps import progress_reporter

__all__ = ["map_similarity", "randomisation_cascade", "sanity_check"]

DEFAULT_MAX_SIMILARITY = 0.5


def sanity_check(
    samples: foc.SampleCollection,
    run_key: str,
    model: Any = None,
    *,
    transforms: Callable[[Image.Image], torch.Tensor] | None = None,
    num_samples: int = 16,
    max_similarity: float = DEFAULT_MAX_SIMILARITY,
    seed: int = 0,
    progress: bool | Callable[[int, int], Any] = False,
) -> dict[str, Any]:
    """Cascading model-parameter randomisation test of run ``run_key``.

    samples: the run's dataset or a view; ``num_samples`` of them (drawn with
        ``seed``; all when fewer) are explained again.
    model: anything ``load_model`` accepts; default: the run's model source
        (its transforms must match the run's). The caller's model is never
        changed: the cascade randomises a deep copy.
    max_similarity: a layer passes when both its mean Spearman rank
        correlation and its mean SSIM are below this.
    progress: True (a progress bar), a callable ``(done, total)`` over the
        explanations (the trained model's, then one per cascade step), or False.

    Returns (and stores on the run under ``"sanity"``)::

        {"passed": bool,
         "layers": {layer: {"spearman": float, "ssim": float, "passed": bool,
                            "randomised": <last module randomised at that step>}},
         "top": {layer: {"spearman", "ssim"}}   # only the top module randomised
         "cascade": [module names, in randomisation order],
         "num_samples": int, "max_similarity": float, "seed": int,
         "method": str}
    """
    if not isinstance(num_samples, int) or isinstance(num_samples, bool):
        raise TypeError(f"num_samples must be an int, got {num_samples!r}")
    if num_samples < 2:
        raise ValueError(
            f"num_samples must be >= 2 (a mean over inputs), got {num_samples!r}"
        )
    if not 0.0 < float(max_similarity) <= 1.0:
        raise ValueError(f"max_similarity must be in (0, 1], got {max_similarity!r}")
    info = runs.get_cam_run(samples, run_key)
    task = info.config.get("task") or "classification"
    if task != "classification":
        raise ValueError(
            f"run_key: run {run_key!r} is a {task!r} run; sanity_check explains "
            "classifications only (one class per image)"
        )
    module, tf, classes = _model_for_run(info, model, transforms)
    ids = samples.exists(info.prediction_field).values("id")
    if not ids:
        raise ValueError(
            f"samples: no sample of this view has a prediction of run {run_key!r}; "
            "run compute_cams on it first"
        )
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(ids), min(num_samples, len(ids)), replace=False))
    view = samples.select([ids[i] for i in picked], ordered=True)
    paths, labels = view.values(["filepath", f"{info.target_field}.label"])
    x_all = [tf(Image.fromarray(_load_rgb(p))) for p in paths]
    targets = [_class_index(label, classes) for label in labels]

    cascade = randomisation_cascade(module)
    steps = _steps_for_layers(module, cascade, info.layers)
    wanted = sorted({0, *steps.values()})
    report = progress_reporter(progress, 1 + len(wanted))
    with eval_mode(module):
        original = _explain(module, info, x_all, targets)
        # Targets fixed to the trained model's classes (Quantus: same y_batch).
        targets = [
            t if t is not None else int(p)
            for t, p in zip(targets, original[1], strict=True)
        ]
    report(1)
    results: dict[int, dict[str, dict[str, float]]] = {}
    randomised = copy.deepcopy(module)
    by_name = dict(randomised.named_modules())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        done = -1
        for step in wanted:
            for name in cascade[done + 1 : step + 1]:
                by_name[name].reset_parameters()
            done = step
            with eval_mode(randomised):
                maps, _ = _explain(randomised, info, x_all, targets)
            results[step] = {
                layer: map_similarity(original[0][:, j], maps[:, j])
                for j, layer in enumerate(info.layers)
            }
            report(2 + wanted.index(step))
    max_similarity = float(max_similarity)
    layers = {}
    for layer in info.layers:
        sim = results[steps[layer]][layer]
        layers[layer] = {
            **sim,
            "passed": bool(
                sim["spearman"] < max_similarity and sim["ssim"] < max_similarity
            ),
            "randomised": cascade[steps[layer]],
        }
    result = {
        "passed": all(v["passed"] for v in layers.values()),
        "layers": layers,
        "top": results[0],
        "cascade": list(cascade),
        "num_samples": len(x_all),
        "max_similarity": max_similarity,
        "seed": int(seed),
        "method": info.method,
    }
    runs.update_run_config(samples, run_key, sanity=result)
    return result


def randomisation_cascade(model: torch.nn.Module) -> list[str]:
    """Names of the modules with parameters and a ``reset_parameters()``, from
    the top (last in ``named_modules`` order, i.e. registration order, as
    Quantus' ``order="top_down"``) down."""
    names = [
        name
        for name, m in model.named_modules()
        if name
        and hasattr(m, "reset_parameters")
        and any(True for _ in m.parameters(recurse=False))
    ]
    if not names:
        raise ValueError(
            f"model: {type(model).__name__} has no module with reset_parameters(); "
            "nothing to randomise"
        )
    return names[::-1]


def map_similarity(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> dict:
    """Mean Spearman rank correlation and mean SSIM (data range 1) between two
    batches of maps float ``[N, H, W]`` in [0, 1]. A constant map has no ranks:
    against another constant map it counts as identical (1), else as 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rho, ssim = [], []
    for m0, m1 in zip(a, b, strict=True):
        flat0, flat1 = m0.ravel(), m1.ravel()
        const0, const1 = np.ptp(flat0) == 0, np.ptp(flat1) == 0
        if const0 or const1:
            rho.append(1.0 if const0 and const1 else 0.0)
        else:
            rho.append(float(stats.spearmanr(flat0, flat1).statistic))
        win = min(7, *m0.shape) // 2 * 2 + 1 if min(m0.shape) >= 3 else 3
        ssim.append(float(structural_similarity(m0, m1, data_range=1.0, win_size=win)))
    return {"spearman": float(np.mean(rho)), "ssim": float(np.mean(ssim))}


def _explain(module, info, x_all, targets):
    """Maps float ``[N, L, H, W]`` (inputs of several sizes: resized to the
    first's, as the comparison is per input) and the predicted classes."""
    engine = CamEngine(
        module,
        layers=info.layers,
        method=info.method,
        eigen_smooth=bool(info.config.get("eigen_smooth")),
    )
    maps: list = [None] * len(x_all)
    predicted: list = [None] * len(x_all)
    for rows in group_by_shape(x_all).values():
        x = torch.stack([x_all[i] for i in rows])
        result = engine.compute(x, [targets[i] for i in rows])
        for j, i in enumerate(rows):
            maps[i], predicted[i] = result.maps[j], result.predicted[j]
    size = maps[0].shape[-2:]
    maps = [
        m
        if m.shape[-2:] == size
        else torch.nn.functional.interpolate(m[None], size=size, mode="bilinear")[0]
        for m in maps
    ]
    return torch.stack(maps).numpy(), predicted


def _steps_for_layers(
    model: torch.nn.Module, cascade: Sequence[str], layers: Sequence[str]
) -> dict[str, int]:
    """Per run layer: the index in ``cascade`` at which every parameterised
    module registered at or after the layer (the layer, its children, all
    above it) has been randomised."""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    steps = {}
    for layer in layers:
        at = order[layer]
        above = [i for i, name in enumerate(cascade) if order[name] >= at]
        # A layer with nothing to randomise at or above it: the first step.
        steps[layer] = max(above) if above else 0
    return steps
