"""Tests of the embedded synthetic grid (jaxspec.synthetic).

Only the "tiny" grid is synthesised; physics checks call synthetic_line_list directly.
"""

import math

import numpy as np
import pytest

import jaxspec  # noqa: F401  (enables float64)
from jaxspec import synthetic
from jaxspec.profiles import pseudo_voigt, pseudo_voigt_fwhm
from jaxspec.synthetic import (
    synthetic_grid,
    synthetic_line_data,
    synthetic_line_list,
    synthetic_spectra,
    synthetic_wavelength,
)


@pytest.fixture(scope="module")
def tiny():
    return synthetic_grid("tiny", progress=False)


def _row(table, species, wavelength):
    """Index of the line of ``species`` nearest to ``wavelength`` (Å)."""
    idx = np.flatnonzero(np.asarray(table["species"]) == species)
    lam = np.asarray(table["wavelength"].value)[idx]
    i = idx[np.argmin(np.abs(lam - wavelength))]
    assert abs(lam[np.argmin(np.abs(lam - wavelength))] - wavelength) < 0.05
    return int(i)


def _all_lines(teff, logg, feh, size="default"):
    """Every line of the size's table, in table order (min_depth=0)."""
    return synthetic_line_list(teff, logg, feh, size=size, min_depth=0.0)


def _fwhm_eta(ll):
    """Ida et al. (2000) FWHM and η of each line (NumPy: no per-shape JAX compiles)."""
    return synthetic._pv_fwhm_eta(np.exp(np.asarray(ll.ln_sigma)),
                                  np.exp(np.asarray(ll.ln_gamma)))


def _depths(ll):
    """Central depth a V(0) of each line."""
    f, eta = _fwhm_eta(ll)
    v0 = (2.0 / np.pi * eta + 2.0 * np.sqrt(np.log(2.0) / np.pi) * (1.0 - eta)) / f
    return np.exp(np.asarray(ll.ln_amplitude)) * v0


def test_numpy_depth_helper_matches_profiles():
    ll = synthetic_line_list(5800.0, 4.5, 0.0, size="tiny")
    sigma, gamma = np.exp(np.asarray(ll.ln_sigma)), np.exp(np.asarray(ll.ln_gamma))
    np.testing.assert_allclose(_fwhm_eta(ll)[0], pseudo_voigt_fwhm(sigma, gamma), rtol=1e-12)
    np.testing.assert_allclose(
        _depths(ll), np.exp(np.asarray(ll.ln_amplitude)) * pseudo_voigt(0.0, sigma, gamma),
        rtol=1e-10,
    )


# ---------------------------------------------------------------- the tiny grid


def test_tiny_grid_is_deterministic(tiny):
    again = synthetic_grid("tiny", progress=False)
    assert np.array_equal(tiny.flux, again.flux)
    assert np.array_equal(tiny.wavelength, again.wavelength)
    # Another seed draws other weak lines (the real strong lines stay).
    lam0 = np.asarray(synthetic_line_data("tiny", seed=0)["wavelength"])
    lam1 = np.asarray(synthetic_line_data("tiny", seed=1)["wavelength"])
    assert lam0.shape != lam1.shape or not np.array_equal(lam0, lam1)
    assert np.any(np.isclose(lam1, 8542.09)) and np.any(np.isclose(lam0, 8542.09))


def test_tiny_grid_shapes_axes_normalisation(tiny):
    assert tiny.param_names == ("teff", "logg", "feh")
    assert tiny.normalized
    assert tiny.n_nodes <= 30
    assert tiny.n_pix <= 2000
    assert tiny.flux.shape == (*tiny.shape, tiny.n_pix)
    np.testing.assert_allclose(tiny.axes["teff"], [4000, 5000, 6000, 7000])
    np.testing.assert_allclose(tiny.axes["feh"], [-0.5, 0.0])
    # Log-uniform sampling at R = 500,000.
    resolution = 1.0 / np.diff(np.log(tiny.wavelength))
    np.testing.assert_allclose(resolution, 500_000.0, rtol=1e-6)
    assert np.all(tiny.flux > 0.0) and np.all(tiny.flux <= 1.0)
    # Continuum ≈ 1: every spectrum reaches its continuum somewhere.
    assert np.all(tiny.flux.max(axis=-1) > 0.99)
    assert len(synthetic_line_data("tiny")) <= 100


def test_grid_node_equals_line_list(tiny):
    wl = tiny.wavelength
    for teff, logg, feh in [(5000.0, 4.5, 0.0), (7000.0, 3.5, -0.5)]:
        lines = synthetic_line_list(teff, logg, feh, size="tiny")
        # The grid's windowed float32 synthesis against the untruncated reference.
        np.testing.assert_allclose(
            np.asarray(lines.flux_exact(wl)), tiny.spectrum(teff=teff, logg=logg, feh=feh),
            atol=1e-4,
        )


