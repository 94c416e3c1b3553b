"""Extrinsic and instrumental effects: analytic checks, gradients, inference, CLI, bad input.

Analytic references: the relativistic Doppler factor, Gray's rotation kernel (its
half-maximum point solved here with scipy), Gaussian widths adding in quadrature, and
equivalent widths ∫(1 − F) dλ, which broadening preserves and a Doppler shift scales by
D. The inference tests share one small hand-made grid and one set of options so that
each method compiles once (the CLI test reuses the compiled MAP of the Python test).
"""

import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from astropy.table import Table
from scipy.optimize import brentq

from jaxspec.cli import main
from jaxspec.emulator import load_emulator
from jaxspec.extrinsic import (
    C_KMS,
    ExtrinsicModel,
    apply_effects,
    broaden,
    chebyshev_continuum,
    doppler_factor,
    pixel_edges,
    required_model_range,
)
from jaxspec.grid import SpectralGrid
from jaxspec.infer import Spectrum, bayes_opt, fit_map, initial_guess, sample_nuts
from jaxspec.io.spectrum import write_spectrum
from jaxspec.observed_emulator import ObservedEmulator, parse_fit
from jaxspec.pixel_emulator import PixelEmulator
from jaxspec.template import Template

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LAM0 = 8500.0


def log_grid(lo, hi, step_kms):
    n = int(math.log(hi / lo) * C_KMS / step_kms) + 1
    return lo * np.exp(np.arange(n) * step_kms / C_KMS)


def gaussian_lines(wl, centres, depths, sigma):
    f = np.ones_like(wl)
    for c, d in zip(centres, depths):
        f *= 1.0 - d * np.exp(-0.5 * ((wl - c) / sigma) ** 2)
    return f


def equivalent_width(wl, flux):
    return np.trapezoid(1.0 - np.asarray(flux), wl)


def fwhm(x, y):
    """Full width at half depth of one absorption line (linear interpolation)."""
    d = 1.0 - np.asarray(y)
    d = d / d.max()
    i = int(np.argmax(d))
    left = np.interp(0.5, d[: i + 1], x[: i + 1])
    right = np.interp(0.5, d[i:][::-1], x[i:][::-1])
    return right - left


def pixel_ew(obs, flux):
    lo, hi = pixel_edges(obs)
    return float(np.sum((1.0 - np.asarray(flux)) * (hi - lo)))


# ---------------------------------------------------------------- analytic checks


def test_doppler_factor_is_relativistic():
    for v in (-250.0, -3.0, 0.0, 17.0, 3000.0):
        beta = v / C_KMS
        assert float(doppler_factor(v)) == pytest.approx(math.sqrt((1 + beta) / (1 - beta)),
                                                         rel=1e-14)
        assert float(doppler_factor(v) * doppler_factor(-v)) == pytest.approx(1.0, rel=1e-14)
    # D = 1 + β + β²/2 + β³/2 + …: differs from the classical 1 + β at 3000 km/s
    beta = 3000.0 / C_KMS
    assert float(doppler_factor(3000.0)) - (1 + beta) == pytest.approx(
        beta**2 / 2 + beta**3 / 2, rel=1e-3)


