"""Leave-columns-out validation (jaxspec.validate, `jaxspec emulator validate`)."""

import numpy as np
import pytest

from jaxspec.cli import main
from jaxspec.grid import SpectralGrid
from jaxspec.line_emulator import LineEmulator
from jaxspec.manifold import LineManifold
from jaxspec.pixel_emulator import PixelEmulator
from jaxspec.validate import held_columns, validate_emulator

TEFF = np.arange(4000.0, 4900.0, 100.0)  # 9 columns
LOGG = np.array([4.0, 4.5])
WL = np.linspace(8500.0, 8502.0, 201)
CENTER = np.array([8500.5, 8501.2])


def line_emulator(method):
    """Two lines whose strength and width change smoothly (non-linearly) with Teff."""
    t = (TEFF[:, None] - 4000.0) / 800.0
    values = np.zeros((2, TEFF.size, LOGG.size, 4))
    values[..., 1] = np.log(0.02) - 2.0 * t**2 + 0.1 * (LOGG[None] - 4.0)
    values[..., 2] = np.log(0.03) + 0.5 * t**2
    values[..., 3] = np.log(0.01)
    values[1, ..., 1] -= 0.5
    manifold = LineManifold({"teff": TEFF, "logg": LOGG}, values, method=method)
    return LineEmulator(manifold, CENTER, WL)


@pytest.fixture(scope="module")
def grid():
    """The grid the line emulator reproduces exactly at its nodes."""
    emulator = line_emulator("linear")
    params = np.stack(np.meshgrid(TEFF, LOGG, indexing="ij"), -1).reshape(-1, 2)
    flux = np.asarray(emulator(params)).reshape(TEFF.size, LOGG.size, WL.size)
    return SpectralGrid({"teff": TEFF, "logg": LOGG}, WL, flux, normalized=True)


def test_held_columns_never_the_ends():
    assert held_columns(61).tolist() == [5, 15, 25, 35, 45, 55]
    assert held_columns(9, every=3).tolist() == [1, 4, 7]
    assert held_columns(9, every=3, offset=0).tolist() == [3, 6]
    with pytest.raises(ValueError, match="every=1"):
        held_columns(9, every=1)
    with pytest.raises(ValueError, match="no column to remove"):
        held_columns(3, every=5, offset=4)


def test_pixel_emulators_against_the_baseline(grid):
    linear = validate_emulator(PixelEmulator.from_grid(grid), grid, every=3)
    assert linear.held.tolist() == [4100.0, 4400.0, 4700.0]
    assert linear.n_nodes.tolist() == [2, 2, 2]
    # a linear pixel emulator rebuilt without the columns is the baseline itself
    np.testing.assert_allclose(linear.rms, linear.rms_pixel, rtol=1e-6)
    assert linear.total > 0
    cubic = validate_emulator(PixelEmulator.from_grid(grid, method="cubic"), grid, every=3)
    assert cubic.total < cubic.total_pixel
    assert "all" in cubic.table() and "4400" in cubic.table()


def test_line_emulators_rebuilt_without_columns(grid):
    linear = validate_emulator(line_emulator("linear"), grid, every=3)
    cubic = validate_emulator(line_emulator("cubic"), grid, every=3)
    assert np.all(np.isfinite(linear.rms)) and linear.total > 0
    assert cubic.total < linear.total  # the parameters change quadratically with Teff
    assert linear.total_pixel == pytest.approx(cubic.total_pixel)


def test_mismatched_grid_and_unsupported_kinds_are_refused(grid):
    other = SpectralGrid({"teff": TEFF, "logg": LOGG}, WL + 0.5, grid.flux, normalized=True)
    with pytest.raises(ValueError, match="wavelengths"):
        validate_emulator(PixelEmulator.from_grid(grid), other, every=3)

    class Fitted:
        kind = "cannon"
        param_names = ("teff", "logg")
        wavelength = WL
        axes = {"teff": TEFF, "logg": LOGG}

    with pytest.raises(ValueError, match="'cannon' emulator is fitted to the whole grid"):
        validate_emulator(Fitted(), grid, every=3)


def test_cli_validate_prints_the_table_and_writes_the_figure(grid, tmp_path, capsys):
    grid_path = tmp_path / "grid.h5"
    grid.to_hdf5(grid_path)
    emu = PixelEmulator.from_grid(grid, method="cubic").save(tmp_path / "pixel.h5")
    fig = tmp_path / "validate.png"
    assert main(["emulator", "validate", str(emu), str(grid_path), "--every", "3",
                 "--out", str(fig)]) == 0
    out = capsys.readouterr().out
    assert "3 teff column(s) removed" in out and "all" in out
    assert fig.exists() and fig.stat().st_size > 0
