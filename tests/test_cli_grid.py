"""`jaxspec grid ...` commands, run in-process on the tiny embedded grid."""

import numpy as np
import pytest

from jaxspec.cli import main
from jaxspec.grid import SpectralGrid


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "grid.h5"
    assert main(["grid", "synth", "--size", "tiny", "--out", str(path)]) == 0
    return path


def test_synth_writes_a_readable_grid(grid_file):
    grid = SpectralGrid.from_hdf5(grid_file)
    assert grid.param_names == ("teff", "logg", "feh")
    assert grid.normalized
    assert np.all(np.isfinite(grid.flux))


def test_synth_refuses_to_overwrite(grid_file, capsys):
    assert main(["grid", "synth", "--size", "tiny", "--out", str(grid_file)]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_info_summarises(grid_file, capsys):
    assert main(["grid", "info", str(grid_file)]) == 0
    out = capsys.readouterr().out
    assert "teff" in out and "spectra" in out and "missing" in out


def test_plot_writes_png(grid_file, tmp_path):
    grid = SpectralGrid.from_hdf5(grid_file)
    teff, logg, feh = (grid.axes[n][0] for n in grid.param_names)
    out = tmp_path / "fig.png"
    code = main(["grid", "plot", str(grid_file), "--teff", str(teff), "--logg", str(logg),
                 "--feh", str(feh), "--out", str(out)])
    assert code == 0
    assert out.stat().st_size > 10_000


def test_plot_off_grid_names_the_parameter(grid_file, tmp_path, capsys):
    code = main(["grid", "plot", str(grid_file), "--teff", "1234", "--logg", "4.5",
                 "--feh", "0", "--out", str(tmp_path / "x.png")])
    assert code == 1
    assert "teff" in capsys.readouterr().err


def test_plot_window_outside_the_band_names_file_and_range(grid_file, tmp_path, capsys):
    grid = SpectralGrid.from_hdf5(grid_file)
    teff, logg, feh = (grid.axes[n][0] for n in grid.param_names)
    code = main(["grid", "plot", str(grid_file), "--teff", str(teff), "--logg", str(logg),
                 "--feh", str(feh), "--wavelength", "100:200", "--out", str(tmp_path / "w.png")])
    assert code == 1
    err = capsys.readouterr().err
    assert "--wavelength 100:200 selects no pixel of" in err and str(grid_file) in err


def test_negative_ranges_parse(tmp_path, capsys):
    # `--feh -0.5:0` must be read as a value, not an option.
    code = main(["grid", "phoenix", str(tmp_path / "none"), "--feh", "-0.5:0",
                 "--out", str(tmp_path / "g.h5")])
    assert code == 1
    assert "no such directory" in capsys.readouterr().err


def test_bad_range_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit):
        main(["grid", "phoenix", str(tmp_path), "--teff", "6000:4000", "--out", "x.h5"])
