r"""Losses and likelihoods comparing an emulated spectrum with data.

All functions take arrays (model, data, ...) shaped ``(..., m)`` and reduce the last
axis; all are jit-, vmap- and grad-safe. ``mask`` is a bool array, True where a pixel
counts (None: all); masked pixels contribute nothing, whatever their values.

* :func:`rms_loss`: the blase3D paper's eq. (4), :math:`\mathcal{L} = \langle (M - D)^2
  \rangle^{1/2}`, the mean over used pixels.
* :func:`chi2`: :math:`\chi^2 = \sum_i (M_i - D_i)^2 / \sigma_i^2`.
* :func:`gaussian_log_likelihood`: independent Gaussian pixels with standard deviation
  :math:`s\,\sigma_i` (``noise_scale`` s, default 1),

  .. math:: \ln L = -\tfrac12 \sum_i \left[\frac{(M_i - D_i)^2}{s^2\sigma_i^2}
        + \ln(2\pi s^2 \sigma_i^2)\right].

* :func:`model_flux` and :func:`observation_loss` evaluate an emulator at parameters and
  compare it with an :class:`~jaxspec.infer.spectrum.Observation`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "chi2",
    "gaussian_log_likelihood",
    "model_flux",
    "observation_loss",
    "rms_loss",
]


def _mask(mask, like):
    return jnp.ones(like.shape, dtype=bool) if mask is None else jnp.asarray(mask)


def _check_sigma(sigma, mask, noise_scale=1.0):
    """σ with a check that it is > 0 (and finite) at every used pixel and the noise scale
    is > 0: a ValueError now for concrete values, :func:`equinox.error_if` under jit (a
    negative σ would otherwise give a finite, wrong likelihood)."""
    sigma = jnp.asarray(sigma)
    bad = jnp.any(mask & ~(sigma > 0)) | jnp.any(~(jnp.asarray(noise_scale) > 0))
    message = ("sigma must be > 0 at every used pixel and noise_scale > 0 (1σ "
               "uncertainties); mask those pixels or fix the uncertainties")
    if isinstance(bad, jax.core.Tracer):
        return eqx.error_if(sigma, bad, message)
    if bool(bad):
        m = np.broadcast_to(np.asarray(mask), np.shape(sigma))
        s = np.asarray(sigma)
        n_bad = int(np.sum(m & ~(s > 0)))
        raise ValueError(f"{message} (found {n_bad} used pixel(s) with sigma <= 0 or NaN"
                         f"{'' if n_bad else '; noise_scale <= 0'})")
    return sigma


def rms_loss(model, data, mask=None):
    r"""Root-mean-square residual, blase3D eq. (4): :math:`\langle (M - D)^2\rangle^{1/2}`.

    Args:
        model, data: ``(..., m)`` fluxes.
        mask: ``(..., m)`` bool, True where the pixel counts, or None.

    Returns:
        ``(...)`` RMS over the used pixels (NaN where no pixel is used).
    """
    m = _mask(mask, data)
    resid = jnp.where(m, model - data, 0.0)
    return jnp.sqrt(jnp.sum(resid**2, axis=-1) / jnp.sum(m, axis=-1))


def chi2(model, data, sigma, mask=None):
    r""":math:`\chi^2 = \sum_i (M_i - D_i)^2/\sigma_i^2` over used pixels; ``(...)``.
    σ must be > 0 at used pixels (checked as in :func:`gaussian_log_likelihood`)."""
    m = _mask(mask, data)
    sigma = _check_sigma(sigma, m)
    z = jnp.where(m, (model - data) / jnp.where(m, sigma, 1.0), 0.0)
    return jnp.sum(z**2, axis=-1)


def gaussian_log_likelihood(model, data, sigma, mask=None, noise_scale=1.0):
    r"""Gaussian log-likelihood of independent pixels (module docstring).

    Args:
        model, data: ``(..., m)`` fluxes.
        sigma: ``(..., m)`` 1σ uncertainties (> 0 at used pixels).
        mask: ``(..., m)`` bool or None.
        noise_scale: s > 0 multiplying every σ (scalar or ``(...)``), e.g. a fitted
            factor for under-estimated uncertainties or unknown noise.

    Returns:
        ``(...)`` :math:`\ln L`.

    Raises:
        ValueError: σ ≤ 0 or NaN at a used pixel, or ``noise_scale`` ≤ 0 (concrete
            inputs); under ``jit`` the same check fails at run time (``eqx.error_if``).
    """
    m = _mask(mask, data)
    sigma = _check_sigma(sigma, m, noise_scale)
    s = jnp.asarray(noise_scale)[..., None] * jnp.where(m, sigma, 1.0)
    z = jnp.where(m, (model - data) / s, 0.0)
    return -0.5 * jnp.sum(jnp.where(m, z**2 + jnp.log(2 * jnp.pi * s**2), 0.0), axis=-1)


def model_flux(emulator, observation, params):
    """Emulator flux at ``params`` ``(..., n_params)`` on the observation's pixels."""
    return observation.project(emulator(params))


def observation_loss(emulator, observation, params, kind: str = "rms"):
    """Loss of ``params`` against an observation.

    Args:
        emulator: any :class:`~jaxspec.emulator.Emulator`.
        observation: an :class:`~jaxspec.infer.spectrum.Observation` (unbatched).
        params: ``(..., n_params)``.
        kind: ``"rms"`` (eq. 4), ``"chi2"`` (χ² per used pixel) or ``"nll"``
            (−ln L with noise scale 1).

    Returns:
        ``(...)`` loss.
    """
    model = model_flux(emulator, observation, params)
    o = observation
    if kind == "rms":
        return rms_loss(model, o.flux, o.mask)
    if kind == "chi2":
        return chi2(model, o.flux, o.sigma, o.mask) / jnp.sum(o.mask)
    if kind == "nll":
        return -gaussian_log_likelihood(model, o.flux, o.sigma, o.mask)
    raise ValueError(f"kind={kind!r}; pass 'rms', 'chi2' or 'nll'")
