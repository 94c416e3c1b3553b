"""LineManifold: scipy RegularGridInterpolator equivalence, real blase3D manifolds, grads."""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.interpolate import RegularGridInterpolator

import jaxspec  # noqa: F401  (enables float64)
from jaxspec.manifold import LineManifold

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BLASE3D = [DATA / "blase3d_manifold_CI_11617.npz", DATA / "blase3d_manifold_HeII_10123.npz"]

evaluate = eqx.filter_jit(lambda m, p: m(p))


def random_axes(k, rng):
    sizes = [5, 4, 3][:k]
    axes = {}
    for d, n in enumerate(sizes):
        steps = rng.uniform(0.5, 2.0, n - 1)  # non-uniform spacing
        axes[f"p{d}"] = np.concatenate([[rng.normal()], rng.normal() + np.cumsum(steps)])
        axes[f"p{d}"].sort()
    return axes


@pytest.mark.parametrize("k", [1, 2, 3])
def test_matches_scipy_regular_grid_interpolator(k):
    rng = np.random.default_rng(k)
    axes = random_axes(k, rng)
    shape = tuple(a.size for a in axes.values())
    values = rng.normal(size=(7, *shape, 4))
    values[2, ..., 1][rng.random(shape) < 0.4] = -1000.0  # absent entries, as in blase3D
    manifold = LineManifold(axes, values)
    lo = np.array([a[0] for a in axes.values()])
    hi = np.array([a[-1] for a in axes.values()])
    points = lo + (hi - lo) * rng.random((50, k))
    # Nodes and faces too: the cell choice at a node must not matter.
    mesh = np.stack(np.meshgrid(*axes.values(), indexing="ij"), -1).reshape(-1, k)
    points = np.concatenate([points, mesh, lo[None], hi[None]])
    got = np.asarray(evaluate(manifold, points))  # (n_points, 7, 4)
    for j in range(values.shape[0]):
        ref = RegularGridInterpolator(tuple(axes.values()), values[j], method="linear")(points)
        np.testing.assert_allclose(got[:, j], ref, rtol=0, atol=1e-9)


def test_batch_shapes_jit_vmap_and_grad():
    rng = np.random.default_rng(0)
    axes = random_axes(2, rng)
    values = rng.normal(size=(3, 5, 4, 4))
    manifold = LineManifold(axes, values)
    mid = np.array([np.mean(a) for a in axes.values()])
    batch = mid + 0.1 * rng.normal(size=(2, 3, 2))
    out = evaluate(manifold, batch)
    assert out.shape == (2, 3, 3, 4)
    vm = jax.jit(jax.vmap(lambda p: manifold(p)))(batch.reshape(-1, 2)).reshape(out.shape)
    np.testing.assert_allclose(vm, out, atol=1e-12)
    # Inside a cell the interpolant is bilinear: central differences are exact.
    f = jax.jit(lambda p: jnp.sum(manifold(p) ** 2))
    g = jax.jit(jax.grad(f))(jnp.asarray(mid))
    eps = 1e-6
    fd = [(f(mid + eps * e) - f(mid - eps * e)) / (2 * eps) for e in np.eye(2)]
    np.testing.assert_allclose(g, fd, rtol=1e-5)
    gv = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(m(mid))))(manifold)
    assert np.all(np.isfinite(gv.table))
    # The 4 corners of the cell share weight 1 per line and output.
    np.testing.assert_allclose(np.asarray(gv.table).sum(axis=(0, 1)), 1.0, atol=1e-12)


def test_out_of_bounds_raises_and_clamp_clips():
    axes = {"teff": [4000.0, 5000.0, 6000.0], "logg": [4.0, 4.5]}
    values = np.arange(3 * 2 * 4.0).reshape(1, 3, 2, 4)
    manifold = LineManifold(axes, values)
    with pytest.raises(Exception, match=r"teff in \[4000, 6000\]"):
        jax.block_until_ready(evaluate(manifold, np.array([6100.0, 4.2])))
    with pytest.raises(Exception, match="outside the grid or NaN"):
        jax.block_until_ready(evaluate(manifold, np.array([np.nan, 4.2])))
    clamped = LineManifold(axes, values, out_of_bounds="clamp")
    np.testing.assert_allclose(clamped(np.array([7000.0, 4.5])), clamped(np.array([6000.0, 4.5])))


