r"""Faddeeva function :math:`w(z)` and the exact Voigt profile, in pure JAX.

The Faddeeva (plasma dispersion, Kramp) function is

.. math:: w(z) = e^{-z^2} \operatorname{erfc}(-iz)
               = e^{-z^2} + \frac{2i}{\sqrt{\pi}} D(z),

with :math:`D(z) = e^{-z^2}\int_0^z e^{t^2}\,dt` Dawson's integral (Abramowitz & Stegun
1964, eq. 7.1.3 and §7.1). For :math:`z = x + iy`, :math:`\operatorname{Re} w` is the
Voigt function, so the area-normalised Voigt profile is

.. math:: V(x; \sigma, \gamma) = \frac{\operatorname{Re} w(z)}{\sigma\sqrt{2\pi}},
          \qquad z = \frac{x + i\gamma}{\sigma\sqrt{2}}.

Algorithm (upper half-plane, :math:`y \ge 0`; the lower half-plane uses
:math:`w(z) = 2e^{-z^2} - w(-z)`). Three approximations, each used where it keeps the
*real part* accurate to ~1e-13 relative in float64, also in the far Lorentzian wings where
:math:`\operatorname{Re} w \approx y / (\sqrt{\pi}|z|^2)` is many orders below
:math:`|w|`:

1. ``y < 1`` and ``|x| < 12`` (near the real axis, Gaussian core and its transition to
   the wings): :math:`w = e^{-z^2} + (2i/\sqrt{\pi}) D(z)`, with :math:`e^{-z^2}` exact and
   :math:`D(z)` from Rybicki's sampling-theorem sum (Rybicki 1989; Press et al.,
   Numerical Recipes, "Dawson's integral"), which holds for complex ``z``:

   .. math:: D(z) \approx \frac{1}{\sqrt{\pi}} \sum_{n\ \mathrm{odd}}
             \frac{e^{-(z - nh)^2}}{n}, \qquad h = 0.2,

   shifted by the even multiple of ``h`` nearest ``x`` and truncated at
   :math:`|n - n_0| \le 33`. Writing ``Re w`` as :math:`\operatorname{Re} e^{-z^2}` plus
   the small Dawson part avoids the absolute-error floor of rational approximations,
   which would swamp the tiny Lorentzian term when ``y`` is small.
2. ``y >= 1`` and ``|z| < 8``: Weideman's (1994) rational approximation with
   ``N = 40`` terms,

   .. math:: w(z) \approx \frac{2\sum_{n=0}^{N-1} a_{n+1} Z^n}{(L - iz)^2}
             + \frac{1}{\sqrt{\pi}(L - iz)}, \qquad Z = \frac{L + iz}{L - iz},
             \quad L = 2^{-1/4}\sqrt{N},

   coefficients :math:`a_n` computed once at import by the FFT recipe of Weideman's
   published program.
3. Everywhere else (``|z| >= 8``, or ``|x| >= 12``; plus :math:`e^{-z^2}` when
   ``y < 1``, which matters only for ``y`` → 0): the Laplace continued fraction
   (Gautschi 1970; Poppe & Wijers 1990, ACM TOMS 16, 38),

   .. math:: w(z) = \frac{i}{\sqrt{\pi}}\cfrac{1}{z - \cfrac{1/2}{z - \cfrac{1}{z -
             \cfrac{3/2}{z - \cdots}}}},

   truncated after 16 levels. Every level adds a positive imaginary part, so the real
   part of ``w`` keeps full relative precision for tiny ``y``.

The branches are selected with the "double where" trick (each branch gets a harmless
input where it is not used), so values and gradients stay finite everywhere.

Measured against ``scipy.special.voigt_profile`` (S. G. Johnson's Faddeeva package):
max relative error 8e-14 for sigma, gamma in 1e-4..1e2 Å (all combinations) and
``|x| <= 1e3`` Å, wings included; ``scipy.special.wofz`` agrees to ~1e-14 in the upper
half-plane. float32 inputs give float32 (complex64) results, relative error ~1e-5.

References:
    Weideman, J. A. C. 1994, SIAM J. Numer. Anal. 31, 1497, "Computation of the complex
    error function".
    Rybicki, G. B. 1989, Computers in Physics 3(2), 85, "Dawson's integral and the
    sampling theorem".
    Gautschi, W. 1970, SIAM J. Numer. Anal. 7, 187, "Efficient computation of the
    complex error function".
    Poppe, G. P. M. & Wijers, C. M. J. 1990, ACM Trans. Math. Softw. 16, 38.
    Abramowitz, M. & Stegun, I. A. 1964, Handbook of Mathematical Functions, ch. 7.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Complex, Float

__all__ = ["faddeeva", "voigt_profile"]

_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# Region boundaries (dimensionless z = x + iy).
_RYBICKI_Y_MAX = 1.0
_RYBICKI_X_MAX = 12.0
_CF_ABS_Z_MIN = 8.0

# Rybicki: sampling step h and weights exp(-(m h)^2) for odd m = 1, 3, ..., 33; the
# first omitted weight, exp(-(35 h)^2) ~ 5e-22, is below double precision even after the
# exp(2 m h x') growth of its partner term.
_RYBICKI_H = 0.2
_RYBICKI_C = tuple(math.exp(-((m * _RYBICKI_H) ** 2)) for m in range(1, 35, 2))

_CF_DEPTH = 16

_WEIDEMAN_N = 40


def _weideman_coefficients(n: int) -> tuple[tuple[float, ...], float]:
    """Coefficients ``a_1..a_N`` (highest power first) and ``L`` of Weideman (1994).

    Direct transcription of the FFT recipe in Weideman's paper (section 5 program).
    """
    m = 2 * n
    k = np.arange(-m + 1, m)
    big_l = math.sqrt(n / math.sqrt(2.0))
    t = big_l * np.tan(0.5 * k * np.pi / m)
    f = np.concatenate([[0.0], np.exp(-t * t) * (big_l * big_l + t * t)])
    a = np.real(np.fft.fft(np.fft.fftshift(f))) / (2 * m)
    return tuple(float(c) for c in a[1 : n + 1][::-1]), big_l


_WEIDEMAN_A, _WEIDEMAN_L = _weideman_coefficients(_WEIDEMAN_N)


def _complex(re: Array, im: Array) -> Array:
    """Complex array from real and imaginary parts of one float dtype."""
    return lax.complex(re, im)


def _w_rybicki(x: Array, y: Array) -> Array:
    """``w(x + iy)`` near the real axis (``0 <= y < 1``, ``|x| < 12``), see module doc."""
    h = _RYBICKI_H
    # Even multiple of h nearest x; round() has zero derivative, so d(xp)/dx = 1.
    n0 = 2.0 * jnp.round(x / (2.0 * h))
    zp = _complex(x - n0 * h, y)
    e1 = jnp.exp(2.0 * h * zp)
    e1_inv = 1.0 / e1
    e2 = e1 * e1
    e2_inv = e1_inv * e1_inv
    real = x.dtype
    coeff = jnp.asarray(_RYBICKI_C, real)

    # exp(-(zp - m h)^2) = exp(-zp^2) exp(-(m h)^2) e1^m; pairs +m and -m share c_m.
    def body(i, carry):
        total, e_pos, e_neg = carry
        m = (2 * i + 1).astype(real)
        total = total + coeff[i] * (e_pos / (n0 + m) + e_neg / (n0 - m))
        return total, e_pos * e2, e_neg * e2_inv

    # fori_loop rather than a Python loop: the same speed within 2x, 10x faster compile.
    total, _, _ = lax.fori_loop(0, len(_RYBICKI_C), body, (jnp.zeros_like(zp), e1, e1_inv))
    dawson = _INV_SQRT_PI * jnp.exp(-zp * zp) * total
    z = _complex(x, y)
    return jnp.exp(-z * z) + (2.0j * _INV_SQRT_PI) * dawson


def _w_weideman(z: Array) -> Array:
    """``w(z)`` by Weideman's (1994) rational approximation, ``Im z >= 0``."""
    big_l = _WEIDEMAN_L
    denom = big_l - 1j * z
    zz = (big_l + 1j * z) / denom
    coeff = jnp.asarray(_WEIDEMAN_A, jnp.real(z).dtype)
    # Horner's rule in Z, highest power first.
    poly = lax.fori_loop(0, len(_WEIDEMAN_A), lambda i, p: p * zz + coeff[i], jnp.zeros_like(z))
    return 2.0 * poly / (denom * denom) + _INV_SQRT_PI / denom


