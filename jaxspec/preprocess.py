r"""Preprocessing of grid spectra: blackbody division and continuum normalisation.

Implements the blase3D paper's (Shankar, Gully-Santiago & Morley) eq. (1),

.. math:: \bar S = \frac{S}{B\, Q_5},

where :math:`S` is the synthetic spectrum, :math:`B` the blackbody at the spectrum's
:math:`T_\mathrm{eff}`, and :math:`Q_5` a 5th-order polynomial fitted to the upper envelope
of :math:`S / B` ("a peak-finding filter", Sect. 2.2). The result is a dimensionless spectrum
whose continuum is 1, which the line clones model.

These are offline data-preparation steps run once per grid: plain numpy/scipy on the host,
not jit-able or differentiable (the polynomial fit selects anchor pixels discretely).
Inputs are validated and errors say which argument is wrong.
"""

from __future__ import annotations

import numpy as np
from astropy import constants as const
from numpy.polynomial import chebyshev
from tqdm.auto import tqdm

from jaxspec._checks import check_pixels, check_wavelength, fmt_node, nonfinite
from jaxspec.grid import SpectralGrid

__all__ = ["continuum_normalize", "divide_blackbody", "planck_lambda", "preprocess_grid"]

# CGS constants from astropy (CODATA 2018; h, c, k_B are exact in SI 2019).
_H = const.h.cgs.value  # erg s
_C = const.c.cgs.value  # cm s^-1
_K_B = const.k_B.cgs.value  # erg K^-1
_ANGSTROM_CM = 1e-8


def _check_spectrum(wavelength, flux) -> tuple[np.ndarray, np.ndarray]:
    wl = check_wavelength(wavelength, min_pixels=2)
    f = check_pixels(flux, wl)
    note = nonfinite(f, wl)
    if note:
        raise ValueError(f"flux has {note}; clean or crop the spectrum first")
    return wl, f


def _check_teff(teff) -> float:
    t = float(teff)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"teff={teff!r} K; pass a finite effective temperature > 0 K")
    return t


def planck_lambda(wavelength: np.ndarray, teff: float) -> np.ndarray:
    r"""Planck spectral radiance per unit wavelength.

    .. math:: B_\lambda(T) = \frac{2 h c^2}{\lambda^5}
              \frac{1}{\exp\!\left(\frac{h c}{\lambda k_B T}\right) - 1}

    (Planck 1901; constants from :mod:`astropy.constants`, equal to
    ``astropy.modeling.physical_models.BlackBody`` converted to per-wavelength units).

    Args:
        wavelength: any shape, Å (> 0).
        teff: temperature, K (> 0).

    Returns:
        :math:`B_\lambda`, erg s⁻¹ cm⁻² cm⁻¹ sr⁻¹, float64, shape of ``wavelength``.
    """
    t = _check_teff(teff)
    lam = np.asarray(wavelength, dtype=np.float64) * _ANGSTROM_CM
    x = _H * _C / (lam * _K_B * t)
    with np.errstate(over="ignore"):
        return 2.0 * _H * _C**2 / lam**5 / np.expm1(x)


def divide_blackbody(wavelength: np.ndarray, flux: np.ndarray, teff: float) -> np.ndarray:
    r"""Divide a spectrum by the blackbody surface flux at ``teff``: the :math:`S / B` of
    blase3D eq. (1).

    .. math:: S_B(\lambda) = \frac{S(\lambda)}{\pi B_\lambda(T_\mathrm{eff})}

    :math:`\pi B_\lambda` is the surface flux of a blackbody, in the units of PHOENIX
    fluxes (erg s⁻¹ cm⁻² cm⁻¹), so for PHOENIX spectra the result is dimensionless and of
    order unity, independent of the wavelength range (the same scaling as gollum's
    ``divide_by_blackbody``). For fluxes in other units the result is off by a constant
    factor, which :func:`continuum_normalize` removes.

    Args:
        wavelength: ``(n_pix,)`` Å, strictly increasing.
        flux: ``(n_pix,)`` surface flux, erg s⁻¹ cm⁻² cm⁻¹, finite.
        teff: effective temperature, K, > 0.

    Returns:
        ``(n_pix,)`` float64 ``flux / (π B_λ(teff))``.

    Raises:
        ValueError: NaN flux, length mismatch, non-increasing wavelength, teff <= 0, or a
            blackbody that underflows to 0 (wavelength x teff below ~2e5 Å K).
    """
    wl, f = _check_spectrum(wavelength, flux)
    t = _check_teff(teff)
    if wl[0] <= 0:
        raise ValueError(f"wavelength starts at {wl[0]:g} Å; wavelengths must be > 0 Å")
    b = np.pi * planck_lambda(wl, t)
    if not np.all(b > 0):
        raise ValueError(
            f"the blackbody at teff={t:g} K underflows to 0 below "
            f"{wl[int(np.flatnonzero(~(b > 0))[-1])]:.1f} Å; crop the spectrum to longer "
            "wavelengths"
        )
    return f / b