def test_length_one_axis_and_bad_construction():
    axes = {"teff": [4000.0, 5000.0], "feh": [0.0]}
    values = np.array([1.0, 3.0]).reshape(1, 2, 1, 1)
    manifold = LineManifold(axes, values)
    np.testing.assert_allclose(manifold(np.array([4500.0, 0.0])), [[2.0]])
    with pytest.raises(ValueError, match="expected"):
        LineManifold(axes, np.zeros((1, 3, 1, 4)))
    with pytest.raises(ValueError, match="strictly increasing"):
        LineManifold({"teff": [2.0, 1.0]}, np.zeros((1, 2, 4)))


def _native_lattice(path):
    """Native blase3D nodes inside the 50 K x 0.1 dex lattice of a shared manifold file.

    The lattice (Teff 2300-11950 K step 50, log g 2.0-5.9 step 0.1) was made by scipy's
    RegularGridInterpolator from PHOENIX nodes (100 K to 7000 K, then 200 K; 0.5 dex).
    The native nodes inside it (Teff <= 11800, log g <= 5.5) are lattice points, so their
    values are the node values; every lattice point inside that box is then determined.
    """
    data = np.load(path)
    teff, logg = data["teff"], data["logg"]
    ut, ug = np.unique(teff), np.unique(logg)
    cols = ("shift_center", "amp", "sigma", "gamma")
    lattice = np.stack([data[c] for c in cols], -1).reshape(ut.size, ug.size, len(cols))
    assert np.array_equal(teff.reshape(ut.size, ug.size)[:, 0], ut)
    native_t = np.concatenate([np.arange(2300.0, 7001.0, 100.0), np.arange(7200.0, 11801.0, 200.0)])
    native_g = np.arange(2.0, 5.51, 0.5)
    it = np.searchsorted(ut, native_t)
    ig = np.array([np.argmin(np.abs(ug - g)) for g in native_g])
    assert np.allclose(ut[it], native_t) and np.allclose(ug[ig], native_g, atol=1e-9)
    nodes = lattice[np.ix_(it, ig)]
    inside_t = ut <= native_t[-1]
    inside_g = ug <= native_g[-1] + 1e-9
    points = np.stack(np.meshgrid(ut[inside_t], np.minimum(ug[inside_g], 5.5), indexing="ij"), -1)
    return native_t, native_g, nodes, points.reshape(-1, 2), lattice[inside_t][:, inside_g].reshape(-1, 4)


@pytest.mark.parametrize("path", BLASE3D, ids=lambda p: p.stem)
def test_reproduces_real_blase3d_manifolds(path):
    if not path.exists():
        pytest.skip(f"shared blase3D manifold {path} not available (needs ../shared/data)")
    native_t, native_g, nodes, points, expected = _native_lattice(path)
    manifold = LineManifold({"teff": native_t, "logg": native_g}, nodes[None])
    got = np.asarray(evaluate(manifold, points))[:, 0]
    assert np.max(np.abs(got - expected)) <= 1e-6
    # Absent (-1000) nodes are really exercised (C I's missing chunk, He II's edges).
    assert np.any(nodes[..., 1] == -1000.0)


# ------------------------------------------------------------------ cubic