def test_synthetic_spectra_at_nodes_and_between(tiny):
    nodes = np.array([[5000.0, 4.5, 0.0], [7000.0, 3.5, -0.5]])
    between = np.array([[5500.0, 4.0, -0.25]])
    flux = synthetic_spectra(np.vstack([nodes, between]), size="tiny")
    assert flux.shape == (3, tiny.n_pix) and flux.dtype == np.float64
    for row, (teff, logg, feh) in zip(flux, nodes):  # padded lines are inert
        np.testing.assert_allclose(row, tiny.spectrum(teff=teff, logg=logg, feh=feh),
                                   atol=1e-4)
    # between nodes: a spectrum of its own, not a copy of a neighbour
    assert np.max(np.abs(flux[2] - flux[0])) > 1e-3
    one = synthetic_spectra(between[0], tiny.wavelength, size="tiny")
    np.testing.assert_allclose(one, flux[2], atol=1e-12)
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        synthetic_spectra(np.zeros((2, 2)), size="tiny")


def test_wavelength_sizes():
    wl = synthetic_wavelength("default")
    assert wl.size >= 20_000
    assert 8038.0 <= wl[0] and wl[-1] <= 12849.0
    assert wl[0] < 8498.02 and 8662.14 < wl[-1]  # the Ca II triplet
    full = synthetic_wavelength("full")
    assert 230_000 < full.size < 240_000
    assert full[0] == pytest.approx(8038.0) and full[-1] <= 12849.0


# ---------------------------------------------------------------- line data


def test_line_data_table():
    table = synthetic_line_data("default")
    assert len(table) >= 1000
    for col in ("species", "ion_stage", "wavelength", "chi", "log_gf", "kind"):
        assert col in table.colnames
    assert table["wavelength"].unit == "Angstrom" and table["chi"].unit == "eV"
    lam = np.asarray(table["wavelength"].value)
    assert np.all(np.diff(lam) >= 0)
    species = set(table["species"])
    assert {"Ca II", "H I", "Fe I", "TiO", "FeH"} <= species
    ca = table[_row(table, "Ca II", 8542.09)]
    assert ca["ion_stage"] == 2 and float(ca["chi"]) == pytest.approx(1.70, abs=0.01)
    assert np.all(np.isfinite(table["log_gf"])) and np.all(table["chi"].value >= 0.0)
    full = synthetic_line_data("full")
    assert 9000 <= len(full) <= 11000
    for species, lam0 in [("H I", 12818.1), ("H I", 8545.4), ("He I", 10830.34),
                          ("C I", 11617.66), ("K I", 11690.22), ("Na I", 8183.26)]:
        _row(full, species, lam0)


# ---------------------------------------------------------------- physics


def test_low_excitation_neutral_line_weakens_with_teff():
    full = synthetic_line_data("full")
    rows = [_row(full, sp, lam) for sp, lam in
            [("K I", 11690.22), ("Na I", 8183.26), ("Ti I", 10396.80)]]
    assert np.all(np.asarray(full["chi"])[rows] < 2.2)
    teffs = np.arange(4000.0, 7001.0, 300.0)
    ew = np.array([np.exp(np.asarray(_all_lines(t, 4.5, 0.0, "full").ln_amplitude))[rows]
                   for t in teffs])
    assert np.all(np.diff(ew, axis=0) < 0), ew


def test_hydrogen_line_peaks_near_9000K():
    table = synthetic_line_data("default")
    i = _row(table, "H I", 8750.5)  # Paschen 12
    teffs = np.concatenate([np.arange(3000.0, 7000.0, 200.0), np.arange(7000.0, 11001.0, 200.0)])
    ew = np.array(
        [np.exp(np.asarray(_all_lines(t, 4.0, 0.0).ln_amplitude))[i] for t in teffs]
    )
    peak = teffs[np.argmax(ew)]
    assert 8000.0 <= peak <= 10000.0, peak
    assert ew.max() > 1.0  # Å: a broad, strong line at the peak
    assert ew[teffs == 3000.0][0] < 1e-3 * ew.max()


