"""Peer emulators (The Cannon, The Payne, the autoencoder generator): accuracy at held-out
nodes against a constant spectrum, the Cannon's maths, its scatter in the likelihood, files,
gradients, ``jaxspec train`` / ``jaxspec infer`` and bad input.

Every network is trained once per module on the tiny embedded grid (16 nodes × 1,990 px)
with two nodes held out; small widths and few epochs keep the file near half a minute.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.table import Table

import jaxspec
from jaxspec.cli import main
from jaxspec.emulator import load_emulator
from jaxspec.grid import SpectralGrid
from jaxspec.infer import Spectrum, observe
from jaxspec.io.spectrum import write_spectrum
from jaxspec.peers import (
    AutoencoderEmulator,
    CannonEmulator,
    PayneEmulator,
    train_autoencoder,
    train_cannon,
    train_payne,
)
from jaxspec.peers.cannon import label_vector
from jaxspec.pixel_emulator import PixelEmulator

HOLD = [{"teff": 5000.0, "logg": 4.5, "feh": 0.0}, {"teff": 6000.0, "logg": 4.5, "feh": 0.0}]
KINDS = ("cannon", "payne", "autoencoder")
CLASSES = {"cannon": CannonEmulator, "payne": PayneEmulator,
           "autoencoder": AutoencoderEmulator}


@pytest.fixture(scope="module")
def grid():
    return jaxspec.synthetic_grid("tiny", progress=False)


@pytest.fixture(scope="module")
def held(grid):
    """(held-out params (2, 3), their spectra, the mean training spectrum)."""
    params = np.array([[h[n] for n in grid.param_names] for h in HOLD])
    truth = np.stack([grid.spectrum(**h) for h in HOLD]).astype(np.float64)
    mask = np.ones(grid.shape, dtype=bool)
    for h in HOLD:
        mask[grid.index(**h)] = False
    return params, truth, grid.flux[mask].mean(axis=0, dtype=np.float64)


@pytest.fixture(scope="module")
def emulators(grid):
    # val_fraction=0: with 14 training nodes every one is needed; early stopping then
    # watches the training loss.
    return {
        "cannon": train_cannon(grid, HOLD),
        "payne": train_payne(grid, HOLD, batch_size=4, max_epochs=300, val_fraction=0.0,
                             progress=False),
        "autoencoder": train_autoencoder(
            grid, HOLD, encoder=(64, 32), latent=4, dense=(64, 32), batch_size=4,
            max_epochs=200, finetune_epochs=200, patience=200, val_fraction=0.0,
            progress=False),
    }


@pytest.mark.parametrize("kind", KINDS)
def test_beats_constant_spectrum_at_held_out_nodes(kind, emulators, held, grid):
    params, truth, const = held
    em = emulators[kind]
    model = np.asarray(em(jnp.asarray(params)), dtype=np.float64)
    mse = np.mean((model - truth) ** 2)
    floor = np.mean((const - truth) ** 2)
    # at least 2.5x lower mean-squared error than the best constant spectrum; the nodes
    # are 1000 K from the nearest training node (pixel interpolation across that gap only
    # reaches ~0.6 of the floor)
    assert mse < 0.4 * floor, f"{kind}: MSE {mse:.2e} vs constant spectrum {floor:.2e}"
    assert model.shape == truth.shape and em.param_names == ("teff", "logg", "feh")
    np.testing.assert_array_equal(em.wavelength, grid.wavelength)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, emulators, tmp_path):
    em = emulators[kind]
    path = em.save(tmp_path / f"{kind}.h5")
    back = load_emulator(path)
    assert type(back) is CLASSES[kind] and back.kind == kind
    assert back.param_names == em.param_names and back.info == em.info
    np.testing.assert_array_equal(back.bounds, em.bounds)
    np.testing.assert_array_equal(back.wavelength, em.wavelength)
    theta = jnp.array([[5300.0, 4.1, -0.2], [6700.0, 3.6, -0.4]])
    np.testing.assert_array_equal(back(theta), em(theta))
    if kind == "cannon":
        np.testing.assert_array_equal(back.model_variance, em.model_variance)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        em.save(path)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_batches_and_jit(kind, emulators):
    em = emulators[kind]
    theta = jnp.array([5400.0, 4.2, -0.25])
    g = jax.grad(lambda t: jnp.sum(em(t) ** 2))(theta)
    assert g.shape == (3,) and np.all(np.isfinite(g)) and np.any(g != 0)
    batch = jnp.stack([theta, theta + jnp.array([300.0, -0.2, 0.1])])
    assert em(batch[None]).shape == (1, 2, em.n_pix)
    np.testing.assert_allclose(jax.jit(lambda t: em(t))(batch), em(batch), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(jax.vmap(em)(batch), em(batch), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="last axis must hold the 3 parameters"):
        em(jnp.ones(2))


# ---------------------------------------------------------------- The Cannon's maths


def quadratic_grid(rng, extra_scatter=None):
    """6 x 5 x 4 nodes, 40 px, flux an exact quadratic in the labels (+ optional
    Gaussian per-pixel scatter)."""
    axes = {"teff": np.linspace(4000.0, 6000.0, 6), "logg": np.linspace(3.0, 5.0, 5),
            "feh": np.linspace(-1.0, 0.5, 4)}
    mesh = np.stack(np.meshgrid(*axes.values(), indexing="ij"), -1)
    x = (mesh - np.array([5000.0, 4.0, -0.25])) / np.array([1000.0, 1.0, 0.75])
    coeff = rng.normal(0, 0.05, (10, 40))
    flux = np.asarray(label_vector(jnp.asarray(x))) @ coeff + 0.9
    if extra_scatter is not None:
        flux = flux + rng.normal(size=flux.shape) * extra_scatter
    wl = np.linspace(6000.0, 6004.0, 40)
    return SpectralGrid(axes, wl, flux), mesh.reshape(-1, 3), flux.reshape(-1, 40)


def test_cannon_recovers_an_exact_quadratic_and_the_scatter():
    rng = np.random.default_rng(3)
    grid, labels, flux = quadratic_grid(rng)
    em = train_cannon(grid)
    np.testing.assert_allclose(em(jnp.asarray(labels)), flux, atol=1e-10)
    assert np.all(np.asarray(em.scatter) < 1e-9)
    assert em.info["rank"] == em.info["n_terms"] == 10 and em.info["n_train"] == 120
    # intrinsic scatter: recovered without and with known measurement noise
    s_true = np.linspace(0.005, 0.03, 40)
    grid, _, _ = quadratic_grid(np.random.default_rng(4), extra_scatter=s_true)
    s_fit = np.asarray(train_cannon(grid).scatter)
    np.testing.assert_allclose(np.median(s_fit / s_true), 1.0, atol=0.05)
    sigma = 0.01
    noisy = SpectralGrid(grid.axes, grid.wavelength,
                         grid.flux + rng.normal(size=grid.flux.shape) * sigma)
    s_noisy = np.asarray(train_cannon(noisy, flux_sigma=sigma).scatter)
    np.testing.assert_allclose(np.median(s_noisy / s_true), 1.0, atol=0.1)
    assert np.all(np.isfinite(s_noisy))


def test_cannon_two_node_axes_are_linear_between_nodes(grid):
    """The tiny grid has two log g and two [Fe/H] nodes: without their degenerate squared
    terms the model stays within the grid's fluxes between the nodes (it fell to a median
    flux of 0.33 there against 0.97 at the nodes)."""
    with pytest.warns(UserWarning, match="logg takes only 2 values") as caught:
        em = train_cannon(grid)
    assert any("feh takes only 2 values" in str(w.message) for w in caught)
    assert em.info["linear_only"] == ["logg", "feh"] and em.info["n_terms"] == 8
    flux = grid.flux.reshape(-1, grid.flux.shape[-1]).astype(np.float64)
    between = np.array([[t, 4.0, -0.25] for t in (4000.0, 4500.0, 5000.0, 6000.0, 6500.0)])
    f = np.asarray(em(jnp.asarray(between)))
    node_medians = np.median(flux, axis=1)
    assert np.all(np.median(f, axis=1) > node_medians.min() - 0.02)
    assert np.all(np.median(f, axis=1) < node_medians.max() + 0.02)
    inside = (f >= flux.min(axis=0) - 0.02) & (f <= flux.max(axis=0) + 0.02)
    assert np.all(inside.mean(axis=1) > 0.98)


def test_cannon_scatter_enters_the_likelihood(emulators, held):
    em = emulators["cannon"]
    _params, truth, _ = held
    wl = em.wavelength
    unc = np.full(wl.size, 0.01)
    s2 = np.asarray(em.model_variance)
    assert s2.shape == (em.n_pix,) and np.all(s2 > 0)
    for resample in ("model", "data"):
        obs = observe(Spectrum(wl, truth[0], unc), em, resample)
        np.testing.assert_allclose(np.asarray(obs.sigma) ** 2, unc**2 + s2, rtol=1e-12)
    # half-way between emulator pixels: the interpolated variance
    mid = 0.5 * (wl[:-1] + wl[1:])
    obs = observe(Spectrum(mid, truth[0][:-1], unc[:-1]), em)
    np.testing.assert_allclose(np.asarray(obs.sigma) ** 2,
                               1e-4 + 0.5 * (s2[:-1] + s2[1:]), rtol=1e-9)
    # no uncertainties (fitted noise scale) or no model variance: unchanged
    assert np.all(np.asarray(observe(Spectrum(wl, truth[0]), em).sigma) == 1.0)
    grid_free = PixelEmulator(axes=(jnp.array([0.0, 1.0]),), flux=jnp.ones((2, wl.size)),
                              wavelength_=wl, filled=np.zeros(2, bool), names=("x",))
    assert grid_free.model_variance is None
    np.testing.assert_array_equal(observe(Spectrum(wl, truth[0], unc), grid_free).sigma, unc)


# ---------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory, grid, held):
    d = tmp_path_factory.mktemp("train_cli")
    grid.to_hdf5(d / "tiny.h5")
    _params, truth, _ = held
    rng = np.random.default_rng(0)
    wl = grid.wavelength
    write_spectrum(Spectrum(wl, truth[0] + 0.01 * rng.normal(size=wl.size),
                            np.full(wl.size, 0.01)), d / "star.ecsv")
    return d


def test_cli_train_and_infer_every_kind(cli_dir, capsys):
    d = cli_dir
    hold = ["--holdout", "teff=5000,logg=4.5,feh=0", "--holdout", "teff=6000,logg=4.5,feh=0"]
    small = {"cannon": [],
             "payne": ["--epochs", "3", "--hidden", "16,16", "--batch-size", "4"],
             "autoencoder": ["--epochs", "3", "--hidden", "16", "--latent", "3", "--dense",
                             "16,8", "--batch-size", "4", "--dropout", "0.1"]}
    for kind in KINDS:
        model = d / f"{kind}.h5"
        code = main(["train", kind, str(d / "tiny.h5"), "--out", str(model), *hold,
                     *small[kind]])
        out = capsys.readouterr().out
        assert code == 0 and f"kind {kind!r}" in out and "trained" in out
        assert "held-out nodes (2): MAE" in out and "constant spectrum: MAE" in out
        em = load_emulator(model)
        assert em.kind == kind and em.info["n_train"] + em.info.get("n_val", 0) == 14
        if kind == "payne":
            assert em.hidden == (16, 16) and em.info["epochs"] <= 3
        if kind == "autoencoder":
            assert em.n_latent == 3 and em.info["encoder"] == [16]
            assert em.info["dense"] == [16, 8] and em.info["dropout"] == 0.1
    # infer reads the kind from the file; one MAP fit with the trained Cannon
    res = d / "res.ecsv"
    code = main(["infer", str(d / "cannon.h5"), str(d / "star.ecsv"), "--method", "map",
                 "--starts", "2", "--out", str(res)])
    assert code == 0, capsys.readouterr().err
    t = Table.read(res)
    assert abs(t["teff"][0] - 5000.0) < 400.0 and t["teff_err"][0] > 0
    assert 3.5 <= t["logg"][0] <= 4.5 and -0.5 <= t["feh"][0] <= 0.0
    # a network kind through `jaxspec infer` too (Bayesian optimisation, few points)
    code = main(["infer", str(d / "autoencoder.h5"), str(d / "star.ecsv"), "--method", "bo",
                 "--n-random", "8", "--n-guided", "1", "--out", str(d / "res_ae.ecsv")])
    assert code == 0, capsys.readouterr().err
    row = Table.read(d / "res_ae.ecsv")[0]
    assert 4000.0 <= row["teff"] <= 7000.0 and np.isfinite(row["loss"])


def test_cli_bad_inputs(cli_dir, capsys):
    d = cli_dir
    grid = str(d / "tiny.h5")
    out = str(d / "bad.h5")
    assert main(["train", "cannon", grid, "--out", out, "--holdout", "teff=5000"]) == 1
    assert "give exactly one value for each grid parameter" in capsys.readouterr().err
    assert main(["train", "cannon", grid, "--out", out, "--holdout",
                 "teff=5100,logg=4.5,feh=0"]) == 1
    assert "teff=5100 is not a node of the grid" in capsys.readouterr().err
    assert main(["train", "cannon", str(d / "none.h5"), "--out", out]) == 1
    assert "no such grid file" in capsys.readouterr().err
    (d / "exists.h5").write_bytes(b"")
    assert main(["train", "cannon", grid, "--out", str(d / "exists.h5")]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "transformer", grid, "--out", out])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "payne", grid, "--out", out, "--hidden", "10,x"])
    assert "comma-separated integers" in capsys.readouterr().err


# ---------------------------------------------------------------- bad input


def test_bad_training_input(grid, emulators, tmp_path):
    with pytest.raises(ValueError, match="hidden entry"):
        train_payne(grid, hidden=(100, 0), progress=False)
    with pytest.raises(ValueError, match="batch_size=0"):
        train_payne(grid, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="dropout=1.0"):
        train_autoencoder(grid, dropout=1.0, progress=False)
    with pytest.raises(ValueError, match="val_fraction=1.0"):
        train_payne(grid, val_fraction=1.0, progress=False)
    with pytest.raises(ValueError, match="feh takes the single value 0"):
        train_cannon(grid.subset(feh=(0.0, 0.0)))
    with pytest.raises(ValueError, match="teff=4500 is not a node"):
        train_cannon(grid, [{"teff": 4500.0, "logg": 4.5, "feh": 0.0}])
    with pytest.raises(ValueError, match="holdout entry"):
        train_cannon(grid, [{"teff": 5000.0}])
    with pytest.raises(TypeError, match="pass a jaxspec.grid.SpectralGrid"):
        train_cannon(np.ones((3, 10)))
    with pytest.raises(ValueError, match="flux_sigma"):
        train_cannon(grid, flux_sigma=np.ones(3))
    with pytest.raises(ValueError, match="non-positive"):
        train_cannon(grid, flux_sigma=0.0)
    path = emulators["payne"].save(tmp_path / "payne.h5")
    with pytest.raises(ValueError, match="kind is 'payne', not 'cannon'"):
        CannonEmulator.load(path)
