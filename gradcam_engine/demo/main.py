"""The offline demo: ``python -m gradcam_engine.demo [--app] [--fresh]`` (``make demo``).

1. ``cam-audit-photos``: real photos (colour and grayscale) explained by the
   bundled ImageNet-pretrained EfficientNet-Lite0 with Grad-CAM, Grad-CAM++
   and EigenCAM on two layers; on the two-subject images (the GradCAM lesson's
   dog-and-cat photo, a cat next to a coffee cup) also for each subject's class,
   and scored against each subject's box.
2. ``cam-audit-shortcut``: a planted-shortcut dataset (the background predicts
   the class in training). A shortcut model and a control model are explained
   with Grad-CAM, scored against the object boxes, reported per class, the
   suspects saved as views, and an HTML review report is written.
3. ``cam-audit-clever-hans``: a watermark nobody labelled, found by heatmap
   clusters without boxes and proven by the background test
   (:mod:`gradcam_engine.demo.clever_hans`).
4. ``cam-audit-detection``: a small detector explained per detection; the
   lowest-focus detections are those the watermark explains
   (:mod:`gradcam_engine.demo.detection_case`).

Datasets are persistent and reused (CAM runs resume, so a second run only
prints); ``--fresh`` rebuilds them. Model weights are cached under the demo
directory (``demo_output/`` in a checkout, or ``$CAM_AUDIT_DEMO_DIR``).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import fiftyone as fo
import numpy as np

from ..audit.export import export_review
from ..audit.report import class_report, format_report, save_review_views
from ..audit.scoring import score_cams
from ..runs.cam_runs import list_cam_runs
from ..runs.compute import compute_cams
from ..runs.naming import heatmap_field
from ..sources.models import load_model
from . import datasets as dd
from . import sources as demo_sources
from .clever_hans import CLEVER_HANS_DATASET, run_clever_hans
from .detection_case import DETECTION_DATASET, run_detection

__all__ = ["main", "run_photos", "run_shortcut"]

# _conv_head is a 1x1 conv (+BN, ReLU) on _blocks.15: GradCAM of a linear map of
# a layer equals that layer's map up to a constant, so the two looked identical.
# _blocks.10 sits at 14x14 (stride 16), before two nonlinear stages: it differs.
PHOTO_LAYERS = ["_conv_head", "_blocks.10"]
PHOTO_MODEL = "efficientnet-lite0-imagenet"  # by name: the App can rerun its runs
PHOTO_METHODS = {"gradcam": "gradcam", "gradcampp": "gradcam++", "eigencam": "eigencam"}
# run key -> (ImageNet class index, subject label in ground_truth, samples' subjects)
FORCED_RUNS = {
    "dog_gradcam": (dd.IMAGENET_TARGETS["bull_mastiff"], "dog"),
    "cat_gradcam": (dd.IMAGENET_TARGETS["tabby"], "cat"),
    "cup_gradcam": (dd.IMAGENET_TARGETS["espresso"], "coffee cup"),
}
SHORTCUT_LAYERS = ["block4", "block3"]
SHORTCUT_RUNS = {"shortcut_gradcam": "shortcut", "control_gradcam": "control"}
LOW_FOCUS = 0.3
SUSPECT_TAG = "cam_suspect"


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _fmt(x: float | None, spec: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def _compute(samples, model, run_key: str, **kwargs) -> None:
    start = time.perf_counter()
    summary = compute_cams(samples, model, run_key=run_key, progress=False, **kwargs)
    took = time.perf_counter() - start
    _say(
        f"  {run_key:<18} {summary.num_computed:>4} computed, "
        f"{summary.num_skipped:>4} reused, {summary.num_errors} errors ({took:.1f}s)"
    )
    if summary.num_errors:
        raise RuntimeError(f"CAM run {run_key!r} failed on some samples:\n{summary}")


def run_photos(fresh: bool = False) -> fo.Dataset:
    """Build/reuse ``cam-audit-photos``, compute and score its runs, print a summary."""
    _say("== cam-audit-photos: real photos, pretrained EfficientNet-Lite0 ==")
    dataset = dd.build_photos_dataset(fresh=fresh)
    compute_photo_runs(dataset, PHOTO_METHODS)
    _say("\nPredictions (top-1 ImageNet class of EfficientNet-Lite0):")
    names, preds, gray = dataset.values(["filepath", "gradcam_prediction", "grayscale"])
    for path, pred, is_gray in zip(names, preds, gray, strict=True):
        label = f"{pred.label} ({pred.confidence:.2f})" if pred else "-"
        _say(
            f"  {path.rsplit('/', 1)[-1]:<24} {label}{'  [grayscale]' if is_gray else ''}"
        )
    print_subject_focus(dataset)
    _say()
    return dataset


def compute_photo_runs(
    dataset: fo.Dataset,
    methods: dict[str, str],
    samples=None,
    forced: Sequence[str] = tuple(FORCED_RUNS),
) -> None:
    """The runs of ``methods`` (run key -> method) on ``samples`` (default: the
    dataset; EigenCAM on the two-subject images only), then the ``forced``
    class runs (keys of ``FORCED_RUNS``) on their subjects' images."""
    common = dict(layers=PHOTO_LAYERS, num_workers=0, batch_size=8)
    two = dataset.match_tags("two_subjects")
    for run_key, method in methods.items():
        # EigenCAM (an SVD per layer, class-agnostic) only where it is compared.
        where = two if method == "eigencam" else (samples or dataset)
        _compute(where, PHOTO_MODEL, run_key, method=method, **common)
    for run_key in forced:
        target, label = FORCED_RUNS[run_key]
        view = two.filter_labels("ground_truth", fo.ViewField("label") == label)
        _compute(view, PHOTO_MODEL, run_key, method="gradcam", target=target, **common)


