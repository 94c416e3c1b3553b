"""notebooks/quickstart.ipynb runs top to bottom at the tiny size and recovers parameters."""

from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="install the test extras: pip install -e '.[test]'")
    nbclient = pytest.importorskip("nbclient", reason="install the test extras: pip install -e '.[test]'")
    monkeypatch.setenv("JAXSPEC_QUICKSTART_SIZE", "tiny")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the cell and traceback) on failure
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    results = Table.read(tmp_path / "quickstart_results.ecsv")
    assert set(results["method"]) == {"bo", "map", "nuts"}
    for name in ("teff", "logg", "feh"):
        assert np.all(np.isfinite(np.asarray(results[f"{name}_error"], dtype=float)))
    # The tiny grid has 1000 K steps; test stars lie between nodes, yet MAP lands closer
    # to the truth than one grid step.
    teff_err = np.abs(np.asarray(results["teff_error"])[np.asarray(results["method"]) == "map"])
    assert np.all(teff_err < 1000)
