"""Observed-spectrum readers (issue 19): APOGEE apStar/aspcapStar, multi-order echelle
(HPF layout), 1-D FITS images with linear / log-linear WCS, inverse-variance columns,
air/vacuum media, specutils in and out, continuum normalisation of observed spectra.

The apStar test reads the real DR17 file in ../shared/data (skipped when absent); the
other layouts are written here, small, in the documented layout of each pipeline.
"""

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from jaxspec.infer import Spectrum, observe
from jaxspec.infer.spectrum import as_spectrum, check_normalized, normalize_continuum
from jaxspec.io.fits_spectrum import APOGEE_BAD_BITS
from jaxspec.io.spectrum import read_spectrum, write_spectrum
from jaxspec.medium import air_to_vacuum, vacuum_to_air

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
APSTAR = DATA / "apStar-dr17-2M19485057+5005279.fits"


def lines(wl):
    """A normalised spectrum with a few absorption lines."""
    f = np.ones_like(wl)
    for c in np.linspace(wl[0], wl[-1], 9)[1:-1]:
        f -= 0.4 * np.exp(-0.5 * ((wl - c) / (0.002 * c / 10)) ** 2)
    return f


# ---------------------------------------------------------------- APOGEE


@pytest.mark.skipif(not APSTAR.exists(), reason=f"needs the real APOGEE file {APSTAR}")
def test_apstar_real_file():
    with fits.open(APSTAR) as h:
        flux_row0 = h[1].data[0].astype(float)
        bits_row0 = h[3].data[0].astype(np.int64)
        n_visits = h[0].header["NVISITS"]
    spec = read_spectrum(APSTAR)
    i = np.arange(8575)
    np.testing.assert_allclose(spec.wavelength, 10 ** (4.179 + 6e-6 * i), rtol=1e-13)
    assert spec.medium == "vacuum" and spec.n_pix == 8575
    # flagged (APOGEE_PIXMASK BAD bits) and no-data (NaN) pixels are not used
    flagged = (bits_row0 & APOGEE_BAD_BITS) != 0
    assert not np.any(spec.mask & flagged) and not np.any(spec.mask & ~np.isfinite(flux_row0))
    assert spec.mask.sum() == np.sum(~flagged & np.isfinite(flux_row0))
    np.testing.assert_array_equal(spec.flux[spec.mask], flux_row0[spec.mask])
    # three detectors are three segments
    assert set(np.unique(spec.segment[spec.mask])) == {0, 1, 2}
    # one visit: the visit is the combined spectrum; others do not exist
    assert n_visits == 1
    np.testing.assert_array_equal(read_spectrum(APSTAR, visit=1).flux, spec.flux)
    with pytest.raises(ValueError, match=r"apStar-dr17.*visit 2 does not exist \(NVISITS = 1\)"):
        read_spectrum(APSTAR, visit=2)
    # not normalised (1e-17 erg/s/cm²/Å): refused; normalised per chip: accepted
    with pytest.raises(ValueError, match="does not look continuum-normalised"):
        check_normalized(spec)
    norm = normalize_continuum(spec)
    check_normalized(norm)
    for chip in (0, 1, 2):
        used = norm.mask & (norm.segment == chip)
        assert 0.95 < np.median(norm.flux[used]) < 1.0
    np.testing.assert_allclose(norm.flux / norm.uncertainty, spec.flux / spec.uncertainty)


def test_aspcapstar_layout(tmp_path):
    n = 8575
    wl = 10 ** (4.179 + 6e-6 * np.arange(n))
    flux, err = lines(wl), np.full(n, 0.01)
    flux[:300] = 0.0
    err[:300] = 1e10  # no data: what ASPCAP writes there
    hdr = fits.Header({"CRVAL1": 4.179, "CDELT1": 6e-6, "CRPIX1": 1})
    path = tmp_path / "aspcapStar-dr17-2M0000.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(flux, hdr), fits.ImageHDU(err, hdr),
                  fits.ImageHDU(flux, hdr)]).writeto(path)
    spec = read_spectrum(path)
    np.testing.assert_allclose(spec.wavelength, wl, rtol=1e-13)
    assert spec.mask.sum() == n - 300 and spec.medium == "vacuum"
    check_normalized(spec)
    with pytest.raises(ValueError, match="holds one spectrum"):
        read_spectrum(path, visit=2)


