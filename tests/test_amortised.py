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
    calibrate_flow,
    calibrate_regressor,
    coverage_curve,
    coverage_deviation,
    gaussian_ranks,
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
                           n_calibrate=0, key=1)


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
                      nn_width=16, n_standardize=256, n_calibrate=0, key=2)


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
    from jaxspec.amortised import regressor as reg

    assert args.kind == "regressor" and args.lr == reg.LR and args.batch_size == reg.BATCH_SIZE
    assert not args.quiet and not args.resume and args.n_train is None  # library defaults
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
    # A rerun resumes: nothing is refitted; a bad file becomes a row, not an abort.
    (tmp_path / "bad.ecsv").write_text("not a table\n")
    assert infer_amortized(model, [*paths, tmp_path / "bad.ecsv"], out,
                           n_samples=N_DRAWS, batch_size=1) == 0
    again = Table.read(out)
    assert list(again["file"][:2]) == list(table["file"])
    np.testing.assert_array_equal(again["depth"][:2], table["depth"])
    assert not again["converged"][2] and "input error" in again["message"][2]
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


# ------------------------------------------------------------------ long jobs, calibration


def _toy_flow_kw():
    return dict(n_train=512, n_val=128, batch_size=128, lr=1e-2, lr_decay=0.9,
                patience=10, hidden=[], features=4, flow_layers=2, nn_width=8,
                n_standardize=128, n_calibrate=0, key=4)


def test_resume_continues_as_an_uninterrupted_run(toy, tmp_path):
    ckpt = tmp_path / "flow.ckpt"
    train_flow(toy, max_epochs=2, checkpoint=ckpt, **_toy_flow_kw())
    assert ckpt.exists() and not list(tmp_path.glob("flow.ckpt*.partial"))
    resumed = train_flow(toy, max_epochs=4, checkpoint=ckpt, resume=True, **_toy_flow_kw())
    straight = train_flow(toy, max_epochs=4, **_toy_flow_kw())
    a, b = json.loads(resumed.history), json.loads(straight.history)
    assert a["epochs"] == b["epochs"] == 4
    np.testing.assert_allclose(a["val_loss"], b["val_loss"], rtol=1e-6)
    for x, y in zip(jax.tree.leaves(eqx.filter((resumed.embedding, resumed.flow), eqx.is_array)),
                    jax.tree.leaves(eqx.filter((straight.embedding, straight.flow),
                                               eqx.is_array))):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    # a checkpoint of other settings is refused, naming the setting
    kw = {**_toy_flow_kw(), "lr": 5e-3}
    with pytest.raises(ValueError, match="lr"):
        train_flow(toy, max_epochs=5, checkpoint=ckpt, resume=True, **kw)


def test_atomic_save_keeps_the_old_file_when_writing_fails(toy_flow, tmp_path, monkeypatch):
    import h5py

    path = toy_flow.save(tmp_path / "flow.h5")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        toy_flow.save(path)
    calls = {"n": 0}
    original = h5py.Group.create_dataset

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk full (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(OSError, match="disk full"):
        toy_flow.save(path, overwrite=True)
    monkeypatch.undo()
    assert calls["n"] > 5 and path.read_bytes() == before  # the old model, intact
    assert not list(tmp_path.glob("flow.h5*.partial"))
    assert isinstance(load_amortised(path), FlowPosterior)


def test_coverage_curve_of_exact_and_overconfident_errors():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(4000, 2))
    mean = truth + rng.normal(size=(4000, 2))  # errors of unit σ
    exact = gaussian_ranks(truth, mean, np.ones((4000, 2)))
    assert np.all(coverage_deviation(exact) < 0.03)
    np.testing.assert_allclose(coverage_curve(exact, [0.68])[0], 0.68, atol=0.03)
    narrow = gaussian_ranks(truth, mean, 0.5 * np.ones((4000, 2)))
    assert np.all(coverage_deviation(narrow) > 0.2)  # σ half the truth: far too narrow
    with pytest.raises(ValueError, match="levels"):
        coverage_curve(exact, [1.2])


