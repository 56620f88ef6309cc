"""FiftyOne datasets built from offline material, for the demo and the notebooks.

- :func:`build_photos_dataset`: real photos that ship with scikit-image (colour
  and grayscale), the GradCAM lesson's dog-and-cat photo (``demo/data/both.png``,
  with boxes) and a composite "two subjects" image (the cat next to the
  coffee cup, with boxes).
- :func:`build_shortcut_dataset`: the planted-shortcut test split
  (:mod:`gradcam_engine.demo.shortcut_data`) with class, boxes, masks, background.
- :func:`shortcut_models`: the shortcut model (trained on the biased split) and
  the control model (trained on decorrelated data), cached to disk.

Images are written as files under a persistent directory (:func:`demo_dir`).
Builders reuse an existing dataset of the same name unless ``fresh=True``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import pathlib
from collections.abc import Callable

import fiftyone as fo
import numpy as np
from PIL import Image

from . import shortcut_data, shortcut_model

__all__ = [
    "BOTH_PNG",
    "IMAGENET_TARGETS",
    "PHOTOS",
    "PHOTOS_DATASET",
    "SHORTCUT_DATASET",
    "SHORTCUT_EPOCHS",
    "SHORTCUT_N_TRAIN",
    "ShortcutModels",
    "build_photos_dataset",
    "build_shortcut_dataset",
    "demo_dir",
    "shortcut_model_path",
    "shortcut_models",
]

PHOTOS_DATASET = "cam-audit-photos"
SHORTCUT_DATASET = "cam-audit-shortcut"

# The demo's own images are package data, so they ship in the wheel.
_DATA = importlib.resources.files(__package__) / "data"
BOTH_PNG = _DATA / "both.png"
BOTH_JSON = _DATA / "both.json"
# The source checkout, when running from one (demo outputs go there, git-ignored).
_CHECKOUT = pathlib.Path(__file__).resolve().parents[2]

# skimage.data photos that ship with the wheel (no download). name -> subject.
PHOTOS: dict[str, str] = {
    "chelsea": "cat",
    "coffee": "coffee cup",
    "astronaut": "astronaut",
    "rocket": "rocket",
    "hubble_deep_field": "galaxies",
    "camera": "cameraman (grayscale)",
    "coins": "coins (grayscale)",
    "moon": "moon surface (grayscale)",
}

# ImageNet classes of the subjects (EfficientNet-Lite0's label indices), as in
# the GradCAM lesson: bull mastiff / French bulldog vs tabby / Egyptian cat.
IMAGENET_TARGETS: dict[str, int] = {
    "bull_mastiff": 243,
    "french_bulldog": 245,
    "tabby": 281,
    "egyptian_cat": 285,
    "espresso": 967,
    "coffee_mug": 504,
}


def demo_dir() -> pathlib.Path:
    """Where the demo writes images, models and reports (created if missing).

    ``$CAM_AUDIT_DEMO_DIR`` if set; else ``demo_output/`` in the source checkout
    (git-ignored); else ``~/.cache/cam-audit/demo``.
    """
    env = os.environ.get("CAM_AUDIT_DEMO_DIR")
    if env:
        path = pathlib.Path(env).expanduser()
    elif (_CHECKOUT / "pyproject.toml").exists():
        path = _CHECKOUT / "demo_output"
    else:
        path = pathlib.Path.home() / ".cache" / "cam-audit" / "demo"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


# Bump when the demo's runs change in a way its stored runs can't be resumed
# with (layers, run identity): datasets built by an older demo are rebuilt
# rather than refused for a config mismatch.
_DEMO_FORMAT = "2"


def _reuse(name: str, fresh: bool, version: str = "") -> fo.Dataset | None:
    """The existing dataset ``name`` if it was built by the same code, else None
    (after deleting any stale copy)."""
    if fo.dataset_exists(name):
        if not fresh:
            dataset = fo.load_dataset(name)
            built = dataset.info.get("builder_version")
            if len(dataset) > 0 and built == f"{version}+demo{_DEMO_FORMAT}":
                return dataset
        fo.delete_dataset(name)
    return None


def _finish(dataset: fo.Dataset, version: str = "") -> fo.Dataset:
    dataset.info["builder_version"] = f"{version}+demo{_DEMO_FORMAT}"
    dataset.compute_metadata()
    dataset.persistent = True
    dataset.save()
    return dataset


def _detections(boxes: dict[str, list[float]]) -> fo.Detections:
    return fo.Detections(
        detections=[
            fo.Detection(label=label, bounding_box=list(box))
            for label, box in boxes.items()
        ]
    )


def _skimage_photo(name: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError as exc:
        raise ImportError(
            "the demo's photos ship with scikit-image: "
            "pip install 'fiftyone-cam-audit[demo]'"
        ) from exc

    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        image = (255 * (image - image.min()) / max(np.ptp(image), 1e-6)).astype(
            np.uint8
        )
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    return image


def _two_subjects(left: np.ndarray, right: np.ndarray, height: int = 300):
    """``left`` next to ``right`` at a common height; boxes of each half."""
    panels = []
    for image in (left, right):
        h, w = image.shape[:2]
        width = round(w * height / h)
        panels.append(np.asarray(Image.fromarray(image).resize((width, height))))
    total = sum(p.shape[1] for p in panels)
    wl = panels[0].shape[1]
    return np.concatenate(panels, axis=1), (wl / total, (total - wl) / total)


def build_photos_dataset(
    name: str = PHOTOS_DATASET,
    directory: str | os.PathLike | None = None,
    fresh: bool = False,
) -> fo.Dataset:
    """Real photos with subjects and, where known, boxes.

    Fields: ``subject`` (str), ``grayscale`` (bool), ``ground_truth``
    (``fo.Detections``: ``"dog"``, ``"cat"``, ``"coffee cup"`` boxes on the two
    two-subject images, None elsewhere; score one subject with
    ``score_cams(..., label_classes=["dog"])``). Samples with boxes are tagged
    ``"two_subjects"``.
    The dataset is persistent; reused unless ``fresh``.
    """
    dataset = _reuse(name, fresh)
    if dataset is not None:
        return dataset
    root = pathlib.Path(directory) if directory else demo_dir() / "photos"
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for photo, subject in PHOTOS.items():
        image = _skimage_photo(photo)
        path = root / f"{photo}.png"
        Image.fromarray(image).save(path)
        sample = fo.Sample(
            filepath=str(path), subject=subject, grayscale=image.ndim == 2
        )
        samples.append(sample)

    # The GradCAM lesson's photo: a bulldog above a tabby cat.
    boxes = json.loads(BOTH_JSON.read_text())["boxes"]
    path = root / "both.png"
    Image.open(BOTH_PNG).convert("RGB").save(path)
    samples.append(
        fo.Sample(
            filepath=str(path),
            subject="dog and cat",
            grayscale=False,
            ground_truth=_detections(boxes),
            tags=["two_subjects"],
        )
    )

    # The cat (chelsea) next to the coffee cup: each half is one subject.
    image, (wl, wr) = _two_subjects(_skimage_photo("chelsea"), _skimage_photo("coffee"))
    path = root / "cat_and_coffee.png"
    Image.fromarray(image).save(path)
    cat_box = [0.0, 0.0, wl, 1.0]
    cup_box = [wl, 0.0, wr, 1.0]
    samples.append(
        fo.Sample(
            filepath=str(path),
            subject="cat and coffee cup",
            grayscale=False,
            ground_truth=_detections({"cat": cat_box, "coffee cup": cup_box}),
            tags=["two_subjects"],
        )
    )

    dataset = fo.Dataset(name)
    dataset.add_samples(samples)
    return _finish(dataset)


def build_shortcut_dataset(
    name: str = SHORTCUT_DATASET,
    directory: str | os.PathLike | None = None,
    n: int = 200,
    seed: int = 0,
    size: int = 64,
    fresh: bool = False,
) -> fo.Dataset:
    """The planted-shortcut ``"test"`` split as a FiftyOne dataset.

    Fields: ``ground_truth`` (``fo.Classification``: ``shortcut_data.CLASSES``),
    ``objects`` (``fo.Detections``, one tight box), ``mask``
    (``fo.Segmentation``, 1 on the object's pixels), ``background``
    (``"water"``/``"land"``), ``agrees`` (bool: the background is the class's
    training background). Samples are tagged ``"agree"`` or ``"disagree"``.
    Persistent; reused unless ``fresh`` or built with other arguments or by
    another version of :mod:`gradcam_engine.demo.shortcut_data`.
    """
    version = f"{_code_version()}-n{n}-s{seed}-{size}px"
    dataset = _reuse(name, fresh, version)
    if dataset is not None:
        return dataset
    root = pathlib.Path(directory) if directory else demo_dir() / "shortcut"
    generated = shortcut_data.generate(n, "test", seed=seed, size=size)
    paths = shortcut_data.write_images(generated, root)
    samples = [
        fo.Sample(
            filepath=path,
            ground_truth=fo.Classification(label=s.label),
            objects=_detections({s.label: s.bbox}),
            mask=fo.Segmentation(mask=s.mask.astype(np.uint8)),
            background=s.background,
            agrees=s.agrees,
            tags=["agree" if s.agrees else "disagree"],
        )
        for s, path in zip(generated, paths, strict=True)
    ]
    dataset = fo.Dataset(name)
    dataset.add_samples(samples)
    dataset.default_classes = list(shortcut_data.CLASSES)
    return _finish(dataset, version)


class ShortcutModels:
    """The two classifiers of the bias review and their test accuracies.

    shortcut: trained on the ``"train"`` split (background agrees with the
        class 98% of the time): learns the background.
    control: trained on the ``"control"`` split (background independent of
        the class): has to learn the shape.
    metrics: ``{"shortcut": evaluate(...), "control": evaluate(...)}`` on the
        test split (see :func:`gradcam_engine.shortcut_model.evaluate`).
    """

    def __init__(self, shortcut, control, metrics: dict[str, dict[str, float]]):
        self.shortcut = shortcut
        self.control = control
        self.metrics = metrics


# The demo's training recipe: the same as the tests' (tests/trained_models.py,
# test_shortcut), so that the test comparing README.md with the demo's
# printout reuses their trained models instead of training two more.
SHORTCUT_N_TRAIN, SHORTCUT_EPOCHS = 1000, 6


def shortcut_model_path(
    root: pathlib.Path, kind: str, n_train: int, epochs: int, seed: int, size: int
) -> pathlib.Path:
    """Where :func:`shortcut_models` caches the ``kind`` model of a recipe."""
    name = f"{kind}-n{n_train}-e{epochs}-s{seed}-{size}px-{_code_version()}.pt"
    return pathlib.Path(root) / name


def shortcut_models(
    directory: str | os.PathLike | None = None,
    n_train: int = SHORTCUT_N_TRAIN,
    epochs: int = SHORTCUT_EPOCHS,
    n_test: int = 200,
    seed: int = 0,
    size: int = 64,
    retrain: bool = False,
    log: Callable[[str], None] | None = None,
) -> ShortcutModels:
    """Train (or load from ``directory``) the shortcut and the control model.

    Weights are cached as ``<kind>-n<n_train>-e<epochs>-s<seed>-<size>px-<code>.pt``
    where ``<code>`` hashes the data and model modules' source (a changed
    generator or architecture retrains); ``retrain`` ignores the cache. Accuracies are measured on the test split
    generated with the same ``n_test``, ``seed`` and ``size``.
    """
    root = pathlib.Path(directory) if directory else demo_dir() / "models"
    root.mkdir(parents=True, exist_ok=True)
    test = shortcut_data.generate(n_test, "test", seed=seed, size=size)
    models = {}
    for kind, split in (("shortcut", "train"), ("control", "control")):
        path = shortcut_model_path(root, kind, n_train, epochs, seed, size)
        if path.exists() and not retrain:
            models[kind] = shortcut_model.load(path)
            continue
        if log:
            log(f"training the {kind} model on {n_train} '{split}' images ...")
        data = shortcut_data.generate(n_train, split, seed=seed, size=size)
        model = shortcut_model.train_classifier(data, epochs=epochs, seed=seed)
        shortcut_model.save(model, path)
        models[kind] = model
    metrics = {kind: shortcut_model.evaluate(m, test) for kind, m in models.items()}
    return ShortcutModels(models["shortcut"], models["control"], metrics)


def _code_version() -> str:
    """A short hash of the modules that define the shortcut data and model."""
    digest = hashlib.sha256()
    for module in (shortcut_data, shortcut_model):
        digest.update(pathlib.Path(module.__file__).read_bytes())
    return digest.hexdigest()[:10]