# ---------------------------------------------------------------- echelle


def write_hpf(path, n_orders=3, n_pix=200):
    """HPF Goldilocks layout: 'Sci Flux', 'Sci Variance', 'Sci Wavl' (orders as rows)."""
    starts = 8600.0 + 90.0 * np.arange(n_orders)
    wave = np.stack([np.linspace(s, s + 100.0, n_pix) for s in starts])  # orders overlap
    blaze = 1e4 * (1 - ((np.arange(n_pix) - n_pix / 2) / n_pix) ** 2)
    flux = lines(wave.ravel()).reshape(wave.shape) * blaze
    var = flux / 10.0
    flux[1, :5] = np.nan  # an order edge without data
    hdus = [fits.PrimaryHDU(header=fits.Header({"INSTRUME": "HPF"})),
            fits.ImageHDU(flux, name="Sci Flux"), fits.ImageHDU(flux, name="Sky Flux"),
            fits.ImageHDU(flux, name="Cal Flux"), fits.ImageHDU(var, name="Sci Variance"),
            fits.ImageHDU(var, name="Sky Variance"), fits.ImageHDU(var, name="Cal Variance"),
            fits.ImageHDU(wave, name="Sci Wavl")]
    fits.HDUList(hdus).writeto(path)
    return wave, flux, var


def test_echelle_orders_become_segments(tmp_path):
    path = tmp_path / "Goldilocks_star.fits"
    wave, _, var = write_hpf(path)
    spec = read_spectrum(path)
    assert spec.n_pix == wave.size and spec.medium == "vacuum"
    assert np.all(np.diff(spec.wavelength) > 0)
    for order in range(3):
        sel = spec.segment == order
        np.testing.assert_array_equal(spec.wavelength[sel], wave[order])
        used = spec.mask[sel]
        np.testing.assert_allclose(spec.uncertainty[sel][used], np.sqrt(var[order])[used])
    assert spec.mask.sum() == wave.size - 5
    two = read_spectrum(path, orders=[0, 2])
    assert set(np.unique(two.segment)) == {0, 2}
    with pytest.raises(ValueError, match=r"Goldilocks_star.fits: order\(s\) \[7\] do not exist.*"
                                         r"SCI FLUX.*3 orders"):
        read_spectrum(path, orders=[7])
    # blaze removed order by order: the continuum is near 1 everywhere
    norm = normalize_continuum(spec, order=3)
    check_normalized(norm)
    for order in range(3):
        used = norm.mask & (norm.segment == order)
        assert abs(np.percentile(norm.flux[used], 90) - 1.0) < 0.02


# ---------------------------------------------------------------- 1-D images


