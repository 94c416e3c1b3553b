r"""A small Gaussian-process regressor on fixed-size, masked training sets.

Written here rather than taken from tinygp because Bayesian optimisation runs inside one
``lax.fori_loop``: the training set grows by one point per step, so it is stored in a
fixed ``(n_max, k)`` array with a ``valid`` mask, and invalid rows are removed exactly
from the covariance (zero covariance, unit variance, zero target), which leaves the
marginal likelihood and the predictions of the valid rows unchanged.

Kernel: Matérn-5/2 with ARD lengthscales :math:`\ell_d`,

.. math:: k(x, x') = a^2 \left(1 + \sqrt5 r + \tfrac53 r^2\right) e^{-\sqrt5 r},\qquad
    r^2 = \sum_d (x_d - x'_d)^2 / \ell_d^2,

plus a white-noise variance :math:`\sigma_n^2` on the diagonal. Hyperparameters
:math:`(\ln \ell, \ln a, \ln \sigma_n)` maximise the log marginal likelihood (Adam) under
weak log-normal hyperpriors that keep them away from degenerate values.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.scipy.linalg import cho_solve, solve_triangular
from jax.scipy.stats import norm

_JITTER = 1e-8
_LOG_LS_RANGE = (jnp.log(0.01), jnp.log(10.0))
_LOG_NOISE_RANGE = (jnp.log(1e-4), jnp.log(1.0))


class GPHyper(NamedTuple):
    log_lengthscale: jax.Array  # (k,)
    log_amplitude: jax.Array  # ()
    log_noise: jax.Array  # ()


def initial_hyper(k: int) -> GPHyper:
    return GPHyper(jnp.full((k,), jnp.log(0.3)), jnp.zeros(()), jnp.log(0.05) * jnp.ones(()))


def _clip(h: GPHyper) -> GPHyper:
    return GPHyper(
        jnp.clip(h.log_lengthscale, *_LOG_LS_RANGE),
        jnp.clip(h.log_amplitude, -5.0, 5.0),
        jnp.clip(h.log_noise, *_LOG_NOISE_RANGE),
    )


def matern52(x1, x2, lengthscale):
    """Matérn-5/2 correlation between rows of x1 (n, k) and x2 (m, k) → (n, m)."""
    d = (x1[:, None, :] - x2[None, :, :]) / lengthscale
    r2 = jnp.sum(d**2, axis=-1)
    r = jnp.sqrt(r2 + 1e-12)  # finite gradient at r = 0
    s5r = jnp.sqrt(5.0) * r
    return (1.0 + s5r + 5.0 / 3.0 * r2) * jnp.exp(-s5r)


def _cholesky(h: GPHyper, x, valid):
    amp2 = jnp.exp(2 * h.log_amplitude)
    k = amp2 * matern52(x, x, jnp.exp(h.log_lengthscale))
    both = valid[:, None] & valid[None, :]
    diag = jnp.where(valid, jnp.exp(2 * h.log_noise) + _JITTER * amp2, 1.0)
    return jnp.linalg.cholesky(jnp.where(both, k, 0.0) + jnp.diag(diag))


def neg_log_marginal(h: GPHyper, x, y, valid):
    """−ln p(y | x, h) − ln p(h) over the valid rows (y zero elsewhere)."""
    chol = _cholesky(h, x, valid)
    y = jnp.where(valid, y, 0.0)
    alpha = cho_solve((chol, True), y)
    nll = 0.5 * y @ alpha + jnp.sum(jnp.log(jnp.diag(chol)))
    prior = 0.5 * jnp.sum(((h.log_lengthscale - jnp.log(0.3)) / 1.5) ** 2)
    prior += 0.5 * (h.log_amplitude / 2.0) ** 2 + 0.5 * ((h.log_noise - jnp.log(0.05)) / 2.0) ** 2
    return nll + prior


def fit_hyper(h: GPHyper, x, y, valid, steps: int, lr: float = 0.05) -> GPHyper:
    """``steps`` Adam steps on :func:`neg_log_marginal` from ``h``."""
    opt = optax.adam(lr)
    grad = jax.grad(neg_log_marginal)

    def body(_, carry):
        h, state = carry
        g = grad(h, x, y, valid)
        g = jax.tree.map(lambda a: jnp.where(jnp.isfinite(a), a, 0.0), g)
        updates, state = opt.update(g, state, h)
        return _clip(optax.apply_updates(h, updates)), state

    h, _ = jax.lax.fori_loop(0, steps, body, (h, opt.init(h)))
    return h


def predict(h: GPHyper, x, y, valid, x_new):
    """Posterior mean and variance of the latent function at ``x_new`` (m, k)."""
    chol = _cholesky(h, x, valid)
    y = jnp.where(valid, y, 0.0)
    alpha = cho_solve((chol, True), y)
    amp2 = jnp.exp(2 * h.log_amplitude)
    ks = amp2 * matern52(x, x_new, jnp.exp(h.log_lengthscale))
    ks = jnp.where(valid[:, None], ks, 0.0)
    mean = ks.T @ alpha
    v = solve_triangular(chol, ks, lower=True)
    var = jnp.maximum(amp2 - jnp.sum(v**2, axis=0), 1e-12)
    return mean, var


def expected_improvement(mean, var, best, xi: float = 0.01):
    r"""EI for minimisation: :math:`(f^* - \mu - \xi)\Phi(z) + s\,\phi(z)`,
    :math:`z = (f^* - \mu - \xi)/s` (the scikit-optimize convention, ξ = 0.01)."""
    s = jnp.sqrt(var)
    imp = best - mean - xi
    z = imp / s
    return imp * norm.cdf(z) + s * norm.pdf(z)
