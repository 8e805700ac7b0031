"""The example notebooks: stored without outputs, and each runs start to finish in fast mode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
nbformat = pytest.importorskip("nbformat")


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "01-simple-cnn.ipynb",
        "02-look-inside.ipynb",
        "03-numpy-mlp.ipynb",
        "04-your-own-model.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"
    first = nb.cells[1] if nb.cells[0].cell_type == "markdown" else nb.cells[0]
    assert "MNISTLAB_NOTEBOOK_FAST" in first.source, "the first code cell documents fast mode"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_fast_mode(path, tmp_path, real_home, monkeypatch):
    pytest.importorskip("torch")
    from nbclient import NotebookClient

    monkeypatch.setenv("MNISTLAB_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MNISTLAB_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    src = str(Path(__file__).resolve().parents[1] / "src")  # the kernel runs in examples/: an absolute path
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "figures show inline"
    assert any("<table" in o.get("data", {}).get("text/html", "") for o in outputs), "results show as tables"
    assert any(Path(tmp_path / "runs").iterdir()), "the runs go where MNISTLAB_NOTEBOOK_RUNS says"