@pytest.mark.parametrize("kind", ["linear_nm", "log10", "wave-log"])
def test_fits_image_wcs(tmp_path, kind):
    n = 500
    p = np.arange(1, n + 1)
    if kind == "linear_nm":
        hdr = {"CRVAL1": 500.0, "CDELT1": 0.002, "CRPIX1": 1, "CTYPE1": "WAVE",
               "CUNIT1": "nm", "AIRORVAC": "air"}
        wl = (500.0 + 0.002 * (p - 1)) * 10
    elif kind == "log10":
        hdr = {"CRVAL1": np.log10(5000.0), "CDELT1": 1e-5, "CRPIX1": 1, "DC-FLAG": 1}
        wl = 10 ** (np.log10(5000.0) + 1e-5 * (p - 1))
    else:
        hdr = {"CRVAL1": 5000.0, "CDELT1": 0.02, "CRPIX1": 1, "CTYPE1": "WAVE-LOG"}
        wl = 5000.0 * np.exp(0.02 * (p - 1) / 5000.0)
    flux = lines(wl)
    ivar = np.full(n, 1e4)
    ivar[10] = 0.0  # no data
    dq = np.zeros(n, dtype=np.int16)
    dq[20] = 4
    path = tmp_path / f"{kind}.fits"
    fits.HDUList([fits.PrimaryHDU(flux, fits.Header(hdr)), fits.ImageHDU(ivar, name="IVAR"),
                  fits.ImageHDU(dq, name="DQ")]).writeto(path)
    spec = read_spectrum(path)
    np.testing.assert_allclose(spec.wavelength, wl, rtol=1e-12)
    np.testing.assert_allclose(spec.uncertainty[spec.mask], 0.01)
    assert not spec.mask[10] and not spec.mask[20] and spec.mask.sum() == n - 2
    assert spec.medium == ("air" if kind == "linear_nm" else None)


def test_fits_errors_name_file_hdu_and_fix(tmp_path):
    cube = tmp_path / "cube.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((4, 5, 6)), name="SCI")]).writeto(cube)
    with pytest.raises(ValueError, match=r"cube.fits: no HDU holds a spectrum.*HDU 1 \(SCI\): "
                                         r"image \(4, 5, 6\)"):
        read_spectrum(cube)
    no_wcs = tmp_path / "nowcs.fits"
    fits.PrimaryHDU(np.ones(50)).writeto(no_wcs)
    with pytest.raises(ValueError, match=r"nowcs.fits: HDU 0 \(PRIMARY\): no wavelength WCS "
                                         r"\(CRVAL1 and CDELT1"):
        read_spectrum(no_wcs)
    celestial = tmp_path / "sky.fits"
    fits.PrimaryHDU(np.ones(50), fits.Header({"CRVAL1": 1.0, "CDELT1": 1.0,
                                              "CTYPE1": "RA---TAN"})).writeto(celestial)
    with pytest.raises(ValueError, match="sky.fits.*CTYPE1 = 'RA---TAN' is not a wavelength"):
        read_spectrum(celestial)
    bad_err = tmp_path / "short_err.fits"
    fits.HDUList([fits.PrimaryHDU(np.ones(50), fits.Header({"CRVAL1": 5000.0, "CDELT1": 0.1})),
                  fits.ImageHDU(np.ones(40), name="ERR")]).writeto(bad_err)
    with pytest.raises(ValueError, match=r"short_err.fits: HDU 1 \(ERR\) has 40 pixels but the "
                                         "flux"):
        read_spectrum(bad_err)
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"SIMPLE  = not really FITS" + bytes(100))
    with pytest.raises(ValueError, match="garbage.fits: .*copy it again"):
        read_spectrum(garbage)
    table = tmp_path / "t.ecsv"
    Table({"wavelength": [1.0, 2.0], "flux": [1.0, 1.0]}).write(table)
    with pytest.raises(ValueError, match="t.ecsv: visit= .* this one is a table"):
        read_spectrum(table, visit=1)
    with pytest.raises(ValueError, match="layout='apogee' needs a FITS file"):
        read_spectrum(table, layout="apogee")


# ---------------------------------------------------------------- tables, media