@pytest.mark.parametrize("kind", ["uniform", "log", "random"])
def test_equivalent_width_preserved_by_rotation_and_lsf(kind):
    rng = np.random.default_rng(3)
    if kind == "uniform":
        wl = np.linspace(8480.0, 8520.0, 8001)
    elif kind == "log":
        wl = log_grid(8480.0, 8520.0, 0.25)
    else:  # non-uniform: steps between 0.004 and 0.008 Å
        wl = 8480.0 + np.concatenate([[0.0], np.cumsum(rng.uniform(0.004, 0.008, 7000))])
        wl = wl[wl <= 8520.0]
    centres = rng.uniform(8490.0, 8510.0, 12)
    flux = gaussian_lines(wl, centres, rng.uniform(0.1, 0.9, 12), 0.05)
    ew = equivalent_width(wl, flux)
    # one layout (and one compilation) for every v sin i ≤ 40 km/s and R ≥ 20,000
    em = ExtrinsicModel.build(wl, wl, vsini_max=40.0, resolution_min=20_000.0,
                              pad="continuum")
    run = eqx.filter_jit(lambda em, f, v, r: em.broadened(f, v, r))
    for vsini, resolution in [(0.0, 25_000.0), (40.0, 1e9), (12.0, 60_000.0), (2.0, 110_000.0)]:
        out = 1.0 + em.interpolate(run(em, jnp.asarray(flux), vsini, resolution), wl)
        assert abs(equivalent_width(wl, out) / ew - 1) < 1e-4, (vsini, resolution)
        assert np.asarray(out).min() > flux.min()  # lines got shallower
    if kind == "random":  # the convenience function (its own layout) agrees
        np.testing.assert_allclose(
            broaden(wl, flux, 12.0, 60_000.0),
            1.0 + em.interpolate(run(em, jnp.asarray(flux), 12.0, 6e4), wl), atol=2e-6)


def test_observed_pixels_conserve_flux_and_shift_equivalent_width():
    """Pixel integration onto coarse non-uniform pixels keeps ∫(1 − F) dλ; an RV
    multiplies it by the Doppler factor D (the line is stretched in λ)."""
    wl = log_grid(8400.0, 8600.0, 0.2)
    template = Template.from_arrays(wl, gaussian_lines(wl, [8495.0, 8503.0], [0.7, 0.4], 0.04))
    ew = equivalent_width(wl, template.flux)
    j = np.arange(900)
    obs = 8480.0 + 0.04 * j - 4e-6 * j**2  # 0.04 → 0.033 Å pixels
    limits = {"rv_range": (-60.0, 85.0), "vsini_max": 25.0, "resolution_min": 40_000.0}
    for rv, vsini, resolution in [(0.0, 0.0, 1e9), (-60.0, 25.0, 40_000.0), (85.0, 3.0, 1e5)]:
        out = apply_effects(template, jnp.zeros(0), rv=rv, vsini=vsini, resolution=resolution,
                            wavelength=obs, **limits)
        assert abs(pixel_ew(obs, out) / (ew * float(doppler_factor(rv))) - 1) < 1e-4


def test_broadened_fwhm_of_a_narrow_line_matches_theory():
    wl = log_grid(8495.0, 8505.0, 0.05)
    sigma_line = 0.3 / C_KMS * LAM0  # 0.3 km/s
    template = Template.from_arrays(wl, gaussian_lines(wl, [LAM0], [0.5], sigma_line))
    obs = np.linspace(8498.6, 8501.4, 14001)
    fwhm_line = 2 * math.sqrt(2 * math.log(2)) * sigma_line
    for resolution in (20_000.0, 60_000.0, 110_000.0):  # Gaussians add in quadrature
        out = apply_effects(template, jnp.zeros(0), resolution=resolution, wavelength=obs,
                            resolution_min=20_000.0)
        theory = math.hypot(fwhm_line, LAM0 / resolution)
        assert fwhm(obs, out) / theory - 1 == pytest.approx(0, abs=2e-4), resolution
    # rotation: Gray's kernel G(x) ∝ 2(1−ε)√(1−x²) + (πε/2)(1−x²) at half its maximum
    eps = 0.6

    def kernel(x):
        return 2 * (1 - eps) * math.sqrt(1 - x * x) + math.pi * eps / 2 * (1 - x * x)

    x_half = brentq(lambda x: kernel(x) - kernel(0) / 2, 0, 1)
    obs_v = np.linspace(8497.8, 8502.2, 22001)
    for vsini in (30.0, 50.0):
        out = apply_effects(template, jnp.zeros(0), vsini=vsini, epsilon=eps, wavelength=obs_v,
                            vsini_max=50.0)
        theory = 2 * x_half * vsini / C_KMS * LAM0
        assert fwhm(obs_v, out) / theory - 1 == pytest.approx(0, abs=5e-4), vsini


