"""Tests for jaxspec.profiles and the exact Voigt profile in jaxspec._faddeeva."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

import jaxspec  # noqa: F401  (enables float64)
from jaxspec import profiles
from jaxspec._faddeeva import faddeeva, voigt_profile

WIDTHS = np.logspace(-4, 2, 13)  # Å, sigma and gamma each, all combinations
GRAD_WIDTHS = np.array([1e-4, 1e-2, 1.0, 1e2])


def _width_grid(widths):
    sigma, gamma = np.meshgrid(widths, widths, indexing="ij")
    return sigma.ravel(), gamma.ravel()


def _offsets():
    """x in [-1e3, 1e3] Å: log-spaced near the centre plus a linear sweep, both signs."""
    pos = np.concatenate([[0.0], np.logspace(-7, 3, 400), np.linspace(0.0, 1e3, 201)[1:]])
    return np.concatenate([-pos[::-1], pos])


# ---------------------------------------------------------------- normalisation


def _integral(profile, width, *params, n=20_001):
    """∫ profile dx over the whole real line via x = width·tan θ (midpoint rule in θ).

    The substitution maps the infinite line onto (-π/2, π/2), so the Lorentzian wings are
    integrated exactly rather than cut at a finite grid edge.
    """
    theta = (np.arange(n) + 0.5) * (np.pi / n) - 0.5 * np.pi
    x = width[:, None] * np.tan(theta)[None, :]
    jac = width[:, None] / np.cos(theta)[None, :] ** 2
    vals = np.asarray(jax.jit(profile)(x, *(p[:, None] for p in params)))
    return (vals * jac).sum(axis=1) * (np.pi / n)


@pytest.mark.parametrize(
    "name", ["gaussian", "lorentzian", "pseudo_voigt", "voigt"]
)
def test_area_normalised(name):
    sigma, gamma = _width_grid(np.array([1e-3, 0.1, 1.0, 30.0]))
    width = np.asarray(profiles.pseudo_voigt_fwhm(sigma, gamma))
    fn = getattr(profiles, name)
    if name == "gaussian":
        area = _integral(fn, sigma, sigma)
    elif name == "lorentzian":
        area = _integral(fn, gamma, gamma)
    else:
        area = _integral(fn, width, sigma, gamma)
    np.testing.assert_allclose(area, 1.0, rtol=1e-6)


# ---------------------------------------------------------------- exact Voigt


def test_voigt_matches_scipy():
    sigma, gamma = _width_grid(WIDTHS)  # gamma/sigma from 1e-6 to 1e6
    x = _offsets()
    got = np.asarray(jax.jit(profiles.voigt)(x[None, :], sigma[:, None], gamma[:, None]))
    ref = scipy.special.voigt_profile(x[None, :], sigma[:, None], gamma[:, None])
    assert np.all(np.isfinite(got))
    tested = ref > 1e-30
    assert tested.mean() > 0.9
    rel = np.abs(got - ref)[tested] / ref[tested]
    print(f"voigt vs scipy.special.voigt_profile: max relative error {rel.max():.3e}")
    assert rel.max() <= 1e-6
    # Deep wings below 1e-30 still finite, non-negative and close.
    deep = (ref > 1e-300) & ~tested
    if deep.any():
        assert np.all(got[deep] >= 0.0)
        np.testing.assert_allclose(got[deep], ref[deep], rtol=1e-6)


def test_voigt_limits():
    x = np.linspace(-5.0, 5.0, 101)
    sigma = np.array([1.0, 1e-6, 0.7])[:, None]
    gamma = np.array([1e-14, 1.0, 0.0])[:, None]
    v = np.asarray(jax.jit(profiles.voigt)(x[None, :], sigma, gamma))
    # gamma -> 0: Gaussian (the Lorentzian wing ~ gamma / (pi x^2) stays below 1e-8 rel.);
    # sigma -> 0: Lorentzian (corrections O(sigma^2 / gamma^2)); gamma = 0 is the Gaussian.
    np.testing.assert_allclose(v[0], profiles.gaussian(x, 1.0), rtol=1e-8)
    np.testing.assert_allclose(v[1], profiles.lorentzian(x, 1.0), rtol=1e-9)
    np.testing.assert_allclose(v[2], profiles.gaussian(x, 0.7), rtol=1e-13)


def test_voigt_float32():
    sigma, gamma = _width_grid(np.array([1e-3, 1.0, 50.0]))
    x = np.linspace(-100.0, 100.0, 2001, dtype=np.float32)
    got = jax.jit(profiles.voigt)(
        x[None, :], sigma[:, None].astype(np.float32), gamma[:, None].astype(np.float32)
    )
    assert got.dtype == jnp.float32
    ref = scipy.special.voigt_profile(x[None, :], sigma[:, None], gamma[:, None])
    tested = ref > 1e-30
    got = np.asarray(got, dtype=np.float64)
    assert np.all(np.isfinite(got))
    assert np.max(np.abs(got - ref)[tested] / ref[tested]) < 1e-4


def test_faddeeva_matches_scipy():
    re = np.concatenate([-np.logspace(-3, 3, 60)[::-1], [0.0], np.logspace(-3, 3, 60)])
    im = np.concatenate([-np.logspace(-3, 1.2, 40)[::-1], [0.0], np.logspace(-8, 4, 60)])
    z = re[:, None] + 1j * im[None, :]
    got = np.asarray(jax.jit(faddeeva)(z))
    assert got.dtype == np.complex128
    ref = scipy.special.wofz(z)
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    upper = z.imag >= 0
    np.testing.assert_allclose(got.real[upper], ref.real[upper], rtol=1e-10)
    # Real input gives w(x) = exp(-x^2) + 2i D(x)/sqrt(pi).
    xr = np.linspace(-20.0, 20.0, 401)
    fad = jax.jit(faddeeva)
    np.testing.assert_allclose(fad(xr), scipy.special.wofz(xr), rtol=1e-12, atol=1e-300)
    assert fad(jnp.asarray(xr, jnp.float32)).dtype == jnp.complex64


def test_voigt_gradient_values():
    """jax.grad of the Voigt against the analytic w'(z) = -2z w(z) + 2i/sqrt(pi)."""
    sigma, gamma = _width_grid(np.array([0.03, 0.5, 2.0]))
    x = np.tile(np.array([0.0, 0.2, 1.5, 7.0]), sigma.size)
    sigma, gamma = np.repeat(sigma, 4), np.repeat(gamma, 4)
    grad = jax.jit(jax.vmap(jax.grad(profiles.voigt, argnums=(0, 1, 2))))
    gx, gs, gg = (np.asarray(g) for g in grad(x, sigma, gamma))

    s2 = sigma * math.sqrt(2.0)
    z = (x + 1j * gamma) / s2
    w = scipy.special.wofz(z)
    dw = -2.0 * z * w + 2j / math.sqrt(math.pi)
    norm = 1.0 / (sigma * math.sqrt(2.0 * math.pi))
    ref_x = (dw / s2).real * norm
    ref_g = (1j * dw / s2).real * norm
    ref_s = -w.real * norm / sigma + (dw * (-z / sigma)).real * norm
    scale = w.real * norm / np.minimum(sigma, gamma)  # V / width: natural gradient scale
    for got, ref in ((gx, ref_x), (gs, ref_s), (gg, ref_g)):
        assert np.max(np.abs(got - ref) / scale) < 1e-8


