"""The demo's Clever-Hans case: a shortcut nobody labelled, found and proven.

``cam-audit-clever-hans``: circles and crosses, half of them carrying a
watermark in the corner (:mod:`gradcam_engine.demo.marked_data`). The model
(model source ``clever-hans-cnn``) was trained where only circles carry it.

1. Grad-CAM, then ``cluster_cams`` WITHOUT any boxes: one cluster of each
   predicted class has a mean map that sits in the corner, not on the object.
2. ``background_test`` keeps the object boxes, replaces the rest (several
   fills by default), reruns the model: the samples of that cluster flip; checked here against the truth
   (each image drawn again without the mark).
3. The class report and the HTML review show flip rates and clusters; in the
   App, the Embeddings panel plots brain key ``clever_gradcam_block4_clusters``
   coloured by ``clever_gradcam_block4_cluster``.
"""

from __future__ import annotations

import hashlib
import pathlib

import fiftyone as fo
import numpy as np

from ..audit.clusters import cluster_cams
from ..audit.export import export_review
from ..audit.model_checks import background_test
from ..audit.report import class_report, format_report
from ..audit.scoring import score_cams
from ..runs.compute import compute_cams
from ..sources.models import LoadedModel, list_model_sources, register_model_source
from . import datasets as dd
from . import marked_data, shortcut_data, shortcut_model
from .shortcut_data import CLASSES, write_images

__all__ = [
    "CLEVER_HANS_DATASET",
    "MODEL_SOURCE",
    "load_source",
    "marked_dataset",
    "run_clever_hans",
]

CLEVER_HANS_DATASET = "cam-audit-clever-hans"
MODEL_SOURCE = "clever-hans-cnn"
RUN_KEY = "clever_gradcam"
HEAT = f"{RUN_KEY}_block4"
N_TRAIN, N_TEST, SEED = 1000, 200, 0


def _model_path() -> pathlib.Path:
    return dd.demo_dir() / "models" / f"clever-hans-n{N_TRAIN}-s{SEED}-{_version()}.pt"


def _version() -> str:
    """A short hash of the code that makes the data and the model."""
    digest = hashlib.sha256()
    for module in (marked_data, shortcut_data, shortcut_model):
        digest.update(pathlib.Path(module.__file__).read_bytes())
    return digest.hexdigest()[:10]


def load_source() -> LoadedModel:
    """The model source: the cached weights (trained on first use)."""
    path = _model_path()
    if path.exists():
        model = shortcut_model.load(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        train = marked_data.generate_marked(N_TRAIN, "train", seed=SEED)
        model = shortcut_model.train_classifier(train, seed=SEED)
        shortcut_model.save(model, path)
    return LoadedModel(
        module=model,
        transforms=shortcut_model.transforms(),
        classes=list(CLASSES),
        description=MODEL_SOURCE,
        default_layers=[shortcut_model.DEFAULT_LAYER],
    )


def _build(fresh: bool) -> tuple[fo.Dataset, list[marked_data.MarkedSample]]:
    test = marked_data.generate_marked(N_TEST, "test", seed=SEED + 1)
    version = f"{_version()}-n{N_TEST}"
    dataset = dd._reuse(CLEVER_HANS_DATASET, fresh, version)
    if dataset is not None:
        return dataset, test
    dataset = marked_dataset(CLEVER_HANS_DATASET, test, dd.demo_dir() / "clever_hans")
    dataset.default_classes = list(CLASSES)
    return dd._finish(dataset, version), test


def marked_dataset(
    name: str, samples: list[marked_data.MarkedSample], directory
) -> fo.Dataset:
    """A new dataset of ``samples`` (images written to ``directory``): fields
    ``ground_truth`` (class), ``objects`` (the object's box), ``marked``."""
    paths = write_images(samples, directory)
    dataset = fo.Dataset(name)
    dataset.add_samples(
        [
            fo.Sample(
                filepath=path,
                ground_truth=fo.Classification(label=s.label),
                objects=dd._detections({s.label: s.bbox}),
                marked=s.marked,
                tags=["marked" if s.marked else "clean"],
            )
            for s, path in zip(samples, paths, strict=True)
        ]
    )
    return dataset


def run_clever_hans(fresh: bool = False, say=print) -> fo.Dataset:
    """Build/reuse the dataset, find the watermark cluster, prove it, print all."""
    say("== cam-audit-clever-hans: a watermark nobody labelled ==")
    if MODEL_SOURCE not in list_model_sources():  # a checkout: no entry points
        register_model_source(MODEL_SOURCE, load_source)
    dataset, test = _build(fresh)
    compute_cams(
        dataset,
        MODEL_SOURCE,
        layers=["block4"],
        run_key=RUN_KEY,
        num_workers=0,
        progress=False,
    )
    # 1. Without boxes: clusters of the heatmaps, per predicted class.
    found = cluster_cams(dataset, RUN_KEY, label_field="ground_truth")
    say("Heatmap clusters (no boxes used), mean-map peak position:")
    suspects = []
    for c in found["clusters"][HEAT]:
        mean = np.asarray(c["mean_map"])
        row, col = np.unravel_index(mean.argmax(), mean.shape)
        corner = row < mean.shape[0] // 4 and col < mean.shape[1] // 4
        suspects += [c["name"]] if corner else []
        say(
            f"  {c['name']:<10} {c['size']:>4} samples, true classes {c['class_mix']}, "
            f"peak at row {row / mean.shape[0]:.2f}, col {col / mean.shape[1]:.2f}"
            + ("  <- off the objects, in the corner" if corner else "")
        )
    # 2. Proof: objects kept, background replaced, model (the run's source) rerun.
    proof = background_test(dataset, RUN_KEY, "objects")
    say(f"Background test: {proof['flip_rate']:.0%} of predictions flip overall")
    names, flips, paths = dataset.values(
        [f"{HEAT}_cluster", f"{RUN_KEY}_bg_flip", "filepath"]
    )
    for name in sorted(set(names) - {None}):
        rate = np.mean([f for n, f in zip(names, flips, strict=True) if n == name])
        say(f"  cluster {name:<10} flips in {rate:.0%} of its samples")
    truth = _counterfactual_truth(test, paths)
    agree = np.mean(np.asarray(flips, dtype=bool) == truth)
    say(
        f"  against the truth (same images drawn without the mark): {agree:.1%} "
        f"agreement, {int(truth.sum())} predictions caused by the mark"
    )
    # Focus on the boxes too, so that the review panel can rank the samples;
    # its "Heatmap clusters" section needs no boxes.
    score_cams(dataset, RUN_KEY, "objects")
    say(format_report(class_report(dataset, RUN_KEY, label_field="ground_truth")))
    page = export_review(
        dataset,
        RUN_KEY,
        dd.demo_dir() / "clever_hans_review.html",
        label_field="ground_truth",
    )
    say(f"Suspect clusters: {suspects or 'none'}; review page: {page}")
    say(
        "In the App: Embeddings panel, brain key "
        f"'{HEAT}_clusters', colour by '{HEAT}_cluster'; lasso the corner cluster."
    )
    return dataset


def _counterfactual_truth(test, paths) -> np.ndarray:
    """Per dataset sample (in ``paths`` order): the prediction on the image
    differs from the prediction on the same image drawn without the mark."""
    model = load_source().module
    by_name = {s.name: s for s in test}
    ordered = [by_name[pathlib.Path(p).stem] for p in paths]
    with_mark = shortcut_model.predict(model, np.stack([s.image for s in ordered]))
    without = shortcut_model.predict(model, np.stack([s.clean for s in ordered]))
    return with_mark != without
