r"""Simulation-based calibration of amortised models on held-out simulated spectra.

Draw :math:`(\theta_n, x_n)` from the same prior and simulator as the training set (a
key the training never used) and ask how often the model's intervals contain
:math:`\theta_n`. For a calibrated posterior the central 68 % / 95 % intervals cover the
truth in 68 % / 95 % of spectra (:func:`jaxspec.infer.sample_coverage` for the flow's
draws, :func:`jaxspec.infer.gaussian_coverage` for the regressor's ±σ), and the
normalised rank of the truth among the posterior draws,

.. math:: r_n = \frac{1}{L}\sum_{l=1}^{L} \mathbb 1[\theta^{(l)} < \theta_n],

is uniform on [0, 1] (Talts et al. 2018, arXiv:1804.06788, Theorem 1): a U-shaped rank
histogram means too narrow posteriors, a hump too wide ones, a slope a bias.

Expected coverage (:func:`coverage_curve`): the fraction of truths inside the central
credible interval of level :math:`\alpha` is :math:`C(\alpha) = \frac1N\sum_n
\mathbb 1[|r_n - \tfrac12| \le \alpha/2]`, computed from the ranks (samples) or from
:math:`r_n = \Phi((\theta_n - \mu_n)/\sigma_n)` (Gaussian errors, the probability
integral transform); a calibrated method has :math:`C(\alpha) = \alpha` at every level
(the per-parameter expected-coverage curve of Hermans et al. 2022, arXiv:2110.06581, and
the marginal form of TARP, Lemos et al. 2023), and :func:`coverage_deviation` is the
largest :math:`|C(\alpha) - \alpha|`.

Recalibration (:class:`Recalibration`): what :func:`~jaxspec.amortised.calibrate_regressor`
and :func:`~jaxspec.amortised.calibrate_flow` fit on held-out simulations and store in
the model file.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import equinox as eqx
import numpy as np
from jaxtyping import Array, Float
from scipy.stats import binom, norm

from jaxspec.amortised.simulate import Simulator, as_key

__all__ = [
    "Recalibration",
    "coverage_curve",
    "coverage_deviation",
    "gaussian_ranks",
    "plot_rank_histograms",
    "rank_statistics",
    "simulation_based_calibration",
]

#: Credible levels of the expected-coverage curves.
LEVELS = np.round(np.arange(0.05, 0.96, 0.05), 2)


class Recalibration(eqx.Module):
    r"""Per-parameter calibration of an amortised model, fitted on held-out simulations.

    values
        ``(k, p)`` float64 coefficients; their meaning depends on the model (the
        ``description``): for the regressor ``(d0, d1, d2, ln a, c0, c1, α, β)`` of
        :math:`\sigma^2 = a^2\sigma_{noise}^2 + (s_\theta e^{c_0 + c_1 t + \alpha\cdot u +
        \beta\cdot u^2})^2` and the
        mean error :math:`s_\theta(d_0 + d_1 t + d_2 t^2)` subtracted, for the
        flow ``(b0, b1, b2, ln w)`` of the draws' shift :math:`-\sigma_{post}(b_0 + b_1 t
        + b_2 t^2)` and width factor :math:`w`
        (:func:`~jaxspec.amortised.calibrate_regressor`,
        :func:`~jaxspec.amortised.calibrate_flow`).
    description
        one line saying what ``values`` mean (stored in the file).
    report
        JSON string: held-out set size and coverage before and after.
    """

    values: Float[Array, "k p"]
    description: str = eqx.field(static=True)
    report: str = eqx.field(static=True, default="{}")


def gaussian_ranks(truth, mean, sigma) -> np.ndarray:
    r"""Normalised ranks ``(n, k)`` of ``truth`` under Gaussians ``N(mean, sigma²)``:
    :math:`\Phi((\theta - \mu)/\sigma)` (NaN where ``sigma`` is not positive and finite)."""
    truth, mean, sigma = (np.asarray(a, dtype=np.float64) for a in (truth, mean, sigma))
    ok = np.isfinite(sigma) & (sigma > 0) & np.isfinite(mean)
    z = np.where(ok, (truth - mean) / np.where(ok, sigma, 1.0), np.nan)
    return norm.cdf(z)


def coverage_curve(ranks, levels=LEVELS) -> np.ndarray:
    """Expected coverage ``(len(levels), k)``: the fraction of spectra whose truth lies in
    the central credible interval of each level (module docstring); NaN ranks ignored.

    Args:
        ranks: ``(n, k)`` normalised ranks in [0, 1] (:func:`rank_statistics` or
            :func:`gaussian_ranks`).
        levels: credible levels in (0, 1).
    """
    ranks = np.atleast_2d(np.asarray(ranks, dtype=np.float64))
    levels = np.asarray(levels, dtype=np.float64)
    if np.any((levels <= 0) | (levels >= 1)):
        raise ValueError(f"levels {levels.tolist()}; pass credible levels in (0, 1)")
    ok = np.isfinite(ranks)
    d = np.abs(ranks - 0.5)
    inside = (d[None] <= levels[:, None, None] / 2) & ok[None]
    return inside.sum(axis=1) / np.maximum(ok.sum(axis=0), 1)[None]


def coverage_deviation(ranks, levels=LEVELS) -> np.ndarray:
    """``(k,)`` largest ``|coverage - level|`` over ``levels`` (:func:`coverage_curve`)."""
    levels = np.asarray(levels, dtype=np.float64)
    return np.max(np.abs(coverage_curve(ranks, levels) - levels[:, None]), axis=0)


def rank_statistics(truth, samples) -> np.ndarray:
    """Normalised ranks ``(n, k)`` in [0, 1] of ``truth`` ``(n, k)`` among ``samples``
    ``(n, L, k)`` (NaN draws, i.e. rejected ones, are ignored; NaN where none is left)."""
    truth = np.atleast_2d(np.asarray(truth, dtype=np.float64))
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 3 or samples.shape[0] != truth.shape[0] or samples.shape[2] != truth.shape[1]:
        raise ValueError(
            f"samples have shape {samples.shape} for truth {truth.shape}; pass "
            "(n_spectra, n_draws, n_params) draws"
        )
    ok = np.isfinite(samples)
    below = (samples < truth[:, None, :]) & ok
    count = ok.sum(axis=1)
    return np.where(count > 0, below.sum(axis=1) / np.maximum(count, 1), np.nan)


def plot_rank_histograms(ranks, names, path: str | PathLike, *, bins: int = 20,
                         title: str = "") -> Path:
    """Rank histograms, one panel per parameter, with the 99 % band of a uniform
    histogram (binomial quantiles of n / bins per bin); writes a PNG/PDF, returns its path.

    Args:
        ranks: ``(n, k)`` normalised ranks (:func:`rank_statistics`).
        names: ``k`` parameter names.
        path: output file.
        bins: histogram bins.
        title: figure title.
    """
    from matplotlib.figure import Figure

    ranks = np.atleast_2d(np.asarray(ranks, dtype=np.float64))
    if ranks.shape[1] != len(names):
        raise ValueError(f"ranks have {ranks.shape[1]} columns for {len(names)} names")
    k = ranks.shape[1]
    fig = Figure(figsize=(3.4 * k, 2.8))  # no pyplot: no global backend state
    axes = fig.subplots(1, k, squeeze=False)
    for j, ax in enumerate(axes[0]):
        r = ranks[:, j][np.isfinite(ranks[:, j])]
        n = r.size
        lo, hi = binom.ppf([0.005, 0.995], max(n, 1), 1.0 / bins)
        ax.axhspan(lo, hi, color="0.85", label="99 % band (uniform)")
        ax.axhline(n / bins, color="0.5", lw=0.8)
        ax.hist(r, bins=bins, range=(0, 1), histtype="step", color="k")
        ax.set_xlabel(f"rank of true {names[j]}")
        ax.set_xlim(0, 1)
        if j == 0:
            ax.set_ylabel(f"spectra (of {n})")
            ax.legend(loc="lower center", fontsize=7)
    if title:
        fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130, bbox_inches="tight")
    return out


def held_out(model, simulator, n, key, snr=None, *, minimum: int = 2,
             purpose: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(theta (n, k), snr (n,), flux (n, m))`` drawn from ``simulator`` (S/N ``snr``
    or drawn) to test or recalibrate ``model``; ValueError for fewer than ``minimum``
    spectra (the message ends with ``purpose``) or a simulator on other pixels than the
    model's."""
    if not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"n={n!r}; pass at least {minimum} held-out spectra{purpose}")
    if simulator.n_pix != model.n_pix or not np.allclose(simulator.wavelength, model.wavelength):
        raise ValueError(
            f"the simulator has {simulator.n_pix} pixels but the model reads {model.n_pix}; "
            "pass the simulator the model was trained with"
        )
    return tuple(np.asarray(a) for a in simulator.draw(key, int(n), snr))


def simulation_based_calibration(
    model,
    simulator: Simulator,
    *,
    n: int = 500,
    key=12345,
    snr=None,
    n_samples: int = 4096,
    plot: str | PathLike | None = None,
    batch_size: int = 16,
) -> dict:
    """Coverage and ranks of a trained model on ``n`` held-out simulated spectra.

    Args:
        model: a :class:`~jaxspec.amortised.FlowPosterior` or
            :class:`~jaxspec.amortised.CNNRegressor` trained on ``simulator``'s pixels.
        simulator: the simulator (same pixels, box and S/N range as the training).
        n: held-out spectra (>= 500 for the issue's ±5 % / ±3 % check).
        key: PRNG key or int seed; use one the training did not.
        snr: None (S/N from the training distribution) or a fixed S/N.
        n_samples: flow draws per spectrum (regressor: 20 noise draws).
        plot: path for the rank-histogram figure, or None.
        batch_size: spectra per compiled call.

    Returns:
        ``{"coverage": {0.68: (k,), 0.95: (k,)}, "stderr": {...}, "n": (k,), "ranks": (n,
        k), "levels": (L,), "coverage_curve": (L, k), "max_deviation": (k,), "truth": (n,
        k), "snr": (n,), "result": AmortisedResult, "plot": path or None}``. Ranks are
        among the flow's draws, or :func:`gaussian_ranks` of the regressor's estimate and
        (recalibrated) σ.
    """
    from jaxspec.infer import gaussian_coverage, sample_coverage

    theta, snr_drawn, flux = held_out(model, simulator, n, key, snr)
    kw = {"n_samples": n_samples} if model.kind == "flow" else {}
    result = model.predict(flux, snr=snr_drawn, key=as_key(key), batch_size=batch_size,
                           return_samples=True, **kw)
    if model.kind == "flow":
        samples = np.asarray(result.samples)
        kept = [s[np.all(np.isfinite(s), axis=1)] for s in samples]
        usable = np.array([s.shape[0] >= 2 for s in kept])
        cov = sample_coverage(theta[usable], [s for s, u in zip(kept, usable) if u])
        ranks = rank_statistics(theta, samples)
    else:
        # the regressor's (recalibrated) σ is Gaussian: ranks are Φ((θ - estimate)/σ)
        cov = gaussian_coverage(theta, result.params, result.sigma)
        ranks = gaussian_ranks(theta, result.params, result.sigma)
    path = None
    if plot is not None:
        path = plot_rank_histograms(
            ranks, model.param_names, plot,
            title=f"{model.kind}: SBC ranks of {n} held-out simulated spectra")
    return {**cov, "ranks": ranks, "levels": LEVELS, "coverage_curve": coverage_curve(ranks),
            "max_deviation": coverage_deviation(ranks), "truth": theta, "snr": snr_drawn,
            "result": result, "plot": path}