def test_widths_grow_with_logg():
    table = synthetic_line_data("default")
    loggs = np.arange(2.0, 6.01, 0.5)
    i = _row(table, "Fe I", 8688.62)
    lists = [_all_lines(5800.0, g, 0.0) for g in loggs]
    gamma = np.array([np.exp(np.asarray(ll.ln_gamma))[i] for ll in lists])
    fwhm = np.array([_fwhm_eta(ll)[0][i] for ll in lists])
    assert np.all(np.diff(gamma) > 0) and np.all(np.diff(fwhm) > 0)
    # Lorentzian widths of all weak (unsaturated) metal lines grow with log g as well.
    atoms = np.asarray(table["kind"]) == "atom"
    depths = np.array([_depths(ll) for ll in lists])
    weak = atoms & (depths.max(0) < 0.05) & (depths.min(0) > 1e-3)
    assert weak.sum() > 50
    g_all = np.array([np.exp(np.asarray(ll.ln_gamma))[weak] for ll in lists])
    assert np.all(np.diff(g_all, axis=0) > 0)


def test_molecular_forest_only_in_cool_stars():
    table = synthetic_line_data("default")
    mol = np.asarray(table["kind"]) == "molecule"
    counts = {
        t: int(np.sum(_depths(_all_lines(t, 4.5, 0.0))[mol] > 0.002))
        for t in (3200.0, 4600.0, 5000.0, 6000.0)
    }
    assert counts[3200.0] > 300, counts
    assert counts[4600.0] <= 2 and counts[5000.0] == 0 and counts[6000.0] == 0, counts


def test_metal_lines_scale_with_metallicity():
    table = synthetic_line_data("default")
    metal = (np.asarray(table["kind"]) == "atom") & ~np.isin(table["species"], ["He I"])
    for teff in (4000.0, 5800.0, 7000.0):
        ew0 = np.exp(np.asarray(_all_lines(teff, 4.5, 0.0).ln_amplitude))[metal]
        ew1 = np.exp(np.asarray(_all_lines(teff, 4.5, -0.5).ln_amplitude))[metal]
        assert np.all(ew0 > ew1)
    i = _row(table, "Fe I", 8688.62)
    ln_a = [np.asarray(_all_lines(5800.0, 4.5, feh).ln_amplitude)[i] for feh in (0.0, -0.5)]
    assert ln_a[0] > ln_a[1]


def test_pressure_shifts_small_and_red():
    table = synthetic_line_data("default")
    lam = np.asarray(table["wavelength"].value)
    hydrogen = np.asarray(table["kind"]) == "hydrogen"
    for teff, logg in [(3000.0, 6.0), (5800.0, 4.5), (9000.0, 2.0), (11000.0, 6.0)]:
        shift = np.asarray(_all_lines(teff, logg, 0.0).center) - lam
        assert np.all(np.abs(shift) < 0.02)
        assert np.all(shift[~hydrogen] > 0.0)
        assert np.all(shift[hydrogen] == 0.0)
    shift_sun = np.asarray(_all_lines(5800.0, 4.5, 0.0).center) - lam
    assert 5e-4 < np.median(shift_sun[~hydrogen]) < 5e-3  # a few mÅ at most


def test_depths_amplitudes_and_sampling_sensible():
    for teff, logg, feh in [(3000.0, 6.0, 0.0), (5800.0, 4.5, 0.0), (9000.0, 4.0, -0.5),
                            (11000.0, 2.0, 0.0)]:
        ll = synthetic_line_list(teff, logg, feh)
        depth = _depths(ll)
        assert np.all(depth <= 0.9 + 1e-6) and np.all(depth >= 1e-4)
        a = np.exp(np.asarray(ll.ln_amplitude))
        sigma = np.exp(np.asarray(ll.ln_sigma))
        # Area and depth agree: depth = a V(0), V(0) between the Lorentzian's 2/(π f)
        # and the Gaussian's 0.94/f.
        fwhm = _fwhm_eta(ll)[0]
        assert np.all(depth <= 0.94 * a / fwhm) and np.all(depth >= 0.63 * a / fwhm)
        # Resolved: σ ≥ 1.5 pixels (pixel = λ/R).
        pixel = np.asarray(ll.center) / 500_000.0
        assert np.all(sigma >= 1.5 * pixel)
    sun = synthetic_line_list(5800.0, 4.5, 0.0)
    assert np.sum(_depths(sun) > 0.002) > 300


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="size"):
        synthetic_grid("huge")
    with pytest.raises(ValueError, match="teff"):
        synthetic_line_list(50_000.0, 4.5, 0.0)
    with pytest.raises(ValueError, match="logg"):
        synthetic_line_list(5800.0, math.nan, 0.0)


def test_atmosphere_pressure_rises_with_gravity():
    teff = np.full(5, 5800.0)
    logg = np.linspace(2.0, 6.0, 5)
    atm = synthetic._atmosphere(teff, logg, np.zeros(5))
    assert np.all(np.diff(atm["p_gas"]) > 0) and np.all(np.diff(atm["p_e"]) > 0)
    slope = np.polyfit(logg, np.log10(atm["p_e"]), 1)[0]
    assert 0.2 < slope < 0.8  # P_e ∝ g^(1/3 … 2/3)
