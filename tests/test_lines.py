"""LineList: windowed synthesis against the untruncated product, gradients, batching."""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspec import LineList
from jaxspec.profiles import pseudo_voigt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
T4700 = DATA / "phoenix_clone_T4700_g4.5_HPF.npz"


def random_lines(n=150, lo=8500.0, hi=8520.0, seed=1, strong=True):
    rng = np.random.default_rng(seed)
    center = np.sort(rng.uniform(lo - 2, hi + 2, n))
    ln_a = rng.normal(-4.5, 1.0, n)
    ln_s = rng.normal(np.log(0.03), 0.3, n)
    ln_g = rng.normal(np.log(0.03), 0.5, n)
    if strong:  # one broad, strong hydrogen-like line
        center[n // 2] = 0.5 * (lo + hi)
        ln_a[n // 2], ln_s[n // 2], ln_g[n // 2] = np.log(0.8), np.log(0.5), np.log(0.6)
    return LineList(center, ln_a, ln_s, ln_g)


def test_flux_exact_is_the_product():
    lines = random_lines(20)
    wl = np.linspace(8500, 8520, 3000)
    product = np.ones_like(wl)
    for j in range(lines.n_lines):
        v = pseudo_voigt(
            wl - float(lines.center[j]),
            np.exp(float(lines.ln_sigma[j])),
            np.exp(float(lines.ln_gamma[j])),
        )
        product *= 1 - np.exp(float(lines.ln_amplitude[j])) * np.asarray(v)
    np.testing.assert_allclose(np.asarray(lines.flux_exact(wl)), product, atol=1e-12)


@pytest.mark.parametrize("grid", ["linear", "log", "kinked"])
def test_windowed_matches_untruncated(grid):
    lines = random_lines()
    n = 4000
    if grid == "linear":
        wl = np.linspace(8500, 8520, n)
    elif grid == "log":
        wl = np.geomspace(8500, 8520, n)
    else:  # spacing jumps from 0.004 to 0.006 Å mid-band (e.g. concatenated segments)
        wl = 8500 + np.cumsum(np.where(np.arange(n) < n // 2, 0.004, 0.006))
    exact = np.asarray(lines.flux_exact(wl))
    fast = np.asarray(lines.flux(wl))
    assert exact.min() < 0.5  # the strong line is really there
    assert np.max(np.abs(fast - exact)) < 2e-5


def test_lines_outside_range_contribute_wings():
    # A strong line 3 Å beyond the red end still depresses the continuum.
    lines = LineList([8523.0], [np.log(1.0)], [np.log(0.3)], [np.log(0.5)])
    wl = np.linspace(8500, 8520, 2000)
    exact = np.asarray(lines.flux_exact(wl))
    assert exact[-1] < 0.99
    np.testing.assert_allclose(np.asarray(lines.flux(wl)), exact, atol=1e-5)


@pytest.mark.skipif(not T4700.exists(), reason=f"real PHOENIX clone not found at {T4700}")
def test_real_phoenix_clone_window_matches_untruncated():
    """All 9,028 real lines, evaluated on a 60 Å stretch at 0.01 Å (exact in ~1 s)."""
    lines = LineList.from_npz(T4700)
    assert lines.n_lines == 9028
    wl = np.arange(10810.0, 10870.0, 0.01)  # includes the strong lines near Pa-gamma
    exact = np.asarray(jax.jit(lambda w: lines.flux_exact(w))(wl))
    fast = np.asarray(lines.flux(wl))
    assert np.max(np.abs(fast - exact)) <= 1e-4
    assert exact.min() < 0.9


def test_jit_grad_in_all_four_parameters():
    lines = random_lines(60)
    wl = np.linspace(8500, 8520, 2000)
    plan = lines.plan(wl)
    weights = jnp.asarray(np.random.default_rng(0).normal(size=wl.size))

    def loss(ll, use_plan):
        flux = ll.flux(wl, plan=plan) if use_plan else ll.flux_exact(wl)
        return jnp.sum(weights * flux)

    g_fast = eqx.filter_jit(jax.grad(lambda ll: loss(ll, True)))(lines)
    g_exact = jax.grad(lambda ll: loss(ll, False))(lines)
    for name in ("center", "ln_amplitude", "ln_sigma", "ln_gamma"):
        gf, ge = np.asarray(getattr(g_fast, name)), np.asarray(getattr(g_exact, name))
        assert np.all(np.isfinite(gf)), name
        assert np.abs(gf).max() > 0, name
        np.testing.assert_allclose(gf, ge, atol=2e-3 * np.abs(ge).max(), err_msg=name)


def test_vmap_over_batch_of_line_lists():
    base = random_lines(40, strong=False)
    shifts = jnp.array([0.0, 0.05, -0.1])
    batch = LineList(
        base.center[None] + shifts[:, None],
        jnp.stack([base.ln_amplitude, base.ln_amplitude - 0.5, base.ln_amplitude + 0.2]),
        jnp.broadcast_to(base.ln_sigma, (3, base.n_lines)),
        jnp.broadcast_to(base.ln_gamma, (3, base.n_lines)),
    )
    wl = np.linspace(8500, 8520, 2000)
    plan = batch.plan(wl)
    fluxes = eqx.filter_vmap(lambda ll: ll.flux(wl, plan=plan))(batch)
    assert fluxes.shape == (3, wl.size)
    for b in range(3):
        one = LineList(batch.center[b], batch.ln_amplitude[b], batch.ln_sigma[b], batch.ln_gamma[b])
        np.testing.assert_allclose(fluxes[b], np.asarray(one.flux_exact(wl)), atol=2e-5)


def test_traced_without_plan_falls_back_to_exact():
    lines = random_lines(10, strong=False)
    wl = jnp.linspace(8500, 8520, 500)
    out = eqx.filter_jit(lambda ll: ll.flux(wl))(lines)
    np.testing.assert_allclose(out, lines.flux_exact(wl), atol=1e-12)


def test_absent_lines_are_inert():
    lines = random_lines(10, strong=False)
    wl = np.linspace(8500, 8520, 1000)
    absent = LineList(
        jnp.concatenate([lines.center, jnp.array([8510.0])]),
        jnp.concatenate([lines.ln_amplitude, jnp.array([-1000.0])]),
        jnp.concatenate([lines.ln_sigma, jnp.array([-3.0])]),
        jnp.concatenate([lines.ln_gamma, jnp.array([-3.0])]),
    )
    np.testing.assert_allclose(absent.flux(wl), lines.flux(wl), atol=1e-7)
    grad = jax.grad(lambda ll: ll.flux_exact(wl).sum())(absent)
    assert np.all(np.isfinite(np.asarray(grad.ln_amplitude)))


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="ln_sigma has shape"):
        LineList([8500.0, 8501.0], [0.0, 0.0], [0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="center is a scalar"):
        LineList(8500.0, 0.0, 0.0, 0.0)
    lines = random_lines(5, strong=False)
    with pytest.raises(ValueError, match="strictly increasing"):
        lines.plan(np.array([8500.0, 8501.0, 8500.5]))
    with pytest.raises(ValueError, match="non-finite"):
        lines.plan(np.array([8500.0, np.nan, 8502.0]))
    plan = lines.plan(np.linspace(8500, 8520, 1000))
    with pytest.raises(ValueError, match="rebuild it"):
        lines.flux(np.linspace(8500, 8520, 999), plan=plan)


def test_from_npz_validates(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, line_center=np.array([8500.0]), ln_amplitude=np.array([0.0]))
    with pytest.raises(ValueError, match="bad.npz: missing arrays"):
        LineList.from_npz(path)
