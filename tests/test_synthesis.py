"""The one synthesis engine: derivatives by hand in both modes against plain autodiff of
the untruncated product (LineList.flux_exact), absent lines, second derivatives."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspec import LineList
from jaxspec.synthesis import ABSENT_LN_AMPLITUDE, plan_synthesis, stack_wavelengths

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIELDS = ("center", "ln_amplitude", "ln_sigma", "ln_gamma")


def _small_list(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return LineList(
        rng.uniform(8498.0, 8532.0, n),
        np.log(rng.uniform(0.001, 0.3, n)),
        np.log(rng.uniform(0.02, 0.2, n)),
        np.log(rng.uniform(0.01, 0.5, n)),
    )


def _real_window():
    path = DATA / "phoenix_clone_T4700_g4.5_HPF.npz"
    if not path.exists():
        pytest.skip(f"{path} is absent (real PHOENIX clone from ../shared/data)")
    lines = LineList.from_npz(path)
    keep = np.flatnonzero((np.asarray(lines.center) > 8620) & (np.asarray(lines.center) < 8700))
    sub = LineList(*(np.asarray(getattr(lines, k))[keep] for k in FIELDS))
    return sub, 8640.0 + 0.01 * np.arange(4000)


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.fixture(params=["small", "real"])
def case(request):
    if request.param == "small":
        return _small_list(), np.linspace(8500.0, 8530.0, 3000)
    return _real_window()


def test_both_modes_match_autodiff_of_the_untruncated_product(case):
    lines, wl = case
    plan = lines.plan(wl)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=wl.size))

    def fast(ll):
        return ll.flux(wl, plan=plan)

    def exact(ll):
        return ll.flux_exact(wl)

    assert _rel(fast(lines), exact(lines)) < 1e-4
    g = jax.grad(lambda ll: jnp.sum(weights * fast(ll)))(lines)
    g_ref = jax.grad(lambda ll: jnp.sum(weights * exact(ll)))(lines)
    rng = np.random.default_rng(2)
    for name in FIELDS:
        assert np.all(np.isfinite(np.asarray(getattr(g, name))))
        assert _rel(getattr(g, name), getattr(g_ref, name)) < 1e-3, name
        # Forward mode, one field at a time: jvp, linearize and jacfwd agree.
        direction = jax.tree_util.tree_map(jnp.zeros_like, lines)
        t = jnp.asarray(rng.normal(size=lines.n_lines))
        direction = direction.__class__(
            *(t if k == name else getattr(direction, k) for k in FIELDS))
        _, jv = jax.jvp(fast, (lines,), (direction,))
        _, jv_ref = jax.jvp(exact, (lines,), (direction,))
        assert _rel(jv, jv_ref) < 1e-3, name
        _, lin = jax.linearize(fast, lines)
        np.testing.assert_allclose(np.asarray(lin(direction)), np.asarray(jv), atol=1e-6)


def test_jacfwd_and_hessian_match_autodiff():
    lines, wl = _small_list(12), np.linspace(8500.0, 8530.0, 1500)
    plan = lines.plan(wl)

    def with_amplitudes(v, fn):
        ll = LineList(lines.center, lines.ln_amplitude.at[:3].set(v), lines.ln_sigma,
                      lines.ln_gamma)
        return fn(ll)

    fast = lambda ll: ll.flux(wl, plan=plan)  # noqa: E731
    exact = lambda ll: ll.flux_exact(wl)  # noqa: E731
    v0 = lines.ln_amplitude[:3]
    assert _rel(jax.jacfwd(with_amplitudes)(v0, fast),
                jax.jacfwd(with_amplitudes)(v0, exact)) < 1e-3
    assert _rel(jax.jacrev(with_amplitudes)(v0, fast),
                jax.jacrev(with_amplitudes)(v0, exact)) < 1e-3
    loss = lambda v, fn: jnp.sum(jnp.sin(jnp.arange(wl.size) * 0.01)  # noqa: E731
                                 * with_amplitudes(v, fn))
    assert _rel(jax.hessian(loss)(v0, fast), jax.hessian(loss)(v0, exact)) < 1e-3


def test_absent_lines_are_inert_with_finite_derivatives():
    lines, wl = _small_list(10), np.linspace(8500.0, 8530.0, 1000)
    absent = LineList(
        jnp.concatenate([lines.center, jnp.array([8510.0])]),
        jnp.concatenate([lines.ln_amplitude, jnp.array([ABSENT_LN_AMPLITUDE])]),
        jnp.concatenate([lines.ln_sigma, jnp.array([-1.0])]),
        jnp.concatenate([lines.ln_gamma, jnp.array([-1.0])]),
    )
    only = LineList(jnp.array([8510.0]), jnp.array([ABSENT_LN_AMPLITUDE]),
                    jnp.array([-1.0]), jnp.array([-1.0]))
    np.testing.assert_array_equal(np.asarray(only.flux(wl)), 1.0)
    plan = absent.plan(wl)
    np.testing.assert_allclose(np.asarray(absent.flux(wl, plan=plan)),
                               np.asarray(lines.flux(wl)), atol=1e-7)
    g = jax.grad(lambda ll: jnp.sum(ll.flux(wl, plan=plan)))(absent)
    for name in FIELDS:
        assert np.all(np.isfinite(np.asarray(getattr(g, name))))
        assert float(getattr(g, name)[-1]) == 0.0


def test_vmap_over_line_lists_and_float64_wavelengths():
    lines, wl = _small_list(8), np.linspace(8500.0, 8530.0, 800)
    batch = jax.tree_util.tree_map(lambda v: jnp.stack([v, v + 1e-3]), lines)
    plan = batch.plan(wl)
    assert plan.levels[0].wavelength.dtype == jnp.float64
    out = jax.vmap(lambda ll: ll.flux(wl, plan=plan))(batch)
    ref = jnp.stack([LineList(*(getattr(batch, k)[i] for k in FIELDS)).flux_exact(wl)
                     for i in range(2)])
    assert _rel(out, ref) < 1e-4
    grads = jax.vmap(jax.grad(lambda ll: jnp.sum(ll.flux(wl, plan=plan))))(batch)
    assert np.all(np.isfinite(np.asarray(grads.ln_gamma)))


def test_layout_reuse_and_stacked_batches():
    wl = np.linspace(8500.0, 8530.0, 2000)
    a, b = _small_list(30, seed=3), _small_list(28, seed=4)
    plans = [plan_synthesis(wl, np.asarray(x.ln_amplitude), np.asarray(x.ln_sigma),
                            np.asarray(x.ln_gamma), np.asarray(x.center), reuse=True)
             for x in (a, b)]
    # Similar problems on one grid share a bucket layout (one compiled program).
    assert plans[0].layout() == plans[1].layout()
    for x, plan in zip((a, b), plans):
        flux = plan(x.center, x.ln_amplitude, x.ln_sigma, x.ln_gamma)
        assert _rel(flux, x.flux_exact(wl)) < 1e-4
    # Two spectra end to end on one long grid, a wing cut shorter than the gap: no line
    # reaches the other copy, and each copy is its own spectrum.
    long_wl, delta = stack_wavelengths(wl, 2, gap=3000)
    both = LineList(jnp.concatenate([a.center, b.center + delta]),
                    *(jnp.concatenate([getattr(a, k), getattr(b, k)]) for k in FIELDS[1:]))
    plan = both.plan(long_wl, wing_cut=1000)
    flux = both.flux(long_wl, plan=plan)
    alone = both.ln_amplitude.at[a.n_lines:].set(ABSENT_LN_AMPLITUDE)
    flux_a = plan(both.center, alone, both.ln_sigma, both.ln_gamma)
    start = wl.size + 3000
    np.testing.assert_allclose(np.asarray(flux[:wl.size]), np.asarray(flux_a[:wl.size]),
                               atol=1e-6)
    np.testing.assert_array_equal(np.asarray(flux_a[start:]), 1.0)
    assert _rel(flux[:wl.size], a.flux_exact(wl)) < 5e-3  # only the cut wings differ
    assert _rel(flux[start:start + wl.size], b.flux_exact(wl)) < 5e-3


@pytest.mark.parametrize("grid", ["stacked", "kinked"])
def test_fixed_windows_match_the_untruncated_product_in_both_modes(grid):
    """Fixed windows (the clone's plan: placed at planning centres, widened by the centre
    span, offsets precomputed, cut into chunks: one bucket per level) give the flux and
    derivatives of autodiff of the untruncated product for centres moved within the span:
    on a log-linear grid stacked with a copy of itself (the clone's batch layout; the
    junction stays smooth) and on a grid whose spacing jumps (wavelength-space
    interpolation weights)."""
    wl0 = 8500.0 * np.exp(np.arange(3000) * 1e-6)  # log-linear, 0.0085 Å pixels
    if grid == "stacked":
        wl, delta = stack_wavelengths(wl0, 2, gap=1500)
        assert np.all(np.abs(np.diff(np.diff(wl)) / np.diff(wl)[:-1]) < 1e-3)
    else:
        wl, delta = np.r_[wl0, wl0[-1] + 0.012 * np.arange(1, 3001)], wl0[-1] - wl0[0]
    lines = _small_list(30, seed=5)
    c0 = np.asarray(lines.center) - 8498.0 + wl0[0]
    c0 = np.r_[c0, c0[:10] + delta]  # ten lines in the second part too
    pick = np.r_[np.arange(30), np.arange(10)]
    ln_a, ln_s, ln_g = (np.asarray(getattr(lines, k))[pick] for k in FIELDS[1:])
    span = 0.05
    plan = plan_synthesis(wl, ln_a + 0.3, ln_s + 0.3, ln_g + 0.3, c0,
                          center_span=(c0 - span, c0 + span), fixed_windows=True,
                          tolerance=1e-6, any_shape=True)
    assert all(len(level) == 1 for level in plan.layout())
    assert (plan.levels[0].cell_weights is None) == (grid == "stacked")
    shift = np.random.default_rng(2).uniform(-span, span, c0.size)
    params = tuple(jnp.asarray(v) for v in (c0 + shift, ln_a, ln_s, ln_g))
    weights = jnp.asarray(np.random.default_rng(3).normal(size=wl.size))

    def loss(*p):
        return jnp.sum(weights * plan.log_flux(*p))

    def loss_exact(*p):
        return jnp.sum(weights * jnp.log(LineList(*p).flux_exact(wl)))

    assert _rel(plan.log_flux(*params), jnp.log(LineList(*params).flux_exact(wl))) < 1e-4
    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*params)
    refs = jax.grad(loss_exact, argnums=(0, 1, 2, 3))(*params)
    for got, ref in zip(grads, refs):
        assert _rel(got, ref) < 1e-3
    tangent = jnp.asarray(np.random.default_rng(4).normal(size=c0.size))
    got = jax.jvp(lambda c: plan.log_flux(c, *params[1:]), (params[0],), (tangent,))[1]
    ref = jax.jvp(lambda c: jnp.log(LineList(c, *params[1:]).flux_exact(wl)),
                  (params[0],), (tangent,))[1]
    assert _rel(got, ref) < 1e-3


def test_bad_planning_options_are_named():
    wl = np.linspace(8500.0, 8530.0, 500)
    x = _small_list(5)
    args = (wl, np.asarray(x.ln_amplitude), np.asarray(x.ln_sigma), np.asarray(x.ln_gamma),
            np.asarray(x.center))
    with pytest.raises(ValueError, match="headroom"):
        plan_synthesis(*args, reuse=True, headroom=-0.1)
    with pytest.raises(ValueError, match="chunk"):
        plan_synthesis(*args, fixed_windows=True, chunk=0)
    with pytest.raises(ValueError, match="chunk"):
        plan_synthesis(*args, fixed_windows=True, chunk=2.5)


def test_fast_exp_and_log_match_numpy():
    """The engine's polynomial exp(z <= 0) and ln(1 - d), and their derivatives."""
    from jaxspec.synthesis import _exp_neg, _log1p_neg

    rng = np.random.default_rng(5)
    d = np.concatenate([np.logspace(-12, np.log10(1 - 1e-7), 20000),
                        rng.uniform(0, 1, 20000)]).astype(np.float32)
    ref = np.log1p(-d.astype(np.float64))
    got = np.asarray(jax.jit(_log1p_neg)(jnp.asarray(d)), np.float64)
    assert np.max(np.abs(got - ref) / np.abs(np.where(ref == 0, 1, ref))) < 5e-7
    assert float(_log1p_neg(jnp.float32(0.0))) == 0.0
    z = -np.concatenate([np.logspace(-10, 2, 20000), rng.uniform(0, 80, 20000)]).astype(
        np.float32)
    ref = np.exp(z.astype(np.float64))
    got = np.asarray(jax.jit(_exp_neg)(jnp.asarray(z)), np.float64)
    # relative 1e-7 plus the float32 rounding of z log2 e, 6e-8 |z log2 e|
    assert np.all(np.abs(got - ref) <= ref * (3e-7 + 1.2e-7 * np.abs(z) * 1.4427) + 1e-37)
    assert float(_exp_neg(jnp.float32(-200.0))) == 0.0
    assert np.isnan(float(_exp_neg(jnp.float32(np.nan))))  # bad input stays visible
    assert np.isnan(float(_log1p_neg(jnp.float32(np.nan))))
    np.testing.assert_allclose(jax.vmap(jax.grad(_exp_neg))(jnp.asarray(z[:100])),
                               np.exp(z[:100]), rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(jax.grad(_log1p_neg))(jnp.asarray(d[:100])),
                               -1.0 / (1.0 - d[:100].astype(np.float64)), rtol=1e-5)