def test_tabulated_lsf_matches_the_gaussian():
    wl = log_grid(8480.0, 8520.0, 0.2)
    template = Template.from_arrays(wl, gaussian_lines(wl, [8498.0, 8502.5], [0.6, 0.3], 0.03))
    obs = np.linspace(8492.0, 8508.0, 600)
    sigma_v = C_KMS / (2 * math.sqrt(2 * math.log(2)) * 40_000.0)
    v = np.linspace(-6 * sigma_v, 6 * sigma_v, 301)
    profile = np.exp(-0.5 * (v / sigma_v) ** 2)
    tab = apply_effects(template, jnp.zeros(0), wavelength=obs, lsf=(v, profile))
    gauss = apply_effects(template, jnp.zeros(0), wavelength=obs, resolution=40_000.0)
    np.testing.assert_allclose(tab, gauss, atol=2e-4)
    with pytest.raises(ValueError, match="lsf velocity must be"):
        apply_effects(template, jnp.zeros(0), wavelength=obs, lsf=(v[::-1], v))


def test_rv_shifted_line_centre():
    wl = log_grid(8300.0, 8750.0, 0.2)
    template = Template.from_arrays(wl, gaussian_lines(wl, [LAM0], [0.5], 0.02))
    obs = np.linspace(8420.0, 8620.0, 40001)
    lo, hi = pixel_edges(obs)
    for rv in (-100.0, 0.0, 37.3, 3000.0):
        out = np.asarray(apply_effects(template, jnp.zeros(0), rv=rv, wavelength=obs,
                                       rv_range=(-100.0, 3000.0)))
        depth = (1 - out) * (hi - lo)
        centre = np.sum(depth * obs) / np.sum(depth)
        assert centre == pytest.approx(LAM0 * float(doppler_factor(rv)), abs=5e-5), rv
        if rv == 3000.0:  # 0.43 Å from the classical λ(1 + v/c)
            assert abs(centre - LAM0 * (1 + rv / C_KMS)) > 0.4


def test_same_spectrum_on_different_model_grids_gives_same_observation():
    """Velocity kernels on an internal ln λ grid: the observation does not depend on how
    the model was sampled (uniform in λ, in ln λ, or irregularly)."""
    rng = np.random.default_rng(5)
    centres, depths = rng.uniform(8495, 8505, 8), rng.uniform(0.2, 0.8, 8)
    uniform = np.linspace(8480.0, 8520.0, 16001)
    grids = [log_grid(8480.0, 8520.0, 0.1), uniform,
             np.sort(np.concatenate([uniform[::2], rng.uniform(8480, 8520, 6000)]))]
    obs = np.linspace(8492.0, 8508.0, 500)
    outs = [apply_effects(Template.from_arrays(g, gaussian_lines(g, centres, depths, 0.06)),
                          jnp.zeros(0), rv=12.0, vsini=8.0, resolution=50_000.0, wavelength=obs)
            for g in grids]
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], atol=3e-5)


def test_chebyshev_continuum():
    wl = np.linspace(8600.0, 8700.0, 301)
    c = np.array([1.02, 0.03, -0.01, 0.004])
    x = (2 * wl - (wl[0] + wl[-1])) / (wl[-1] - wl[0])
    np.testing.assert_allclose(chebyshev_continuum(wl, c), np.polynomial.chebyshev.chebval(x, c),
                               rtol=1e-13)
    assert parse_fit("rv, vsini,resolution,continuum=3") == (("rv", "vsini", "resolution"), 3)
    assert parse_fit(["vsini", "rv"]) == (("rv", "vsini"), None)


