"""Amortised inference: simulation, BOSS Net regressor, cINN-style flow, files, CLI.

Tiny sizes throughout (the synthetic "tiny" grid, a one-parameter toy line); the models
are trained once per module and shared.
"""

import argparse
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxspec
from jaxspec.amortised import (
    CNNRegressor,
    FlowPosterior,
    Rebin,
    Simulator,
    der_snr,
    load_amortised,
    network_grid,
    rank_statistics,
    simulation_based_calibration,
    train_flow,
    train_regressor,
    training_batch,
)
from jaxspec.infer import Spectrum, results_table
from jaxspec.pixel_emulator import PixelEmulator

N_DRAWS = 512  # flow draws per spectrum in these tests (one compiled shape)


class LineToy(eqx.Module):
    """One parameter, the depth d of a Gaussian line: F = 1 - d g(λ); box [0, 1]."""

    wavelength_: np.ndarray
    profile: jax.Array

    def __call__(self, params):
        return 1.0 - params[..., :1] * self.profile

    @property
    def param_names(self):
        return ("depth",)

    @property
    def bounds(self):
        return np.array([[0.0, 1.0]])

    @property
    def wavelength(self):
        return self.wavelength_


def line_toy(n=24):
    wl = np.linspace(5000.0, 5002.3, n)
    return LineToy(wl, jnp.asarray(0.6 * np.exp(-0.5 * ((wl - 5001.15) / 0.35) ** 2)))


@pytest.fixture(scope="module")
def tiny_sim():
    emulator = PixelEmulator.from_grid(jaxspec.synthetic_grid("tiny", progress=False))
    return Simulator.from_emulator(emulator, bin=10, snr_range=(20.0, 200.0))


@pytest.fixture(scope="module")
def regressor(tiny_sim):
    return train_regressor(tiny_sim, n_train=512, n_val=128, batch_size=64, lr=3e-3,
                           max_epochs=4, patience=4, channels=4, stages=1, n_standardize=128,
                           key=1)


@pytest.fixture(scope="module")
def toy():
    # S/N 20 at every spectrum: the posterior of the depth is the Gaussian likelihood
    # truncated to the box; the flow sees the S/N as a constant input
    return Simulator.from_emulator(line_toy(), snr_range=(20.0, 20.0))


@pytest.fixture(scope="module")
def toy_flow(toy):
    # a linear embedding suffices: the posterior mean is linear in the flux
    return train_flow(toy, n_train=16384, n_val=512, batch_size=256, lr=1e-2, lr_decay=0.8,
                      max_epochs=15, patience=15, hidden=[], features=4, flow_layers=2,
                      nn_width=16, n_standardize=256, key=2)


# ------------------------------------------------------------------------ simulation


def test_rebin_averages_whole_pixels_and_conserves_flux():
    x = 6000.0 + 0.01 * np.arange(1001) + 1e-4 * np.sin(np.arange(1001))  # uneven pixels
    centres, edges = network_grid(x, bin=10)
    assert centres.size == 100 and edges.size == 101
    f = 1 - 0.5 * np.exp(-0.5 * ((x - 6005.0) / 0.2) ** 2)
    # bins of whole cells: the cell-weighted mean of their pixels, to rounding
    rebin = Rebin.between(x, edges)
    widths = np.diff(np.concatenate([[x[0] - (x[1] - x[0]) / 2], (x[1:] + x[:-1]) / 2,
                                     [x[-1] + (x[-1] - x[-2]) / 2]]))[:1000]
    block = (f[:1000] * widths).reshape(100, 10).sum(1) / widths.reshape(100, 10).sum(1)
    np.testing.assert_allclose(rebin(f), block, atol=1e-12)
    # bins equal to the cells: the identity
    _, e1 = network_grid(x, bin=1)
    np.testing.assert_allclose(Rebin.between(x, e1)(f), f, atol=1e-12)
    # flux conservation onto arbitrary bins inside the range
    e = np.linspace(6001.0, 6009.0, 37)
    y = np.asarray(Rebin.between(x, e)(f))
    fine = np.interp(np.linspace(6001.0, 6009.0, 800001), x, f)
    assert abs(np.sum(y * np.diff(e)) - np.trapezoid(fine, dx=1e-5)) < 2e-4
    with pytest.raises(ValueError, match="covers"):
        Rebin.between(x[500:], edges)
    with pytest.raises(ValueError, match="bin"):
        network_grid(x, bin=0)


