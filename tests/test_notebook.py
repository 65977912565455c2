"""examples/tutorial.ipynb runs top to bottom in a real Jupyter kernel (nbclient), on the
tiny model and data, and draws its plots."""

import base64
import io
import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parent.parent / "examples" / "tutorial.ipynb"


@pytest.mark.processes  # a Jupyter kernel, its forkserver and the comparison's runs
def test_the_tutorial_notebook_runs_and_plots(tiny_llama, sentiment_csv, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from PIL import Image

    for name, value in {
        "MODEL": tiny_llama, "DATASET": sentiment_csv, "OUT": tmp_path / "runs",
        "TRAIN": 0, "VALIDATION": 0, "TEST": 0,
    }.items():  # fmt: skip
        monkeypatch.setenv(f"PEFTLAB_EXAMPLE_{name}", str(value))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute(env=dict(os.environ))
    images = [
        Image.open(io.BytesIO(base64.b64decode(output["data"]["image/png"])))
        for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.outputs if "image/png" in output.get("data", {})
    ]  # fmt: skip
    assert len(images) == 2  # the loss curve and the methods' accuracy vs parameters
    for image in images:
        assert image.width >= 400 and image.height >= 200
        assert len(set(image.convert("L").getdata())) > 10  # drawn on, not blank
    assert (tmp_path / "runs" / "compare" / "compare.json").is_file()
