"""The package layout's promises: import boundaries hold, the demo's data ships.

Each check runs in a fresh interpreter, so that what the test session already
imported cannot hide an import that the layer should not make.
"""

import ast
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest
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


@pytest.fixture(scope="module")
def fresh_imports(tmp_path_factory) -> dict[str, list[str]]:
    """What one fresh interpreter imports, step by step (one interpreter for
    the checks below: starting one costs seconds of torch imports).

    The distribution's entry points are installed as pyproject.toml declares
    them, as metadata in a directory of their own (the venv may hold an older
    install of this package)."""
    import tomllib

    site = tmp_path_factory.mktemp("entry-points")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    group = "gradcam_engine.model_sources"
    info = site / "cam_audit_entry_points-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: cam-audit-entry-points\nVersion: 0.0\n"
    )
    lines = [f"[{group}]"]
    lines += [f"{k} = {v}" for k, v in project["entry-points"][group].items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    out = _fresh_python(
        "import json, sys\n"
        "steps = {}\n"
        "ours = lambda top: sorted(m for m in sys.modules if m.startswith(top))\n"
        "import gradcam_engine\n"
        "from gradcam_engine import CamEngine, METHODS, slug, heatmap_field\n"
        "import gradcam_engine.engine, gradcam_engine.audit.metrics\n"
        "import gradcam_engine.sources.images, gradcam_engine.sources.models\n"
        "steps['engine_fiftyone'] = ours('fiftyone')\n"
        "steps['engine_demo'] = ours('gradcam_engine.demo')\n"
        "from gradcam_engine.sources import models\n"
        "steps['sources'] = models.list_model_sources()\n"
        "steps['sources_demo'] = ours('gradcam_engine.demo')\n"
        "import gradcam_engine as ge\n"
        "steps['lazy'] = [ge.compute_cams.__module__, ge.score_cams.__module__, "
        "ge.export_review.__module__, ge.load_model.__module__]\n"
        "print(json.dumps(steps))",
        cwd=ROOT,
        PYTHONPATH=os.pathsep.join([str(ROOT), str(site)]),
    )
    return json.loads(out.strip().splitlines()[-1])


def test_engine_never_imports_fiftyone(fresh_imports):
    assert fresh_imports["engine_fiftyone"] == []


def test_workflow_names_load_lazily_from_their_subpackages(fresh_imports):
    assert fresh_imports["lazy"] == [
        "gradcam_engine.runs.compute",
        "gradcam_engine.audit.scoring",
        "gradcam_engine.audit.export",
        "gradcam_engine.sources.models",
    ]


def test_demo_model_sources_come_from_the_entry_point_not_from_an_import(
    fresh_imports,
):
    assert fresh_imports["engine_demo"] == []  # the library imports no demo module
    for name in ("demo-shortcut-cnn", "demo-control-cnn", "clever-hans-cnn"):
        assert name in fresh_imports["sources"]
    # registering loads only the small sources module, not the demo's models
    assert fresh_imports["sources_demo"] == [
        "gradcam_engine.demo",
        "gradcam_engine.demo.sources",
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
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    declared = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[gradcam_engine.model_sources]" in declared  # the demo's model sources

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


# Lower layers first: a module imports its own layer and the ones before it.
_LAYERS = ["engine", "sources", "runs", "audit", "demo"]


def _package_imports() -> dict[str, set[str]]:
    """Module -> the gradcam_engine modules it imports anywhere in its source
    (also inside functions and ``if TYPE_CHECKING:``), read from the files."""
    package = ROOT / "gradcam_engine"
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts): path
        for path in package.rglob("*.py")
    }
    imports: dict[str, set[str]] = {}
    for name, path in modules.items():
        parts = name.split(".")
        base = parts if path.name == "__init__.py" else parts[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    stem = base[: len(base) - node.level + 1]
                    target = ".".join(stem + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found |= {f"{target}.{a.name}" for a in node.names} | {target}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        imports[name.removesuffix(".__init__")] = {
            m.removesuffix(".__init__")
            for m in found
            if m in modules or f"{m}.__init__" in modules
        }
    return imports


def test_imports_never_go_up_the_layers():
    offenders = []
    for module, targets in _package_imports().items():
        layer = module.split(".")[1] if "." in module else None
        if layer not in _LAYERS:
            continue
        for target in targets:
            other = target.split(".")[1] if target.count(".") else None
            if other in _LAYERS and _LAYERS.index(other) > _LAYERS.index(layer):
                offenders.append(f"{module} imports {target}")
    assert offenders == [], "upward imports (order: " + " -> ".join(_LAYERS) + ")"


def test_modules_do_not_import_each_other_in_a_circle():
    imports = _package_imports()
    cycles = set()

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(imports.get(module, ())):
            if target in path:
                cycle = path[path.index(target) :]
                start = cycle.index(min(cycle))
                cycles.add(" -> ".join(cycle[start:] + cycle[:start]))
            elif len(path) < 12:
                visit(target, [*path, target])

    for module in imports:
        visit(module, [module])
    assert sorted(cycles) == []
