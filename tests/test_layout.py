"""The package layout's promises: import boundaries hold, the demo's data ships.

Each check runs in a fresh interpreter, so that what the test session already
imported cannot hide an import that the layer should not make.
"""

import ast
import os
import pathlib
import subprocess
import sys
import zipfile

from conftest import ROOT


def _fresh_python(code: str, cwd: pathlib.Path, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_engine_never_imports_fiftyone():
    out = _fresh_python(
        "import sys\n"
        "import gradcam_engine\n"
        "from gradcam_engine import CamEngine, METHODS, slug, heatmap_field\n"
        "import gradcam_engine.engine, gradcam_engine.audit.metrics\n"
        "import gradcam_engine.sources.images, gradcam_engine.sources.models\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'fiftyone'))",
        cwd=ROOT,
    )
    assert out.strip() == "[]"


def test_workflow_names_load_lazily_from_their_subpackages():
    out = _fresh_python(
        "import gradcam_engine as ge\n"
        "print(ge.compute_cams.__module__, ge.score_cams.__module__, "
        "ge.export_review.__module__, ge.load_model.__module__)",
        cwd=ROOT,
    )
    assert out.split() == [
        "gradcam_engine.runs.compute",
        "gradcam_engine.audit.scoring",
        "gradcam_engine.audit.export",
        "gradcam_engine.sources.models",
    ]


_HOOK_CALLS = {
    "register_forward_hook",
    "register_forward_pre_hook",
    "register_full_backward_hook",
    "register_backward_hook",
    "register_hook",
}


def test_operators_do_not_touch_torch_hooks():
    offenders = []
    for path in sorted((ROOT / "operators").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names]
                module = getattr(node, "module", None) or ""
                for name in [module, *names]:
                    if name.split(".")[0] == "torch" or "engine.hooks" in name:
                        offenders.append(f"{path.name}:{node.lineno} imports {name}")
            if isinstance(node, ast.Attribute) and node.attr in _HOOK_CALLS:
                offenders.append(f"{path.name}:{node.lineno} calls {node.attr}")
    assert offenders == []


def test_wheel_ships_the_demo_data_and_the_demo_finds_it(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path, ROOT],
        check=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("fiftyone_cam_audit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in ("both.png", "both.json"):
        assert f"gradcam_engine/demo/data/{data}" in names
    for package in ("engine", "sources", "runs", "audit", "demo"):
        assert f"gradcam_engine/{package}/__init__.py" in names

    # Install the wheel alone into a directory and build the photo dataset from
    # there, away from the source tree (cwd and sys.path both elsewhere).
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "-t", site, wheel],
        check=True,
        timeout=300,
    )
    out = _fresh_python(
        f"import sys; sys.path.insert(0, {str(site)!r})\n"
        "from gradcam_engine.demo import datasets as dd\n"
        f"assert str(dd.BOTH_PNG).startswith({str(site)!r}), dd.BOTH_PNG\n"
        "ds = dd.build_photos_dataset('wheel-photos', directory="
        f"{str(tmp_path / 'photos')!r}, fresh=True)\n"
        "both = ds.match_tags('two_subjects').first()\n"
        "print(len(ds), both.ground_truth is not None)\n"
        "ds.delete()",
        cwd=tmp_path,
        FIFTYONE_DATABASE_DIR=str(tmp_path / "db"),
        CAM_AUDIT_DEMO_DIR=str(tmp_path / "demo"),
    )
    count, has_boxes = out.split()[-2:]
    assert int(count) >= 10 and has_boxes == "True"


def test_plugin_entry_point_imports_outside_a_package_without_fiftyone():
    # pytest imports the checkout's __init__.py on its own (no parent package)
    # when the folder's name is not an identifier, e.g. "fiftyone-cam-audit";
    # and before the tests' conftest has chosen FiftyOne's database.
    out = _fresh_python(
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('__init__', "
        f"{str(ROOT / '__init__.py')!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(callable(module.register), "
        "any(m.split('.')[0] == 'fiftyone' for m in sys.modules))",
        cwd=ROOT.parent,
    )
    assert out.split() == ["True", "False"]