def _w_continued_fraction(z: Array) -> Array:
    """``w(z)`` by the Laplace continued fraction, large ``|z|``, ``Im z >= 0``."""
    real = jnp.real(z).dtype

    def body(i, u):
        return z - (0.5 * (_CF_DEPTH - i)).astype(real) / u

    u = lax.fori_loop(0, _CF_DEPTH, body, z)
    return (1j * _INV_SQRT_PI) / u


def _faddeeva_upper(x: Array, y: Array) -> Array:
    """``w(x + iy)`` for real arrays ``x`` and ``y >= 0`` of one float dtype."""
    ax = jnp.abs(x)
    abs_z2 = x * x + y * y
    use_rybicki = (y < _RYBICKI_Y_MAX) & (ax < _RYBICKI_X_MAX)
    use_cf = ~use_rybicki & (abs_z2 >= _CF_ABS_Z_MIN**2)
    use_weideman = ~use_rybicki & ~use_cf

    # Double where: each branch sees a benign point where it is not selected, so its
    # (discarded) value and gradient cannot be inf/NaN.
    zero = jnp.zeros_like(x)
    x_r = jnp.where(use_rybicki, x, zero)
    y_r = jnp.where(use_rybicki, y, zero)
    z = _complex(x, y)
    z_w = jnp.where(use_weideman, z, _complex(zero, zero + 2.0))
    z_c = jnp.where(use_cf, z, _complex(zero, zero + 10.0))

    # Next to the real axis (y < 1, so here |x| >= 12) add exp(-z^2), the Gaussian core
    # that lies beyond all orders of the continued fraction: negligible (< 1e-62
    # relative) unless y is essentially 0, where it is the whole real part of w.
    near_axis = use_cf & (y < _RYBICKI_Y_MAX)
    z_n = jnp.where(near_axis, z, _complex(zero + _RYBICKI_X_MAX, zero))

    w_r = _w_rybicki(x_r, y_r)
    w_w = _w_weideman(z_w)
    w_c = _w_continued_fraction(z_c) + jnp.where(near_axis, jnp.exp(-z_n * z_n), 0.0)
    return jnp.where(use_rybicki, w_r, jnp.where(use_cf, w_c, w_w))


