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

Truths on a face of a uniform prior (e.g. [Fe/H] = 0 at the top of the box) are never
inside an equal-tailed interval of draws, which all lie inside the box; test calibration
with interior truths.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

__all__ = ["gaussian_coverage", "sample_coverage"]

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