def test_training_batches_stream_reproducibly(tiny_sim):
    key = jax.random.key(3)
    batch = eqx.filter_jit(training_batch)
    a = batch(tiny_sim, key, jax.random.key(4), 64)
    b = batch(tiny_sim, key, jax.random.key(5), 64)
    np.testing.assert_array_equal(a[0], b[0])  # the set: same parameters and S/N
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.allclose(a[2], b[2])  # fresh noise each epoch
    theta, snr, flux = (np.asarray(v) for v in a)
    lo, hi = tiny_sim.bounds.T
    assert np.all((theta >= lo) & (theta <= hi))
    assert np.all((snr >= 20.0) & (snr <= 200.0)) and flux.dtype == np.float32
    resid = (np.asarray(b[2], dtype=np.float64) - flux) * snr[:, None] / np.sqrt(2)
    assert abs(resid.std() - 1.0) < 0.03  # noise 1σ = 1/(S/N) per network pixel
    # DER_SNR recovers the S/N of line-free noise
    rng = np.random.default_rng(0)
    assert abs(der_snr(1 + rng.normal(0, 0.01, 20000)) / 100 - 1) < 0.05


def test_transform_hook_is_applied(tiny_sim):
    shifted = Simulator.from_emulator(tiny_sim.emulator, bin=10, snr_range=(20.0, 200.0),
                                      transform=lambda flux, key: 0.5 * flux)
    theta = jnp.asarray([[5000.0, 4.0, -0.2]])
    keys = jax.random.split(jax.random.key(0), 1)
    np.testing.assert_allclose(shifted.noise_free(theta, keys),
                               0.5 * tiny_sim.noise_free(theta), rtol=1e-12)
    with pytest.raises(TypeError, match="callable"):
        Simulator.from_emulator(tiny_sim.emulator, transform="shift")


# ------------------------------------------------------------------------ regressor


def test_regressor_training_lowers_the_loss(regressor):
    hist = json.loads(regressor.history)
    assert hist["epochs"] == 4
    assert hist["train_loss"][-1] < 0.8 * hist["train_loss"][0]
    assert min(hist["val_loss"]) < 0.8 * hist["initial_val_loss"]


def test_regressor_predicts_with_noise_draws_and_round_trips(regressor, tiny_sim, tmp_path):
    _, snr, flux = (np.asarray(a) for a in tiny_sim.draw(7, 6))
    res = regressor.predict(flux, snr=snr, key=0, batch_size=8, return_samples=True)
    assert res.params.shape == (6, 3) and res.samples.shape == (6, 20, 3)
    assert np.all(res.sigma > 0) and res.n_evaluations == 21
    np.testing.assert_allclose(res.sigma, res.samples.std(axis=1, ddof=1))
    path = regressor.save(tmp_path / "reg.h5")
    back = load_amortised(path)
    assert isinstance(back, CNNRegressor) and back.param_names == ("teff", "logg", "feh")
    # float32 networks: a recompiled copy agrees to rounding
    np.testing.assert_allclose(back.predict(flux, snr=snr, key=0, batch_size=8).params,
                               res.params, rtol=1e-6)
    with pytest.raises(FileExistsError):
        regressor.save(path)
    with pytest.raises(ValueError, match="not 'flow'"):
        FlowPosterior.load(path)


# ------------------------------------------------------------------------ flow


def test_flow_training_lowers_the_loss(toy_flow):
    hist = json.loads(toy_flow.history)
    # negative log likelihood, nats: from the untrained flow to near the exact
    # posterior's -0.73 (entropy of N(μ, τ²) in standardised units)
    assert hist["val_loss"][hist["best_epoch"]] < hist["initial_val_loss"] - 1.0
    assert hist["val_loss"][hist["best_epoch"]] < -0.6


