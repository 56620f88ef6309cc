"""The demo's detection case: which detections did the detector find by
looking at a watermark rather than at the object?

``cam-audit-detection``: the Clever-Hans images (:mod:`marked_data`; a corner
watermark that only circles carry in training, half of the test images
carry it whatever their object), boxed as ``ground_truth`` detections. The
detector (:mod:`mark_detector`, model source ``demo-mark-detector``, trained
here and cached) is explained per detection with HiResCAM and LayerCAM; each
detection's focus is the share of its own map inside its own box. The
lowest-focus detections are those of marked images: the mark, outside the
box, explains them.
"""

from __future__ import annotations

import hashlib
import pathlib
import time

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

from ..audit.report import class_report, format_report, save_review_views
from ..runs.compute import compute_cams
from ..runs.naming import detection_focus_attribute
from ..sources.models import LoadedModel, list_model_sources, register_model_source
from . import datasets as dd
from . import mark_detector, marked_data, shortcut_data, shortcut_model
from .clever_hans import marked_dataset

__all__ = [
    "DETECTION_DATASET",
    "DETECTOR_SOURCE",
    "detection_figures",
    "load_detector_source",
    "run_detection",
]

DETECTION_DATASET = "cam-audit-detection"
DETECTOR_SOURCE = "demo-mark-detector"
# run key -> (method, layers). HiResCAM and LayerCAM keep each map where its
# own gradient is (GradCAM averages the gradient over the image, which
# spreads the objectness part over every cell alike: see BENCHMARKS.md).
DETECTION_RUNS = {
    "det_hirescam": ("hirescam", ["block2", "block3"]),
    "det_layercam": ("layercam", ["block2", "block3"]),
}
N_TRAIN, EPOCHS, N_TEST, SEED = 2000, 15, 200, 0


def _version() -> str:
    """A short hash of the code that makes the data and the detector."""
    digest = hashlib.sha256()
    for module in (marked_data, shortcut_data, shortcut_model, mark_detector):
        digest.update(pathlib.Path(module.__file__).read_bytes())
    return digest.hexdigest()[:10]


def _model_path() -> pathlib.Path:
    name = f"mark-detector-n{N_TRAIN}-e{EPOCHS}-s{SEED}-{_version()}.pt"
    return dd.demo_dir() / "models" / name


def trained_detector(log=None) -> mark_detector.MarkDetector:
    """The demo's detector, from its cache or trained (about 20 s on one core)."""
    path = _model_path()
    if path.exists():
        return mark_detector.load(path)
    start = time.perf_counter()
    train = marked_data.generate_marked(N_TRAIN, "train", seed=SEED)
    model = mark_detector.train_detector(train, epochs=EPOCHS, seed=SEED)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.partial")
    mark_detector.save(model, partial)
    partial.replace(path)
    if log:
        log(f"trained {path.name} in {time.perf_counter() - start:.0f}s")
    return model


def load_detector_source() -> LoadedModel:
    """The model source ``demo-mark-detector``."""
    return LoadedModel(
        module=trained_detector(),
        transforms=mark_detector.transforms(),
        classes=list(mark_detector.DETECTOR_CLASSES),
        description=DETECTOR_SOURCE,
        default_layers=[mark_detector.DETECTOR_LAYER],
    )


def build_detection_dataset(
    name: str, samples: list[marked_data.MarkedSample], directory
) -> fo.Dataset:
    """A new dataset of ``samples``: ``ground_truth`` is the object's box
    (``fo.Detections``), ``marked`` whether the image carries the watermark."""
    dataset = marked_dataset(name, samples, directory)
    dataset.rename_sample_field("ground_truth", "object_class")
    dataset.rename_sample_field("objects", "ground_truth")
    dataset.default_classes = list(shortcut_data.CLASSES)
    return dataset


