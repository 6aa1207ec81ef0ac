"""notebooks/quickstart.ipynb: stored without outputs, and it runs from top to bottom (at its
tiny size, PIAUG_NOTEBOOK_TINY=1), so it cannot rot."""

import json
import os
from pathlib import Path

import pytest
from conftest import TEST_XLA_FLAGS

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def test_the_notebook_is_stored_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert len(code) >= 5
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)


@pytest.mark.slow  # a kernel and a tiny pipeline run: about a minute
def test_the_notebook_runs(tmp_path, monkeypatch):
    import nbclient
    import nbformat

    monkeypatch.setenv("PIAUG_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("PIAUG_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("XLA_FLAGS", TEST_XLA_FLAGS)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO / "notebooks")}},
    )
    client.execute()
    text = "\n".join(
        o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "pixels per group" in text and "MRE" in text and "piaug runs on cpu" in text
    images = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 3  # the measures, the curves, the matches
    assert (tmp_path / "run" / "results.json").exists()
