r"""Bayesian optimisation of the RMS loss: the inference of the blase3D paper (sect. 4.1).

The paper minimises :math:`\mathcal{L}(\theta) = \langle (M(\theta) - D)^2\rangle^{1/2}`
(eq. 4) with scikit-optimize's ``gp_minimize``: 100 random evaluations seed a Gaussian
process surrogate of the loss, then 20 evaluations are each placed where the surrogate's
expected improvement is largest, and the best evaluated point is the answer. Here:

1. ``n_random`` points uniform in the search box (the emulator's bounds, with one
   parameter, Teff by default, optionally limited to ``guess ± window``) are evaluated
   in one batch.
2. A GP with Matérn-5/2 ARD kernel (:mod:`jaxspec.infer._gp`) models the standardised
   ln loss in unit coordinates of the box; its hyperparameters maximise the marginal
   likelihood (100 Adam steps before the first guided evaluation, then ``hyper_steps``
   = 10 warm-started steps before each of the others).
3. Each guided step draws ``n_candidates`` candidates (half uniform in the box, half
   Gaussian around the best point so far, σ = 0.05 of the box), evaluates the expected
   improvement (ξ = 0.01) under the GP and evaluates the loss at the best candidate.

The whole loop is one jitted function (``lax.fori_loop`` over guided steps with the
evaluations in fixed-size arrays; on CPU over every evaluation, random ones included, so
that the emulator is compiled once), vmapped over spectra.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jaxspec.infer import _gp
from jaxspec.infer._box import (
    DEFAULT_WINDOW_PARAM,
    box_edge,
    resolve_window,
    to_physical,
    window_edge,
)
from jaxspec.infer._prepare import as_batch, boxes, keys_for, map_batches, unbatch
from jaxspec.infer.likelihood import chi2, observation_loss
from jaxspec.infer.results import Status, is_converged, plausibility_flags, result_row

__all__ = ["BayesOptResult", "bayes_opt"]


class BayesOptResult(eqx.Module):
    """Outcome of :func:`bayes_opt` (fields gain a leading axis for many spectra).

    params
        ``(n_params,)`` best evaluated parameters (physical units, ``param_names`` order).
    loss
        ``()`` the loss there.
    history_params
        ``(n_evaluations, n_params)`` every evaluated point, random ones first.
    history_loss
        ``(n_evaluations,)`` their losses.
    status
        ``()`` int, :class:`~jaxspec.infer.results.Status` flags (NONFINITE,
        WINDOW_EDGE, BOX_EDGE, and POOR_FIT / ALL_EDGES for implausible answers).
    """

    params: Float[Array, "... n_params"]
    loss: Float[Array, "..."]
    history_params: Float[Array, "... n_eval n_params"]
    history_loss: Float[Array, "... n_eval"]
    status: Int[Array, "..."]

    @property
    def n_evaluations(self) -> int:
        return int(self.history_loss.shape[-1])

    @property
    def converged(self):
        """False where a failure flag is set (BO has no other convergence criterion)."""
        return is_converged(self.status)

    def rows(self) -> list[dict]:
        params = np.atleast_2d(np.asarray(self.params))
        loss = np.atleast_1d(np.asarray(self.loss))
        status = np.atleast_1d(np.asarray(self.status))
        return [result_row(params[i], None, loss[i], self.n_evaluations, status[i])
                for i in range(params.shape[0])]


_FIRST_HYPER_STEPS = 100


class _Config(NamedTuple):
    n_random: int
    n_guided: int
    n_candidates: int
    hyper_steps: int
    loss: str
    eval_batch: int
    local_scale: float


def _bo_one(emulator, obs, lower, upper, b_lower, b_upper, key, cfg: _Config):
    k = lower.shape[-1]
    n = cfg.n_random + cfg.n_guided

    def loss_u(u):
        val = observation_loss(emulator, obs, to_physical(u, lower, upper), cfg.loss)
        return jnp.where(jnp.isfinite(val), val, jnp.inf)

    key, k_init = jax.random.split(key)
    u0 = jax.random.uniform(k_init, (cfg.n_random, k), dtype=jnp.float64)
    xs = jnp.zeros((n, k)).at[: cfg.n_random].set(u0)
    ys = jnp.full((n,), jnp.inf)
    # On CPU the random points are evaluated one at a time in the guided steps' loop
    # (one compiled copy of the emulator: the windowed synthesis is scatter-bound there,
    # so batching gains nothing, and a second copy took ~5 s to compile on the demo,
    # 0.27 s per star of its 20); elsewhere in batches of eval_batch first.
    one_loop = jax.default_backend() == "cpu"
    if not one_loop:
        ys = ys.at[: cfg.n_random].set(jax.lax.map(loss_u, u0, batch_size=cfg.eval_batch))

    def targets(ys, valid):
        # The GP models the standardised ln loss; non-finite losses take the worst value.
        f = jnp.log(jnp.maximum(ys, 1e-300))
        ok = valid & jnp.isfinite(f)
        worst = jnp.max(jnp.where(ok, f, -jnp.inf))
        f = jnp.where(valid & ~ok, worst, f)
        cnt = jnp.maximum(jnp.sum(valid), 1)
        mean = jnp.sum(jnp.where(valid, f, 0.0)) / cnt
        std = jnp.sqrt(jnp.sum(jnp.where(valid, (f - mean) ** 2, 0.0)) / cnt)
        std = jnp.where(std > 0, std, 1.0)
        return jnp.where(valid, (f - mean) / std, 0.0)

    def propose(i, carry):
        """Guided step i: the point where expected improvement is largest, placed at row
        n_random + i of ``xs`` (not evaluated)."""
        xs, ys, hyper, key = carry
        valid = jnp.arange(n) < cfg.n_random + i
        t = targets(ys, valid)
        # one call site (one compiled copy): a long first fit, then short warm starts
        steps = jnp.where(i == 0, _FIRST_HYPER_STEPS, cfg.hyper_steps)
        hyper = _gp.fit_hyper(hyper, xs, t, valid, steps)
        key, k_uni, k_loc = jax.random.split(key, 3)
        best_i = jnp.argmin(jnp.where(valid, ys, jnp.inf))
        n_uni = cfg.n_candidates // 2
        uni = jax.random.uniform(k_uni, (n_uni, k), dtype=jnp.float64)
        loc = xs[best_i] + cfg.local_scale * jax.random.normal(
            k_loc, (cfg.n_candidates - n_uni, k), dtype=jnp.float64
        )
        cand = jnp.concatenate([uni, jnp.clip(loc, 0.0, 1.0)])
        mean, var = _gp.predict(hyper, xs, t, valid, cand)
        ei = _gp.expected_improvement(mean, var, t[best_i])
        u_new = cand[jnp.argmax(jnp.where(jnp.isfinite(ei), ei, -jnp.inf))]
        return xs.at[cfg.n_random + i].set(u_new), ys, hyper, key

    def evaluate(j, carry):
        """The loss at row j of ``xs``."""
        xs, ys, hyper, key = carry
        return xs, ys.at[j].set(loss_u(xs[j])), hyper, key

    def guided(i, carry):
        return evaluate(cfg.n_random + i, propose(i, carry))

    def any_step(j, carry):  # evaluation j: a random point, or guided step j − n_random
        carry = jax.lax.cond(j >= cfg.n_random,
                             lambda c: propose(j - cfg.n_random, c), lambda c: c, carry)
        return evaluate(j, carry)

    carry = (xs, ys, _gp.initial_hyper(k), key)
    if one_loop:
        xs, ys, hyper, key = jax.lax.fori_loop(0, n, any_step, carry)
    else:
        xs, ys, hyper, key = jax.lax.fori_loop(0, cfg.n_guided, guided, carry)
    best = jnp.argmin(ys)
    u_best = xs[best]
    status = jnp.where(jnp.isfinite(ys[best]), 0, int(Status.NONFINITE))
    status |= jnp.where(
        window_edge(u_best, lower, upper, b_lower, b_upper), int(Status.WINDOW_EDGE), 0
    )
    status |= jnp.where(box_edge(u_best), int(Status.BOX_EDGE), 0)
    if obs.has_uncertainty:  # implausible answers (results module docstring)
        theta = to_physical(u_best, lower, upper)
        c2 = chi2(obs.project(emulator(theta)), obs.flux, obs.sigma, obs.mask)
        status |= plausibility_flags(u_best, chi2=c2, nu=jnp.sum(obs.mask) - k)
    else:
        status |= plausibility_flags(u_best)
    return BayesOptResult(
        params=to_physical(u_best, lower, upper),
        loss=ys[best],
        history_params=to_physical(xs, lower, upper),
        history_loss=ys,
        status=status.astype(jnp.int32),
    )


@eqx.filter_jit
def _bo_batch(emulator, obs, lower, upper, b_lower, b_upper, keys, cfg):
    def one(o, lo, hi, key):
        return _bo_one(emulator, o, lo, hi, b_lower, b_upper, key, cfg)

    return jax.vmap(one)(obs, lower, upper, keys)


def bayes_opt(
    emulator,
    flux,
    uncertainty=None,
    *,
    mask=None,
    n_random: int = 100,
    n_guided: int = 20,
    guess=None,
    window: float | None = None,
    window_param: str = DEFAULT_WINDOW_PARAM,
    teff_guess=None,
    teff_window: float | None = None,
    loss: str = "rms",
    n_candidates: int = 1000,
    hyper_steps: int = 10,
    key=None,
    resample: str = "model",
    batch_size: int = 1,
    eval_batch: int = 25,
    progress: bool = False,
) -> BayesOptResult:
    r"""Minimise the loss of an emulator against spectra by Bayesian optimisation.

    Args:
        emulator: any :class:`~jaxspec.emulator.Emulator`.
        flux: one spectrum or many: a flux array ``(n_pix,)`` / ``(n, n_pix)`` on the
            emulator's wavelengths, a :class:`~jaxspec.infer.Spectrum` or
            :class:`~jaxspec.infer.Observation`, or a list of them.
        uncertainty: 1σ for a flux array (same shape), or None.
        mask: bool for a flux array (True = use), or None.
        n_random: random evaluations seeding the surrogate (paper: 100).
        n_guided: evaluations guided by expected improvement (paper: 20).
        guess: None, one value or one per spectrum of the parameter ``window_param``
            (Teff in K by default): search it only within ``guess ± window`` (paper:
            Teff ± 500 K around the truth).
        window: half width of that window, in the unit of ``window_param`` (default
            500 K for Teff, the paper's; required for any other parameter).
        window_param: the parameter the window applies to (default ``"teff"``).
        teff_guess, teff_window: aliases of ``guess`` and ``window`` for a Teff window
            (the names of earlier versions; still accepted).
        loss: ``"rms"`` (eq. 4, default) or ``"chi2"`` (χ² per pixel, uses the
            uncertainties).
        n_candidates: candidates scored by expected improvement per guided step.
        hyper_steps: Adam steps refitting the GP hyperparameters per guided step.
        key: JAX PRNG key or int seed (default 0).
        resample: ``"model"`` or ``"data"`` (see :func:`~jaxspec.infer.observe`).
        batch_size: spectra per compiled call (vmapped; the last batch is padded). 1 is
            fastest on CPU; raise it on a GPU.
        eval_batch: random-phase loss evaluations per vectorised emulator call (bounds
            memory) on GPU/TPU; on CPU every evaluation is made one at a time in the
            loop of the guided steps (one compiled copy of the emulator).
        progress: tqdm bar over batches.

    Returns:
        :class:`BayesOptResult`; fields gain a leading axis when several spectra are
        given. ``n_evaluations = n_random + n_guided``.
    """
    if n_random < 2 or n_guided < 0:
        raise ValueError(f"n_random={n_random} must be >= 2 and n_guided={n_guided} >= 0")
    obs, batched = as_batch(emulator, flux, uncertainty, mask, resample)
    n = obs.flux.shape[0]
    lower, upper, b_lower, b_upper = boxes(
        emulator, n, *resolve_window(guess, window, window_param, teff_guess, teff_window))
    cfg = _Config(
        int(n_random), int(n_guided), int(n_candidates), int(hyper_steps), str(loss),
        int(eval_batch), 0.05,
    )
    keys = keys_for(key, n)

    def run(o, lo, hi, k):
        return _bo_batch(emulator, o, lo, hi, b_lower, b_upper, k, cfg)

    result = map_batches(run, (obs, lower, upper, keys), n, batch_size, progress, "bayes_opt")
    return unbatch(result, batched)
