"""Blackbody division and continuum normalisation (blase3D eq. 1)."""

import numpy as np
import pytest
from astropy import units as u
from astropy.modeling.physical_models import BlackBody

from jaxspec.grid import SpectralGrid
from jaxspec.preprocess import (
    continuum_normalize,
    divide_blackbody,
    planck_lambda,
    preprocess_grid,
)

WL = np.linspace(8000.0, 8500.0, 5001)  # 0.1 Å pixels


def absorption(seed=0, n_gauss=60, n_lorentz=6):
    """Transmission 1 - depth profiles: Gaussian lines of depth 0.05-0.9 and a few
    Lorentzian ones, sparse enough that the continuum is reached between them."""
    rng = np.random.default_rng(seed)
    tau = np.zeros_like(WL)
    for mu, depth, sigma in zip(
        rng.uniform(WL[0], WL[-1], n_gauss), rng.uniform(0.05, 0.9, n_gauss), rng.uniform(0.05, 0.3, n_gauss)
    ):
        tau += depth * np.exp(-0.5 * ((WL - mu) / sigma) ** 2)
    for mu, depth in zip(rng.uniform(WL[0], WL[-1], n_lorentz), rng.uniform(0.2, 0.6, n_lorentz)):
        gamma = 0.05
        tau += depth * gamma**2 / ((WL - mu) ** 2 + gamma**2)
    return np.clip(1.0 - tau, 0.02, None)


def poly_continuum(wl=WL):
    t = (wl - wl.mean()) / (0.5 * (wl[-1] - wl[0]))
    return 1.0 + 0.3 * t - 0.2 * t**2 + 0.1 * t**3 + 0.05 * t**4 - 0.04 * t**5


def planck_reference(wl_angstrom, teff):
    """B_lambda with CODATA 2018 cgs constants written out (erg/s/cm^2/cm/sr)."""
    h, c, k = 6.62607015e-27, 2.99792458e10, 1.380649e-16
    lam = wl_angstrom * 1e-8
    return 2 * h * c**2 / lam**5 / (np.exp(h * c / (lam * k * teff)) - 1)


# ---------------------------------------------------------------- blackbody


@pytest.mark.parametrize("teff", [2300.0, 5772.0, 12000.0])
def test_planck_matches_analytic_and_astropy(teff):
    wl = np.geomspace(3000.0, 25000.0, 200)
    np.testing.assert_allclose(planck_lambda(wl, teff), planck_reference(wl, teff), rtol=1e-12)
    astropy_b = BlackBody(temperature=teff * u.K)(wl * u.AA).to(
        u.erg / u.s / u.cm**2 / u.cm / u.sr, equivalencies=u.spectral_density(wl * u.AA)
    )
    np.testing.assert_allclose(planck_lambda(wl, teff), astropy_b.value, rtol=1e-10)


def test_divide_blackbody_is_flux_over_pi_b():
    teff = 4700.0
    flux = np.pi * planck_reference(WL, teff) * absorption()
    np.testing.assert_allclose(divide_blackbody(WL, flux, teff), absorption(), rtol=1e-12)


def test_divide_blackbody_bad_teff():
    for teff in (0.0, -100.0, np.nan):
        with pytest.raises(ValueError, match="teff=.* K; pass a finite effective temperature > 0 K"):
            divide_blackbody(WL, np.ones_like(WL), teff)


def test_divide_blackbody_bad_spectrum():
    with pytest.raises(ValueError, match=r"flux has shape \(10,\) but wavelength has \(5001,\)"):
        divide_blackbody(WL, np.ones(10), 5000.0)
    flux = np.ones_like(WL)
    flux[[5, 9]] = np.nan
    with pytest.raises(ValueError, match=r"flux has 2 NaN/inf pixel\(s\) \(first at 8000.500 Å\)"):
        divide_blackbody(WL, flux, 5000.0)
    with pytest.raises(ValueError, match="wavelength is not strictly increasing"):
        divide_blackbody(WL[::-1], np.ones_like(WL), 5000.0)


# ---------------------------------------------------------------- continuum


def test_continuum_recovered_polynomial():
    cont = 3e14 * poly_continuum()
    normalized, continuum = continuum_normalize(WL, cont * absorption(), order=5)
    assert np.max(np.abs(continuum / cont - 1)) < 1e-3
    assert np.max(np.abs(normalized - absorption())) < 1e-3