def test_regressor_recalibration_gives_68_and_95_percent_coverage(tmp_path):
    # the toy line with S/N 10–200: the noise draws alone miss the network's own error
    sim = Simulator.from_emulator(line_toy(), snr_range=(10.0, 200.0))
    model = train_regressor(sim, n_train=2048, n_val=256, batch_size=64, lr=3e-3,
                            max_epochs=3, patience=3, channels=4, stages=1,
                            n_standardize=256, n_calibrate=0, key=5)
    assert model.calibration is None
    model = calibrate_regressor(model, sim, n=1500, key=123)
    report = json.loads(model.calibration.report)
    assert report["n"] == 1500 and model.calibration.values.shape == (1, 8)
    theta, snr, flux = (np.asarray(a) for a in sim.draw(321, 2000))  # fresh held-out set
    res = model.predict(flux, snr=snr, key=9, batch_size=256)
    raw = model.predict(flux, snr=snr, key=9, batch_size=256, calibrated=False)
    z = np.abs(res.params - theta) / res.sigma
    cov68, cov95 = np.mean(z <= 0.9945), np.mean(z <= 1.96)
    assert abs(cov68 - 0.68) < 0.05 and abs(cov95 - 0.95) < 0.03, (cov68, cov95)
    assert np.mean(np.abs(raw.params - theta) <= 0.9945 * raw.sigma) < cov68
    np.testing.assert_allclose(res.q84 - res.params, res.sigma)
    np.testing.assert_allclose(res.params, raw.params - model.bias(snr))
    assert abs(np.mean((res.params - theta) / res.sigma)) < 0.1  # mean error removed
    back = load_amortised(model.save(tmp_path / "reg.h5"))  # stored in the file
    np.testing.assert_allclose(back.calibration.values, model.calibration.values)
    np.testing.assert_allclose(back.total_sigma(raw.sigma, snr, raw.params), res.sigma,
                               rtol=1e-6)


def test_flow_recalibration_keeps_a_calibrated_flow_calibrated(toy, toy_flow, tmp_path):
    model = calibrate_flow(toy_flow, toy, n=300, key=55, n_samples=N_DRAWS, batch_size=50)
    report = json.loads(model.calibration.report)
    assert model.calibration.values.shape == (1, 4) and report["n_used"] > 250
    assert abs(report["calibrated_mean_z"][0]) < 1e-6  # the shift removes the mean residual
    theta, _, flux = (np.asarray(a) for a in toy.draw(56, 300))
    res = model.predict(flux, snr=20.0, n_samples=N_DRAWS, key=3, batch_size=50,
                        return_samples=True)
    ranks = rank_statistics(theta, res.samples)
    assert coverage_deviation(ranks)[0] < 0.1  # 300 spectra: binomial 3σ ≈ 0.08
    assert abs(np.mean((res.median - theta) / res.sigma)) < 0.2
    back = load_amortised(model.save(tmp_path / "flow.h5"))
    np.testing.assert_allclose(back.calibration.values, model.calibration.values)


def test_cli_train_checkpoints_and_resumes(tmp_path, capsys):
    from jaxspec.cli import main

    emu = PixelEmulator.from_grid(jaxspec.synthetic_grid("tiny", progress=False))
    emu_path = emu.save(tmp_path / "emu.h5")
    out = tmp_path / "flow.h5"
    args = ["train", "flow", str(emu_path), "--out", str(out), "--bin", "10",
            "--n-train", "256", "--n-val", "64", "--batch-size", "128", "--hidden", "16",
            "--features", "4", "--flow-layers", "2", "--nn-width", "8",
            "--n-calibrate", "0", "--quiet"]
    assert main(args + ["--max-epochs", "1"]) == 0
    ckpt = tmp_path / "flow.h5.ckpt"
    assert out.exists() and ckpt.exists()
    assert json.loads(load_amortised(out).history)["epochs"] == 1
    capsys.readouterr()
    assert main(args + ["--max-epochs", "2"]) == 1  # refused before any work
    assert "exists; pass --overwrite" in capsys.readouterr().err
    out.unlink()  # as if killed before the model was written: only the checkpoint is left
    assert main(args + ["--max-epochs", "2"]) == 1
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert main(args + ["--max-epochs", "2", "--resume"]) == 0
    assert json.loads(load_amortised(out).history)["epochs"] == 2
    assert "resuming" in capsys.readouterr().out
