"""docs/tour.ipynb runs top to bottom in a fresh kernel (nbclient), so it cannot rot."""

import pathlib

import nbformat
from helpers import ROOT
from nbclient import NotebookClient

TOUR = pathlib.Path(ROOT) / "docs" / "tour.ipynb"


def test_tour_notebook_runs(tmp_path):
    nb = nbformat.read(TOUR, as_version=4)
    # the same cells on a tenth of the data, one epoch (the suite's time budget)
    cell = next(c for c in nb.cells if "jaxae.TrainConfig(epochs=3)" in c.source)
    cell.source = cell.source.replace("epochs=3", "epochs=1, train_size=6000")
    # the kernel starts in tmp_path: models/tour and runs/tour land there
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "member-examples/s" in text and text.count("test loss") == 4
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 2  # the samples and the 2-d latent scatter
    assert (tmp_path / "models" / "tour" / "config.json").exists()
