"""Every notebook in notebooks/ runs top to bottom in its reduced setting (MGD_NOTEBOOK_SMOKE=1)
and prints its results table."""

import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
# What each notebook's results cell prints: the experiment ran to its report.
PRINTS = {
    "lr_schedule_search.ipynb": "grid's best of",
    "poisoning_digits.ipynb": "MGD drop:",
    "poisoning_cifar10.ipynb": "training pool:",
}


def test_every_notebook_is_checked():
    assert {p.name for p in NOTEBOOKS} == set(PRINTS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, monkeypatch, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MGD_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()  # Raises CellExecutionError on the first cell that fails.
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )
    assert PRINTS[path.name] in printed, printed[-2000:]