def print_subject_focus(dataset: fo.Dataset) -> None:
    """Per two-subject image and run: the class explained, its probability
    and the focus on each subject's box (README.md quotes this table); then
    each run is left scored against its own subject (or all subjects)."""
    classes = load_model(PHOTO_MODEL).classes
    two = dataset.match_tags("two_subjects")
    layer = PHOTO_LAYERS[0]
    _say(
        f"\nTwo-subject images: focus = share of the map inside each subject's box "
        f"(layer {layer})"
    )
    for sample in two.select_fields(["filepath", "ground_truth"]):
        one = two.select(sample.id)
        subjects = [d.label for d in sample.ground_truth.detections]
        header = "".join(f"{'focus ' + s:>18}" for s in subjects)
        _say(f"  {sample.filepath.rsplit('/', 1)[-1]}")
        _say(f"    {'run':<12}{'explains':<34}{'p':>6}{header}")
        keys = [k for k in (*PHOTO_METHODS, *FORCED_RUNS) if _has_run(one, k)]
        for run_key in keys:
            focus = []
            for subject in subjects:
                score_cams(one, run_key, "ground_truth", label_classes=[subject])
                focus.append(one.first()[heatmap_field(run_key, layer) + "_focus"])
            target = one.first()[f"{run_key}_target"]
            what = _class_name(target, classes)
            _say(
                f"    {run_key:<12}{what:<34}{_fmt(target.confidence if target else None):>6}"
                + "".join(f"{_fmt(f):>18}" for f in focus)
            )
    # Leave each run scored against its own subject (or all subjects).
    for run_key in PHOTO_METHODS:
        if _has_run(two, run_key):
            score_cams(two, run_key, "ground_truth")
    for run_key, (_, label) in FORCED_RUNS.items():
        if _has_run(two, run_key):
            score_cams(two, run_key, "ground_truth", label_classes=[label])


def _has_run(samples, run_key: str) -> bool:
    field = f"{run_key}_target"
    return run_key in list_cam_runs(samples) and samples.exists(field).count() > 0


def _class_name(target, classes: Sequence[str] | None) -> str:
    if target is None:
        return "-"
    label = target.label
    if classes and label in classes:
        return f"{classes.index(label)} {label}"
    return str(label)


def run_shortcut(fresh: bool = False) -> fo.Dataset:
    """Build/reuse ``cam-audit-shortcut``; audit the shortcut and control models."""
    _say("== cam-audit-shortcut: planted shortcut (background predicts the class) ==")
    dataset = dd.build_shortcut_dataset(fresh=fresh)
    print_shortcut_table(dataset, compute_shortcut_runs(dataset))
    layer = SHORTCUT_LAYERS[0]
    run_key, field = "shortcut_gradcam", heatmap_field("shortcut_gradcam", layer)
    report = class_report(dataset, run_key, layer, label_field="ground_truth")
    _say("\n" + format_report(report))
    _say("\nTop suspects of the shortcut model (lowest focus on the object):")
    _say(f"  {'image':<16}{'label':<8}{'predicted':<11}{'background':<12}{'focus':>6}")
    suspects = dataset.sort_by(f"{field}_focus").limit(8)
    rows = suspects.values(
        [
            "filepath",
            "ground_truth.label",
            f"{run_key}_prediction.label",
            "background",
            f"{field}_focus",
        ]
    )
    for path, label, pred, background, focus in zip(*rows, strict=True):
        _say(
            f"  {path.rsplit('/', 1)[-1]:<16}{label:<8}{pred:<11}{background:<12}"
            f"{_fmt(focus):>6}"
        )
    views = []
    for key in SHORTCUT_RUNS:
        views += save_review_views(dataset, key, layer, label_field="ground_truth")
    dataset.untag_samples(SUSPECT_TAG)
    flagged = dataset.match(
        (fo.ViewField(f"{field}_focus") < LOW_FOCUS)
        & (
            fo.ViewField(f"{run_key}_prediction.label")
            == fo.ViewField("ground_truth.label")
        )
    )
    flagged.tag_samples(SUSPECT_TAG)
    _say(
        f"\nSaved views: {', '.join(views)}\n"
        f"Tagged {len(flagged)} samples {SUSPECT_TAG!r} (shortcut model right with "
        f"focus < {LOW_FOCUS}: right for the wrong reason)"
    )
    for key in SHORTCUT_RUNS:
        path = export_review(
            dataset,
            key,
            dd.demo_dir() / f"{key}-review.html",
            layer=layer,
            label_field="ground_truth",
        )
        _say(f"HTML review report: {path}")
    _say()
    return dataset


