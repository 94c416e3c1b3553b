r"""Maximum a posteriori fits by gradient descent, with Laplace uncertainties.

The negative log posterior, in physical parameters :math:`\theta` inside the search box
(the emulator's bounds, one parameter, Teff by default, optionally limited to
``guess ± window``), is

.. math::
    -\ln p(\theta \mid D) = \tfrac12 \chi^2(\theta) - \ln p(\theta) + \text{const},
    \qquad \chi^2 = \sum_i \frac{(M_i(\theta) - D_i)^2}{\sigma_i^2}

with known uncertainties, and, when the noise level is unknown (no uncertainties, or
``fit_noise=True``), the profile over a noise scale s (:math:`\sigma_i \to s\sigma_i`,
maximised at :math:`\hat s^2 = \chi^2/N`):

.. math:: -\ln p(\theta \mid D) = \tfrac{N}{2} \ln\left[\chi^2(\theta) + N s_{min}^2\right]
    - \ln p(\theta) + \text{const},

with a floor :math:`s_{min}` = ``NOISE_FLOOR`` = 1e-5 so that an exact fit of a noise-free
spectrum keeps a finite optimum.

:math:`p(\theta)` is uniform on the box unless ``priors`` gives numpyro distributions.

Algorithm:

1. a coarse search: ``n_search`` scrambled-Sobol points of the box (plus ``init``, e.g. a
   :func:`~jaxspec.infer.bayes_opt` result); the best ``n_starts`` become starts;
2. Adam (``steps``, learning rate ``lr`` with cosine decay) on
   :math:`z = \operatorname{logit}(u)`, :math:`u = (\theta - \theta_{lo}) / (\theta_{hi} -
   \theta_{lo})`, from every start at once (vmap);
3. ``n_newton`` (12) projected Newton steps in u (with backtracking: step lengths 1,
   ½, ¼, 0.1, 0.02 tried in turn until one lowers the objective by Armijo's sufficient
   decrease, :math:`f(u + t d) \le f(u) + 0.1\, t\, g^\top d`, the last by any amount;
   faces of the box as
   active constraints) from each end point, which lands parameters exactly on a face
   when the optimum is there (logit space cannot reach it). Every trial point is
   evaluated with its gradient and Hessian at once (one pass through the emulator and
   its derivatives), so an accepted step costs one pass;
4. the best start wins; its Laplace covariance is the inverse Hessian of the negative log
   posterior in u, scaled to physical units:
   :math:`\Sigma_\theta = S H_u^{-1} S`, :math:`S = \operatorname{diag}(\theta_{hi} -
   \theta_{lo})` (with a profiled noise scale, H is that of :math:`\chi^2/2\hat s^2`
   at the fitted :math:`\hat s`, which stays positive definite on a face of the box).
   With ``hessian="gauss-newton"`` the Newton steps and the Laplace covariance use
   :math:`H \approx J^\top W J` (the Fisher matrix) instead of the exact Hessian.

Implausible answers (χ²/ν far above 1 with given uncertainties, every parameter on a
face of the box, Laplace errors as wide as the prior, no finite error) are flagged as
failures too (:mod:`jaxspec.infer.results`).

Converged (no ``NOT_CONVERGED`` flag) means: finite, and either the Newton decrement
:math:`\tfrac12 g^\top H^{-1} g` over the free parameters is below ``tol`` nats or the
last Newton step could not lower the objective by ``tol`` (a minimum on a kink of a
piecewise-linear emulator). The Hessian must be positive definite for the errors
(otherwise ``HESSIAN`` and NaN errors).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.linalg import cho_solve
from jaxtyping import Array, Float, Int

from jaxspec.infer._box import (
    DEFAULT_WINDOW_PARAM,
    box_edge,
    resolve_window,
    to_physical,
    to_unit,
    window_edge,
)
from jaxspec.infer._prepare import (
    as_batch,
    boxes,
    keys_for,
    map_batches,
    star_sharding,
    unbatch,
)
from jaxspec.infer.likelihood import chi2, rms_loss
from jaxspec.infer.results import Status, is_converged, plausibility_flags, result_row

__all__ = ["MapResult", "fit_map", "neg_log_posterior"]

_U_EPS = 1e-9
#: Smallest fitted noise scale (in units of σ; of the flux when no σ is given): a
#: noise-free spectrum that an emulator reproduces exactly still has a finite optimum.
NOISE_FLOOR = 1e-5


class MapResult(eqx.Module):
    """Outcome of :func:`fit_map` (fields gain a leading axis for many spectra).

    params
        ``(n_params,)`` MAP estimate, physical units.
    sigma
        ``(n_params,)`` Laplace 1σ (NaN when the Hessian is not positive definite).
    covariance
        ``(n_params, n_params)`` Laplace covariance.
    loss
        RMS residual at ``params`` (blase3D eq. 4).
    neg_log_posterior
        objective at ``params`` (nats, up to a constant).
    noise_scale
        fitted s (:math:`\\sqrt{\\chi^2/N}`) when the noise is profiled, else 1.
    decrement
        Newton decrement :math:`\\tfrac12 g^\\top H^{-1} g` at the end (nats).
    status
        :class:`~jaxspec.infer.results.Status` flags.
    n_evaluations
        objective evaluations (a gradient or Hessian counts as one).
    starts, start_objective
        ``(n_starts, n_params)`` end points of every start and their objectives.
    chi2_nu
        χ²/ν with the given uncertainties at ``params`` (NaN without uncertainties).
    """

    params: Float[Array, "... n_params"]
    sigma: Float[Array, "... n_params"]
    covariance: Float[Array, "... n_params n_params"]
    loss: Float[Array, "..."]
    neg_log_posterior: Float[Array, "..."]
    noise_scale: Float[Array, "..."]
    decrement: Float[Array, "..."]
    status: Int[Array, "..."]
    n_evaluations: Int[Array, "..."]
    starts: Float[Array, "... n_starts n_params"]
    start_objective: Float[Array, "... n_starts"]
    chi2_nu: Float[Array, "..."]

    @property
    def converged(self):
        return is_converged(self.status)

    def rows(self) -> list[dict]:
        p = np.atleast_2d(np.asarray(self.params))
        s = np.atleast_2d(np.asarray(self.sigma))
        flat = {k: np.atleast_1d(np.asarray(getattr(self, k))) for k in (
            "loss", "status", "n_evaluations", "noise_scale", "decrement", "chi2_nu")}
        return [
            result_row(
                p[i], s[i], flat["loss"][i], flat["n_evaluations"][i], flat["status"][i],
                f"Newton decrement {flat['decrement'][i]:.2g} nats"
                + (f", chi2/nu {flat['chi2_nu'][i]:.3g}"
                   if np.isfinite(flat["chi2_nu"][i]) else ""),
                extra={"noise_scale": float(flat["noise_scale"][i])},
            )
            for i in range(p.shape[0])
        ]


class _Config(NamedTuple):
    n_search: int
    n_starts: int
    steps: int
    lr: float
    n_newton: int
    tol: float
    fit_noise: bool
    priors: tuple  # ((index, distribution), ...) hashable by identity
    has_init: bool
    gauss_newton: bool = False


def neg_log_posterior(emulator, obs, theta, fit_noise: bool = False, priors=None):
    """The MAP objective (module docstring) at physical ``theta`` ``(n_params,)``.

    Args:
        emulator: any emulator.
        obs: an unbatched :class:`~jaxspec.infer.Observation`.
        theta: parameters, physical units.
        fit_noise: profile the noise scale (``N/2 ln χ²``) instead of ``χ²/2``.
        priors: None or ``{name: numpyro distribution}``.
    """
    items = () if priors is None else tuple(
        (list(emulator.param_names).index(n), d) for n, d in priors.items()
    )
    return _objective(emulator, obs, theta, fit_noise, items)


def _objective(emulator, obs, theta, fit_noise, prior_items):
    return _objective_of_model(obs, obs.project(emulator(theta)), theta, fit_noise,
                               prior_items)


def _objective_of_model(obs, model, theta, fit_noise, prior_items):
    """The objective at ``theta`` from the (projected) model spectrum there."""
    c2 = chi2(model, obs.flux, obs.sigma, obs.mask)
    n = jnp.sum(obs.mask)
    # the noise floor keeps ln χ² finite (and the Hessian defined) for an exact fit
    val = 0.5 * n * jnp.log(c2 + n * NOISE_FLOOR**2) if fit_noise else 0.5 * c2
    return val + _prior_term(theta, prior_items)


def _prior_term(theta, prior_items):
    val = 0.0
    for i, d in prior_items:
        val = val - d.log_prob(theta[i])
    return val


def _sobol(n: int, k: int) -> np.ndarray:
    from scipy.stats import qmc

    return qmc.Sobol(k, scramble=True, seed=0).random(n)


class _Problem(NamedTuple):
    """One spectrum's MAP problem: the objective in unit coordinates u of its search box
    ``[lower, upper]`` (``(k,)`` each, physical units)."""

    emulator: object
    obs: object
    lower: jax.Array
    upper: jax.Array
    cfg: _Config

    @property
    def k(self) -> int:
        return self.lower.shape[-1]


#: Step lengths tried in turn along each Newton direction (backtracking).
_NEWTON_TRIALS = (1.0, 0.5, 0.25, 0.1, 0.02)
#: Sufficient decrease (Armijo) of a trial step t along d: f(u + t d) <= f(u) + c t gᵀd
#: (Nocedal & Wright 2006, eq. 3.4); the last trial accepts any decrease.
_ARMIJO = 0.1


def _objective_u(prob: _Problem, u):
    """The negative log posterior (module docstring) at unit coordinates ``u`` ``(k,)``."""
    theta = to_physical(u, prob.lower, prob.upper)
    return _objective(prob.emulator, prob.obs, theta, prob.cfg.fit_noise, prob.cfg.priors)


def _finite_or_inf(v):
    """``v`` where finite, +inf elsewhere (a NaN objective never wins a comparison)."""
    return jnp.where(jnp.isfinite(v), v, jnp.inf)


def _prior_u(prob: _Problem, u):
    """The prior part of the objective, ``-ln p(θ)``, at unit coordinates ``u``."""
    return _prior_term(to_physical(u, prob.lower, prob.upper), prob.cfg.priors)


def _coarse_search(prob: _Problem, init, key):
    """Step 1: the best ``n_starts`` of ``n_search`` scrambled-Sobol points of the unit
    box (a random Cranley–Patterson shift by ``key`` of a fixed Sobol set), the last one
    replaced by ``init`` (physical, ``(k,)``) when the config has one.

    Returns ``(n_starts, k)`` starts, clipped 1e-4 inside the box (for the logit)."""
    cfg, k = prob.cfg, prob.k
    shift = jax.random.uniform(key, (k,), dtype=jnp.float64)
    pts = jnp.mod(jnp.asarray(_sobol(cfg.n_search, k)) + shift, 1.0)
    if cfg.has_init:
        u_init = jnp.clip(to_unit(init, prob.lower, prob.upper), 0.0, 1.0)
    one_with_init = cfg.has_init and cfg.n_starts == 1
    if one_with_init:
        # one start: the better of the search's best and init (init first: it wins ties),
        # evaluated with the search points (one compiled copy of the objective)
        pts = jnp.concatenate([u_init[None], pts])
    # on CPU one point at a time (the emulators' windowed synthesis is scatter-bound:
    # batching it is no faster there, and the unbatched program compiles faster)
    vals = jax.lax.map(lambda u: _finite_or_inf(_objective_u(prob, u)), pts,
                       batch_size=None if jax.default_backend() == "cpu" else 32)
    order = jnp.argsort(vals, stable=True)
    starts = pts[order[: cfg.n_starts]]
    if cfg.has_init and not one_with_init:
        starts = starts.at[-1].set(u_init)
    return jnp.clip(starts, 1e-4, 1 - 1e-4)


def _adam_logit(prob: _Problem, starts):
    """Step 2: ``steps`` Adam steps (learning rate ``lr``, cosine decay to 5 %) on
    z = logit(u) from every start at once (vmap); non-finite gradients count as zero
    and z stays in [-25, 25]. Returns the end points in u, ``(n_starts, k)``."""
    cfg = prob.cfg
    if cfg.steps == 0:  # nothing to run: do not trace (and compile) the gradient
        return starts
    sched = optax.cosine_decay_schedule(cfg.lr, max(cfg.steps, 1), alpha=0.05)
    opt = optax.adam(sched)
    g_z = jax.grad(lambda z: _objective_u(prob, jax.nn.sigmoid(z)))

    def adam(z0):
        def body(_, carry):
            z, state = carry
            g = g_z(z)
            g = jnp.where(jnp.isfinite(g), g, 0.0)
            upd, state = opt.update(g, state, z)
            return jnp.clip(z + upd, -25.0, 25.0), state

        z, _ = jax.lax.fori_loop(0, cfg.steps, body, (z0, opt.init(z0)))
        return jax.nn.sigmoid(z)

    return jax.vmap(adam)(jnp.log(starts) - jnp.log1p(-starts))


def _model_u(prob: _Problem, u):
    """The projected model spectrum at unit coordinates ``u``."""
    return prob.obs.project(prob.emulator(to_physical(u, prob.lower, prob.upper)))


def _exact_grad_hess(prob: _Problem, u):
    """Objective, gradient ``(k,)``, exact Hessian ``(k, k)`` of the objective in u
    (forward-over-reverse) and the model spectrum at ``u``, from one evaluation of the
    emulator and its derivatives (value, gradient and model come along as aux)."""
    cfg = prob.cfg

    def value(v):
        model = _model_u(prob, v)
        theta = to_physical(v, prob.lower, prob.upper)
        f = _objective_of_model(prob.obs, model, theta, cfg.fit_noise, cfg.priors)
        return f, model

    def g2(v):
        (f, model), g = jax.value_and_grad(value, has_aux=True)(v)
        return g, (g, f, model)

    h, (g, f, model) = jax.jacfwd(g2, has_aux=True)(u)
    return f, g, h, model


def _gauss_newton_grad_hess(prob: _Problem, u):
    """Objective, gradient ``(k,)`` and Gauss–Newton Hessian ``(k, k)`` of the objective
    in u, and the model spectrum at ``u``, from one linearisation of the emulator (its
    value and k forward-mode directions, no second derivatives of it): χ² = rᵀr,
    r = w (M − D): g = Jᵀr, H = JᵀJ (times N/C' with a profiled noise), plus the
    prior's exact gradient and Hessian."""
    obs, cfg = prob.obs, prob.cfg
    m = obs.mask
    w = jnp.where(m, 1.0 / jnp.where(m, obs.sigma, 1.0), 0.0)
    model, model_cols = jax.linearize(lambda v: _model_u(prob, v), u)
    # masked pixels (their flux may be NaN) contribute exact zeros
    r = jnp.where(m, w * (model - jnp.where(m, obs.flux, 0.0)), 0.0)
    jac = w[:, None] * jax.vmap(model_cols, out_axes=1)(jnp.eye(prob.k, dtype=u.dtype))
    jac = jnp.where(m[:, None], jac, 0.0)  # (n_pix, k)
    f = _objective_of_model(obs, model, to_physical(u, prob.lower, prob.upper),
                            cfg.fit_noise, cfg.priors)
    g = jac.T @ r
    h = jac.T @ jac
    if cfg.fit_noise:
        scale = jnp.sum(m) / (r @ r + jnp.sum(m) * NOISE_FLOOR**2)
        g, h = scale * g, scale * h
    if cfg.priors:
        prior = lambda v: _prior_u(prob, v)  # noqa: E731
        g = g + jax.grad(prior)(u)
        h = h + jax.hessian(prior)(u)
    return f, g, h, model


def _pinned(u, g):
    """``(k,)`` bool: parameters held on a face of the unit box by an outward gradient."""
    return ((u <= _U_EPS) & (g > 0)) | ((u >= 1 - _U_EPS) & (g < 0))


def _free_system(u, g, h):
    """Gradient and Hessian restricted to the free (not pinned) parameters: pinned rows
    of g are 0, pinned rows and columns of H those of the identity."""
    free = ~_pinned(u, g)
    both = free[:, None] & free[None, :]
    return jnp.where(free, g, 0.0), jnp.where(both, h, jnp.eye(u.shape[-1]))


def _newton_direction(g_f, h_f):
    """``(direction, decrement)``: the Newton direction −H⁻¹g where H is positive
    definite (decrement ½ gᵀH⁻¹g), else steepest descent scaled by the diagonal (the
    Levenberg limit; decrement inf)."""
    k = g_f.shape[-1]
    chol = jnp.linalg.cholesky(h_f)
    ok = jnp.all(jnp.isfinite(chol))
    d_newton = -cho_solve((jnp.where(ok, chol, jnp.eye(k)), True), g_f)
    diag = jnp.maximum(jnp.abs(jnp.diag(h_f)), 1e-12)
    d = jnp.where(ok, d_newton, -g_f / diag)
    dec = jnp.where(ok, -0.5 * g_f @ d_newton, jnp.inf)
    return jnp.where(jnp.isfinite(d), d, 0.0), dec


def _projected_newton(prob: _Problem, u0):
    """Step 3: projected Newton with backtracking in u from ``u0`` ``(k,)``.

    Every pass evaluates objective, gradient, Hessian and model at one candidate point
    (one compiled copy of the emulator and its derivatives serves the steps, the
    backtracking and the Laplace approximation): the first pass at ``u0``, then the
    point one Newton step ``d`` from the best point so far, at the step lengths
    ``_NEWTON_TRIALS`` in turn until one lowers the objective enough (Armijo's
    condition with ``_ARMIJO``; the last length takes any decrease). It stops after
    ``n_newton`` accepted steps, when the Newton decrement at the best point is far
    below ``tol``, or when no step length lowers the objective (a minimum on a kink of a
    piecewise-cubic emulator).

    Returns ``(n_pass, u, f, gain, decrement, h, g, model)`` at the best point: passes
    made, position, objective, the last accepted step's decrease (0 when the last
    direction found nothing lower), Newton decrement, Hessian, gradient and model."""
    cfg = prob.cfg
    grad_hess = _gauss_newton_grad_hess if cfg.gauss_newton else _exact_grad_hess
    trials = jnp.array(_NEWTON_TRIALS)
    n_trials = len(_NEWTON_TRIALS)

    def direction(u, g, h):
        return _newton_direction(*_free_system(u, g, h))

    # The first pass evaluates u0 itself (a zero direction), so that the loop body holds
    # the only compiled copy of the emulator's linearisation (one more copy before the
    # loop took ~4 s more to compile on the demo, 0.2 s per star of its 20).
    shapes = jax.eval_shape(lambda v: grad_hess(prob, v), u0)
    f0, g0, h0, model0 = (jnp.zeros(a.shape, a.dtype) for a in shapes)
    # carry: (passes, accepted steps, trial index, done, best point and its values,
    #         direction there, last gain)
    init = (jnp.asarray(0), jnp.asarray(0), jnp.asarray(0), jnp.asarray(False),
            u0, jnp.asarray(jnp.inf, f0.dtype), g0, h0, model0,
            jnp.asarray(jnp.inf, f0.dtype), jnp.zeros_like(u0),
            jnp.asarray(jnp.inf, f0.dtype))

    def body(carry):
        n_pass, n_step, trial, _, u, f, g, h, model, dec, d, gain = carry
        first = n_pass == 0  # the pass at u0: its values are taken whatever they are
        step = jnp.clip(u + trials[trial] * d, 0.0, 1.0) - u
        cand = u + step
        fc, gc, hc, model_c = grad_hess(prob, cand)
        fc = _finite_or_inf(fc)
        # sufficient decrease along the (projected) step; the last trial: any decrease
        enough = (fc <= f + _ARMIJO * jnp.dot(g, step)) | (trial + 1 >= n_trials)
        better = (fc < f) & enough & ~first
        take = better | first
        dc, dec_c = direction(cand, gc, hc)
        pick = lambda new, old: jnp.where(take, new, old)  # noqa: E731
        u, g, h, model, dec, d = (pick(a, b) for a, b in (
            (cand, u), (gc, g), (hc, h), (model_c, model), (dec_c, dec), (dc, d)))
        gain = jnp.where(better, f - fc,
                         jnp.where(~first & (trial + 1 >= n_trials), 0.0, gain))
        f = jnp.where(take, fc, f)
        n_step = n_step + better
        trial = jnp.where(take, 0, trial + 1)
        done = ((n_step >= cfg.n_newton) | (trial >= n_trials)
                | (take & (dec_c < 1e-2 * cfg.tol)))
        return (n_pass + 1, n_step, trial, done, u, f, g, h, model, dec, d, gain)

    out = jax.lax.while_loop(lambda c: ~c[3], body, init)
    n_pass, _, _, _, u, f, g, h, model, dec, _, gain = out
    return n_pass, u, f, gain, dec, h, g, model


def _laplace_covariance(prob: _Problem, u, g, h):
    """Step 4: the Laplace covariance ``(k, k)`` in physical units at the optimum ``u``
    with gradient ``g`` and Hessian ``h`` of the objective in u; returns ``(cov, pd)``,
    ``pd`` whether the Hessian is positive definite (else cov is NaN).

    With a profiled noise scale, f = N/2 ln C and its Hessian carries −N/2 ∇C∇Cᵀ/C²,
    which vanishes at an interior optimum but not on a face of the box (where it can
    make H indefinite); the Laplace approximation at the fitted noise s² = C/N is
    N/2 ∇²C/C = H + (2/N) g gᵀ, with g the likelihood part of the gradient
    (Gauss–Newton's H is already N/2 ∇²C/C). Parameters held on a face of the box by an
    outward gradient are not free: the covariance is that of the others conditional on
    them (their own rows are NaN: the posterior there is one-sided), so one pinned
    parameter (e.g. R at its upper bound) does not void the errors of all."""
    cfg, k = prob.cfg, prob.k
    if cfg.fit_noise and not cfg.gauss_newton:
        g_lik = g
        if cfg.priors:
            g_lik = g_lik - jax.grad(lambda v: _prior_u(prob, v))(u)
        h = h + (2.0 / jnp.sum(prob.obs.mask)) * jnp.outer(g_lik, g_lik)
    _, h = _free_system(u, g, h)
    pinned = _pinned(u, g)
    chol = jnp.linalg.cholesky(h)
    pd = jnp.all(jnp.isfinite(chol))
    cov_u = jnp.linalg.inv(jnp.where(pd, h, jnp.eye(k)))
    scale = prob.upper - prob.lower
    cov = jnp.where(pd, cov_u * scale[:, None] * scale[None, :], jnp.nan)
    cov = jnp.where(pinned[:, None] | pinned[None, :], jnp.nan, cov)
    return cov, pd


def _prior_std_u(prob: _Problem):
    """``(k,)`` prior standard deviation in unit coordinates: that of the uniform box
    (1/√12), or a narrower given prior's."""
    prior_u = jnp.full((prob.k,), 1.0 / np.sqrt(12.0))
    for i, d in prob.cfg.priors:
        try:
            std_i = jnp.sqrt(d.variance) / (prob.upper[i] - prob.lower[i])
        except (AttributeError, NotImplementedError):
            continue
        prior_u = prior_u.at[i].set(jnp.minimum(prior_u[i], std_i))
    return prior_u


def _map_one(emulator, obs, lower, upper, b_lower, b_upper, init, key, cfg: _Config):
    """The MAP fit of one spectrum (module docstring, steps 1–4) in the search box
    ``[lower, upper]`` (the emulator's box is ``[b_lower, b_upper]``): a
    :class:`MapResult` with its status flags."""
    prob = _Problem(emulator, obs, lower, upper, cfg)
    k = prob.k
    starts = _coarse_search(prob, init, key)
    u_adam = _adam_logit(prob, starts)
    n_pass, u_end, f_end, gain, dec, h_end, g_end, m_end = _vmap_unless_one(
        lambda u0: _projected_newton(prob, u0), u_adam)
    n_eval = (cfg.n_search + int(cfg.has_init and cfg.n_starts == 1)
              + cfg.n_starts * cfg.steps + jnp.sum(n_pass))
    best = jnp.argmin(f_end)
    u, f, gain, dec, h, g, model = (
        a[best] for a in (u_end, f_end, gain, dec, h_end, g_end, m_end))
    cov, pd = _laplace_covariance(prob, u, g, h)
    scale = upper - lower
    theta = to_physical(u, lower, upper)
    n_used = jnp.sum(obs.mask)
    c2 = chi2(model, obs.flux, obs.sigma, obs.mask)
    noise = jnp.where(cfg.fit_noise, jnp.sqrt(c2 / n_used + NOISE_FLOOR**2), 1.0)
    converged = (dec < cfg.tol) | (gain < cfg.tol)
    status = jnp.where(jnp.isfinite(f), 0, int(Status.NONFINITE))
    status |= jnp.where(converged, 0, int(Status.NOT_CONVERGED))
    status |= jnp.where(pd, 0, int(Status.HESSIAN))
    status |= jnp.where(window_edge(u, lower, upper, b_lower, b_upper),
                        int(Status.WINDOW_EDGE), 0)
    status |= jnp.where(box_edge(u), int(Status.BOX_EDGE), 0)
    # implausible answers (results module docstring)
    nu = n_used - k
    judge_chi2 = obs.has_uncertainty and not cfg.fit_noise
    status |= plausibility_flags(u, chi2=c2 if judge_chi2 else None, nu=nu,
                                 sigma_u=jnp.sqrt(jnp.diag(cov)) / scale,
                                 prior_std_u=_prior_std_u(prob))
    return MapResult(
        params=theta,
        sigma=jnp.sqrt(jnp.diag(cov)),
        covariance=cov,
        loss=rms_loss(model, obs.flux, obs.mask),
        neg_log_posterior=f,
        noise_scale=noise,
        decrement=dec,
        status=status.astype(jnp.int32),
        n_evaluations=jnp.asarray(n_eval).astype(jnp.int32),
        starts=to_physical(u_end, lower, upper),
        start_objective=f_end,
        chi2_nu=jnp.where(obs.has_uncertainty, c2 / jnp.maximum(nu, 1), jnp.nan),
    )


def _vmap_unless_one(fn, *args):
    """``jax.vmap(fn)(*args)`` over the leading axis of every leaf of ``args``; for a
    leading axis of length 1, ``fn`` on the one element (no batching transform: cheaper
    to trace and compile, e.g. one star or one start)."""
    if jax.tree.leaves(args)[0].shape[0] == 1:
        out = fn(*jax.tree.map(lambda a: a[0], args))
        return jax.tree.map(lambda a: a[None], out)
    return jax.vmap(fn)(*args)


@eqx.filter_jit
def _map_batch(emulator, obs, lower, upper, b_lower, b_upper, init, keys, cfg):
    def one(o, lo, hi, i0, key):
        return _map_one(emulator, o, lo, hi, b_lower, b_upper, i0, key, cfg)

    return _vmap_unless_one(one, obs, lower, upper, init, keys)


def fit_map(
    emulator,
    flux,
    uncertainty=None,
    *,
    mask=None,
    guess=None,
    window: float | None = None,
    window_param: str = DEFAULT_WINDOW_PARAM,
    teff_guess=None,
    teff_window: float | None = None,
    init=None,
    priors: dict | None = None,
    fit_noise: bool | None = None,
    n_search: int = 256,
    n_starts: int = 4,
    steps: int = 100,
    lr: float = 0.05,
    n_newton: int = 12,
    tol: float = 1e-3,
    hessian: str = "exact",
    key=None,
    resample: str = "model",
    batch_size: int = 1,
    devices=None,
    progress: bool = False,
) -> MapResult:
    r"""MAP parameters and Laplace uncertainties of one spectrum or many (module doc).

    Args:
        emulator: any :class:`~jaxspec.emulator.Emulator`.
        flux: flux ``(n_pix,)`` / ``(n, n_pix)`` on the emulator's wavelengths, a
            :class:`~jaxspec.infer.Spectrum` / :class:`~jaxspec.infer.Observation`, or a
            list of them.
        uncertainty: 1σ for a flux array, or None.
        mask: bool for a flux array (True = use), or None.
        guess: None, one value or one per spectrum of the parameter ``window_param``
            (Teff in K by default): limit it to ``guess ± window``.
        window: half width of that window, in the unit of ``window_param`` (default
            500 K for Teff, the paper's; required for any other parameter).
        window_param: the parameter the window applies to (default ``"teff"``).
        teff_guess, teff_window: aliases of ``guess`` and ``window`` for a Teff window
            (the names of earlier versions; still accepted).
        init: ``(n_params,)`` or ``(n, n_params)`` physical start (e.g. a
            :class:`~jaxspec.infer.BayesOptResult`'s ``params``), added to the starts.
        priors: ``{name: numpyro distribution}`` replacing the uniform prior of those
            parameters (the box still bounds the search).
        fit_noise: profile an unknown noise scale; default: when no uncertainties.
        n_search: coarse-search points.
        n_starts: optimisations run (best of the search, vmapped); with ``init``
            the last start is ``init``, or, for ``n_starts=1``, the better of ``init``
            and the search's best.
        steps: Adam steps per start; ``lr`` its learning rate (cosine decay to 5 %).
        n_newton: projected Newton steps after Adam.
        tol: convergence tolerance, nats.
        hessian: ``"exact"`` (forward-over-reverse second derivatives of the objective)
            or ``"gauss-newton"``: :math:`H \approx J^\top W J` from the emulator's
            Jacobian J (k forward-mode passes, no second derivatives of the emulator;
            Nocedal & Wright 2006, *Numerical Optimization*, sect. 10.3), used by the
            Newton steps and the Laplace covariance (then the Fisher matrix at the MAP).
            Several times cheaper for emulators with costly derivatives (the line
            emulator); equal to the exact Hessian for a model linear near the optimum.
        key: PRNG key or int seed for the search shift (default 0).
        resample: ``"model"`` or ``"data"``.
        batch_size: spectra per compiled (vmapped) call; 1 is fastest on one CPU device.
        devices: None (one device), ``"all"``, a device count or a list of jax devices:
            each batch's stars are split over them (``jax.sharding.NamedSharding`` along
            the star axis; ``batch_size`` rounded up to a multiple of their number), e.g.
            the GPUs of a node, or CPU devices made with
            ``XLA_FLAGS=--xla_force_host_platform_device_count=N``. Each star's fit is
            the same computation wherever it runs.
        progress: tqdm bar over batches.

    Returns:
        :class:`MapResult` (leading axis for several spectra).
    """
    if n_starts < 1 or n_search < n_starts:
        raise ValueError(f"need 1 <= n_starts ({n_starts}) <= n_search ({n_search})")
    if hessian not in ("exact", "gauss-newton"):
        raise ValueError(f"hessian={hessian!r}; pass 'exact' or 'gauss-newton'")
    sharding = star_sharding(devices)
    obs, batched = as_batch(emulator, flux, uncertainty, mask, resample)
    n = obs.flux.shape[0]
    lower, upper, b_lower, b_upper = boxes(
        emulator, n, *resolve_window(guess, window, window_param, teff_guess, teff_window))
    if fit_noise is None:
        fit_noise = not obs.has_uncertainty
    items = ()
    if priors:
        unknown = [p for p in priors if p not in emulator.param_names]
        if unknown:
            raise ValueError(f"priors for unknown parameters {unknown}; the emulator has "
                             f"{emulator.param_names}")
        items = tuple((emulator.param_names.index(p), d) for p, d in priors.items())
    has_init = init is not None
    init_arr = jnp.broadcast_to(
        jnp.asarray(init if has_init else np.zeros(emulator.n_params), dtype=jnp.float64),
        (n, emulator.n_params),
    )
    cfg = _Config(int(n_search), int(n_starts), int(steps), float(lr), int(n_newton),
                  float(tol), bool(fit_noise), items, has_init, hessian == "gauss-newton")
    keys = keys_for(key, n)

    def run(o, lo, hi, i0, k):
        return _map_batch(emulator, o, lo, hi, b_lower, b_upper, i0, k, cfg)

    result = map_batches(run, (obs, lower, upper, init_arr, keys), n, batch_size, progress,
                         "fit_map", sharding)
    return unbatch(result, batched)