def test_gradients_match_finite_differences_and_jit():
    wl = log_grid(8400.0, 8600.0, 0.3)
    template = Template.from_arrays(wl, gaussian_lines(wl, [8497.0, 8502.0], [0.6, 0.3], 0.08))
    obs = np.linspace(8490.0, 8510.0, 300)
    em = ExtrinsicModel.build(wl, obs, rv_range=(-50, 50), vsini_max=40, resolution_min=10_000,
                              continuum_degree=1)

    @eqx.filter_jit
    def loss(p):
        return jnp.sum(em(template.flux, p[0], p[1], p[2], p[3:]) ** 2)

    grad = eqx.filter_jit(jax.grad(loss))
    p0 = jnp.array([10.0, 20.0, 50_000.0, 1.0, 0.1])
    g = grad(p0)
    steps = np.array([1e-3, 1e-3, 1.0, 1e-6, 1e-6])
    fd = [(loss(p0 + h * e) - loss(p0 - h * e)) / (2 * h) for h, e in zip(steps, jnp.eye(5))]
    np.testing.assert_allclose(g, fd, rtol=1e-5)
    np.testing.assert_allclose(loss(p0), jnp.sum(em(template.flux, 10.0, 20.0, 5e4,
                                                     jnp.array([1.0, 0.1])) ** 2), rtol=1e-12)
    # smooth through v sin i = 0: the rotation transform is even in v sin i, so the slope
    # vanishes there and grows linearly (finite curvature, no flat region)
    slopes = [float(grad(p0.at[1].set(v))[1]) for v in (0.0, 0.01, 0.02)]
    assert slopes[0] == pytest.approx(0.0, abs=1e-9) and slopes[1] != 0.0
    assert slopes[2] == pytest.approx(2 * slopes[1], rel=1e-3)


def test_template_and_observed_emulator_interface(tmp_path):
    wl = log_grid(8400.0, 8600.0, 0.5)
    template = Template.from_arrays(wl, gaussian_lines(wl, [8500.0], [0.5], 0.1), "one line")
    path = template.save(tmp_path / "t.h5")
    back = load_emulator(path)
    assert isinstance(back, Template) and back.label == "one line"
    np.testing.assert_array_equal(back.flux, template.flux)
    obs = np.linspace(8480.0, 8520.0, 200)
    oe = ObservedEmulator.build(template, obs, fit="rv,vsini,continuum=2", resolution=40_000.0,
                                rv_range=(-30, 30))
    assert oe.param_names == ("rv", "vsini", "c0", "c1", "c2")
    np.testing.assert_array_equal(oe.bounds, [[-30, 30], [0, 50], [0.5, 1.5], [-0.5, 0.5],
                                              [-0.5, 0.5]])
    np.testing.assert_array_equal(oe.wavelength, obs)
    p = jnp.array([5.0, 10.0, 1.0, 0.0, 0.0])
    batch = eqx.filter_jit(oe)(jnp.stack([p, p.at[0].set(-5.0)]).reshape(2, 1, 5))
    assert batch.shape == (2, 1, 200)
    direct = apply_effects(template, jnp.zeros(0), rv=5.0, vsini=10.0, resolution=40_000.0,
                           continuum=[1.0, 0.0, 0.0], wavelength=obs)
    np.testing.assert_allclose(batch[0, 0], direct, atol=1e-12)
    narrow = oe.with_bounds(rv=(0, 10))
    assert narrow.bounds[0].tolist() == [0, 10] and oe.bounds[0].tolist() == [-30, 30]
    with pytest.raises(ValueError, match="leaves the range"):
        oe.with_bounds(rv=(-40, 0))
    # saved with its base emulator inside the file, loaded by load_emulator
    saved = load_emulator(oe.save(tmp_path / "o.h5"))
    assert isinstance(saved, ObservedEmulator) and isinstance(saved.base, Template)
    assert saved.param_names == oe.param_names
    np.testing.assert_array_equal(saved.bounds, oe.bounds)
    np.testing.assert_array_equal(saved(p), oe(p))


# ---------------------------------------------------------------- inference


