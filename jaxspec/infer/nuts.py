r"""Posterior sampling with NUTS (numpyro).

The probabilistic model is the plain numpyro function :func:`spectrum_model`:

.. math::
    \theta_d &\sim \mathcal{U}(\theta_{d,lo}, \theta_{d,hi})
        \quad\text{(or a user prior)},\\
    s &\sim \text{LogUniform}(10^{-6}, 10^{3}) \quad\text{(only when the noise is fitted)},\\
    D_i &\sim \mathcal{N}\big(M_i(\theta),\ (s\,\sigma_i)^2\big)
        \quad\text{for every used pixel } i,

with :math:`M` the emulator's flux on the data pixels and the box the emulator's bounds
(one parameter, Teff by default, optionally limited to ``guess ± window``).
:func:`sample_nuts` runs ``num_chains`` NUTS chains (one compiled function for all
chains), started near the MAP (:func:`~jaxspec.infer.fit_map`, jittered by half its
Laplace σ), and returns a :class:`NutsResult` holding the samples, arviz
``InferenceData``, split R-hat, effective sample sizes and divergences.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
from numpyro.infer.hmc import hmc
from numpyro.infer.util import constrain_fn, potential_energy
from tqdm.auto import tqdm

from jaxspec.infer._box import (
    DEFAULT_WINDOW_PARAM,
    EDGE_TOL,
    resolve_window,
    search_box,
)
from jaxspec.infer._prepare import as_batch, keys_for
from jaxspec.infer.likelihood import chi2, rms_loss
from jaxspec.infer.results import (
    Status,
    is_converged,
    plausibility_flags,
    prior_std,
    result_row,
    status_message,
)

__all__ = ["NutsResult", "sample_nuts", "spectrum_model"]

_NOISE_PRIOR = (1e-6, 1e3)


def spectrum_model(emulator, obs, lower, upper, priors=None, fit_noise: bool = False):
    """numpyro model of one spectrum (module docstring).

    Args:
        emulator: any :class:`~jaxspec.emulator.Emulator`.
        obs: an unbatched :class:`~jaxspec.infer.Observation`.
        lower, upper: ``(n_params,)`` box of the uniform priors.
        priors: None or ``{name: numpyro distribution}`` replacing those uniform priors.
        fit_noise: sample a noise scale ``noise_scale`` multiplying the uncertainties.

    Sample sites: one per parameter (named as ``emulator.param_names``), optionally
    ``noise_scale``, and the observed ``flux``.
    """
    priors = priors or {}
    values = []
    for i, name in enumerate(emulator.param_names):
        d = priors.get(name)
        if d is None:
            d = dist.Uniform(lower[i], upper[i])
        values.append(numpyro.sample(name, d))
    theta = jnp.stack(values)
    scale = numpyro.sample("noise_scale", dist.LogUniform(*_NOISE_PRIOR)) if fit_noise else 1.0
    model = obs.project(emulator(theta))
    with numpyro.handlers.mask(mask=obs.mask):
        numpyro.sample("flux", dist.Normal(model, scale * obs.sigma), obs=obs.flux)


@dataclass
class NutsResult:
    """Outcome of :func:`sample_nuts` for one spectrum.

    Attributes:
        samples: ``{site: (num_chains, num_samples)}`` posterior draws (physical units).
        params: ``(n_params,)`` posterior means.
        sigma: ``(n_params,)`` posterior standard deviations.
        rhat: ``(n_params,)`` split Gelman–Rubin R-hat.
        ess: ``(n_params,)`` effective sample sizes.
        n_divergent: divergent transitions after warmup.
        loss: RMS residual (eq. 4) at the posterior mean.
        n_evaluations: gradient evaluations (leapfrog steps, warmup estimated from the
            sampling phase) plus those of the initial MAP.
        status: :class:`~jaxspec.infer.results.Status` flags.
        seconds: wall-clock time (sampling plus this spectrum's share of the initial MAP).
        inference_data: arviz ``InferenceData`` (None when arviz is not installed).
        param_names: names, in order.
        chi2_nu: χ²/ν with the given uncertainties at the posterior mean (NaN without).
        sample_stats: ``{name: (num_chains, num_samples)}`` per-draw sample statistics
            (arviz names: ``diverging``, ``n_steps``, ``acceptance_rate``, ``energy``,
            ``lp``, ``step_size``).
    """

    samples: dict
    params: np.ndarray
    sigma: np.ndarray
    rhat: np.ndarray
    ess: np.ndarray
    n_divergent: int
    loss: float
    n_evaluations: int
    status: int
    seconds: float
    param_names: tuple
    inference_data: object = field(default=None, repr=False)
    chi2_nu: float = float("nan")
    sample_stats: dict = field(default_factory=dict, repr=False)

    @property
    def converged(self) -> bool:
        return bool(is_converged(self.status))

    @property
    def message(self) -> str:
        return status_message(self.status, self._details())

    def _details(self) -> str:
        return (f"R-hat max {np.nanmax(self.rhat):.3f}, ESS min {np.nanmin(self.ess):.0f}, "
                f"{self.n_divergent} divergent"
                + (f", chi2/nu {self.chi2_nu:.3g}" if np.isfinite(self.chi2_nu) else ""))

    def rows(self) -> list[dict]:
        extra = {
            "rhat_max": float(np.nanmax(self.rhat)),
            "ess_min": float(np.nanmin(self.ess)),
            "n_divergent": int(self.n_divergent),
        }
        if "noise_scale" in self.samples:
            extra["noise_scale"] = float(np.mean(self.samples["noise_scale"]))
        return [result_row(self.params, self.sigma, self.loss, self.n_evaluations,
                           self.status, self._details(), extra)]


def _unconstrained(value, d):
    return dist.biject_to(d.support).inv(value)


def sample_nuts(
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
    priors: dict | None = None,
    fit_noise: bool | None = None,
    init="map",
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    chain_method: str | None = None,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 8,
    dense_mass: bool = True,
    rhat_max: float = 1.05,
    ess_min: float = 100.0,
    max_divergent_fraction: float = 0.01,
    key=None,
    resample: str = "model",
    inference_data: bool = True,
    local: float | None = 1e-5,
    progress: bool = False,
):
    r"""Sample the posterior of one spectrum (or each of many) with NUTS.

    Args:
        emulator: any :class:`~jaxspec.emulator.Emulator`.
        flux: flux ``(n_pix,)`` / ``(n, n_pix)`` on the emulator's wavelengths, a
            :class:`~jaxspec.infer.Spectrum` / :class:`~jaxspec.infer.Observation`, or a
            list of them.
        uncertainty, mask: for a flux array.
        guess: None, one value or one per spectrum of the parameter ``window_param``
            (Teff in K by default): limit its prior to ``guess ± window``.
        window: half width of that window, in the unit of ``window_param`` (default
            500 K for Teff, the paper's; required for any other parameter).
        window_param: the parameter the window applies to (default ``"teff"``).
        teff_guess, teff_window: aliases of ``guess`` and ``window`` for a Teff window
            (the names of earlier versions; still accepted).
        priors: ``{name: numpyro distribution}`` replacing uniform priors.
        fit_noise: sample a noise scale; default: when there are no uncertainties.
        init: ``"map"`` (default: run :func:`~jaxspec.infer.fit_map` first), None
            (numpyro's default init: uniform in the unconstrained box), or physical
            parameters ``(n_params,)`` / ``(n, n_params)``.
        num_warmup, num_samples, num_chains: NUTS settings per spectrum.
        chain_method: ``"vectorized"`` (chains vmapped, in lock-step: best on GPU) or
            ``"sequential"`` (``lax.map`` over chains: best on CPU, where lock-step
            chains wait for the longest trajectory); default: by backend.
        target_accept_prob, max_tree_depth: NUTS settings.
        dense_mass: adapt a dense mass matrix (default; cheap for a few parameters and
            it absorbs the Teff–log g–[Fe/H] correlations) instead of a diagonal one.
        rhat_max, ess_min, max_divergent_fraction: thresholds that flag a result as not
            converged (Status.RHAT, LOW_ESS, DIVERGENT); implausible answers (χ²/ν far
            above 1, a box corner, a posterior as wide as the prior) are flagged too
            (:mod:`jaxspec.infer.results`).
        key: PRNG key or int seed.
        resample: ``"model"`` or ``"data"``.
        inference_data: also build arviz ``InferenceData``.
        local: for an emulator with a ``local`` method (the
            :class:`~jaxspec.line_emulator.LineEmulator`) whose prior boxes (all spectra
            of the call together) are narrower than its bounds, e.g. with a Teff
            ``window``: sample (and fit the initial MAP) through ``emulator.local(box,
            depth=local)``, the same model inside the box without the lines shallower
            than ``local`` there (several times cheaper gradients). None: the emulator
            as given.
        progress: tqdm bar over spectra.

    Returns:
        :class:`NutsResult`, or a list of them for several spectra (one compiled sampler
        is reused across spectra of one call).

    Raises:
        ValueError: ``num_samples`` < 2, ``num_chains`` < 1 or ``num_warmup`` < 0 (before
            any work), or bad spectra, priors or ``init``.
    """
    for name, value, least in (("num_warmup", num_warmup, 0), ("num_samples", num_samples, 2),
                               ("num_chains", num_chains, 1)):
        if int(value) != value or value < least:
            raise ValueError(f"{name}={value}; pass an integer >= {least}")
    obs_all, batched = as_batch(emulator, flux, uncertainty, None if mask is None else mask,
                                resample)
    n = obs_all.flux.shape[0]
    guess, window, window_param = resolve_window(guess, window, window_param, teff_guess,
                                                 teff_window)
    lo, hi, _ = search_box(emulator, guess, window, window_param)
    lo = np.broadcast_to(lo, (n, emulator.n_params))
    hi = np.broadcast_to(hi, (n, emulator.n_params))
    if fit_noise is None:
        fit_noise = not obs_all.has_uncertainty
    emulator = _local_emulator(emulator, lo, hi, local)
    priors = dict(priors or {})
    unknown = [p for p in priors if p not in emulator.param_names]
    if unknown:
        raise ValueError(f"priors for unknown parameters {unknown}; the emulator has "
                         f"{emulator.param_names}")
    names = tuple(emulator.param_names)
    keys = keys_for(key, n)

    map_result = None
    t_map = time.perf_counter()
    if isinstance(init, str):
        if init != "map":
            raise ValueError(f"init={init!r}; pass 'map', None or parameter values")
        from jaxspec.infer.map import fit_map

        map_result = fit_map(emulator, obs_all, guess=guess, window=window,
                             window_param=window_param, priors=priors or None,
                             fit_noise=fit_noise, key=keys[0])
        init_theta = np.asarray(map_result.params)
        init_sigma = np.asarray(map_result.sigma)
    elif init is not None:
        init_theta = np.broadcast_to(np.asarray(init, dtype=np.float64), (n, len(names)))
        init_sigma = np.full((n, len(names)), np.nan)
    else:
        init_theta = None
    t_map = (time.perf_counter() - t_map) / n  # the initial MAP, per spectrum

    if chain_method is None:
        chain_method = "sequential" if jax.default_backend() == "cpu" else "vectorized"
    if chain_method not in ("vectorized", "sequential"):
        raise ValueError(f"chain_method={chain_method!r}; pass 'vectorized' or 'sequential'")
    cfg = _Config(int(num_warmup), int(num_samples), int(num_chains), str(chain_method),
                  float(target_accept_prob), int(max_tree_depth), bool(dense_mass),
                  bool(fit_noise), tuple(priors.items()))
    results = []
    for i in tqdm(range(n), desc="sample_nuts", disable=not progress, unit="spectrum"):
        t0 = time.perf_counter()
        obs = jax.tree.map(lambda a: a[i], obs_all)
        k_run, k_init = jax.random.split(keys[i])
        if init_theta is not None:
            z0 = _chain_inits(
                k_init, init_theta[i], init_sigma[i], lo[i], hi[i], names, priors,
                num_chains, fit_noise, np.asarray(map_result.noise_scale)[i] if map_result
                else 1.0,
            )
        else:
            z0 = _random_inits(k_init, names, num_chains, fit_noise)
        draws, stats, num_steps = _run_chains(
            emulator, obs, jnp.asarray(lo[i]), jnp.asarray(hi[i]), z0,
            jax.random.split(k_run, num_chains), cfg,
        )
        results.append(_summarise(
            draws, stats, num_steps, emulator, obs, names, lo[i], hi[i], rhat_max,
            ess_min, max_divergent_fraction, map_result, i, inference_data,
            time.perf_counter() - t0 + t_map, cfg,
        ))
    return results if batched else results[0]


def _local_emulator(emulator, lo, hi, depth):
    """``emulator.local`` over the union of the boxes ``[lo, hi]`` ``(n, k)`` where the
    emulator has that method, ``depth`` is not None and the union is narrower than its
    bounds on some axis; else ``emulator``."""
    if depth is None or not hasattr(emulator, "local"):
        return emulator
    bounds = np.asarray(emulator.bounds, dtype=np.float64)
    box = np.column_stack([np.min(lo, axis=0), np.max(hi, axis=0)])
    if np.all((box[:, 0] <= bounds[:, 0]) & (box[:, 1] >= bounds[:, 1])):
        return emulator
    return emulator.local(np.clip(box, bounds[:, :1], bounds[:, 1:]), depth=depth)


class _Config(NamedTuple):
    num_warmup: int
    num_samples: int
    num_chains: int
    chain_method: str
    target_accept_prob: float
    max_tree_depth: int
    dense_mass: bool
    fit_noise: bool
    priors: tuple


def _model_for(cfg):
    priors = dict(cfg.priors)

    def model(emulator, obs, lower, upper):
        spectrum_model(emulator, obs, lower, upper, priors, cfg.fit_noise)

    return model


@eqx.filter_jit
def _run_chains(emulator, obs, lower, upper, z0, keys, cfg):
    """All chains of one spectrum: warmup then sampling, one compiled function.

    Returns ``(draws {site: (C, S)}, stats {name: (C, S)}, gradient evaluations (C,))``;
    ``stats`` are the per-draw sample statistics in arviz's names: ``diverging``,
    ``n_steps`` (leapfrog steps), ``acceptance_rate``, ``energy`` (Hamiltonian), ``lp``
    (log density up to a constant, −potential energy) and ``step_size``.

    Uses numpyro's functional NUTS kernels (``numpyro.infer.hmc.hmc``) with the potential
    energy of :func:`spectrum_model`, so the compiled sampler takes the emulator and data
    as arguments and is reused across spectra.
    """
    model = _model_for(cfg)
    args = (emulator, obs, lower, upper)

    def potential_fn_gen(*model_args):
        return lambda z: potential_energy(model, model_args, {}, z)

    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_fn_gen, algo="NUTS")

    def chain(z_init, key):
        state = init_kernel(
            z_init, cfg.num_warmup, target_accept_prob=cfg.target_accept_prob,
            max_tree_depth=cfg.max_tree_depth, dense_mass=cfg.dense_mass, model_args=args,
            rng_key=key,
        )

        def step(state, _):
            state = sample_kernel(state, model_args=args)
            stats = {"diverging": state.diverging, "n_steps": state.num_steps,
                     "acceptance_rate": state.accept_prob, "energy": state.energy,
                     "lp": -state.potential_energy,
                     "step_size": state.adapt_state.step_size}
            return state, (state.z, stats)

        # One scan over warmup and sampling: the kernel adapts while its step counter is
        # below num_warmup (numpyro's hmc), so this equals two scans, and the tree
        # building (the emulator's gradient) is compiled once instead of twice.
        _, (zs, stats) = jax.lax.scan(step, state, None,
                                      length=cfg.num_warmup + cfg.num_samples)
        n_steps = jnp.sum(stats["n_steps"])
        zs, stats = jax.tree.map(lambda a: a[cfg.num_warmup:], (zs, stats))
        draws = jax.vmap(lambda z: constrain_fn(model, args, {}, z))(zs)
        return draws, stats, n_steps

    if cfg.chain_method == "vectorized":
        return jax.vmap(chain)(z0, keys)
    return jax.lax.map(lambda a: chain(*a), (z0, keys))


def _random_inits(key, names, num_chains, fit_noise):
    sites = list(names) + (["noise_scale"] if fit_noise else [])
    keys = jax.random.split(key, len(sites))
    out = {s: jax.random.uniform(k, (num_chains,), minval=-2.0, maxval=2.0)
           for s, k in zip(sites, keys)}
    if fit_noise:
        out["noise_scale"] = jnp.full((num_chains,), jnp.log(1e-2))
    return out


def _chain_inits(key, theta, sigma, lo, hi, names, priors, num_chains, fit_noise, noise):
    width = hi - lo
    jitter = np.where(np.isfinite(sigma), 0.5 * sigma, 0.01 * width)
    z = np.array(jax.random.normal(key, (num_chains, len(names))))
    z[0] = 0.0  # one chain starts at the MAP itself
    vals = np.clip(theta + jitter * z, lo + EDGE_TOL * width, hi - EDGE_TOL * width)
    out = {}
    for j, name in enumerate(names):
        d = priors.get(name) or dist.Uniform(lo[j], hi[j])
        out[name] = _unconstrained(jnp.asarray(vals[:, j]), d)
    if fit_noise:
        s = float(np.clip(noise, 2 * _NOISE_PRIOR[0], 0.5 * _NOISE_PRIOR[1]))
        out["noise_scale"] = jnp.full((num_chains,), np.log(s))
    return out


def _summarise(draws, stats, num_steps, emulator, obs, names, lo, hi, rhat_max,
               ess_min, max_div, map_result, i, want_idata, seconds, cfg):
    samples = {k: np.asarray(v) for k, v in draws.items()}  # (C, S)
    sample_stats = {k: np.asarray(v) for k, v in stats.items()}  # (C, S)
    diverging = sample_stats["diverging"]
    chains = np.stack([samples[n] for n in names], axis=-1)  # (C, S, k)
    flat = chains.reshape(-1, len(names))
    mean, std = flat.mean(axis=0), flat.std(axis=0, ddof=1)
    if chains.shape[0] > 1:
        rhat = np.array([float(split_gelman_rubin(chains[..., j])) for j in range(len(names))])
    else:
        rhat = np.full(len(names), np.nan)
    ess = np.array([float(effective_sample_size(chains[..., j])) for j in range(len(names))])
    n_div = int(np.sum(diverging))
    n_eval = int(np.sum(np.asarray(num_steps)))
    if map_result is not None:
        n_eval += int(np.asarray(map_result.n_evaluations)[i])
    status = 0
    if not np.all(np.isfinite(flat)):
        status |= int(Status.NONFINITE)
    if np.any(rhat > rhat_max):
        status |= int(Status.RHAT)
    if np.any(ess < ess_min):
        status |= int(Status.LOW_ESS)
    if n_div > max_div * flat.shape[0]:
        status |= int(Status.DIVERGENT)
    u = (mean - lo) / (hi - lo)
    if np.any((u < 0.05) | (u > 0.95)):
        status |= int(Status.BOX_EDGE)
    model = obs.project(emulator(jnp.asarray(mean)))
    loss = float(rms_loss(model, obs.flux, obs.mask))
    # implausible answers (results module docstring)
    judge_chi2 = obs.has_uncertainty and not cfg.fit_noise
    nu = int(np.sum(np.asarray(obs.mask))) - len(names)
    c2 = float(chi2(model, obs.flux, obs.sigma, obs.mask))
    status |= int(plausibility_flags(
        u, chi2=c2 if judge_chi2 else None, nu=nu, sigma_u=std / (hi - lo),
        prior_std_u=prior_std(dict(cfg.priors), names, lo, hi)))
    idata = _to_inference_data(samples, sample_stats, rhat, ess, names) if want_idata else None
    return NutsResult(
        samples=samples, params=mean, sigma=std, rhat=rhat, ess=ess, n_divergent=n_div,
        loss=loss, n_evaluations=n_eval, status=status, seconds=seconds,
        param_names=names, inference_data=idata, sample_stats=sample_stats,
        chi2_nu=c2 / max(nu, 1) if obs.has_uncertainty else float("nan"),
    )


def _to_inference_data(samples, sample_stats, rhat, ess, names):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import arviz as az
    except ImportError:  # pragma: no cover - arviz is a dependency
        return None
    idata = az.from_dict(posterior=samples, sample_stats=sample_stats)
    idata.posterior.attrs["rhat"] = [float(r) for r in rhat]
    idata.posterior.attrs["ess"] = [float(e) for e in ess]
    idata.posterior.attrs["param_names"] = list(names)
    return idata
