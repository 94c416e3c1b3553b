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

A Gaussian floor assumes Gaussian emulator errors. They are often heavier-tailed
(interpolation error grows from zero at a node to its largest mid-cell, and differs from
cell to cell), so one width cannot cover both the 68 % and the 95 % level.
:class:`EmpiricalSystematics` keeps the cross-validation errors themselves: every posterior
draw (or Laplace draw) is shifted by an error drawn from those of the same bin, i.e. the
posterior is convolved with the empirical error distribution (a split-conformal-style
calibration; its coverage holds for spectra drawn like the cross-validation set).

Truths on a face of a uniform prior (e.g. [Fe/H] = 0 at the top of the box) are never
inside an equal-tailed interval of draws, which all lie inside the box; test calibration
with interior truths.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.stats import norm

__all__ = [
    "EmpiricalSystematics",
    "add_systematics",
    "gaussian_coverage",
    "sample_coverage",
    "systematic_floor",
]

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


class EmpiricalSystematics(NamedTuple):
    r"""Cross-validated emulator errors, applied by convolution (module docstring).

    With :math:`\delta_i = \theta_{\mathrm{true}, i} - \hat\theta_i` from noise-free
    fits of spectra the emulator was not built from, the systematics-aware posterior of a
    new spectrum is :math:`p(\theta \mid D) = \int p_\mathrm{emu}(\theta - \delta
    \mid D)\, \hat p(\delta)\, d\delta`, sampled by adding to each draw a
    :math:`\delta` resampled from the same bin (of parameter ``by``, at the spectrum's
    estimate); a bin with fewer than ``min_count`` errors uses all of them. With
    ``symmetric`` (default) each resampled :math:`\delta` gets a random sign: the size of
    the emulator's error transfers from the cross-validation points to a new spectrum,
    its sign does not (it changes from cell to cell of the grid), so the offsets are
    drawn from the symmetrised distribution :math:`\tfrac12[\hat p(\delta) +
    \hat p(-\delta)]`.

    offsets
        ``(n_fits, n_params)`` :math:`\delta_i`, parameters' units.
    at
        ``(n_fits,)`` binning parameter of each fit (its true value).
    edges
        bin edges ``(n_bins + 1,)`` or None (one bin).
    by
        index of the binning parameter.
    min_count
        smallest bin used on its own.
    symmetric
        give each resampled offset a random sign.
    """

    offsets: np.ndarray
    at: np.ndarray
    edges: np.ndarray | None = None
    by: int = 0
    min_count: int = 10
    symmetric: bool = True

    @classmethod
    def from_fits(cls, truth, estimate, edges=None, by: int = 0, min_count: int = 10,
                  symmetric: bool = True):
        r"""Collect :math:`\delta = \theta_{true} - \hat\theta` of noise-free fits.

        Args:
            truth, estimate: ``(n_fits, n_params)``, as for :func:`systematic_floor`;
                rows with a non-finite estimate are dropped.
            edges, by: optional bins of parameter ``by`` (e.g. Teff).
            min_count: smallest bin used on its own.
            symmetric: random signs for the resampled offsets (class docstring).

        Raises:
            ValueError: shapes differ, fewer than ``min_count`` finite rows, bad edges.
        """
        truth = np.atleast_2d(np.asarray(truth, dtype=np.float64))
        estimate = np.atleast_2d(np.asarray(estimate, dtype=np.float64))
        if truth.shape != estimate.shape:
            raise ValueError(f"EmpiricalSystematics.from_fits: truth {truth.shape} and "
                             f"estimate {estimate.shape} must both be (n_fits, n_params)")
        ok = np.all(np.isfinite(estimate - truth), axis=1)
        if ok.sum() < min_count:
            raise ValueError(f"EmpiricalSystematics.from_fits: {int(ok.sum())} finite fits; "
                             f"pass at least min_count={min_count}")
        return cls((truth - estimate)[ok], truth[ok, by],
                   None if edges is None else _check_edges(edges), int(by), int(min_count),
                   bool(symmetric))

    def sample(self, at, n_draws: int, seed: int = 0) -> np.ndarray:
        """``(len(at), n_draws, n_params)`` offsets resampled from each spectrum's bin.

        Args:
            at: ``(n_spectra,)`` binning parameter of each spectrum (its estimate).
            n_draws: offsets per spectrum.
            seed: random seed.
        """
        at = np.atleast_1d(np.asarray(at, dtype=np.float64))
        rng = np.random.default_rng(seed)
        pools = np.zeros(self.offsets.shape[0], dtype=int)
        if self.edges is not None:
            pools = _bin_of(self.edges, self.at)
        out = np.empty((at.size, int(n_draws), self.offsets.shape[1]))
        for i, x in enumerate(at):
            pool = np.arange(self.offsets.shape[0])
            if self.edges is not None and np.isfinite(x):
                same = pool[pools == _bin_of(self.edges, x)]
                if same.size >= self.min_count:
                    pool = same
            out[i] = self.offsets[rng.choice(pool, size=int(n_draws))]
        if self.symmetric:
            out *= rng.choice([-1.0, 1.0], size=out.shape)
        return out

    def convolve(self, *, draws=None, mean=None, sigma=None, at=None, n_draws: int = 4000,
                 seed: int = 0) -> list[np.ndarray]:
        """Draws of the systematics-aware posterior of each spectrum.

        Pass posterior ``draws`` (a sequence of ``(n_draws_i, n_params)`` arrays or an
        array ``(n_spectra, n_draws, n_params)``), or a Laplace ``mean`` and ``sigma``
        ``(n_spectra, n_params)`` (marginal Gaussians, ``n_draws`` draws each).

        Args:
            at: ``(n_spectra,)`` binning parameter per spectrum; default the posterior
                median (or ``mean``) of parameter ``by``.
            seed: random seed.

        Returns:
            list of ``(n, n_params)`` draws, one per spectrum, for :func:`sample_coverage`.
        """
        rng = np.random.default_rng(seed)
        if draws is None:
            if mean is None or sigma is None:
                raise ValueError("EmpiricalSystematics.convolve: pass draws= or mean= and "
                                 "sigma=")
            mean = np.atleast_2d(np.asarray(mean, dtype=np.float64))
            sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
            draws = [m + s * rng.standard_normal((int(n_draws), m.size))
                     for m, s in zip(mean, sigma)]
        draws = [np.asarray(d, dtype=np.float64).reshape(-1, self.offsets.shape[1])
                 for d in draws]
        if at is None:
            at = [np.median(d[:, self.by]) for d in draws]
        at = np.atleast_1d(np.asarray(at, dtype=np.float64))
        if at.size != len(draws):
            raise ValueError(f"EmpiricalSystematics.convolve: {at.size} values of at for "
                             f"{len(draws)} spectra")
        seeds = rng.integers(0, 2**31, size=len(draws))
        return [d + self.sample([x], d.shape[0], seed=int(k))[0]
                for d, x, k in zip(draws, at, seeds)]