def faddeeva(z: ArrayLike) -> Complex[Array, "..."]:
    r"""Faddeeva function :math:`w(z) = e^{-z^2}\operatorname{erfc}(-iz)`.

    See the module docstring for the algorithm (Rybicki 1989 sum near the real axis,
    Weideman 1994 rational approximation in the core, Laplace continued fraction for
    large :math:`|z|`). For :math:`\operatorname{Im} z < 0` it uses
    :math:`w(z) = 2e^{-z^2} - w(-z)`, which overflows once
    :math:`(\operatorname{Im} z)^2 - (\operatorname{Re} z)^2 \gtrsim 709`, as ``w`` itself does.

    Args:
        z: complex (or real) argument, dimensionless, any shape.

    Returns:
        ``w(z)``, same shape; complex128 for float64/complex128 input, complex64 for
        float32/complex64 input. Accurate to ~1e-13 relative in the real part for
        ``Im z >= 0`` in double precision.
    """
    z = jnp.asarray(z)
    real_dtype = jnp.finfo(jnp.result_type(z, float)).dtype
    x = jnp.real(z).astype(real_dtype)
    y = jnp.imag(z).astype(real_dtype) if jnp.iscomplexobj(z) else jnp.zeros_like(x)
    lower = y < 0
    w_up = _faddeeva_upper(jnp.where(lower, -x, x), jnp.abs(y))
    zero = jnp.zeros_like(x)
    z_low = _complex(jnp.where(lower, x, zero), jnp.where(lower, y, zero))
    return jnp.where(lower, 2.0 * jnp.exp(-z_low * z_low) - w_up, w_up)


def voigt_profile(x: ArrayLike, sigma: ArrayLike, gamma: ArrayLike) -> Float[Array, "..."]:
    r"""Exact, area-normalised Voigt profile (Gaussian ⊗ Lorentzian).

    .. math::
        V(x; \sigma, \gamma) = \int G(x'; \sigma)\, L(x - x'; \gamma)\, dx'
        = \frac{\operatorname{Re} w(z)}{\sigma\sqrt{2\pi}},
        \qquad z = \frac{x + i\gamma}{\sigma\sqrt{2}},

    with ``w`` the Faddeeva function (:func:`faddeeva`; Armstrong 1967, JQSRT 7, 61;
    same convention as ``scipy.special.voigt_profile``).

    Args:
        x: offset from the line centre, Å, any shape.
        sigma: Gaussian standard deviation, Å, > 0, broadcastable against ``x``.
        gamma: Lorentzian half width at half maximum, Å, >= 0, broadcastable against ``x``.

    Returns:
        Profile values, Å⁻¹, shape ``broadcast(x, sigma, gamma)``; float64 for float64
        input, float32 if all inputs are float32. Relative error ≲ 1e-13 (float64) against
        ``scipy.special.voigt_profile`` for widths 1e-4..1e2 Å and ``|x| <= 1e3`` Å.
        Differentiable in all three arguments.
    """
    dtype = jnp.result_type(x, sigma, gamma, float)
    x = jnp.asarray(x, dtype)
    sigma = jnp.asarray(sigma, dtype)
    gamma = jnp.asarray(gamma, dtype)
    inv = 1.0 / (sigma * math.sqrt(2.0))
    w = _faddeeva_upper(*jnp.broadcast_arrays(x * inv, gamma * inv))
    return jnp.real(w) * (_INV_SQRT_2PI / sigma)