def _envelope(x: np.ndarray, f: np.ndarray, n_bins: int, quantile: float):
    """Upper-envelope anchors: in each of ``n_bins`` equal bins of x, the pixel at the
    ``quantile`` of the flux (the maximum for quantile=1)."""
    b = np.minimum(((x + 1.0) * 0.5 * n_bins).astype(np.int64), n_bins - 1)
    order = np.lexsort((f, b))  # by bin, then by flux
    starts = np.searchsorted(b[order], np.arange(n_bins), side="left")
    ends = np.searchsorted(b[order], np.arange(n_bins), side="right")
    filled = ends > starts
    pick = starts[filled] + np.round(quantile * (ends[filled] - starts[filled] - 1)).astype(
        np.int64
    )
    return np.sort(order[pick])


def continuum_normalize(
    wavelength: np.ndarray,
    flux: np.ndarray,
    order: int = 5,
    *,
    n_bins: int | None = None,
    quantile: float = 1.0,
    lower_sigma: float = 2.0,
    max_iter: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Fit the continuum as a polynomial through the upper envelope and divide it out.

    The :math:`Q_n` of blase3D eq. (1), :math:`\bar S = S / Q_n` (apply
    :func:`divide_blackbody` first for the full :math:`S / (B Q_5)`):

    1. *Envelope (peak-finding filter).* Map wavelength to
       :math:`x = 2(\lambda - \lambda_0)/(\lambda_{n-1} - \lambda_0) - 1 \in [-1, 1]`,
       split it into ``n_bins`` equal bins and take in each the pixel at the ``quantile`` of
       the flux (the bin maximum by default). Between absorption lines the maxima sit on
       the continuum; bins also cover line-free stretches and both ends, where a
       local-maximum search (``scipy.signal.find_peaks``) finds no peaks.
    2. *Fit.* Least-squares Chebyshev series of degree ``order``,
       :math:`Q(x) = \sum_{j \le n} c_j T_j(x)`, through the anchors, weighted by
       :math:`1/S` so that relative residuals count equally.
    3. *Reject.* Anchors more than ``lower_sigma`` robust standard deviations
       (:math:`1.4826\,\mathrm{MAD}` of the relative residuals, floored at 1e-6) below the
       fit sit in line cores or wings: drop them and refit, until the anchor set stops
       changing or ``max_iter`` is reached. Anchors above the fit are always kept.

    Args:
        wavelength: ``(n_pix,)`` Å, strictly increasing.
        flux: ``(n_pix,)`` finite flux, any units (positive where the continuum is).
        order: polynomial degree (5 in blase3D).
        n_bins: number of envelope bins; default ``min(20 (order + 1), n_pix // 4)``. Fewer
            bins suit crowded spectra (each bin must reach the continuum somewhere).
        quantile: flux quantile taken per bin, in (0, 1]; below 1 for noisy data (the
            maximum of noise is biased high), 1 for synthetic spectra.
        lower_sigma: rejection threshold below the fit, in robust standard deviations.
        max_iter: maximum number of fit/reject rounds.

    Returns:
        ``(normalized, continuum)``: both ``(n_pix,)`` float64, ``normalized = flux /
        continuum``.

    Raises:
        ValueError: bad input (NaN flux, length mismatch, non-increasing wavelength, too
            few pixels or bins for ``order``), or a continuum fit <= 0 somewhere.
    """
    wl, f = _check_spectrum(wavelength, flux)
    if int(order) != order or order < 0:
        raise ValueError(f"order={order!r}; pass a polynomial degree >= 0 (blase3D uses 5)")
    order = int(order)
    if n_bins is None:
        n_bins = min(20 * (order + 1), wl.size // 4)
    if not order + 1 <= n_bins <= wl.size:
        raise ValueError(
            f"n_bins={n_bins} for order={order} and {wl.size} pixels; a degree-{order} fit "
            f"needs {order + 1} <= n_bins <= n_pix: pass more pixels, a lower order, or n_bins"
        )
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile={quantile!r}; pass a value in (0, 1] (1 = bin maximum)")
    if not lower_sigma > 0:
        raise ValueError(f"lower_sigma={lower_sigma!r}; pass a positive number of sigmas")

    x = 2.0 * (wl - wl[0]) / (wl[-1] - wl[0]) - 1.0
    anchors = _envelope(x, f, n_bins, quantile)
    xa, ya = x[anchors], f[anchors]
    if np.any(ya <= 0):
        raise ValueError(
            f"the flux envelope is <= 0 near {wl[anchors[np.argmin(ya)]]:.3f} Å; continuum "
            "normalisation needs a positive continuum: crop that region or offset the flux"
        )
    keep = np.ones(xa.size, dtype=bool)
    min_keep = order + 2
    for _ in range(max_iter):
        coef = chebyshev.chebfit(xa[keep], ya[keep], order, w=1.0 / ya[keep])
        resid = ya / chebyshev.chebval(xa, coef) - 1.0
        r = resid[keep]
        sigma = max(1.4826 * np.median(np.abs(r - np.median(r))), 1e-6)
        new_keep = resid >= -lower_sigma * sigma
        if np.array_equal(new_keep, keep) or new_keep.sum() < min_keep:
            break
        keep = new_keep
    continuum = chebyshev.chebval(x, coef)
    if not np.all(continuum > 0):
        j = int(np.flatnonzero(~(continuum > 0))[0])
        raise ValueError(
            f"the continuum fit is <= 0 at {wl[j]:.3f} Å; lower order={order} or n_bins, or "
            "crop the spectrum where the flux vanishes"
        )
    return f / continuum, continuum


def preprocess_grid(
    grid: SpectralGrid,
    teff_axis: str | None = "teff",
    order: int = 5,
    progress: bool = True,
    **continuum_kwargs,
) -> SpectralGrid:
    r"""Apply blase3D eq. (1), :math:`\bar S = S / (B Q_n)`, to every existing node.

    For each node: :func:`divide_blackbody` at the node's ``teff_axis`` value, then
    :func:`continuum_normalize` with ``order`` and ``continuum_kwargs``. Missing nodes stay
    masked (NaN). Runs in memory, one spectrum at a time, with a tqdm progress bar; for a
    grid bigger than memory, preprocess it in pieces read with
    ``SpectralGrid.from_hdf5(path, teff=(lo, hi))``.

    Args:
        grid: raw grid (``normalized=False``), flux in erg s⁻¹ cm⁻² cm⁻¹ for a
            dimensionless intermediate (any units work: the polynomial absorbs the scale).
        teff_axis: name of the effective-temperature axis (K); None skips blackbody
            division (then :math:`\bar S = S / Q_n`).
        order: continuum polynomial degree (5 in blase3D).
        progress: show a progress bar.
        **continuum_kwargs: passed to :func:`continuum_normalize` (``n_bins``,
            ``quantile``, ``lower_sigma``, ``max_iter``).

    Returns:
        A new :class:`~jaxspec.grid.SpectralGrid` with ``normalized=True``, the same axes,
        wavelength, mask and flux dtype.

    Raises:
        ValueError: the grid is already normalised, ``teff_axis`` is not an axis, or a node
            fails (the message names the node).
    """
    if grid.normalized:
        raise ValueError(
            "grid is already normalized (normalized=True); pass the raw grid to "
            "preprocess_grid"
        )
    if teff_axis is not None and teff_axis not in grid.axes:
        raise ValueError(
            f"teff_axis={teff_axis!r} is not a grid parameter {list(grid.param_names)}; pass "
            "the name of the effective-temperature axis, or teff_axis=None to skip "
            "blackbody division"
        )
    params, flat_index = grid.node_params()
    col = None if teff_axis is None else grid.param_names.index(teff_axis)
    flux_in = grid.flux.reshape(-1, grid.n_pix)
    flux_out = np.full(flux_in.shape, np.nan, dtype=grid.flux.dtype)
    for row, j in enumerate(
        tqdm(flat_index, desc="preprocess", unit="spectrum", disable=not progress)
    ):
        try:
            s = flux_in[j]
            if col is not None:
                s = divide_blackbody(grid.wavelength, s, params[row, col])
            flux_out[j], _ = continuum_normalize(grid.wavelength, s, order, **continuum_kwargs)
        except ValueError as e:
            raise ValueError(f"node {fmt_node(grid.param_names, params[row])}: {e}") from None
    return SpectralGrid(
        axes=grid.axes,
        wavelength=grid.wavelength,
        flux=flux_out.reshape(grid.flux.shape),
        mask=grid.mask,
        normalized=True,
    )
