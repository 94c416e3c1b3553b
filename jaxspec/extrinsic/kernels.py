r"""The extrinsic kernels: the Doppler factor, rotation and the line-spread function.

The maths of each, and the order the chain applies them in, are in the docstring of
:mod:`jaxspec.extrinsic`. Here: the relativistic Doppler factor (Rybicki & Lightman 1979,
sect. 4.1), the Fourier transforms of Gray's rotation kernel (Gray 2005, eq. 18.14) and of
a Gaussian LSF of resolving power R, a tabulated LSF integrated over velocity bins, the
kernels' half widths in internal steps, and the checks of their parameters (v sin i, R,
limb darkening ε, the RV range) with the messages users see.

Units: wavelengths Å (float64), velocities km/s, R dimensionless.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxspec.profiles import FWHM_PER_SIGMA

__all__ = [
    "C_KMS",
    "LSF_SIGMAS",
    "check_epsilon",
    "check_resolution",
    "check_rv_range",
    "check_vsini",
    "doppler_factor",
    "doppler_shift",
    "gaussian_transfer",
    "rotation_transfer",
    "tabulated_kernel",
]

#: Speed of light, km/s.
C_KMS = 299_792.458
#: The Gaussian LSF is cut at this many σ (mass beyond: 2e-9; the kernel is renormalised).
LSF_SIGMAS = 6.0


# ----------------------------------------------------------------------------- Doppler


def doppler_factor(rv):
    r"""Relativistic Doppler factor :math:`D = \lambda_{obs}/\lambda_{rest}`.

    .. math:: D = \sqrt{\frac{1+\beta}{1-\beta}} = e^{\operatorname{artanh}\beta},
        \qquad \beta = v_r / c

    (Rybicki & Lightman 1979, sect. 4.1; source moving along the line of sight,
    receding for :math:`v_r > 0`).

    Args:
        rv: radial velocity, km/s, scalar or any shape, :math:`|v_r| < c`.

    Returns:
        D, same shape, dimensionless.
    """
    return jnp.exp(jnp.arctanh(jnp.asarray(rv, dtype=jnp.float64) / C_KMS))


def doppler_shift(wavelength, rv):
    r"""Rest-frame wavelengths → observed ones: :math:`\lambda_{obs} = D(v_r)\,\lambda`.

    Args:
        wavelength: ``(n,)`` Å (float64).
        rv: radial velocity, km/s (scalar).

    Returns:
        ``(n,)`` float64 Å.
    """
    return jnp.asarray(wavelength, dtype=jnp.float64) * doppler_factor(rv)


# ----------------------------------------------------------------------------- kernels


#: Step of the tabulated rotation transfer function in ω (cubic Hermite error ~1e-8).
_OMEGA_STEP = 0.05


def rotation_transfer(omega, epsilon: float = 0.6):
    r"""Fourier transform of Gray's rotation kernel, and its derivative (host, SciPy).

    With :math:`\omega = 2\pi\nu\, v\sin i` (ν in cycles per km/s), the transform of
    :math:`G` (:mod:`jaxspec.extrinsic`; Gray 2005 eq. 18.14) is

    .. math:: \hat G(\omega) = \frac{2(1-\varepsilon)\,J_1(\omega)/\omega
        + 2\varepsilon\, j_1(\omega)/\omega}{1 - \varepsilon/3},

    from :math:`\int_{-1}^{1}\sqrt{1-x^2}\cos\omega x\,dx = \pi J_1(\omega)/\omega` and
    :math:`\int_{-1}^{1}(1-x^2)\cos\omega x\,dx = 4 j_1(\omega)/\omega` (:math:`J_1`
    the Bessel and :math:`j_1` the spherical Bessel function of the first kind);
    :math:`\hat G(0) = 1`. Its derivative uses :math:`(x^{-n}J_n)' = -x^{-n}J_{n+1}`
    and the same for :math:`j_n`.

    Args:
        omega: ``(k,)`` ω ≥ 0.
        epsilon: linear limb darkening, [0, 1].

    Returns:
        ``(Ĝ, dĜ/dω)``, each ``(k,)`` float64.
    """
    from scipy.special import jv, spherical_jn

    epsilon = check_epsilon(epsilon)
    w = np.asarray(omega, dtype=np.float64)
    small = w < 0.1
    ws = np.where(small, 1.0, w)
    a = np.where(small, 0.5 - w**2 / 16 + w**4 / 384 - w**6 / 18432, jv(1, ws) / ws)
    da = np.where(small, -w / 8 + w**3 / 96 - w**5 / 3072, -jv(2, ws) / ws)
    b = np.where(small, 1 / 3 - w**2 / 30 + w**4 / 840 - w**6 / 45360,
                 spherical_jn(1, ws) / ws)
    db = np.where(small, -w / 15 + w**3 / 210 - w**5 / 7560, -spherical_jn(2, ws) / ws)
    norm = 1.0 - epsilon / 3.0
    return (2 * (1 - epsilon) * a + 2 * epsilon * b) / norm, (
        2 * (1 - epsilon) * da + 2 * epsilon * db) / norm


def gaussian_transfer(resolution, frequency):
    r"""Fourier transfer function of a Gaussian line-spread function of resolving power R.

    FWHM :math:`= c/R`, :math:`\sigma_v = c / (2\sqrt{2\ln 2}\,R)` and

    .. math:: \hat L(\nu) = \exp(-2\pi^2 \sigma_v^2 \nu^2),

    the exact transform of the Gaussian: multiplying the discrete Fourier transform of a
    uniformly sampled spectrum by it convolves the spectrum's band-limited interpolant
    with the Gaussian (variance exactly :math:`\sigma_v^2`, any σ relative to the
    sampling, smooth as R → ∞). jit/grad-safe in ``resolution``.

    Args:
        resolution: R = λ/Δλ(FWHM) > 0 (scalar; may be traced).
        frequency: ``(k,)`` frequencies ν, cycles per km/s (``numpy.fft.rfftfreq(n,
            Δv)``).

    Returns:
        ``(k,)`` float64 transfer.
    """
    sigma = C_KMS / (FWHM_PER_SIGMA * jnp.asarray(resolution, dtype=jnp.float64))
    return jnp.exp(-2.0 * jnp.pi**2 * sigma**2 * jnp.asarray(frequency) ** 2)


def tabulated_kernel(velocity, profile, velocity_step: float) -> np.ndarray:
    r"""A user line-spread function, tabulated in velocity, integrated over velocity bins.

    The profile is integrated (trapezoid rule) into a cumulative distribution, which is
    interpolated at the bin edges :math:`(k \pm \tfrac12)\Delta v`; the differences,
    normalised to sum 1, are the weights. Velocity 0 is the line centre: an off-centre
    kernel shifts lines.

    Args:
        velocity: ``(n,)`` km/s, strictly increasing, spanning the kernel.
        profile: ``(n,)`` ≥ 0, any normalisation.
        velocity_step: bin width Δv, km/s.

    Returns:
        ``(2K + 1,)`` float64 weights on taps k = −K … K, K covering the table.

    Raises:
        ValueError: shapes differ, velocities not increasing, negative or non-finite
            profile values, or a profile with no area.
    """
    v = np.asarray(velocity, dtype=np.float64)
    if v.ndim != 1 or not np.all(np.isfinite(v)) or np.any(np.diff(v) <= 0):
        raise ValueError("lsf velocity must be a 1-D, finite, strictly increasing array in "
                         "km/s (0 = line centre); sort the table")
    p = np.asarray(profile, dtype=np.float64)
    if p.shape != v.shape:
        raise ValueError(f"lsf profile has shape {p.shape} but lsf velocity has {v.shape}; "
                         "pass one profile value per velocity")
    if v.size < 3:
        raise ValueError(f"lsf has {v.size} samples; tabulate the kernel at >= 3 velocities")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("lsf profile has negative or non-finite values; pass a kernel >= 0")
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(v))])
    if not cdf[-1] > 0:
        raise ValueError("lsf profile has zero area; pass a kernel with positive values")
    cdf /= cdf[-1]
    half = math.ceil(max(abs(v[0]), abs(v[-1])) / velocity_step + 0.5)
    edges = (np.arange(-half, half + 2) - 0.5) * velocity_step
    w = np.diff(np.interp(edges, v, cdf, left=0.0, right=1.0))
    return w / w.sum()


def _gaussian_half_taps(resolution_min: float, velocity_step: float) -> int:
    sigma = C_KMS / (FWHM_PER_SIGMA * resolution_min)
    return math.ceil(LSF_SIGMAS * sigma / velocity_step + 0.5)


def _rotation_half_taps(vsini_max: float, velocity_step: float) -> int:
    return math.ceil(vsini_max / velocity_step + 0.5)


# ----------------------------------------------------------------------------- checks


def check_rv_range(rv_range) -> tuple[float, float]:
    """``(low, high)`` km/s as floats; ValueError unless finite, low <= high and |rv| < c."""
    try:
        lo, hi = (float(v) for v in rv_range)
    except (TypeError, ValueError):
        raise ValueError(f"rv_range={rv_range!r}; pass (low, high) in km/s") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise ValueError(f"rv_range=({lo:g}, {hi:g}); pass finite (low, high) km/s, low <= high")
    if max(abs(lo), abs(hi)) >= C_KMS:
        raise ValueError(f"rv_range=({lo:g}, {hi:g}) reaches the speed of light; pass |rv| < "
                         f"{C_KMS:g} km/s")
    return lo, hi


def check_vsini(vsini, label: str = "vsini") -> float:
    """v sin i (km/s) as a float; ValueError (naming ``label``) unless finite and >= 0."""
    v = float(vsini)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{label}={v:g} km/s; v sin i is a speed: pass a finite value >= 0 "
                         "(0 = no rotational broadening)")
    return v


def check_resolution(resolution, label: str = "resolution") -> float:
    """Resolving power R = λ/Δλ as a float; ValueError (naming ``label``) unless finite, > 0."""
    r = float(resolution)
    if not np.isfinite(r) or r <= 0:
        raise ValueError(f"{label}={r:g}; the resolving power R = λ/Δλ must be > 0 (e.g. "
                         "55000 for HPF), or None for no instrumental broadening")
    return r


def check_epsilon(epsilon) -> float:
    """Linear limb-darkening coefficient as a float; ValueError unless in [0, 1]."""
    e = float(epsilon)
    if not 0.0 <= e <= 1.0:
        raise ValueError(f"epsilon={e:g}; the linear limb-darkening coefficient must be in "
                         "[0, 1] (0.6 is typical of optical/NIR dwarfs)")
    return e