def test_table_ivar_segment_and_medium_round_trip(tmp_path):
    wl = np.linspace(5000.0, 5010.0, 101)
    ivar = np.full(wl.size, 1e4)
    ivar[5] = 0.0
    t = Table({"wavelength": wl, "flux": lines(wl), "ivar": ivar,
               "order": np.repeat([0, 1], [50, 51])})
    t.meta["AIRORVAC"] = "air"
    t.write(tmp_path / "s.ecsv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ivar = 0 is "no data": masked without a warning
        spec = read_spectrum(tmp_path / "s.ecsv")
    assert not spec.mask[5] and spec.mask.sum() == 100 and spec.medium == "air"
    np.testing.assert_allclose(spec.uncertainty[spec.mask], 0.01)
    np.testing.assert_array_equal(spec.segment, t["order"])
    write_spectrum(spec, tmp_path / "back.fits")
    back = read_spectrum(tmp_path / "back.fits")
    assert back.medium == "air"
    np.testing.assert_array_equal(back.segment, spec.segment)
    np.testing.assert_array_equal(back.mask, spec.mask)
    t["uncertainty"] = 0.01
    t.write(tmp_path / "both.ecsv")
    with pytest.raises(ValueError, match="both.ecsv: columns uncertainty, ivar all give"):
        read_spectrum(tmp_path / "both.ecsv")


def test_air_vacuum_conversion():
    vac = np.linspace(2000.0, 25000.0, 2001)
    np.testing.assert_allclose(air_to_vacuum(vacuum_to_air(vac)), vac, rtol=0, atol=1e-7)
    # Morton (2000) eq. 3 at 10,000 Å vacuum: n - 1 = 2.7417e-4 (hand evaluation)
    s2 = 1.0
    n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s2) + 1.5998e-4 / (38.9 - s2)
    assert vacuum_to_air(10000.0) == pytest.approx(10000.0 / n, abs=1e-9)
    assert 10000.0 - vacuum_to_air(10000.0) == pytest.approx(2.7414, abs=1e-3)
    spec = Spectrum(vac[:50], np.ones(50), medium="vac", name="v")
    air = spec.to_medium("air")
    assert air.medium == "air"
    np.testing.assert_allclose(air.wavelength, vacuum_to_air(vac[:50]))
    with pytest.raises(ValueError, match="u: the wavelength medium is not recorded"):
        Spectrum(vac[:50], np.ones(50), name="u").to_medium("air")
    with pytest.raises(ValueError, match="medium='glass'"):
        Spectrum(vac[:50], np.ones(50), medium="glass")


# ---------------------------------------------------------------- specutils


def test_specutils_in_and_out(tmp_path):
    specutils = pytest.importorskip("specutils")
    import astropy.units as u
    from astropy.nddata import InverseVariance

    wl = np.linspace(5000.0, 5010.0, 101)
    mask = np.ones(wl.size, bool)
    mask[3] = False
    spec = Spectrum(wl, lines(wl), np.full(wl.size, 0.01), mask, name="s", medium="vacuum",
                    segment=np.repeat([0, 1], [50, 51]))
    su = spec.to_specutils()
    assert isinstance(su, specutils.Spectrum) and su.mask[3] and not su.mask[4]
    back = as_spectrum(su)
    for field in ("wavelength", "flux", "uncertainty", "mask", "segment"):
        np.testing.assert_array_equal(getattr(back, field), getattr(spec, field))
    assert back.medium == "vacuum" and back.name == "s"
    # the deprecated Spectrum1D, in nm with inverse variances: read, no warning from jaxspec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # specutils' own deprecation warning on creation
        old = specutils.Spectrum1D(flux=lines(wl) * u.one, spectral_axis=(wl / 10) * u.nm,
                                   uncertainty=InverseVariance(np.full(wl.size, 1e4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obs = observe(old, np.linspace(4999.0, 5011.0, 121))  # accepted as a Spectrum is
        read = as_spectrum(old)
    np.testing.assert_allclose(read.wavelength, wl)
    np.testing.assert_allclose(read.uncertainty, 0.01)
    assert int(obs.mask.sum()) == wl.size
    write_spectrum(su, tmp_path / "su.ecsv")
    assert read_spectrum(tmp_path / "su.ecsv").mask.sum() == 100
    with pytest.raises(TypeError, match="list is not a spectrum"):
        as_spectrum([1, 2])


def test_specutils_missing_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "specutils", None)  # as if not installed
    spec = Spectrum(np.linspace(5000.0, 5010.0, 11), np.ones(11))
    with pytest.raises(ImportError, match=r"pip install 'jaxspec\[specutils\]'"):
        spec.to_specutils()