def test_flow_matches_the_analytic_posterior(toy, toy_flow):
    """x = 1 - d p + ε, ε ~ N(0, σ²): p(d | x) ∝ N(d; μ, τ²) on [0, 1] with
    μ = Σ p (1 - x) / Σ p², τ = σ / √Σ p² (p the rebinned line profile)."""
    p = 1.0 - np.asarray(toy.forward_model()(jnp.array([1.0])))
    sigma = 1.0 / 20.0
    tau = sigma / np.sqrt(np.sum(p**2))
    rng = np.random.default_rng(11)
    for d in (0.35, 0.6):
        x = 1.0 - d * p + rng.normal(0.0, sigma, p.size)
        mu = np.sum(p * (1.0 - x)) / np.sum(p**2)
        res = toy_flow.predict(x, snr=20.0, n_samples=N_DRAWS, key=5, return_samples=True)
        draws = res.samples[0, :, 0]
        draws = draws[np.isfinite(draws)]
        a, b = (0.0 - mu) / tau, (1.0 - mu) / tau
        ks = stats.kstest(draws, stats.truncnorm(a, b, loc=mu, scale=tau).cdf)
        assert ks.pvalue > 0.01, (d, mu, tau, draws.mean(), draws.std(), ks)
        assert abs(res.median[0, 0] - mu) < 0.25 * tau
        assert abs(res.params[0, 0] - mu) < 0.4 * tau  # MAP = posterior mode
        assert res.q16[0, 0] < mu < res.q84[0, 0]


def test_flow_results_calibration_and_round_trip(toy, toy_flow, tmp_path):
    cal = simulation_based_calibration(toy_flow, toy, n=200, key=99, n_samples=N_DRAWS,
                                       plot=tmp_path / "ranks.png", batch_size=1)
    assert (tmp_path / "ranks.png").stat().st_size > 1000
    assert cal["ranks"].shape == (200, 1)
    # 200 spectra: binomial 3σ is ±10 % / ±5 %
    assert abs(cal["coverage"][0.68][0] - 0.68) < 0.1
    assert abs(cal["coverage"][0.95][0] - 0.95) < 0.05
    res = cal["result"]
    assert np.all((res.rejected_fraction >= 0) & (res.rejected_fraction <= 1))
    table = results_table(res, toy_flow.param_names, method="amortized-flow")
    assert {"depth", "depth_err", "depth_median", "depth_q16", "depth_q84",
            "rejected_fraction", "snr"} <= set(table.colnames)
    path = toy_flow.save(tmp_path / "flow.h5")
    back = load_amortised(path)
    assert isinstance(back, FlowPosterior)
    x = np.asarray(toy.draw(3, 1)[2])
    np.testing.assert_allclose(back.predict(x, snr=20.0, n_samples=N_DRAWS, key=1).params,
                               toy_flow.predict(x, snr=20.0, n_samples=N_DRAWS, key=1).params,
                               rtol=1e-6)
    np.testing.assert_allclose(back.log_prob(jnp.array([0.4]), x[0], 20.0),
                               toy_flow.log_prob(jnp.array([0.4]), x[0], 20.0))
    # differentiable in the parameters and in the flux (saliency, cINN sect. 4.2)
    g_theta, g_flux = jax.grad(back.log_prob, argnums=(0, 1))(jnp.array([0.4]), x[0], 20.0)
    assert np.all(np.isfinite(g_theta)) and np.all(np.isfinite(g_flux))


def test_rank_statistics_of_exact_draws_are_uniform():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(2000, 2))
    ranks = rank_statistics(truth, rng.normal(size=(2000, 99, 2)))
    assert stats.kstest(ranks.ravel(), "uniform").pvalue > 1e-3
    with pytest.raises(ValueError, match="n_draws"):
        rank_statistics(truth, rng.normal(size=(2000, 2)))


# ------------------------------------------------------------------------ inputs, CLI


