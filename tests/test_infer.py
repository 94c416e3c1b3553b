"""Inference: likelihoods, resampling, BO, MAP, NUTS, calibration, `jaxspec infer`, bad input.

One small hand-made 2-parameter grid of Gaussian lines (201 px) serves every test, and
every call uses the same shapes and options where possible so that each method compiles
once (JAX compilation dominates the run time).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.table import Table
from scipy.stats import norm

from jaxspec.cli import main
from jaxspec.grid import SpectralGrid
from jaxspec.infer import (
    Spectrum,
    Status,
    bayes_opt,
    chi2,
    fit_map,
    gaussian_coverage,
    gaussian_log_likelihood,
    observe,
    results_table,
    rms_loss,
    sample_coverage,
    sample_nuts,
)
from jaxspec.io.spectrum import read_spectrum, write_spectrum
from jaxspec.pixel_emulator import PixelEmulator

TRUTH = {"teff": 5000.0, "logg": 4.25}
SIGMA = 0.01


def make_line_grid() -> SpectralGrid:
    """Teff 4000–6000 (step 250) × log g 3.5–5 (step 0.25); four Gaussian lines whose
    depths and widths change smoothly (and non-linearly) with both parameters."""
    teff = np.arange(4000.0, 6001.0, 250.0)
    logg = np.arange(3.5, 5.01, 0.25)
    wl = np.linspace(5000.0, 5010.0, 201)
    t, g = np.meshgrid(teff, logg, indexing="ij")
    x, y = (t - 4000.0) / 2000.0, (g - 3.5) / 1.5
    lines = [  # centre Å, depth, width Å
        (5002.0, 0.6 * np.exp(-1.2 * x), 0.10 + 0.08 * y),
        (5004.5, 0.2 + 0.4 * x**1.5, 0.15 + 0 * y),
        (5007.0, 0.45 + 0 * x, 0.08 + 0.10 * y**1.3),
        (5008.5, 0.15 + 0.25 * y * (1 - 0.5 * x), 0.12 + 0 * y),
    ]
    flux = np.ones(t.shape + wl.shape)
    for c, d, w in lines:
        flux -= d[..., None] * np.exp(-0.5 * ((wl - c) / w[..., None]) ** 2)
    return SpectralGrid({"teff": teff, "logg": logg}, wl, flux, normalized=True)


@pytest.fixture(scope="module")
def grid():
    return make_line_grid()


@pytest.fixture(scope="module")
def emulator(grid):
    """The truth node is held out: the emulator interpolates across it."""
    return PixelEmulator.from_grid(grid, holdout=[TRUTH])


@pytest.fixture(scope="module")
def clean(grid):
    return grid.spectrum(**TRUTH)


@pytest.fixture(scope="module")
def noisy(clean):
    rng = np.random.default_rng(1)
    return clean + SIGMA * rng.normal(size=clean.size)


@pytest.fixture(scope="module")
def emulated_noisy(emulator):
    """Data the emulator can fit exactly up to noise (a well-posed problem)."""
    rng = np.random.default_rng(2)
    f = np.asarray(emulator(jnp.array([5100.0, 4.1])))
    return f + SIGMA * rng.normal(size=f.size)


@pytest.fixture(scope="module")
def map_result(emulator, emulated_noisy):
    return fit_map(emulator, emulated_noisy, np.full(emulated_noisy.size, SIGMA))


# ---------------------------------------------------------------- likelihoods


def test_likelihoods():
    rng = np.random.default_rng(0)
    model, data = rng.normal(size=50), rng.normal(size=50)
    sigma = rng.uniform(0.5, 2.0, size=50)
    mask = np.arange(50) % 3 != 0
    assert np.isclose(rms_loss(model, data), np.sqrt(np.mean((model - data) ** 2)))
    assert np.isclose(rms_loss(model, data, mask),
                      np.sqrt(np.mean((model - data)[mask] ** 2)))
    assert np.isclose(chi2(model, data, sigma, mask),
                      np.sum(((model - data) / sigma)[mask] ** 2))
    want = norm.logpdf(data, model, 1.5 * sigma)[mask].sum()
    got = gaussian_log_likelihood(model, data, sigma, mask, noise_scale=1.5)
    assert np.isclose(got, want)
    # masked pixels may hold anything (NaN) without poisoning values or gradients
    bad = np.where(mask, data, np.nan)
    grad = jax.grad(lambda m: gaussian_log_likelihood(m, jnp.where(mask, bad, 0.0), sigma,
                                                      mask))(jnp.asarray(model))
    assert np.all(np.isfinite(grad))


def test_observe_resampling(emulator, clean):
    wl = emulator.wavelength
    # data on a coarser grid covering part of the emulator's range
    coarse = np.linspace(5001.0, 5009.0, 81)
    flux = np.interp(coarse, wl, clean)
    spec = Spectrum(coarse, flux, np.full(coarse.size, SIGMA), name="coarse")
    obs = observe(spec, emulator)  # default: the emulator onto the data pixels
    assert obs.flux.shape == (81,) and bool(obs.mask.all())
    np.testing.assert_allclose(obs.project(jnp.asarray(clean)), flux, atol=1e-12)
    obs = observe(spec, emulator, resample="data")  # the data onto the emulator pixels
    assert obs.flux.shape == (wl.size,)
    inside = (wl >= 5001.0) & (wl <= 5009.0)
    np.testing.assert_array_equal(np.asarray(obs.mask), inside)
    # model pixels twice as fine as the data: variance inflated by the ratio (2)
    # (σ√2 on data pixels, σ half-way between: two half-weighted neighbours)
    sig = np.asarray(obs.sigma)[inside]
    np.testing.assert_allclose([sig.min(), sig.max()], [SIGMA, SIGMA * np.sqrt(2)], rtol=1e-6)


# ---------------------------------------------------------------- methods


def test_map_recovers_held_out_node(emulator, clean, noisy):
    sig = np.full(clean.size, SIGMA)
    res = fit_map(emulator, np.stack([clean, noisy]), sig)
    assert res.params.shape == (2, 2) and np.all(res.converged)
    # noise-free: limited only by the interpolation across the held-out node
    assert abs(res.params[0, 0] - TRUTH["teff"]) < 30
    assert abs(res.params[0, 1] - TRUTH["logg"]) < 0.03
    # S/N 100: within 4 sigma
    z = (np.asarray(res.params[1]) - np.array(list(TRUTH.values()))) / np.asarray(res.sigma[1])
    assert np.all(np.abs(z) < 4), z
    # the per-spectrum call gives the same answer as the batch
    one = fit_map(emulator, noisy, sig)
    np.testing.assert_allclose(one.params, res.params[1], rtol=1e-8)


def test_bayes_opt_finds_optimum_region(emulator, clean):
    res = bayes_opt(emulator, clean, np.full(clean.size, SIGMA), teff_guess=5100.0)
    assert res.history_params.shape == (120, 2) and res.n_evaluations == 120
    assert abs(res.params[0] - TRUTH["teff"]) < 120
    assert abs(res.params[1] - TRUTH["logg"]) < 0.15
    assert np.all(res.history_params[:, 0] >= 4600) and np.all(res.history_params[:, 0] <= 5600)
    # guided evaluations improve on the random ones
    assert res.loss <= res.history_loss[:100].min()
    assert bool(res.converged)


@pytest.fixture(scope="module")
def nuts_result(emulator, emulated_noisy):
    return sample_nuts(emulator, emulated_noisy, np.full(emulated_noisy.size, SIGMA),
                       num_warmup=300, num_samples=300, num_chains=2, key=3)


def test_nuts_posterior_and_laplace(map_result, nuts_result):
    res = nuts_result
    assert res.converged, res.message
    assert np.all(res.rhat < 1.05) and np.all(res.ess > 100)
    truth = np.array([5100.0, 4.1])
    assert np.all(np.abs(res.params - truth) < 4 * res.sigma)
    # Laplace sigma matches the posterior std on this well-posed problem
    np.testing.assert_allclose(map_result.sigma, res.sigma, rtol=0.3)
    assert res.samples["teff"].shape == (2, 300)
    idata = res.inference_data
    assert idata is not None and "teff" in idata.posterior


def test_posterior_file_round_trip(tmp_path, emulator, map_result, nuts_result):
    """NUTS samples + sample stats, and the MAP's Laplace mean and covariance, written
    star by star (resumable parts), merged into one NetCDF file and read back equal."""
    from jaxspec.io.posterior import (
        PosteriorWriter,
        laplace_payload,
        nuts_payload,
        read_posterior,
    )

    settings = {"method": "nuts"}
    path = tmp_path / "post.nc"
    with PosteriorWriter(path, settings=settings) as w:
        w.write("a.ecsv", "sha-a", nuts_payload(nuts_result))
    assert not path.exists() and len(list((tmp_path / "post.nc.parts").glob("*.nc"))) == 1
    with PosteriorWriter(path, settings=settings) as w:  # a rerun finds the stored star
        assert w.has("a.ecsv", "sha-a") and not w.has("a.ecsv", "changed")
        w.write("b.ecsv", "sha-b", nuts_payload(nuts_result))
        assert w.finish({"a.ecsv": "sha-a", "b.ecsv": "sha-b"}, order=["b.ecsv", "a.ecsv"])
    idata = read_posterior(path)
    assert list(idata.posterior["star"].values) == ["b.ecsv", "a.ecsv"]
    for name in ("teff", "logg"):
        np.testing.assert_array_equal(idata.posterior[name].sel(star="a.ecsv"),
                                      nuts_result.samples[name])
    for stat in ("diverging", "n_steps", "acceptance_rate", "energy", "lp", "step_size"):
        np.testing.assert_array_equal(idata.sample_stats[stat].sel(star="b.ecsv"),
                                      nuts_result.sample_stats[stat])
    assert idata.posterior["teff"].dims == ("star", "chain", "draw")
    assert not (tmp_path / "post.nc.parts").exists()
    with pytest.raises(ValueError, match="post.nc: written by a run with other options"):
        PosteriorWriter(path, settings={"method": "map"}).open()

    lap = tmp_path / "laplace.nc"
    with PosteriorWriter(lap, settings={"method": "map"}) as w:
        w.write("a.ecsv", "sha-a", laplace_payload(map_result, emulator.param_names))
        w.finish({"a.ecsv": "sha-a"})
    ds = read_posterior(lap).laplace.sel(star="a.ecsv")
    np.testing.assert_array_equal(ds["mean"], map_result.params)
    np.testing.assert_array_equal(ds["covariance"], map_result.covariance)
    assert list(ds["parameter"].values) == list(emulator.param_names)


def test_map_with_one_start_takes_the_better_of_init_and_the_search(emulator, emulated_noisy,
                                                                   map_result):
    # one start (the demo's): a poor init (a far corner) loses to the search's best, a
    # good one wins; both end at the optimum of the default fit
    sig = np.full(emulated_noisy.size, SIGMA)
    for init in ([4000.0, 5.0], [5080.0, 4.12]):
        one = fit_map(emulator, emulated_noisy, sig, init=np.array(init), n_search=16,
                      n_starts=1, steps=0, hessian="gauss-newton")
        assert one.starts.shape == (1, 2) and bool(one.converged)
        np.testing.assert_allclose(one.params, map_result.params, rtol=1e-4)


def test_map_reports_the_model_of_its_answer(emulator, emulated_noisy, map_result):
    # the Newton passes carry the model spectrum of the best point (no extra emulator
    # call): loss and chi2/nu are those of emulator(params); a pass is one evaluation
    sig = np.full(emulated_noisy.size, SIGMA)
    for res, n_starts, n_search in ((map_result, 4, 256),
                                    (fit_map(emulator, emulated_noisy, sig, n_search=16,
                                             n_starts=1, steps=0, hessian="gauss-newton",
                                             init=np.array([4400.0, 3.9])), 1, 16)):
        model = np.asarray(emulator(res.params))
        np.testing.assert_allclose(res.loss, rms_loss(model, emulated_noisy), rtol=1e-6)
        c2 = float(chi2(model, emulated_noisy, sig))
        np.testing.assert_allclose(res.chi2_nu, c2 / (emulated_noisy.size - 2), rtol=1e-6)
        np.testing.assert_allclose(res.neg_log_posterior, 0.5 * c2, rtol=1e-6)
        steps = 100 * n_starts if n_starts > 1 else 0
        passes = int(res.n_evaluations) - n_search - steps - (n_starts == 1)
        assert n_starts <= passes <= n_starts * (1 + 12 * 5), passes


def test_map_gauss_newton_matches_exact_hessian(emulator, emulated_noisy, map_result):
    sig = np.full(emulated_noisy.size, SIGMA)
    gn = fit_map(emulator, emulated_noisy, sig, hessian="gauss-newton")
    assert bool(gn.converged), gn.rows()[0]["message"]
    # same optimum; Laplace errors from the Fisher matrix agree with the exact Hessian's
    np.testing.assert_allclose(gn.params, map_result.params, rtol=1e-4)
    np.testing.assert_allclose(gn.sigma, map_result.sigma, rtol=0.1)
    # profiled noise (no uncertainties): the fitted noise scale sets the errors
    gn_noise = fit_map(emulator, emulated_noisy, hessian="gauss-newton")
    np.testing.assert_allclose(gn_noise.noise_scale, SIGMA, rtol=0.1)
    np.testing.assert_allclose(gn_noise.sigma, map_result.sigma, rtol=0.15)
    # NaN flux is masked (with a warning) and stays out of the Jacobian's residuals
    holes = emulated_noisy.copy()
    holes[::50] = np.nan
    with pytest.warns(UserWarning, match="NaN"):
        gn_holes = fit_map(emulator, holes, sig, hessian="gauss-newton")
    assert np.all(np.isfinite(gn_holes.sigma))
    assert np.all(np.abs(np.asarray(gn_holes.params - gn.params)) < 3 * np.asarray(gn.sigma))
    with pytest.raises(ValueError, match="hessian="):
        fit_map(emulator, emulated_noisy, sig, hessian="bfgs")


def test_calibration_helpers():
    rng = np.random.default_rng(0)
    n, k = 4000, 2
    truth = rng.normal(size=(n, k))
    sigma = np.full((n, k), 0.7)
    mean = truth + sigma * rng.normal(size=(n, k))
    cov = gaussian_coverage(truth, mean, sigma)
    np.testing.assert_allclose(cov["coverage"][0.68], 0.68, atol=0.03)
    np.testing.assert_allclose(cov["coverage"][0.95], 0.95, atol=0.02)
    # posterior draws around the same means: same coverage
    draws = [m + s * rng.normal(size=(400, k)) for m, s in zip(mean[:300], sigma[:300])]
    cov = sample_coverage(truth[:300], draws)
    np.testing.assert_allclose(cov["coverage"][0.68], 0.68, atol=0.09)
    # over-confident intervals are revealed
    assert np.all(gaussian_coverage(truth, mean, sigma / 3)["coverage"][0.68] < 0.4)


# ---------------------------------------------------------------- bad input


def test_spectrum_outside_emulator_range(emulator):
    spec = Spectrum(np.linspace(6000, 6010, 50), np.ones(50), name="far.ecsv")
    with pytest.raises(ValueError, match=r"far.ecsv covers 6000.00–6010.00 Å but the "
                       r"emulator covers 5000.00–5010.00 Å"):
        observe(spec, emulator)


def test_nan_flux_masked_with_warning(emulator, noisy):
    flux = noisy.copy()
    flux[[10, 11]] = np.nan
    with pytest.warns(UserWarning, match="2 NaN/inf pixel"):
        spec = Spectrum(emulator.wavelength, flux, np.full(flux.size, SIGMA))
    assert spec.mask.sum() == flux.size - 2
    obs = observe(spec, emulator)
    assert np.all(np.isfinite(np.asarray(obs.flux)))


@pytest.mark.parametrize("bad", [0.0, -0.01])
def test_non_positive_uncertainty_is_an_error(emulator, noisy, bad):
    sig = np.full(noisy.size, SIGMA)
    sig[5] = bad
    with pytest.raises(ValueError, match="zero or negative at 1 pixel"):
        Spectrum(emulator.wavelength, noisy, sig)


def test_non_convergence_is_flagged(emulator, noisy):
    """A Teff window that excludes the truth leaves the answer on its edge: flagged."""
    res = fit_map(emulator, noisy, np.full(noisy.size, SIGMA), teff_guess=5700.0,
                  teff_window=300.0)
    assert res.status & Status.WINDOW_EDGE and not bool(res.converged)
    table = results_table(res, emulator.param_names, method="map")
    assert not table["converged"][0] and "edge of the Teff window" in table["message"][0]


# ---------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, emulator, noisy, clean):
    d = tmp_path_factory.mktemp("infer_cli")
    em_path = emulator.save(d / "pixel.h5")
    wl = emulator.wavelength
    write_spectrum(Spectrum(wl, noisy, np.full(wl.size, SIGMA)), d / "a.ecsv")
    t = Table({"wavelength": wl, "flux": clean, "uncertainty": np.full(wl.size, SIGMA)})
    t.write(d / "b.csv")
    Table({"wave": wl, "flux": clean}).write(d / "nocol.ecsv")
    Table({"wavelength": wl + 3000, "flux": clean}).write(d / "far.ecsv")
    return d, em_path


def test_cli_writes_table(cli_files, capsys):
    d, em = cli_files
    out = d / "res.ecsv"
    code = main(["infer", str(em), str(d / "a.ecsv"), str(d / "b.csv"), "--method", "map",
                 "--teff-guess", "5100", "--out", str(out), "--plot"])
    assert code == 0, capsys.readouterr().err
    t = Table.read(out)
    required = ["file", "method", "teff", "logg", "teff_err", "logg_err", "loss",
                "n_evaluations", "seconds", "converged", "message"]
    assert t.colnames[: len(required)] == required
    assert len(t) == 2 and list(t["method"]) == ["map", "map"]
    assert np.all(t["converged"]) and np.all(np.abs(t["teff"] - 5000) < 60)
    assert np.all(t["teff_err"] > 0) and np.all(t["seconds"] > 0)
    assert (d / "res_a_fit.png").exists() and (d / "res_a_corner.png").exists()
    assert read_spectrum(d / "b.csv").uncertainty is not None


def test_cli_bad_inputs(cli_files, capsys):
    d, em = cli_files
    out = str(d / "bad.ecsv")
    assert main(["infer", str(em), str(d / "nocol.ecsv"), "--out", out]) == 1
    err = capsys.readouterr().err
    assert "nocol.ecsv: missing column(s) wavelength" in err and "wave" in err
    assert main(["infer", str(em), str(d / "far.ecsv"), "--out", out]) == 1
    err = capsys.readouterr().err
    assert "far.ecsv covers 8000.00–8010.00 Å but the emulator covers 5000.00–5010.00" in err
    # a window that excludes the answer: the row says so, stderr warns
    code = main(["infer", str(em), str(d / "a.ecsv"), "--teff-guess", "5700",
                 "--teff-window", "300", "--out", out, "--overwrite"])
    assert code == 0
    assert "did not converge" in capsys.readouterr().err
    assert not Table.read(out)["converged"][0]



def test_systematic_floor_restores_coverage_of_biased_estimates():
    from jaxspec.infer import add_systematics, gaussian_coverage, sample_coverage, systematic_floor

    rng = np.random.default_rng(3)
    n = 400
    truth = rng.uniform([4000.0, 3.0], [6000.0, 5.0], (n, 2))
    sys_true = np.array([40.0, 0.05])  # emulator bias, different for every star
    stat = np.array([10.0, 0.01])      # what the likelihood alone reports
    est = truth + rng.normal(size=(n, 2)) * np.hypot(sys_true, stat)
    sigma = np.broadcast_to(stat, est.shape)
    narrow = gaussian_coverage(truth, est, sigma)["coverage"][0.68]
    assert np.all(narrow < 0.4)  # the likelihood-only intervals are far too narrow
    half = slice(0, n // 2)
    floor = systematic_floor(truth[half], truth[half] + rng.normal(size=(n // 2, 2)) * sys_true)
    np.testing.assert_allclose(floor, sys_true, rtol=0.2)
    cov = gaussian_coverage(truth, est, add_systematics(floor, sigma=sigma))
    assert np.all(np.abs(cov["coverage"][0.68] - 0.68) < 0.07)
    assert np.all(np.abs(cov["coverage"][0.95] - 0.95) < 0.04)
    draws = [e + rng.normal(size=(500, 2)) * stat for e in est[:200]]
    cov = sample_coverage(truth[:200], add_systematics(floor, draws=draws))
    assert np.all(np.abs(cov["coverage"][0.68] - 0.68) < 0.1)
    with pytest.raises(ValueError, match="at least 5"):
        systematic_floor(truth[:3], est[:3])
    with pytest.raises(ValueError, match="floor"):
        add_systematics(np.array([-1.0, 0.0]), sigma=sigma)


def test_binned_systematic_floor_follows_the_regime():
    from jaxspec.infer import add_systematics, gaussian_coverage, systematic_floor

    rng = np.random.default_rng(4)
    n = 2000
    truth = np.column_stack([rng.uniform(3000, 11000, n), rng.uniform(2, 6, n)])
    scale = np.where(truth[:, :1] < 7000, [20.0, 0.02], [200.0, 0.2])  # hot stars: 10x worse
    est = truth + rng.normal(size=(n, 2)) * scale
    edges = [3000.0, 7000.0, 11000.0]
    floor = systematic_floor(truth[::2], est[::2], edges=edges)
    assert floor.shape == (2, 2)
    np.testing.assert_allclose(floor[1] / floor[0], [10.0, 10.0], rtol=0.25)
    sigma = add_systematics(floor, sigma=np.zeros((n // 2, 2)), edges=edges, at=est[1::2, 0])
    cov = gaussian_coverage(truth[1::2], est[1::2], sigma)
    assert np.all(np.abs(cov["coverage"][0.68] - 0.68) < 0.07)
    with pytest.raises(ValueError, match="edges"):
        add_systematics(floor, sigma=sigma)


def test_empirical_systematics_cover_heavy_tailed_errors():
    from jaxspec.infer import EmpiricalSystematics, sample_coverage

    rng = np.random.default_rng(5)
    n = 3000
    truth = np.column_stack([rng.uniform(3000, 11000, n), rng.uniform(2, 6, n)])
    # emulator errors: Student-t (3 dof), hot stars 5x worse; statistical errors small
    scale = np.where(truth[:, :1] < 7000, [20.0, 0.02], [100.0, 0.1])
    sys_err = rng.standard_t(3, size=(n, 2)) * scale
    stat = scale / 4
    edges = [3000.0, 7000.0, 11000.0]
    cv, test = slice(0, n // 2), slice(n // 2, n)
    emp = EmpiricalSystematics.from_fits(truth[cv], truth[cv] + sys_err[cv], edges=edges)
    assert emp.offsets.shape == (n // 2, 2)
    # test spectra: Laplace mean and sigma of a noisy fit
    mean = truth[test] + sys_err[test] + rng.normal(size=(n // 2, 2)) * stat[test]
    draws = emp.convolve(mean=mean, sigma=stat[test], n_draws=1000, seed=1)
    cov = sample_coverage(truth[test], draws)
    assert np.all(np.abs(cov["coverage"][0.68] - 0.68) < 0.04), cov["coverage"]
    assert np.all(np.abs(cov["coverage"][0.95] - 0.95) < 0.02), cov["coverage"]
    # a Gaussian floor of the same errors misses one level or the other on such tails
    from jaxspec.infer import add_systematics, gaussian_coverage, systematic_floor

    floor = systematic_floor(truth[cv], truth[cv] + sys_err[cv], edges=edges)
    g = gaussian_coverage(truth[test], mean, add_systematics(
        floor, sigma=stat[test], edges=edges, at=mean[:, 0]))["coverage"]
    assert np.any(np.abs(g[0.95] - 0.95) > 0.02) or np.any(np.abs(g[0.68] - 0.68) > 0.04)
    # posterior draws are shifted the same way; the bin follows each spectrum's median
    post = [m + rng.normal(size=(400, 2)) * s for m, s in zip(mean[:5], stat[test][:5])]
    shifted = emp.convolve(draws=post, seed=2)
    assert len(shifted) == 5 and shifted[0].shape == (400, 2)
    with pytest.raises(ValueError, match="min_count"):
        EmpiricalSystematics.from_fits(truth[:5], truth[:5])
    with pytest.raises(ValueError, match="draws= or mean="):
        emp.convolve(mean=mean)


def test_laplace_errors_survive_a_parameter_pinned_on_the_box_face(emulator):
    lo, hi = emulator.bounds[:, 0], emulator.bounds[:, 1]
    theta = np.array([0.5 * (lo[0] + hi[0]) + 37.0, hi[1]])
    flux = np.asarray(emulator(jnp.asarray(theta)))
    # Data that prefer log g beyond the top of the box (extrapolated along log g).
    below = np.asarray(emulator(jnp.asarray(theta - np.array([0.0, 0.2]))))
    res = fit_map(emulator, flux + 2.0 * (flux - below), np.full(flux.size, SIGMA))
    assert np.isclose(float(res.params[1]), hi[1])
    assert np.isnan(float(res.sigma[1]))  # one-sided: no Gaussian error
    assert np.isfinite(float(res.sigma[0])) and float(res.sigma[0]) > 0  # the other survives
