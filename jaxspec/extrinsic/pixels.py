r"""The observed pixels: their edges, the continuum over them, the model range they need.

Steps 5 (pixel integration: each pixel's edges, :func:`pixel_edges`) and 6 (the Chebyshev
continuum, :func:`chebyshev_continuum`) of the chain in :mod:`jaxspec.extrinsic`, and the
rest-frame range a model must cover to be observed on given pixels at given RVs and
broadening (:func:`required_model_range`).

Units: wavelengths Å (float64), velocities km/s.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxspec._checks import check_wavelength
from jaxspec.extrinsic.kernels import (
    C_KMS,
    check_rv_range,
    _gaussian_half_taps,
    _rotation_half_taps,
)

__all__ = ["chebyshev_continuum", "pixel_edges", "required_model_range"]


def pixel_edges(wavelength) -> tuple[np.ndarray, np.ndarray]:
    r"""Each observed pixel's wavelength interval, from the pixel centres.

    Pixel j spans from half-way to its left neighbour to half-way to its right one (so
    neighbours share an edge and the pixels tile the range); the end pixels extend half a
    spacing outward. Across a gap (a spacing over 1.5 × the one on the pixel's other
    side, e.g. between orders or where pixels were removed) a pixel takes the half-width
    of its other side, so that it does not absorb the gap.

    Args:
        wavelength: ``(m,)`` pixel centres, Å, strictly increasing, m ≥ 2.

    Returns:
        ``(lo, hi)``, each ``(m,)`` float64 Å.
    """
    wl = check_wavelength(wavelength, label="wavelength")
    if wl.size < 2:
        raise ValueError("wavelength has 1 pixel; pass at least 2 observed pixels")
    d = np.diff(wl)
    left = np.concatenate([[d[0]], d])  # spacing to the left neighbour
    right = np.concatenate([d, [d[-1]]])
    left_h = np.where(left > 1.5 * right, right, left) / 2
    right_h = np.where(right > 1.5 * left, left, right) / 2
    return wl - left_h, wl + right_h


def chebyshev_continuum(wavelength, coefficients, wavelength_range=None):
    r"""Multiplicative continuum :math:`C(\lambda) = \sum_{k=0}^{K} c_k T_k(x)`.

    :math:`T_k(x) = \cos(k \arccos x)` are the Chebyshev polynomials of the first kind
    and :math:`x = (2\lambda - (\lambda_a + \lambda_b)) / (\lambda_b - \lambda_a)` maps the
    range :math:`[\lambda_a, \lambda_b]` onto [−1, 1]. Evaluated with the recurrence
    :math:`T_{k+1} = 2xT_k - T_{k-1}`; jit/grad-safe in the coefficients.

    Args:
        wavelength: ``(m,)`` Å.
        coefficients: ``(K + 1,)`` :math:`c_0 … c_K` (c0 = 1, others 0: no change).
        wavelength_range: ``(λ_a, λ_b)`` Å; default the first and last wavelength.

    Returns:
        ``(m,)`` continuum.
    """
    wl = np.asarray(wavelength, dtype=np.float64)
    a, b = (wl[0], wl[-1]) if wavelength_range is None else map(float, wavelength_range)
    if not b > a:
        raise ValueError(f"wavelength_range=({a}, {b}); pass (low, high) with low < high")
    c = jnp.asarray(coefficients, dtype=jnp.float64)
    if c.ndim != 1 or c.shape[0] < 1:
        raise ValueError(f"continuum coefficients have shape {c.shape}; pass (K + 1,) values "
                         "c0 … cK (c0 = 1 and the rest 0 is no continuum)")
    return jnp.asarray(_chebvander(wl, c.shape[0] - 1, (a, b))) @ c


def _chebvander(wl: np.ndarray, degree: int, rng) -> np.ndarray:
    a, b = rng
    x = (2.0 * wl - (a + b)) / (b - a)
    return np.polynomial.chebyshev.chebvander(x, degree)


def required_model_range(wavelength, *, rv_range=(0.0, 0.0), vsini_max: float = 0.0,
                         resolution_min: float | None = None, lsf_half_width: float = 0.0,
                         velocity_step: float = 0.5) -> tuple[float, float]:
    r"""The rest-frame wavelength range a model must cover to be observed at ``wavelength``.

    The bluest observed pixel edge seen at the largest RV and the reddest at the smallest,
    widened by the broadening kernels' half width
    :math:`v\sin i_{max} + 6\sigma_v(R_{min})` (+ ``lsf_half_width``) and two internal
    steps: :math:`[e_0 e^{-\operatorname{artanh}\beta_{hi}} e^{-V/c},\
    e_m e^{-\operatorname{artanh}\beta_{lo}} e^{V/c}]`.

    Args:
        wavelength: ``(m,)`` observed pixel centres, Å.
        rv_range: ``(lo, hi)`` km/s: the RVs to allow (the RV prior's support).
        vsini_max: km/s.
        resolution_min: smallest R (None: no Gaussian LSF).
        lsf_half_width: km/s, half width of a tabulated LSF.
        velocity_step: internal step, km/s.

    Returns:
        ``(low, high)`` Å.
    """
    lo_e, hi_e = pixel_edges(wavelength)
    rv_lo, rv_hi = check_rv_range(rv_range)
    half = _rotation_half_taps(vsini_max, velocity_step) if vsini_max > 0 else 0
    if resolution_min is not None:
        half += _gaussian_half_taps(resolution_min, velocity_step)
    if lsf_half_width > 0:
        half += math.ceil(lsf_half_width / velocity_step + 0.5)
    margin = (half + 2) * velocity_step / C_KMS
    u_lo = math.log(lo_e[0]) - math.atanh(rv_hi / C_KMS) - margin
    u_hi = math.log(hi_e[-1]) - math.atanh(rv_lo / C_KMS) + margin
    return math.exp(u_lo), math.exp(u_hi)
