r"""A start for extrinsic fits: χ² scan over the radial velocity.

The RV likelihood of a line spectrum has a narrow peak per alignment of lines, so the
local optimisers (:func:`~jaxspec.infer.fit_map`, :func:`~jaxspec.infer.sample_nuts`)
need a start within a line width. :func:`initial_guess` scans RV on a grid for an
:class:`~jaxspec.observed_emulator.ObservedEmulator`, solving the continuum by linear
least squares at each RV.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxspec._checks import check_uncertainty
from jaxspec.observed_emulator import ObservedEmulator

__all__ = ["InitialGuess", "initial_guess"]


class InitialGuess(NamedTuple):
    """Outcome of :func:`initial_guess`.

    rv
        ``(n_rv,)`` km/s, the scanned RVs (one value when rv is not fitted).
    chi2
        ``(n_rv,)`` χ² at each, continuum solved.
    best_rv
        km/s, the minimum (refined by a parabola through its neighbours).
    params
        ``(n_params,)`` a start: the box centre, rv = best_rv, continuum = the
        least-squares coefficients at best_rv (clipped to their boxes).
    """

    rv: np.ndarray
    chi2: np.ndarray
    best_rv: float
    params: np.ndarray


def initial_guess(emulator: ObservedEmulator, flux, uncertainty=None, mask=None, *,
                  params=None, step: float = 1.0, rvs=None) -> InitialGuess:
    r"""A start for fitting an :class:`~jaxspec.observed_emulator.ObservedEmulator`: χ² scan over RV.

    The RV likelihood of a line spectrum has a narrow peak per alignment of lines, so
    local optimisers need a start within a line width. At every RV of the grid
    (``step`` km/s across the rv box), with the other parameters at ``params``
    (default: the box centre), the continuum coefficients solve the weighted linear
    least-squares problem :math:`\min_c \sum_j [(D_j - \bar F_j \sum_k c_k
    T_k(x_j))/\sigma_j]^2` exactly; the RV of least χ² (refined by a parabola) and those
    coefficients form the start. Cost: one broadening, then one pixel integration per
    RV.

    Args:
        emulator: an :class:`~jaxspec.observed_emulator.ObservedEmulator`.
        flux: ``(m,)`` observed flux on ``emulator.wavelength``.
        uncertainty: ``(m,)`` 1σ (> 0 where used) or None (all 1).
        mask: ``(m,)`` bool, True = use; default: finite flux (and uncertainty).
        params: ``(n_params,)`` values of the parameters not scanned.
        step: RV step, km/s.
        rvs: explicit RVs to scan instead (km/s).

    Returns:
        :class:`InitialGuess`.

    Raises:
        ValueError: shapes, zero/negative uncertainties at used pixels, fewer than 2
            used pixels, or RVs outside the box.
    """
    if not isinstance(emulator, ObservedEmulator):
        raise TypeError(f"emulator is a {type(emulator).__name__}; pass an ObservedEmulator")
    m = emulator.n_pix
    d = np.asarray(flux, dtype=np.float64)
    if d.shape != (m,):
        raise ValueError(f"flux has shape {d.shape}; pass ({m},) values on the observed pixels")
    use = np.isfinite(d) if mask is None else np.asarray(mask, dtype=bool).copy()
    if use.shape != (m,):
        raise ValueError(f"mask has shape {use.shape}; pass ({m},) bools")
    if uncertainty is None:
        sig = np.ones(m)
    else:
        sig = np.asarray(uncertainty, dtype=np.float64)
        if sig.shape != (m,):
            raise ValueError(f"uncertainty has shape {sig.shape}; pass ({m},) 1σ values")
        use &= np.isfinite(sig)
        check_uncertainty(sig, np.asarray(emulator.wavelength), use, pixels="used pixel(s)",
                          fix="pass None")
    use &= np.isfinite(d)
    if use.sum() < 2:
        raise ValueError("fewer than 2 usable pixels; check the mask and the flux")
    b = emulator.bounds
    theta = 0.5 * (b[:, 0] + b[:, 1]) if params is None else np.asarray(params, np.float64)
    if theta.shape != (emulator.n_params,):
        raise ValueError(f"params has shape {theta.shape}; pass ({emulator.n_params},)")
    names = emulator.param_names
    if rvs is None:
        if "rv" in names:
            lo, hi = b[names.index("rv")]
            if not step > 0:
                raise ValueError(f"step={step}; pass a positive RV step in km/s")
            rvs = np.arange(lo, hi + 0.5 * step, step)
            rvs = rvs[rvs <= hi + 1e-9]
        else:
            rvs = np.array([emulator.rv])
    rvs = np.atleast_1d(np.asarray(rvs, dtype=np.float64))
    chi2, coef = _scan(emulator, jnp.asarray(theta), jnp.asarray(rvs),
                       jnp.asarray(np.where(use, d, 0.0)), jnp.asarray(np.where(use, sig, 1.0)),
                       jnp.asarray(use))
    chi2, coef = np.asarray(chi2), np.asarray(coef)
    j = int(np.argmin(np.where(np.isfinite(chi2), chi2, np.inf)))
    best = float(rvs[j])
    if 0 < j < rvs.size - 1:
        y0, y1, y2 = chi2[j - 1: j + 2]
        den = y0 - 2 * y1 + y2
        if den > 0:
            best = float(rvs[j] + 0.5 * (rvs[j + 1] - rvs[j]) * (y0 - y2) / den)
    out = theta.copy()
    if "rv" in names:
        out[names.index("rv")] = best
    if emulator.continuum_degree is not None:
        i0 = names.index("c0")
        k = emulator.continuum_degree + 1
        out[i0:i0 + k] = np.clip(coef[j], b[i0:i0 + k, 0], b[i0:i0 + k, 1])
    return InitialGuess(rv=rvs, chi2=chi2, best_rv=best, params=out)


@eqx.filter_jit
def _scan(emulator, theta, rvs, data, sigma, use):
    base_params, ext = emulator.split(theta)
    model = emulator.model
    depth = model.broadened(emulator.base(base_params), ext["vsini"], ext["resolution"])
    w = jnp.where(use, 1.0 / sigma, 0.0)

    def one(rv):
        p = model.integrate(depth, rv)
        if model.basis is None:  # (a placeholder coefficient: lax.map needs a size)
            return jnp.sum(((p - data) * w) ** 2), jnp.ones(1)
        a = model.basis * (p * w)[:, None]
        rhs = data * w
        c = jnp.linalg.solve(a.T @ a, a.T @ rhs)
        return jnp.sum((a @ c - rhs) ** 2), c

    return jax.lax.map(one, rvs, batch_size=64)
