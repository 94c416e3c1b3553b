"""PixelEmulator: exact at nodes, multilinear between, hold-outs, missing nodes, files."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspec.emulator import load_emulator
from jaxspec.grid import SpectralGrid
from jaxspec.pixel_emulator import PixelEmulator

WL = np.linspace(6000.0, 6001.0, 11)
AXES = {"teff": np.array([4000.0, 4500.0, 5500.0]), "logg": np.array([4.0, 4.5]),
        "feh": np.array([-0.5])}


def linear_grid(mask=None):
    """Flux = 1e-4 teff + logg + feh + wavelength/1e4: multilinear, so interpolation
    is exact everywhere."""
    mesh = np.meshgrid(*AXES.values(), indexing="ij")
    base = 1e-4 * mesh[0] + mesh[1] + mesh[2]
    flux = base[..., None] + WL / 1e4
    if mask is not None:
        flux = flux.copy()
        flux[~mask] = np.nan
    return SpectralGrid(AXES, WL, flux, mask=mask)


def expected(theta):
    t, g, f = theta
    return 1e-4 * t + g + f + WL / 1e4


def test_exact_at_nodes_and_between():
    grid = linear_grid()
    em = PixelEmulator.from_grid(grid)
    params, flat = grid.node_params()
    np.testing.assert_allclose(em(jnp.asarray(params)), grid.flux.reshape(-1, WL.size)[flat])
    theta = jnp.array([4700.0, 4.3, -0.5])
    np.testing.assert_allclose(em(theta), expected(np.asarray(theta)), rtol=1e-12)
    # batch shapes, jit, vmap, grad
    batch = jnp.stack([theta, theta + jnp.array([100.0, 0.1, 0.0])])[None]
    assert em(batch).shape == (1, 2, WL.size)
    np.testing.assert_allclose(eqx.filter_jit(em)(theta), em(theta))
    np.testing.assert_allclose(jax.vmap(em)(batch[0]), em(batch[0]))
    g = jax.grad(lambda t: em(t).sum())(theta)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g[:2], [1e-4 * WL.size, WL.size], rtol=1e-10)
    assert em.param_names == ("teff", "logg", "feh")
    np.testing.assert_array_equal(em.bounds, [[4000, 5500], [4, 4.5], [-0.5, -0.5]])


def test_outside_the_box_errors_or_clamps():
    em = PixelEmulator.from_grid(linear_grid())
    # default policy: a one-line error with the box, before any work
    with pytest.raises(ValueError, match=r"teff=3000 outside the emulator's box \(teff in "
                       r"\[4000, 5500\], logg in \[4, 4.5\]"):
        em(jnp.array([3000.0, 4.2, -0.5]))
    with pytest.raises(ValueError, match="logg=nan outside"):
        em(np.array([[4500.0, 4.2, -0.5], [4500.0, np.nan, -0.5]]))
    # under jit the check runs at run time (equinox), with the box in the message
    with pytest.raises(Exception, match=r"teff in \[4000, 5500\]"):
        jax.block_until_ready(jax.jit(lambda p: em(p))(jnp.array([3000.0, 4.2, -0.5])))
    # by option: clamped to the face
    c = em.clamped()
    assert c.param_names == em.param_names and c.out_of_box == "clamp"
    np.testing.assert_allclose(c(jnp.array([3000.0, 4.2, -0.5])),
                               em(jnp.array([4000.0, 4.2, -0.5])))


def test_holdout_filled_along_teff():
    grid = linear_grid()
    em = PixelEmulator.from_grid(grid, holdout=[{"teff": 4500.0, "logg": 4.0, "feh": -0.5}])
    assert em.filled.sum() == 1 and em.filled[1, 0, 0]
    # the linear grid is reproduced by the fill (interpolation between 4000 and 5500)
    np.testing.assert_allclose(em(jnp.array([4500.0, 4.0, -0.5])), expected((4500, 4, -0.5)))
    # edge hold-outs are extrapolated from the two nearest nodes
    em = PixelEmulator.from_grid(grid, holdout=np.array([[4000.0, 4.5, -0.5]]))
    np.testing.assert_allclose(em(jnp.array([4000.0, 4.5, -0.5])), expected((4000, 4.5, -0.5)))
    with pytest.raises(ValueError, match="not a node"):
        PixelEmulator.from_grid(grid, holdout=[[4100.0, 4.0, -0.5]])


def test_missing_nodes_error_or_fill():
    mask = np.ones((3, 2, 1), dtype=bool)
    mask[1, 1, 0] = False
    grid = linear_grid(mask)
    with pytest.raises(ValueError, match="lacks 1 node.*teff=4500, logg=4.5.*fill='interpolate'"):
        PixelEmulator.from_grid(grid)
    em = PixelEmulator.from_grid(grid, fill="interpolate")
    np.testing.assert_allclose(em(jnp.array([4500.0, 4.5, -0.5])), expected((4500, 4.5, -0.5)))


def test_save_load_roundtrip(tmp_path):
    em = PixelEmulator.from_grid(linear_grid(), holdout=[[4500.0, 4.0, -0.5]])
    path = em.save(tmp_path / "pix.h5")
    with pytest.raises(FileExistsError):
        em.save(path)
    back = load_emulator(path)
    assert isinstance(back, PixelEmulator) and back.param_names == em.param_names
    theta = jnp.array([4800.0, 4.1, -0.5])
    np.testing.assert_array_equal(back(theta), em(theta))
    np.testing.assert_array_equal(back.wavelength, WL)
    np.testing.assert_array_equal(back.filled, em.filled)


def test_cubic_exact_at_nodes_better_between_and_saved(tmp_path):
    from jaxspec.grid import SpectralGrid
    from jaxspec.pixel_emulator import PixelEmulator

    teff = np.arange(4000.0, 4800.0, 100.0)
    logg = np.array([4.0, 4.5])
    wl = np.linspace(5000.0, 5001.0, 16)

    def spectrum(t, g):
        return 1.0 - 0.3 * np.exp(-((wl - 5000.5) / (0.05 + (t - 4000.0) / 4000.0)) ** 2) * g / 4.5

    flux = np.array([[spectrum(t, g) for g in logg] for t in teff])
    grid = SpectralGrid({"teff": teff, "logg": logg}, wl, flux, normalized=True)
    cubic = PixelEmulator.from_grid(grid, method="cubic")
    linear = PixelEmulator.from_grid(grid)
    nodes, _ = grid.node_params()
    np.testing.assert_allclose(np.asarray(cubic(nodes)), flux.reshape(-1, wl.size), atol=1e-6)
    between = np.stack([teff[1:-2] + 50.0, np.full(teff.size - 3, 4.25)], -1)
    truth = np.array([spectrum(t, g) for t, g in between])
    err_c = np.abs(np.asarray(cubic(between)) - truth).max()
    err_l = np.abs(np.asarray(linear(between)) - truth).max()
    assert err_c < 0.5 * err_l
    back = PixelEmulator.load(cubic.save(tmp_path / "cubic.h5"))
    assert back.method == "cubic"
    np.testing.assert_allclose(np.asarray(back(between)), np.asarray(cubic(between)))
    with pytest.raises(ValueError, match="method='quintic'"):
        PixelEmulator.from_grid(grid, method="quintic")
