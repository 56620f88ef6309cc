"""Execute every notebook in notebooks/ with nbclient on this interpreter.

Each kernel runs on its own temporary FiftyOne database;
``CAM_AUDIT_NB_QUICK=1`` makes the bias-review notebook train small models.
"""

import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted(
    (pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")
)


def _kernel_name() -> str:
    """A kernelspec that runs this interpreter ("python3" maps "python" to sys.executable)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    if spec.argv[0] not in ("python", "python3", sys.executable):
        pytest.skip(f"kernel 'python3' runs {spec.argv[0]!r}, not this interpreter")
    return "python3"


def test_notebooks_found():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_classification",
        "02_segmentation",
        "03_vision_transformer",
        "04_bias_review",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch, tmp_path):
    monkeypatch.setenv("CAM_AUDIT_NB_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("CAM_AUDIT_DEMO_DIR", str(tmp_path / "demo"))
    # Each kernel gets its own embedded database: a kernel that exits stops the
    # mongod it shares, which would cut off the next kernel mid-run.
    monkeypatch.setenv("FIFTYONE_DATABASE_DIR", str(tmp_path / "db"))
    book = nbformat.read(path, as_version=4)
    assert not any(
        cell.get("outputs") for cell in book.cells if cell.cell_type == "code"
    ), f"{path.name} is committed with outputs; clear them"
    client = nbclient.NotebookClient(
        book,
        kernel_name=_kernel_name(),
        timeout=600,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    errors = [
        out
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
    assert os.environ.get("CAM_AUDIT_NB_QUICK") == "1"