def test_spectra_on_other_pixels_are_resampled(regressor, tiny_sim, toy, toy_flow):
    # a spectrum on the emulator's 1,990 pixels meets the training convolution exactly
    theta = jnp.array([[5200.0, 4.1, -0.3]])
    fine = np.asarray(tiny_sim.emulator(theta))[0]
    spec = Spectrum(tiny_sim.emulator.wavelength, fine, np.full(fine.size, 0.01 * np.sqrt(10)))
    a = regressor.predict([spec] * 6, key=0, batch_size=8)
    b = regressor.predict(np.repeat(np.asarray(tiny_sim.noise_free(theta)), 6, 0),
                          snr=100.0, key=0, batch_size=8)
    np.testing.assert_allclose(a.params, b.params, rtol=1e-6)
    assert a.snr == pytest.approx(100.0)  # 1/median σ after averaging 10 pixels
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=1e-6)
    with pytest.raises(ValueError, match="network's"):
        toy_flow.predict(np.ones(5))
    with pytest.raises(ValueError, match="covers"):
        toy_flow.predict(Spectrum(np.linspace(6000.0, 6001.0, 10), np.ones(10)))
    with pytest.raises(TypeError, match="Simulator"):
        train_flow(toy.emulator)
    with pytest.raises(ValueError, match="snr_range"):
        Simulator.from_emulator(toy.emulator, snr_range=(0.0, 10.0))


def test_cli_train_parsers_and_infer(toy_flow, tmp_path, capsys):
    from astropy.table import Table

    from jaxspec.cli._amortised import add_train_parsers, infer_amortized
    from jaxspec.io.spectrum import write_spectrum

    parser = argparse.ArgumentParser(prog="jaxspec train")
    add_train_parsers(parser.add_subparsers(dest="model"))
    args = parser.parse_args(["flow", "emu.h5", "--n-train", "1000", "--out", "m.h5",
                              "--snr-range", "5:50", "--hidden", "64", "32"])
    assert callable(args.func) and args.kind == "flow" and args.snr_range == (5.0, 50.0)
    args = parser.parse_args(["regressor", "emu.h5", "--out", "m.h5", "--bin", "4"])
    assert args.kind == "regressor" and args.lr == 1e-4 and args.batch_size == 512
    # ... and the same sub-commands through the jaxspec command line itself.
    from jaxspec.cli import build_parser

    args = build_parser().parse_args(["train", "regressor", "emu.h5", "--out", "m.h5"])
    assert args.kind == "regressor" and args.emulator == "emu.h5"
    args = build_parser().parse_args(["train", "cannon", "grid.h5", "--out", "m.h5"])
    assert args.kind == "cannon" and args.grid == "grid.h5"

    model = toy_flow.save(tmp_path / "flow.h5")
    wl = toy_flow.wavelength
    rng = np.random.default_rng(2)
    paths = []
    for i, d in enumerate((0.3, 0.7)):
        flux = np.asarray(toy_flow_flux(toy_flow, d)) + rng.normal(0, 0.05, wl.size)
        paths.append(write_spectrum(Spectrum(wl, flux, np.full(wl.size, 0.05)),
                                    tmp_path / f"s{i}.ecsv"))
    out = tmp_path / "res.ecsv"
    assert infer_amortized(model, paths, out, n_samples=N_DRAWS, batch_size=1) == 0
    from jaxspec.cli import main  # `jaxspec infer MODEL ... --method amortized`

    assert main(["infer", str(model), *map(str, paths), "--method", "amortized",
                 "--out", str(tmp_path / "cli.ecsv")]) == 0
    assert Table.read(tmp_path / "cli.ecsv")["method"][0] == "amortized-flow"
    table = Table.read(out)
    assert list(table["file"]) == [str(p) for p in paths]
    assert table["method"][0] == "amortized-flow"
    assert table["depth"][0] < table["depth"][1]
    assert {"depth_err", "loss", "n_evaluations", "seconds", "converged", "message",
            "rejected_fraction"} <= set(table.colnames)
    with pytest.raises(FileExistsError):
        infer_amortized(model, paths, out)
    with pytest.raises(ValueError, match="jaxspec-amortised"):
        load_amortised(_not_a_model(tmp_path))


def toy_flow_flux(model, depth):
    """Noise-free toy spectrum on the network's pixels."""
    toy = line_toy()
    return Rebin.between(toy.wavelength, model.edges)(toy(jnp.array([depth])))


def _not_a_model(tmp_path):
    import h5py

    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "jaxspec-emulator"
    return path
