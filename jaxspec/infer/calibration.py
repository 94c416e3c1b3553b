r"""Calibration of uncertainties: how often do intervals contain the truth?

For a well-calibrated method, the central 68 % interval of each parameter contains the
true value in 68 % of spectra, and the 95 % interval in 95 %. Two interval kinds:

* :func:`gaussian_coverage`: :math:`\hat\theta \pm z_p \sigma` with
  :math:`z_p = \Phi^{-1}((1 + p)/2)` (1.0 σ for 68.27 %, 1.96 σ for 95 %): Laplace
  intervals of :func:`~jaxspec.infer.fit_map`.
* :func:`sample_coverage`: equal-tailed quantile intervals of posterior draws
  (:func:`~jaxspec.infer.sample_nuts`).

With n spectra a coverage estimate has binomial standard error
:math:`\sqrt{p(1-p)/n}` (4.7 % for p = 0.68, n = 100), returned alongside.

**Emulator error.** Intervals from the likelihood alone are too narrow when the spectra
are not made by the emulator: the emulator's interpolation error is correlated across
pixels, so it biases the parameters rather than adding pixel noise. The standard remedy
(a systematic floor, as survey pipelines add to their errors) is here in two steps:
:func:`systematic_floor` measures the per-parameter scatter of noise-free fits of
spectra the emulator was not built from (a cross-validation set, disjoint from the
spectra whose intervals are then tested); :func:`add_systematics` adds it in quadrature
to Laplace errors, and to posterior draws as an independent Gaussian offset
(:math:`\theta_\mathrm{true} = \theta_\mathrm{emu} + \delta`,
:math:`\delta \sim N(0, \sigma_\mathrm{sys}^2)`, marginalised by convolution).

Truths on a face of a uniform prior (e.g. [Fe/H] = 0 at the top of the box) are never
inside an equal-tailed interval of draws, which all lie inside the box; test calibration
with interior truths.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

__all__ = ["add_systematics", "gaussian_coverage", "sample_coverage", "systematic_floor"]

LEVELS = (0.68, 0.95)


def gaussian_coverage(truth, mean, sigma, levels=LEVELS) -> dict:
    """Coverage of Gaussian intervals ``mean ± z sigma``.

    Args:
        truth, mean, sigma: ``(n_spectra, n_params)``; rows with a non-finite ``mean`` or
            ``sigma`` are left out (their count is returned).
        levels: central probabilities.

    Returns:
        ``{"coverage": {level: (n_params,)}, "stderr": {level: float}, "n": (n_params,),
        "n_skipped": (n_params,)}``; ``coverage`` is the fraction of spectra whose truth
        lies inside the interval.
    """
    truth, mean, sigma = (np.atleast_2d(np.asarray(a, dtype=np.float64))
                          for a in (truth, mean, sigma))
    ok = np.isfinite(mean) & np.isfinite(sigma) & np.isfinite(truth)
    z = np.abs(truth - mean) / np.where(ok, sigma, 1.0)
    out = {"coverage": {}, "stderr": {}}
    n = ok.sum(axis=0)
    for p in levels:
        inside = (z <= norm.ppf(0.5 + p / 2)) & ok
        out["coverage"][p] = inside.sum(axis=0) / np.maximum(n, 1)
        out["stderr"][p] = float(np.sqrt(p * (1 - p) / max(int(n.min()), 1)))
    out["n"] = n
    out["n_skipped"] = ok.shape[0] - n
    return out


def sample_coverage(truth, samples, levels=LEVELS) -> dict:
    """Coverage of equal-tailed posterior intervals.

    Args:
        truth: ``(n_spectra, n_params)``.
        samples: sequence of ``(n_draws, n_params)`` arrays (draws may differ in number),
            or an array ``(n_spectra, n_draws, n_params)``.
        levels: central probabilities.

    Returns:
        Same layout as :func:`gaussian_coverage`.
    """
    truth = np.atleast_2d(np.asarray(truth, dtype=np.float64))
    if len(samples) != truth.shape[0]:
        raise ValueError(f"{len(samples)} sample sets for {truth.shape[0]} truths")
    out = {"coverage": {}, "stderr": {}}
    ok = np.array([np.all(np.isfinite(s), axis=0) for s in samples])
    n = ok.sum(axis=0)
    for p in levels:
        inside = np.zeros_like(ok)
        for i, s in enumerate(samples):
            s = np.asarray(s, dtype=np.float64).reshape(-1, truth.shape[1])
            lo, hi = np.quantile(s, [0.5 - p / 2, 0.5 + p / 2], axis=0)
            inside[i] = (truth[i] >= lo) & (truth[i] <= hi)
        out["coverage"][p] = (inside & ok).sum(axis=0) / np.maximum(n, 1)
        out["stderr"][p] = float(np.sqrt(p * (1 - p) / max(int(n.min()), 1)))
    out["n"] = n
    out["n_skipped"] = ok.shape[0] - n
    return out


def systematic_floor(truth, estimate, edges=None, by: int = 0) -> np.ndarray:
    r"""Per-parameter systematic error of an emulator, from noise-free fits.

    :math:`\sigma_\mathrm{sys} = \sqrt{\mathrm{median}(e)^2 + (1.4826\,
    \mathrm{MAD}(e))^2}` of the errors :math:`e = \hat\theta - \theta_\mathrm{true}`
    (robust RMS: a few failed fits do not set the floor). An emulator's error differs
    across the grid (cool and hot stars, say), so the floor can be measured in bins of one
    parameter (``edges`` over parameter ``by``, e.g. Teff).

    Args:
        truth: ``(n_spectra, n_params)`` true parameters of spectra the emulator was *not*
            built from (held-out nodes or points between nodes).
        estimate: ``(n_spectra, n_params)`` estimates from noise-free spectra (e.g.
            ``fit_map(...).params``); non-finite rows are ignored.
        edges: None (one floor for all spectra) or increasing bin edges ``(n_bins + 1,)``
            of parameter ``by``; a bin with fewer than 5 fits takes the global floor.
        by: index of the binning parameter.

    Returns:
        ``(n_params,)`` floor, or ``(n_bins, n_params)`` with ``edges``, in the
        parameters' units.

    Raises:
        ValueError: shapes differ, fewer than 5 finite rows, or bad ``edges``.
    """
    truth = np.atleast_2d(np.asarray(truth, dtype=np.float64))
    estimate = np.atleast_2d(np.asarray(estimate, dtype=np.float64))
    if truth.shape != estimate.shape:
        raise ValueError(f"systematic_floor: truth {truth.shape} and estimate "
                         f"{estimate.shape} must have the same (n_spectra, n_params) shape")
    err = estimate - truth
    ok = np.all(np.isfinite(err), axis=1)
    if ok.sum() < 5:
        raise ValueError(f"systematic_floor: {int(ok.sum())} finite fits; pass at least 5 "
                         "noise-free fits of held-out spectra")

    def robust(e):
        med = np.median(e, axis=0)
        mad = np.median(np.abs(e - med), axis=0)
        return np.sqrt(med**2 + (1.4826 * mad) ** 2)

    overall = robust(err[ok])
    if edges is None:
        return overall
    edges = _check_edges(edges)
    rows = _bin_of(edges, truth[:, by])
    out = np.empty((edges.size - 1, truth.shape[1]))
    for b in range(edges.size - 1):
        sel = ok & (rows == b)
        out[b] = robust(err[sel]) if sel.sum() >= 5 else overall
    return out


def _check_edges(edges) -> np.ndarray:
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"edges={edges.tolist()}: pass at least two increasing bin edges")
    return edges


def _bin_of(edges: np.ndarray, x) -> np.ndarray:
    """Bin index of ``x`` (values beyond the ends go to the end bins)."""
    return np.clip(np.searchsorted(edges, np.asarray(x, dtype=np.float64), side="right") - 1,
                   0, edges.size - 2)


def add_systematics(floor, sigma=None, draws=None, seed: int = 0, edges=None, at=None):
    r"""Fold a systematic floor into Laplace errors or posterior draws.

    Args:
        floor: ``(n_params,)`` or binned ``(n_bins, n_params)`` from
            :func:`systematic_floor`.
        sigma: ``(n_spectra, n_params)`` (or ``(n_params,)``) statistical 1σ (Laplace);
            returned as :math:`\sqrt{\sigma^2 + \sigma_\mathrm{sys}^2}`.
        draws: ``(n_spectra, n_draws, n_params)`` posterior draws, or a sequence of
            ``(n_draws, n_params)`` arrays; each draw gets an independent
            :math:`N(0, \sigma_\mathrm{sys}^2)` offset (convolution of the posterior with
            the emulator's error distribution).
        seed: seed of the offsets.
        edges: the bin edges a binned floor was measured with.
        at: ``(n_spectra,)`` value of the binning parameter of each spectrum (its estimate,
            e.g. the MAP Teff), for a binned floor.

    Returns:
        The inflated ``sigma`` or ``draws`` (whichever was given; a tuple if both).
    """
    floor = np.asarray(floor, dtype=np.float64)
    if np.any(~np.isfinite(floor)) or np.any(floor < 0):
        raise ValueError(f"add_systematics: floor={floor} must be finite and >= 0")
    if floor.ndim == 2:
        if edges is None or at is None:
            raise ValueError("add_systematics: a binned floor needs edges= and at= (the "
                             "binning parameter of each spectrum)")
        edges = _check_edges(edges)
        if floor.shape[0] != edges.size - 1:
            raise ValueError(f"add_systematics: floor has {floor.shape[0]} bins, edges "
                             f"{edges.size - 1}")
        per = floor[_bin_of(edges, np.atleast_1d(at))]  # (n_spectra, n_params)
    else:
        per = None
    out = []
    if sigma is not None:
        sigma = np.asarray(sigma, dtype=np.float64)
        f = floor if per is None else per.reshape(sigma.shape)
        out.append(np.sqrt(sigma**2 + f**2))
    if draws is not None:
        rng = np.random.default_rng(seed)
        rows = [floor] * len(draws) if per is None else list(per)
        noisy = [np.asarray(d) + rng.normal(size=np.shape(d)) * f for d, f in zip(draws, rows)]
        out.append(noisy if isinstance(draws, (list, tuple)) else np.stack(noisy))
    if not out:
        raise ValueError("add_systematics: pass sigma= or draws=")
    return out[0] if len(out) == 1 else tuple(out)