# ---------------------------------------------------------------- pseudo-Voigt


def test_pseudo_voigt_close_to_voigt():
    ratio = np.logspace(-2, 2, 41)  # sigma / gamma
    sigma, gamma = np.sqrt(ratio), 1.0 / np.sqrt(ratio)
    f = np.asarray(profiles.pseudo_voigt_fwhm(sigma, gamma))
    x = np.linspace(-10.0, 10.0, 8001)[None, :] * f[:, None]
    pv = np.asarray(jax.jit(profiles.pseudo_voigt)(x, sigma[:, None], gamma[:, None]))
    v = np.asarray(jax.jit(profiles.voigt)(x, sigma[:, None], gamma[:, None]))
    peak = v[:, x.shape[1] // 2]  # x = 0
    dev = np.max(np.abs(pv - v), axis=1) / peak
    print(f"pseudo-Voigt vs exact Voigt: max |pV - V| / V(0) = {dev.max():.4f}")
    assert dev.max() < 0.015


def test_pseudo_voigt_limits():
    x = np.linspace(-6.0, 6.0, 241)
    for sigma in (1e-3, 1.0, 20.0):
        g = profiles.gaussian(x * sigma, sigma)
        pv = profiles.pseudo_voigt(x * sigma, sigma, 1e-7 * sigma)
        assert np.max(np.abs(pv - g)) / g.max() < 1e-5
        lor = profiles.lorentzian(x * sigma, sigma)
        pv = profiles.pseudo_voigt(x * sigma, 1e-7 * sigma, sigma)
        assert np.max(np.abs(pv - lor)) / lor.max() < 1e-5


def test_pseudo_voigt_fwhm_is_fwhm():
    ratio = np.logspace(-3, 3, 61)
    sigma, gamma = _width_grid(np.array([1e-4, 1.0, 1e2]))
    sigma = np.concatenate([sigma, np.sqrt(ratio)])
    gamma = np.concatenate([gamma, 1.0 / np.sqrt(ratio)])
    f = np.asarray(profiles.pseudo_voigt_fwhm(sigma, gamma))
    pv = jax.jit(profiles.pseudo_voigt)
    half = 0.5 * np.asarray(pv(0.0, sigma, gamma))
    # Vectorised bisection for the half-maximum point on x > 0.
    lo, hi = np.zeros_like(f), 4.0 * f
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        above = np.asarray(pv(mid, sigma, gamma)) > half
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    np.testing.assert_allclose(2.0 * lo, f, rtol=1e-3)
    # Symmetric, so the left half-maximum point mirrors it.
    np.testing.assert_allclose(np.asarray(pv(-0.5 * f, sigma, gamma)), half, rtol=1e-9)


def test_pseudo_voigt_eta_range():
    sigma, gamma = _width_grid(WIDTHS)
    eta = np.asarray(profiles.pseudo_voigt_eta(sigma, gamma))
    assert np.all((eta >= 0.0) & (eta <= 1.0 + 1e-12))


# ---------------------------------------------------------------- transformations


def _profile_and_args(name, x, sigma, gamma):
    if name == "gaussian":
        return profiles.gaussian, (x, sigma)
    if name == "lorentzian":
        return profiles.lorentzian, (x, gamma)
    return getattr(profiles, name), (x, sigma, gamma)


@pytest.mark.parametrize("name", ["gaussian", "lorentzian", "pseudo_voigt", "voigt"])
def test_gradients_finite(name):
    sigma, gamma = _width_grid(GRAD_WIDTHS)
    width = np.maximum(sigma, gamma)
    offsets = np.array([0.0, 1e-3, 0.7, 5.0, 300.0])  # in units of the larger width
    x = (offsets[:, None] * width[None, :]).ravel()
    sigma = np.tile(sigma, offsets.size)
    gamma = np.tile(gamma, offsets.size)
    fn, args = _profile_and_args(name, x, sigma, gamma)
    grads = jax.jit(jax.vmap(jax.grad(fn, argnums=tuple(range(len(args))))))(*args)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    # Symmetry: zero slope at the line centre, up to rounding (scale: value / width).
    at_centre = x == 0.0
    value = np.asarray(jax.jit(fn)(*args))
    scale = value / np.minimum(sigma, gamma)
    assert np.all(np.abs(np.asarray(grads[0]))[at_centre] <= 1e-12 * scale[at_centre])


@pytest.mark.parametrize("name", ["gaussian", "lorentzian", "pseudo_voigt", "voigt"])
def test_jit_and_vmap(name):
    x = np.linspace(-3.0, 3.0, 7)
    sigma = np.array([0.3, 1.0, 2.0])
    gamma = np.array([0.1, 0.5, 4.0])
    fn, _ = _profile_and_args(name, x, sigma, gamma)
    widths = {"gaussian": (sigma,), "lorentzian": (gamma,)}.get(name, (sigma, gamma))
    if name == "voigt":  # eager Voigt would compile op by op; scipy is the reference
        expected = scipy.special.voigt_profile(x[None, :], sigma[:, None], gamma[:, None])
    else:
        expected = np.asarray(fn(x[None, :], *(w[:, None] for w in widths)))
    jitted = np.asarray(jax.jit(fn)(x[None, :], *(w[:, None] for w in widths)))
    in_axes = (None,) + (0,) * len(widths)
    mapped = np.asarray(jax.jit(jax.vmap(fn, in_axes=in_axes))(x, *widths))
    assert jitted.shape == mapped.shape == (3, 7)
    np.testing.assert_allclose(jitted, expected, rtol=1e-12)
    np.testing.assert_allclose(mapped, jitted, rtol=1e-13)
