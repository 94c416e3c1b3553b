"""`jaxspec demo --size tiny`: the main job runs end to end and writes its outputs."""

import numpy as np
from astropy.table import Table

from jaxspec.cli import main


def test_demo_tiny_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--size", "tiny", "--out", str(out), "--no-progress"]) == 0
    for name in ("grid.h5", "clones.h5", "emulator.h5", "results.ecsv", "summary.ecsv",
                 "timings.ecsv", "fit.png", "errors.png", "corner.png"):
        assert (out / name).exists(), name
    results = Table.read(out / "results.ecsv")
    assert set(results["method"]) == {"bo", "map", "nuts"}
    for name in ("teff", "logg", "feh"):
        err = np.abs(np.asarray(results[f"{name}_error"]))
        assert np.all(np.isfinite(err))
    # Even the 16-spectrum tiny grid (1000 K steps) places test stars inside the box
    # and recovers Teff to better than the node spacing.
    teff_err = np.abs(np.asarray(results["teff_error"]))
    assert np.median(teff_err) < 1000
    summary = Table.read(out / "summary.ecsv")
    assert {"method", "regime", "teff_mean", "seconds"} <= set(summary.colnames)
