"""examples/quickstart.ipynb runs from top to bottom without a cell error.

It is executed with nbclient in a Jupyter kernel of this interpreter (ipykernel's
built-in "python3" spec runs ``sys.executable``: nothing to register). Its cells load
SevenNet-0, sample, label, train, evaluate, run ASE and jax-md MD and export, so this
is also the end-to-end test of the Python API as a notebook user meets it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install 'jaxdistill[dev]'")
nbclient = pytest.importorskip("nbclient", reason="pip install 'jaxdistill[dev]'")
pytest.importorskip("ipykernel", reason="pip install 'jaxdistill[dev]'")
pytest.importorskip("sevenn", reason="the notebook's teacher is SevenNet-0 (jaxdistill[sevennet])")

NOTEBOOK = Path(__file__).parent.parent / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's working folder goes here
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, on an error
    seconds = time.perf_counter() - start
    outputs = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    ]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "force MAE" in text and "max |F_exported - F_student|" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the inline parity plot
    # the reprs a notebook shows: one line each, not a dump of parameter arrays
    shown = "".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "Student('painn'" in shown and "LabelSummary(" in shown
    print(f"quickstart notebook: {seconds:.0f} s; per code cell:", _cell_seconds(notebook))


def _cell_seconds(notebook) -> list[float]:
    """Wall seconds of each code cell (nbclient records start and end times)."""
    from datetime import datetime

    seconds = []
    for cell in notebook.cells:
        timing = cell.get("metadata", {}).get("execution", {})
        if cell.cell_type == "code" and "iopub.execute_input" in timing:
            start = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
            seconds.append(round((end - start).total_seconds(), 1))
    return seconds