def line_grid() -> SpectralGrid:
    """Teff 4500–6000 (step 500) × log g 3.5–5 (step 0.5) on a ln λ grid (1 km/s); 14
    Gaussian lines whose depths and widths change smoothly with both parameters."""
    teff = np.arange(4500.0, 6001.0, 500.0)
    logg = np.arange(3.5, 5.01, 0.5)
    wl = log_grid(8500.0, 8530.0, 1.0)
    t, g = np.meshgrid(teff, logg, indexing="ij")
    x, y = (t - 4500.0) / 1500.0, (g - 3.5) / 1.5
    rng = np.random.default_rng(11)
    flux = np.ones(t.shape + wl.shape)
    for c in rng.uniform(8505.0, 8525.0, 14):
        a, b = rng.uniform(-0.5, 0.5, 2)
        depth = rng.uniform(0.2, 0.6) * (1 + a * x + 0.3 * b * y)
        width = rng.uniform(0.03, 0.06) * (1 + 0.3 * y)
        flux *= 1 - depth[..., None] * np.exp(-0.5 * ((wl - c) / width[..., None]) ** 2)
    return SpectralGrid({"teff": teff, "logg": logg}, wl, flux, normalized=True)


TRUTH = {"teff": 5250.0, "logg": 4.2, "rv": 23.0, "vsini": 11.0, "resolution": 45_000.0,
         "c0": 1.02, "c1": -0.015}
