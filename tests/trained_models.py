"""The demo's small CNNs, trained once and shared by every test that needs one.

Training is deterministic (seeded, one torch thread, deterministic algorithms:
``test_shortcut`` checks it), so a model trained earlier from the same data
recipe by the same code is the same model. The key is the data generator and
its arguments, the training arguments, torch's version and a hash of the source
of the modules that make the data and train the model: a changed generator,
architecture or training loop trains again.

Kept in memory for the session and on disk between sessions, in
``$CAM_AUDIT_TEST_MODELS`` or else ``~/.cache/cam-audit/test-models``, shared by
parallel test processes (pytest-xdist workers, other checkouts): a file lock per
model lets one process train it while the others wait and then load it, and
the file is written atomically (a reader never sees half a model).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pathlib

import torch
from filelock import FileLock

from gradcam_engine.demo import handwritten, marked_data, shortcut_data, shortcut_model

GENERATORS = {
    "shortcut": shortcut_data.generate,  # circles / crosses on water or land
    "marked": marked_data.generate_marked,  # the Clever-Hans watermark data
    # scikit-learn's digits with a colour cue (pass num_classes=10, hflip=False)
    "digits": lambda n, split, seed=0: handwritten.generate_digits(split, seed, n=n),
}
_MEMORY: dict[str, shortcut_model.ShortcutCNN] = {}


def cache_dir() -> pathlib.Path:
    env = os.environ.get("CAM_AUDIT_TEST_MODELS")
    path = pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "cam-audit"
    path = path if env else path / "test-models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def code_version() -> str:
    digest = hashlib.sha256(torch.__version__.encode())
    for module in (handwritten, marked_data, shortcut_data, shortcut_model):
        digest.update(pathlib.Path(module.__file__).read_bytes())
    return digest.hexdigest()[:12]


def trained(
    data: str, n: int, split: str, seed: int = 0, **train_kwargs
) -> shortcut_model.ShortcutCNN:
    """``shortcut_model.train_classifier(GENERATORS[data](n, split, seed=seed),
    seed=seed, **train_kwargs)``, from the cache when it was trained before.

    Each call returns its own copy, so that a test may change its model."""
    recipe = [data, n, split, seed, sorted(train_kwargs.items()), code_version()]
    key = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]
    if key not in _MEMORY:
        path = cache_dir() / f"{data}-{split}-n{n}-s{seed}-{key}.pt"
        with FileLock(path.with_name(f"{path.name}.lock")):
            if path.exists():
                model = shortcut_model.load(path)
            else:
                samples = GENERATORS[data](n, split, seed=seed)
                model = shortcut_model.train_classifier(
                    samples, seed=seed, **train_kwargs
                )
                partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
                shortcut_model.save(model, partial)
                os.replace(partial, path)
        _MEMORY[key] = model
    return copy.deepcopy(_MEMORY[key])


_DETECTORS: dict[str, object] = {}


def trained_detector(n: int, seed: int = 0, epochs: int = 8):
    """``mark_detector.train_detector(marked_data.generate_marked(n, "train",
    seed=seed), epochs=epochs, seed=seed)`` (the demo's detector), cached
    like :func:`trained`."""
    from gradcam_engine.demo import mark_detector

    digest = hashlib.sha256(code_version().encode())
    digest.update(pathlib.Path(mark_detector.__file__).read_bytes())
    recipe = ["mark-detector", n, seed, epochs, digest.hexdigest()[:12]]
    key = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]
    if key not in _DETECTORS:
        path = cache_dir() / f"mark-detector-n{n}-e{epochs}-s{seed}-{key}.pt"
        if path.exists():
            model = mark_detector.load(path)
        else:
            samples = marked_data.generate_marked(n, "train", seed=seed)
            model = mark_detector.train_detector(samples, epochs=epochs, seed=seed)
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            mark_detector.save(model, partial)
            os.replace(partial, path)
        _DETECTORS[key] = model
    return copy.deepcopy(_DETECTORS[key])