def test_continuum_recovered_after_blackbody_division():
    teff = 3500.0  # steep Wien-side slope across the range
    spectrum = np.pi * planck_reference(WL, teff) * (0.7 * poly_continuum()) * absorption(seed=1)
    normalized, continuum = continuum_normalize(WL, divide_blackbody(WL, spectrum, teff))
    assert np.max(np.abs(continuum / (0.7 * poly_continuum()) - 1)) < 1e-3
    assert np.max(np.abs(normalized - absorption(seed=1))) < 1e-3


@pytest.mark.parametrize("order", [0, 3])
def test_continuum_lower_orders(order):
    t = (WL - WL.mean()) / 250.0
    cont = 1.0 + (0.2 * t - 0.1 * t**2 + 0.05 * t**3 if order == 3 else 0.0)
    _, continuum = continuum_normalize(WL, cont * absorption(seed=2), order=order)
    assert np.max(np.abs(continuum / cont - 1)) < 1e-3


def test_continuum_bad_input():
    flux = np.ones_like(WL)
    bad = flux.copy()
    bad[100] = np.inf
    with pytest.raises(ValueError, match=r"flux has 1 NaN/inf pixel\(s\) \(first at 8010.000 Å\)"):
        continuum_normalize(WL, bad)
    with pytest.raises(ValueError, match=r"flux has shape \(5000,\) but wavelength has \(5001,\)"):
        continuum_normalize(WL, flux[:-1])
    wl = WL.copy()
    wl[200] = wl[199]
    with pytest.raises(ValueError, match=r"wavelength is not strictly increasing \(8019.9000 Å then 8019.9000 Å at pixels 199, 200\)"):
        continuum_normalize(wl, flux)
    with pytest.raises(ValueError, match="order=-1; pass a polynomial degree >= 0"):
        continuum_normalize(WL, flux, order=-1)
    with pytest.raises(ValueError, match="n_bins=3 for order=5"):
        continuum_normalize(WL, flux, n_bins=3)
    with pytest.raises(ValueError, match="quantile=0"):
        continuum_normalize(WL, flux, quantile=0)
    with pytest.raises(ValueError, match="flux envelope is <= 0"):
        continuum_normalize(WL, -flux)


# ---------------------------------------------------------------- whole grid


def make_raw_grid():
    axes = {"teff": [4000.0, 6000.0], "logg": [4.0, 4.5]}
    flux = np.full((2, 2, WL.size), np.nan)
    truth = np.full_like(flux, np.nan)
    mask = np.array([[True, True], [True, False]])
    for i, teff in enumerate(axes["teff"]):
        for j in range(2):
            if mask[i, j]:
                truth[i, j] = absorption(seed=10 * i + j)
                flux[i, j] = np.pi * planck_reference(WL, teff) * poly_continuum() * truth[i, j]
    return SpectralGrid(axes=axes, wavelength=WL, flux=flux.astype(np.float32), mask=mask), truth


def test_preprocess_grid():
    grid, truth = make_raw_grid()
    out = preprocess_grid(grid, progress=False)
    assert out.normalized and out.flux.dtype == np.float32
    np.testing.assert_array_equal(out.mask, grid.mask)
    np.testing.assert_array_equal(out.wavelength, grid.wavelength)
    assert np.isnan(out.flux[1, 1]).all()
    assert np.max(np.abs(out.flux[out.mask] - truth[out.mask])) < 1e-3


def test_preprocess_grid_without_blackbody():
    grid, truth = make_raw_grid()
    out = preprocess_grid(grid, teff_axis=None, progress=False)
    assert np.max(np.abs(out.flux[out.mask] - truth[out.mask])) < 2e-3


def test_preprocess_grid_errors():
    grid, _ = make_raw_grid()
    with pytest.raises(ValueError, match=r"teff_axis='T' is not a grid parameter \['teff', 'logg'\]"):
        preprocess_grid(grid, teff_axis="T", progress=False)
    done = preprocess_grid(grid, progress=False)
    with pytest.raises(ValueError, match="grid is already normalized"):
        preprocess_grid(done, progress=False)
    with pytest.raises(ValueError, match="node teff=4000, logg=4: n_bins=2 for order=5"):
        preprocess_grid(grid, n_bins=2, progress=False)