def compute_shortcut_runs(dataset: fo.Dataset) -> dd.ShortcutModels:
    """The shortcut and control models (trained once, cached), their GradCAM
    runs on ``dataset``, scored against the object boxes."""
    models = dd.shortcut_models(log=lambda m: _say("  " + m))
    demo_sources.register()  # also without the installed entry point (a checkout)
    for run_key, kind in SHORTCUT_RUNS.items():
        # by model source name, recorded on the run: the App can rerun it
        _compute(
            dataset,
            f"demo-{kind}-cnn",
            run_key,
            method="gradcam",
            layers=SHORTCUT_LAYERS,
            num_workers=0,
            batch_size=64,
        )
        score_cams(dataset, run_key, "objects")
    return models


def print_shortcut_table(dataset: fo.Dataset, models: dd.ShortcutModels) -> None:
    """Accuracy and mean focus per model, and the low-focus shares (README.md
    quotes this table)."""
    layer = SHORTCUT_LAYERS[0]
    _say(
        "\nAccuracy on the test split (background agrees / disagrees with the "
        "class's training background), mean focus on the object box "
        f"(layer {layer}):"
    )
    _say(
        f"  {'model':<10}{'accuracy':>10}{'agree':>8}{'disagree':>10}"
        f"{'focus':>8}{'agree':>8}{'disagree':>10}"
    )
    focus_by, low = {}, {}
    for run_key, kind in SHORTCUT_RUNS.items():
        m = models.metrics[kind]
        focus, agrees = dataset.values(
            [heatmap_field(run_key, layer) + "_focus", "agrees"]
        )
        focus = np.array([np.nan if f is None else f for f in focus], dtype=float)
        agrees = np.array(agrees, dtype=bool)
        focus_by[kind] = (
            np.nanmean(focus),
            np.nanmean(focus[agrees]),
            np.nanmean(focus[~agrees]),
        )
        _say(
            f"  {kind:<10}{m['accuracy']:>10.3f}{m['accuracy_agree']:>8.3f}"
            f"{m['accuracy_disagree']:>10.3f}"
            + "".join(
                f"{_fmt(x, '.3f'):>{w}}"
                for x, w in zip(focus_by[kind], (8, 8, 10), strict=True)
            )
        )
        low[kind] = float(np.mean(focus[~np.isnan(focus)] < LOW_FOCUS))
    _say(
        f"  focus < {LOW_FOCUS}: {low['shortcut']:.0%} of the shortcut model's "
        f"samples, {low['control']:.0%} of the control model's"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gradcam_engine.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--app", action="store_true", help="open the FiftyOne App and wait"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="rebuild the demo datasets"
    )
    parser.add_argument(
        "--dataset",
        choices=[
            dd.SHORTCUT_DATASET,
            dd.PHOTOS_DATASET,
            CLEVER_HANS_DATASET,
            DETECTION_DATASET,
        ],
        default=dd.SHORTCUT_DATASET,
        help="the dataset --app opens",
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()
    photos = run_photos(fresh=args.fresh)
    shortcut = run_shortcut(fresh=args.fresh)
    clever = run_clever_hans(fresh=args.fresh, say=_say)
    detection = run_detection(fresh=args.fresh, say=_say)
    _say(f"Demo data: {dd.demo_dir()}")
    _say(
        f"Datasets: {photos.name!r} ({len(photos)} samples), {shortcut.name!r} "
        f"({len(shortcut)} samples), {clever.name!r} ({len(clever)} samples), "
        f"{detection.name!r} ({len(detection)} samples)"
    )
    _say(f"Done in {time.perf_counter() - start:.0f}s.")
    _say(
        "\nOpen the App with the CAM review panel:\n"
        "  make demo ARGS=--app\n"
        "  or, with the plugin on FiftyOne's plugin path (make demo sets\n"
        "  FIFTYONE_PLUGINS_DIR=.plugins, which links this repository):\n"
        '  FIFTYONE_PLUGINS_DIR=.plugins .venv/bin/python -c "import fiftyone as fo; '
        f"fo.launch_app(fo.load_dataset('{dd.SHORTCUT_DATASET}')).wait()\"\n"
        "then click '+' next to the Samples tab and choose 'CAM review'."
    )
    if args.app:
        dataset = fo.load_dataset(args.dataset)
        session = fo.launch_app(dataset)
        _say(f"App running at {session.url} (Ctrl+C to stop)")
        session.wait()
    return 0