def detection_figures(samples, run_key: str, layer: str) -> dict[str, float]:
    """Per explained detection of ``run_key``: mean focus (``layer``) on marked
    and clean images, the AUROC of low focus for "the image is marked", and
    the share of marked images among the lowest-focus tenth."""
    focus_path = f"{run_key}_detections.detections.{detection_focus_attribute(layer)}"
    focus, marked = samples.values([focus_path, "marked"])
    f = np.array([x for fs in focus for x in (fs or [])], dtype=float)
    m = np.array(
        [mk for fs, mk in zip(focus, marked, strict=True) for _ in (fs or [])],
        dtype=bool,
    )
    # AUROC by ranks (Mann-Whitney): P(focus of a marked < focus of a clean)
    below = (f[m][:, None] < f[~m][None, :]).mean()
    ties = (f[m][:, None] == f[~m][None, :]).mean()
    lowest = np.argsort(f, kind="stable")[: max(1, len(f) // 10)]
    return {
        "n": len(f),
        "focus_marked": float(f[m].mean()),
        "focus_clean": float(f[~m].mean()),
        "auroc": float(below + ties / 2),
        "lowest_tenth_marked": float(m[lowest].mean()),
    }


def _accuracy(dataset: fo.Dataset, run_key: str, eval_key: str) -> dict[str, float]:
    """The share of images whose detection is right (class and IoU >= 0.5)."""
    dataset.evaluate_detections(
        f"{run_key}_detections", gt_field="ground_truth", eval_key=eval_key
    )
    out = {}
    for name, view in (
        ("marked", dataset.match(F("marked"))),
        ("clean", dataset.match(~F("marked"))),
    ):
        out[name] = view.sum(eval_key + "_tp") / max(1, len(view))
    return out


def run_detection(fresh: bool = False, say=print) -> fo.Dataset:
    """Build/reuse the dataset, explain the detector per detection, print."""
    say("== cam-audit-detection: which detections did the watermark explain? ==")
    if DETECTOR_SOURCE not in list_model_sources():  # a checkout: no entry points
        register_model_source(DETECTOR_SOURCE, load_detector_source)
    trained_detector(log=lambda m: say("  " + m))
    version = f"{_version()}-n{N_TEST}"
    dataset = dd._reuse(DETECTION_DATASET, fresh, version)
    if dataset is None:
        test = marked_data.generate_marked(N_TEST, "test", seed=SEED + 1)
        dataset = build_detection_dataset(
            DETECTION_DATASET, test, dd.demo_dir() / "detection"
        )
        dataset = dd._finish(dataset, version)
    for run_key, (method, layers) in DETECTION_RUNS.items():
        start = time.perf_counter()
        summary = compute_cams(
            dataset,
            DETECTOR_SOURCE,
            layers=layers,
            method=method,
            run_key=run_key,
            task="detection",
            num_workers=0,
            batch_size=50,
            progress=False,
        )
        say(
            f"  {run_key:<14} {summary.num_computed:>4} computed, "
            f"{summary.num_skipped:>4} reused ({time.perf_counter() - start:.1f}s)"
        )
    right = _accuracy(dataset, "det_hirescam", "eval")
    say(
        f"\nDetections right (class and IoU >= 0.5): {right['marked']:.0%} of marked "
        f"images, {right['clean']:.0%} of clean ones (the mark says 'circle')"
    )
    say(
        "Focus of each detection's own map inside its own box, marked vs clean "
        "images;\nAUROC of low focus for 'marked'; share marked among the "
        "lowest-focus tenth:"
    )
    say(
        f"  {'run':<14}{'layer':<8}{'n':>5}{'marked':>9}{'clean':>8}"
        f"{'AUROC':>8}{'lowest 10%':>12}"
    )
    for run_key, (_, layers) in DETECTION_RUNS.items():
        for layer in layers:
            fig = detection_figures(dataset, run_key, layer)
            say(
                f"  {run_key:<14}{layer:<8}{fig['n']:>5}{fig['focus_marked']:>9.3f}"
                f"{fig['focus_clean']:>8.3f}{fig['auroc']:>8.3f}"
                f"{fig['lowest_tenth_marked']:>12.0%}"
            )
    report = class_report(dataset, "det_hirescam", "block2", label_field="ground_truth")
    say("\n" + format_report(report))
    views = save_review_views(
        dataset, "det_hirescam", "block2", label_field="ground_truth"
    )
    say(f"Saved views: {', '.join(views)}")
    say(
        "In the App: patches of det_hirescam_detections sorted by "
        "block2_focus; the lowest carry the mark.\n"
    )
    return dataset
