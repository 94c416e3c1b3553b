"""PHOENIX-ACES HiRes import from tiny FITS files laid out as on the PHOENIX server."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from jaxspec.grid import SpectralGrid
from jaxspec.io import (
    phoenix_filename,
    read_phoenix_grid,
    read_phoenix_spectrum,
    read_phoenix_wavelength,
)

N_WAVE = 500
WAVE = np.linspace(8000.0, 8099.8, N_WAVE)  # 0.2 Å steps
TEFFS = (5800.0, 5900.0)
LOGGS = (4.0, 4.5)
FEHS = (-0.5, 0.0)
ABSENT = (5900.0, 4.5, -0.5)  # one node without a file


def phoenix_flux(teff, logg, feh):
    """erg/s/cm^2/cm-like values that encode the node."""
    return (1e15 * (teff / 5800.0) * (1.0 + 0.1 * logg + 0.01 * feh) * (1.0 + WAVE / 1e5)).astype(
        np.float32
    )


def write_spectrum(path, teff, logg, feh, alpha=0.0, drop=None, header=None, flux=None):
    hdr = fits.Header()
    hdr["PHXTEFF"] = teff
    hdr["PHXLOGG"] = logg
    hdr["PHXM_H"] = feh
    hdr["PHXALPHA"] = alpha
    for key, value in (header or {}).items():
        hdr[key] = value
    if drop:
        del hdr[drop]
    data = phoenix_flux(teff, logg, feh) if flux is None else flux
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(data=data, header=hdr).writeto(path)


@pytest.fixture
def phoenix_dir(tmp_path):
    """HiResFITS/WAVE_...fits and HiResFITS/PHOENIX-ACES-AGSS-COND-2011/Z-x.x/lte*.fits."""
    root = tmp_path / "HiResFITS"
    directory = root / "PHOENIX-ACES-AGSS-COND-2011"
    root.mkdir()
    fits.PrimaryHDU(data=WAVE).writeto(root / "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits")
    for teff in TEFFS:
        for logg in LOGGS:
            for feh in FEHS:
                if (teff, logg, feh) != ABSENT:
                    write_spectrum(directory / phoenix_filename(teff, logg, feh), teff, logg, feh)
    # Files that are not part of the alpha = 0 grid are ignored.
    (directory / "Z-0.0.Alpha=+0.20").mkdir()
    write_spectrum(
        directory / "Z-0.0.Alpha=+0.20/lte05800-4.50-0.0.Alpha=+0.20.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits",
        5800, 4.5, 0.0, alpha=0.2,
    )
    return directory


def read_quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return read_phoenix_grid(*args, progress=False, **kwargs)


def test_filename_convention():
    assert phoenix_filename(5800, 4.5, 0.0) == "Z-0.0/lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits"
    assert phoenix_filename(5800, 4.5, -0.5) == "Z-0.5/lte05800-4.50-0.5.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits"
    assert phoenix_filename(12000, 6.0, 0.5) == "Z+0.5/lte12000-6.00+0.5.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits"


def test_grid_axes_values_mask_and_missing(phoenix_dir):
    with pytest.warns(UserWarning, match=r"1 of 8 nodes .* no file and are masked, e.g. Z-0.5/lte05900-4.50-0.5"):
        grid, missing = read_phoenix_grid(phoenix_dir, progress=False, return_missing=True)
    assert grid.param_names == ("teff", "logg", "feh")
    np.testing.assert_array_equal(grid.axes["teff"], TEFFS)
    np.testing.assert_array_equal(grid.axes["logg"], LOGGS)
    np.testing.assert_array_equal(grid.axes["feh"], FEHS)
    np.testing.assert_array_equal(grid.wavelength, WAVE)
    assert grid.flux.dtype == np.float32 and not grid.normalized
    expected_mask = np.ones((2, 2, 2), bool)
    expected_mask[1, 1, 0] = False
    np.testing.assert_array_equal(grid.mask, expected_mask)
    assert missing == ["Z-0.5/lte05900-4.50-0.5.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits"]
    for teff in TEFFS:
        for logg in LOGGS:
            for feh in FEHS:
                if (teff, logg, feh) != ABSENT:
                    np.testing.assert_array_equal(
                        grid.spectrum(teff=teff, logg=logg, feh=feh), phoenix_flux(teff, logg, feh)
                    )


def test_streams_to_hdf5(phoenix_dir, tmp_path):
    out = tmp_path / "phoenix.h5"
    grid = read_quiet(phoenix_dir, out=out, wavelength=(8010.0, 8020.0))
    assert out.exists() and not (tmp_path / "phoenix.h5.partial").exists()
    again = SpectralGrid.from_hdf5(out)
    np.testing.assert_array_equal(again.flux, grid.flux)
    np.testing.assert_array_equal(again.mask, grid.mask)
    assert not grid.mask[1, 1, 0]
    path = read_quiet(phoenix_dir, out=out, load=False, overwrite=True)
    assert path == out and SpectralGrid.from_hdf5(out).n_pix == N_WAVE
    with pytest.raises(FileExistsError, match="phoenix.h5: file exists"):
        read_quiet(phoenix_dir, out=out)


def test_wavelength_crop(phoenix_dir):
    grid = read_quiet(phoenix_dir, wavelength=(8010.0, 8020.0))
    keep = (WAVE >= 8010.0) & (WAVE <= 8020.0)
    assert grid.n_pix == keep.sum() == 51
    np.testing.assert_array_equal(grid.wavelength, WAVE[keep])
    np.testing.assert_array_equal(
        grid.spectrum(teff=5800, logg=4.0, feh=0.0), phoenix_flux(5800, 4.0, 0.0)[keep]
    )


def test_wavelength_crop_outside(phoenix_dir):
    with pytest.raises(ValueError, match=r"WAVE_PHOENIX-ACES-AGSS-COND-2011.fits: wavelength=\(9000, 9100\) selects nothing"):
        read_quiet(phoenix_dir, wavelength=(9000, 9100))


def test_parameter_ranges(phoenix_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete subset: no missing-file warning
        grid = read_phoenix_grid(phoenix_dir, teff=(5850, 6000), logg=(4.5, 4.5), feh=(0, 0.5), progress=False)
    assert grid.shape == (1, 1, 1)
    assert grid.bounds == {"teff": (5900.0, 5900.0), "logg": (4.5, 4.5), "feh": (0.0, 0.0)}


def test_range_selects_no_file(phoenix_dir):
    with pytest.raises(ValueError, match=r"PHOENIX-ACES-AGSS-COND-2011: among the files found, teff=\(7000, 8000\) selects nothing; available teff values span 5800 to 5900"):
        read_quiet(phoenix_dir, teff=(7000, 8000))


def test_wavelength_file_in_same_directory(phoenix_dir):
    wave = phoenix_dir.parent / "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits"
    wave.rename(phoenix_dir / wave.name)
    assert read_quiet(phoenix_dir).n_pix == N_WAVE


def test_missing_wavelength_file(phoenix_dir):
    (phoenix_dir.parent / "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits").unlink()
    with pytest.raises(FileNotFoundError, match="WAVE_PHOENIX-ACES-AGSS-COND-2011.fits not found"):
        read_quiet(phoenix_dir)


def test_missing_header_key_names_file(phoenix_dir):
    path = phoenix_dir / phoenix_filename(5900, 4.0, 0.0)
    path.unlink()
    write_spectrum(path, 5900, 4.0, 0.0, drop="PHXLOGG")
    with pytest.raises(ValueError, match=r"lte05900-4.00-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits: header key PHXLOGG is missing"):
        read_quiet(phoenix_dir)


def test_header_disagrees_with_filename(phoenix_dir):
    path = phoenix_dir / phoenix_filename(5800, 4.5, -0.5)
    path.unlink()
    write_spectrum(path, 5800, 4.5, -0.5, header={"PHXM_H": -1.0})
    with pytest.raises(ValueError, match=r"lte05800-4.50-0.5.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits: header key PHXM_H = -1 disagrees with the filename \(feh = -0.5\)"):
        read_quiet(phoenix_dir)


def test_alpha_header_must_be_zero(phoenix_dir):
    path = phoenix_dir / phoenix_filename(5800, 4.0, 0.0)
    path.unlink()
    write_spectrum(path, 5800, 4.0, 0.0, alpha=0.4)
    with pytest.raises(ValueError, match=r"lte05800-4.00-0.0.*PHXALPHA = 0.4 disagrees"):
        read_quiet(phoenix_dir)


def test_error_mid_stream_leaves_no_file(phoenix_dir, tmp_path):
    path = phoenix_dir / phoenix_filename(5900, 4.5, 0.0)
    path.unlink()
    write_spectrum(path, 5900, 4.5, 0.0, drop="PHXTEFF")
    out = tmp_path / "out.h5"
    with pytest.raises(ValueError, match="PHXTEFF is missing"):
        read_quiet(phoenix_dir, out=out)
    assert not out.exists() and not (tmp_path / "out.h5.partial").exists()


def test_flux_length_mismatch(phoenix_dir):
    path = phoenix_dir / phoenix_filename(5800, 4.0, 0.0)
    path.unlink()
    write_spectrum(path, 5800, 4.0, 0.0, flux=np.ones(N_WAVE - 1, np.float32))
    with pytest.raises(ValueError, match=r"lte05800-4.00-0.0.*flux has shape \(499,\) but the wavelength file has 500 pixels"):
        read_quiet(phoenix_dir)


def test_file_in_wrong_metallicity_folder(phoenix_dir):
    src = phoenix_dir / phoenix_filename(5800, 4.0, -0.5)
    src.rename(phoenix_dir / "Z-0.0" / src.name)
    with pytest.raises(ValueError, match=r"lte05800-4.00-0.5.*sits in folder Z-0.0; move it to Z-0.5/"):
        read_quiet(phoenix_dir)


def test_positive_metallicity_and_flat_directory(tmp_path):
    fits.PrimaryHDU(data=WAVE).writeto(tmp_path / "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits")
    write_spectrum(tmp_path / phoenix_filename(6000, 5.0, 0.5), 6000, 5.0, 0.5)
    write_spectrum(tmp_path / Path(phoenix_filename(6000, 5.0, 0.0)).name, 6000, 5.0, 0.0)
    grid = read_quiet(tmp_path)
    np.testing.assert_array_equal(grid.axes["feh"], [0.0, 0.5])
    assert (tmp_path / "Z+0.5" / "lte06000-5.00+0.5.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits").exists()
    np.testing.assert_array_equal(grid.spectrum(teff=6000, logg=5, feh=0.5), phoenix_flux(6000, 5.0, 0.5))


def test_no_files(tmp_path):
    with pytest.raises(ValueError, match="no PHOENIX-ACES-AGSS-COND-2011 HiRes files found"):
        read_quiet(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        read_quiet(tmp_path / "absent")


def test_read_single_spectrum(phoenix_dir):
    wave_file = phoenix_dir.parent / "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits"
    np.testing.assert_array_equal(read_phoenix_wavelength(wave_file), WAVE)
    spec = read_phoenix_spectrum(phoenix_dir / phoenix_filename(5900, 4.0, -0.5), wave_file)
    wl, flux, params = spec
    np.testing.assert_array_equal(wl, WAVE)
    np.testing.assert_array_equal(flux, phoenix_flux(5900, 4.0, -0.5))
    assert params == {"teff": 5900.0, "logg": 4.0, "feh": -0.5, "alpha": 0.0}
    cropped = read_phoenix_spectrum(
        phoenix_dir / phoenix_filename(5900, 4.0, -0.5), wave_file, wavelength=(8000, 8001)
    )
    assert cropped.flux.shape == (6,) and cropped.wavelength[-1] == 8001.0


def test_read_single_spectrum_bad_header(phoenix_dir):
    wave_file = phoenix_dir.parent / "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits"
    path = phoenix_dir / phoenix_filename(5800, 4.0, 0.0)
    path.unlink()
    write_spectrum(path, 5800, 4.0, 0.0, header={"PHXTEFF": 6100.0})
    with pytest.raises(ValueError, match=r"lte05800-4.00-0.0.*PHXTEFF = 6100 disagrees with the filename \(teff = 5800\)"):
        read_phoenix_spectrum(path, wave_file)