SIGMA = 0.01
OBS = np.linspace(8507.0, 8523.0, 420)
RANGES = {"rv_range": (-60.0, 60.0), "vsini_range": (0.0, 30.0),
          "resolution_range": (20_000.0, 100_000.0)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("extrinsic")
    path = PixelEmulator.from_grid(line_grid()).save(d / "emu.h5")
    emulator = load_emulator(path)  # the CLI test loads the same file: one compilation
    oe = ObservedEmulator.build(emulator, OBS, fit="rv,vsini,resolution,continuum=1", **RANGES)
    clean = np.asarray(oe(jnp.array([TRUTH[n] for n in oe.param_names])))
    noisy = clean + SIGMA * np.random.default_rng(4).normal(size=clean.size)
    spec_path = d / "star.ecsv"
    write_spectrum(Spectrum(OBS, noisy, np.full(OBS.size, SIGMA)), spec_path)
    return d, path, oe, noisy, spec_path


def test_fit_map_recovers_extrinsic_and_stellar_parameters(setup):
    _, _, oe, noisy, _ = setup
    sigma = np.full(OBS.size, SIGMA)
    guess = initial_guess(oe, noisy, sigma)
    assert abs(guess.best_rv - TRUTH["rv"]) < 2.0
    narrow = oe.with_bounds(rv=(guess.best_rv - 20, guess.best_rv + 20))
    res = fit_map(narrow, Spectrum(OBS, noisy, sigma), init=guess.params)
    params, err = np.asarray(res.params), np.asarray(res.sigma)
    assert bool(res.converged), int(res.status)
    truth = np.array([TRUTH[n] for n in oe.param_names])
    assert np.all(np.isfinite(err)) and np.all(err > 0)
    assert np.all(np.abs(params - truth) < 4 * err), (params - truth) / err
    assert abs(params[2] - TRUTH["rv"]) < 0.3 and abs(params[3] - TRUTH["vsini"]) < 1.5


def test_cli_fits_extrinsic_parameters(setup, capsys):
    d, em_path, _, _, spec_path = setup
    out = d / "res.ecsv"
    code = main(["infer", str(em_path), str(spec_path), "--fit",
                 "rv,vsini,resolution,continuum=1", "--rv-range", "-60:60", "--vsini-range",
                 "0:30", "--resolution-range", "20000:100000", "--out", str(out), "--plot"])
    assert code == 0, capsys.readouterr().err
    t = Table.read(out)
    for name in ("teff", "logg", "rv", "vsini", "resolution", "c0", "c1", "rv_err", "chi2_nu"):
        assert name in t.colnames
    assert str(t["rv"].unit) == "km / s" and bool(t["converged"][0])
    assert abs(t["rv"][0] - TRUTH["rv"]) < 4 * t["rv_err"][0]
    assert 0.7 < t["chi2_nu"][0] < 1.3
    assert "rv scan best" in t["extrinsic_note"][0]
    assert (d / "res_star_fit.png").exists()


def test_nuts_and_bayes_opt_accept_extrinsic_parameters_and_priors():
    wl = log_grid(8480.0, 8540.0, 1.0)
    centres = np.linspace(8500.0, 8520.0, 9)
    template = Template.from_arrays(wl, gaussian_lines(wl, centres, np.full(9, 0.5), 0.06))
    obs = np.linspace(8497.0, 8523.0, 300)
    oe = ObservedEmulator.build(template, obs, fit="rv,continuum=0", rv_range=(-40, 40),
                                resolution=50_000.0)
    flux = np.asarray(oe(jnp.array([-12.0, 0.98])))
    flux = flux + SIGMA * np.random.default_rng(8).normal(size=flux.size)
    spec = Spectrum(obs, flux, np.full(obs.size, SIGMA))
    prior = {"rv": dist.TruncatedNormal(-10.0, 5.0, low=-40.0, high=40.0)}
    res = sample_nuts(oe, spec, init=np.array([-11.0, 1.0]), priors=prior, num_warmup=150,
                      num_samples=150, num_chains=1, inference_data=False)
    assert abs(res.params[0] + 12.0) < 5 * res.sigma[0] and res.sigma[0] < 0.3
    assert abs(res.params[1] - 0.98) < 5 * res.sigma[1]
    bo = bayes_opt(oe.with_bounds(rv=(-20, 0)), spec, n_random=24, n_guided=6,
                   n_candidates=200)
    assert abs(float(bo.params[0]) + 12.0) < 2.0


# ---------------------------------------------------------------- bad input


def test_bad_inputs_have_clear_messages():
    wl = log_grid(8480.0, 8520.0, 0.5)
    template = Template.from_arrays(wl, gaussian_lines(wl, [8500.0], [0.5], 0.05))
    p = jnp.zeros(0)
    with pytest.raises(ValueError, match="vsini=-1 km/s; v sin i is a speed"):
        apply_effects(template, p, vsini=-1.0)
    with pytest.raises(ValueError, match="resolution=0; the resolving power"):
        apply_effects(template, p, resolution=0.0)
    with pytest.raises(ValueError, match=r"vsini_range=\(-5, 20\): v sin i is a speed"):
        ObservedEmulator.build(template, wl[100:-100], fit="vsini", vsini_range=(-5, 20))
    with pytest.raises(ValueError, match="R must be > 0"):
        ObservedEmulator.build(template, wl[100:-100], fit="resolution",
                               resolution_range=(0, 1e5))
    # observed range + RV prior margin beyond the model: both ranges and what would fit
    with pytest.raises(ValueError, match=r"model must cover .* but it covers 8480.00–8519.99 Å "
                                         r"\(an RV range within ±\d+ km/s would fit\)"):
        ObservedEmulator.build(template, np.linspace(8485, 8515, 100), fit="rv",
                               rv_range=(-300, 300))
    lo, hi = required_model_range(np.linspace(8485, 8515, 100), rv_range=(-300, 300))
    assert lo < 8485 * (1 - 299 / C_KMS) and hi > 8515 * (1 + 299 / C_KMS)
    oe = ObservedEmulator.build(template, np.linspace(8490, 8510, 100), fit="rv,continuum=0",
                                rv_range=(-20, 20))
    flux = np.ones(100)
    sigma = np.full(100, 0.01)
    sigma[7] = 0.0
    with pytest.raises(ValueError, match=r"uncertainty is zero or negative at 1 used pixel"):
        initial_guess(oe, flux, sigma)
    with pytest.raises(ValueError, match="uncertainty is zero or negative"):
        Spectrum(oe.wavelength, flux, sigma)
    with pytest.raises(ValueError, match="is not an extrinsic parameter"):
        parse_fit("rv,teff")
    with pytest.raises(ValueError, match="write continuum=K"):
        parse_fit("continuum=-1")
    with pytest.raises(ValueError, match="epsilon=1.5"):
        apply_effects(template, p, vsini=5.0, epsilon=1.5)
    with pytest.raises(ValueError, match=r"vsini=9 km/s is above vsini_max=5"):
        apply_effects(template, p, vsini=9.0, vsini_max=5.0)
    with pytest.raises(ValueError, match="rv is traced"):
        jax.grad(lambda v: apply_effects(template, p, rv=v).sum())(1.0)
    # inside jit, a value outside the layout's limits fails loudly instead of clipping
    with pytest.raises(Exception, match="rv outside the range"):
        eqx.filter_jit(oe)(jnp.array([25.0, 1.0]))


def test_cli_bad_extrinsic_options(setup, capsys):
    d, em_path, _, _, spec_path = setup
    out = str(d / "bad.ecsv")
    assert main(["infer", str(em_path), str(spec_path), "--fit", "rv,spin", "--out", out]) == 1
    assert "fit item 'spin' is not an extrinsic parameter" in capsys.readouterr().err
    assert main(["infer", str(em_path), str(spec_path), "--fit", "vsini", "--vsini-range",
                 "-5:10", "--out", out]) == 1
    assert "v sin i is a speed" in capsys.readouterr().err
    assert main(["infer", str(em_path), str(spec_path), "--fit", "rv", "--rv-range",
                 "-500:500", "--out", out]) == 1
    assert "would fit" in capsys.readouterr().err
    assert main(["infer", str(em_path), str(spec_path), "--fit", "rv", "--prior",
                 "spin=normal:1:2", "--out", out]) == 1
    assert "no parameter 'spin'" in capsys.readouterr().err


# ---------------------------------------------------------------- real data


@pytest.mark.skipif(not (DATA / "WASP_69_hpf_stack.fits").exists(),
                    reason="needs ../shared/data/WASP_69_hpf_stack.fits and the T4700 clone")
def test_wasp69_rv_from_template():
    """The real HPF spectrum of WASP-69 against the PHOENIX T4700 g4.5 clone. The stack is
    barycentric-corrected, so the RV is the star's systemic velocity, −9.6 km/s (Anderson
    et al. 2014). The scan over ±100 km/s with a continuum solved at each RV must find it;
    the full fit (RV, v sin i, R, continuum, errors, plot) is
    ``python benchmarks/bench_extrinsic.py --wasp69``."""
    from jaxspec.io.spectrum import read_spectrum
    from jaxspec.lines import LineList

    with pytest.warns(UserWarning, match="NaN/inf"):
        spec = read_spectrum(DATA / "WASP_69_hpf_stack.fits")
    lines = LineList.from_npz(DATA / "phoenix_clone_T4700_g4.5_HPF.npz")
    rng = required_model_range(spec.wavelength, rv_range=(-100, 100), resolution_min=55_000,
                               velocity_step=0.3)
    template = Template.from_line_list(lines, (rng[0] - 0.5, rng[1] + 0.5), 0.3)
    oe = ObservedEmulator.build(template, spec.wavelength, fit="rv,continuum=3",
                                resolution=55_000.0, rv_range=(-100, 100))
    guess = initial_guess(oe, spec.flux, spec.uncertainty, spec.mask, step=0.5)
    assert abs(guess.best_rv + 9.63) < 0.3
    j = int(np.argmin(guess.chi2))
    far = np.abs(guess.rv - guess.best_rv) > 20  # other alignments fit far worse
    assert guess.chi2[far].min() > 2 * guess.chi2[j]
    model = np.asarray(oe(guess.params))
    use = spec.mask
    chi2_nu = np.sum(((model - spec.flux) / spec.uncertainty)[use] ** 2) / (use.sum() - 5)
    assert chi2_nu == pytest.approx(guess.chi2[j] / (use.sum() - 5), rel=0.05)