def test_cubic_is_exact_at_nodes_and_for_quadratics_inside():
    """Hermite with central-difference slopes reproduces a quadratic in the interior
    cells of a uniform axis (the slopes are then exact); every node is reproduced."""
    x = np.arange(7.0) * 100.0 + 3000.0
    y = np.array([0.0, 1.0, 2.0])
    quad = ((x - 2900.0) / 100.0) ** 2  # increasing over the axis: no clipping
    values = np.stack([np.broadcast_to(quad[:, None], (7, 3)),
                       np.broadcast_to(-quad[:, None] + 3 * y[None], (7, 3))], -1)[None]
    m = LineManifold({"teff": x, "logg": y}, values, method="cubic")
    nodes = np.stack(np.meshgrid(x, y, indexing="ij"), -1).reshape(-1, 2)
    np.testing.assert_allclose(np.asarray(evaluate(m, nodes))[:, 0],
                               values[0].reshape(-1, 2), rtol=1e-12, atol=1e-12)
    inner = np.stack([np.linspace(3105.0, 3495.0, 40), np.full(40, 1.3)], -1)
    got = np.asarray(evaluate(m, inner))[:, 0, 0]
    want = ((inner[:, 0] - 2900.0) / 100.0) ** 2
    np.testing.assert_allclose(got, want, rtol=1e-12)
    linear = np.asarray(evaluate(LineManifold({"teff": x, "logg": y}, values), inner))
    assert np.abs(linear[:, 0, 0] - want).max() > 1e-2  # linear is not exact there


def test_cubic_is_exact_for_quadratics_on_a_non_uniform_axis():
    """Three-point slopes are exact for a parabola on any spacing, end cells included
    (PHOENIX's 100 -> 200 K step, a grid with a column left out): the cubic Hermite then
    reproduces it everywhere. Catmull-Rom slopes were off by O(h_+ - h_-) there."""
    x = np.array([3000.0, 3100.0, 3200.0, 3400.0, 3500.0, 3700.0, 4100.0])
    quad = ((x - 2900.0) / 100.0) ** 2  # increasing: the no-overshoot clip is inactive
    m = LineManifold({"teff": x}, quad[None, :, None], method="cubic")
    inside = np.linspace(3000.0, 4100.0, 111)[:, None]
    got = np.asarray(evaluate(m, inside))[:, 0, 0]
    np.testing.assert_allclose(got, ((inside[:, 0] - 2900.0) / 100.0) ** 2, rtol=1e-10)


def test_cubic_guards_absent_lines_and_overshoot():
    rng = np.random.default_rng(5)
    x = np.sort(rng.uniform(0, 10, 8))
    values = rng.normal(size=(3, 8, 4))
    values[1, 5:, 1] = -1000.0  # absent from the 6th node on
    cubic = LineManifold({"t": x}, values, method="cubic")
    linear = LineManifold({"t": x}, values)
    pts = np.linspace(x[0], x[-1], 301)[:, None]
    c, l = np.asarray(evaluate(cubic, pts)), np.asarray(evaluate(linear, pts))
    # a line with an absent node in its stencil is interpolated linearly, its strength
    # linearly in a = exp(ln a) (absent: a = 0): it fades to zero instead of to -1000
    near_absent = pts[:, 0] >= x[3]
    np.testing.assert_allclose(c[near_absent, 1][:, [0, 2, 3]], l[near_absent, 1][:, [0, 2, 3]])
    a_nodes = np.where(values[1, :, 1] < -500, 0.0, np.exp(values[1, :, 1]))
    a_lin = np.interp(pts[near_absent, 0], x, a_nodes)
    inside = a_lin > 0
    np.testing.assert_allclose(c[near_absent, 1, 1][inside], np.log(a_lin[inside]), rtol=1e-10)
    # half way between the last node with the line and the first without, it keeps half
    # its strength (linear in ln a would put ln a near -500 there)
    mid = np.array([[0.5 * (x[4] + x[5])]])
    assert np.asarray(evaluate(cubic, mid))[0, 1, 1] == pytest.approx(
        values[1, 4, 1] + np.log(0.5), abs=1e-9)
    assert np.asarray(evaluate(linear, mid))[0, 1, 1] < -400
    # no value leaves the range of its stencil's nodes (no overshoot)
    assert np.all(c[:, 0] <= values[0].max(0) + 1e-12)
    assert np.all(c[:, 0] >= values[0].min(0) - 1e-12)
    assert np.all(c[:, 1, 1] > -1000.0 - 1e-9)
    # and differentiable, with finite gradients everywhere
    g = jax.vmap(jax.grad(lambda p: cubic(p).sum()))(jnp.asarray(pts))
    assert np.all(np.isfinite(np.asarray(g)))
    with pytest.raises(ValueError, match="method='spline'; pass one of"):
        LineManifold({"t": x}, values, method="spline")
