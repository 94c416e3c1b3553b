r"""Observed spectra, and their pixels matched to an emulator's.

Two containers:

:class:`Spectrum` (defined in :mod:`jaxspec.spectrum`, re-exported here)
    What the observer has: ``wavelength`` (Å), ``flux`` (normalised like the emulator's),
    optional 1σ ``uncertainty`` and a pixel ``mask`` (True = use the pixel), the
    wavelength ``medium`` (``"air"``, ``"vacuum"`` or None: not recorded) and, for an
    echelle spectrum, the ``segment`` (order) of each pixel. Host-side numpy, validated
    once: NaN/inf flux is masked with a warning, non-positive uncertainties are an error.
    A ``specutils.Spectrum`` (or the deprecated ``Spectrum1D``) is accepted wherever a
    Spectrum is (:func:`as_spectrum`); :meth:`Spectrum.to_specutils` converts back.

:class:`Observation`
    What the likelihoods consume: fixed-shape device arrays of the *comparison pixels*
    and the linear map from the emulator's pixels to them. Made by :func:`observe`; a
    PyTree, so it can be vmapped over many spectra (stacked with
    :func:`stack_observations`).

Resampling (:func:`observe`)
----------------------------
``resample="model"`` (default)
    The emulator's flux is linearly interpolated onto the data's wavelengths,
    :math:`M(\lambda_j) = (1 - w_j) M_{i_j} + w_j M_{i_j + 1}` with
    :math:`\lambda_{i_j} \le \lambda_j < \lambda_{i_j + 1}` on the emulator's grid. Data
    pixels stay independent, so the Gaussian likelihood is exact. Data pixels outside the
    emulator's range are dropped (masked); a spectrum covering part of the range uses
    that part.
``resample="data"``
    The data are linearly interpolated onto the emulator's pixels within the overlap,
    :math:`D_i = (1 - w_i) D_{j_i} + w_i D_{j_i + 1}`, with variance
    :math:`(1 - w_i)^2 \sigma_{j_i}^2 + w_i^2 \sigma_{j_i + 1}^2`, inflated by
    :math:`\max(1, \Delta\lambda_{data} / \Delta\lambda_{model})` where the model pixels
    are finer, because then several model pixels reuse one data pixel and treating them
    as independent would count its information several times. Emulator pixels outside the
    data's coverage, or next to a masked data pixel, are masked. This is the comparison
    of the blase3D paper's eq. (4) (data and model on the model's pixels).

When the data are on the emulator's own pixels both give the same arrays.

Emulator variance. An emulator with a ``model_variance`` :math:`v_i` (e.g. The Cannon's
intrinsic scatter :math:`s_\lambda^2`, Ness et al. 2015) contributes it to the
uncertainty of every comparison pixel of a spectrum that has uncertainties,
:math:`\sigma_j^2 \to \sigma_j^2 + v(\lambda_j)`, with :math:`v(\lambda_j) = (1 - w_j)
v_{i_j} + w_j v_{i_j + 1}` (linear interpolation; its own pixels when ``resample="data"``).
Without uncertainties the fitted noise scale stands for all of the error.
"""

from __future__ import annotations

import warnings

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from jaxspec._checks import (  # the continuum rule's limits, kept importable from here
    CONTINUUM_MEDIAN_MIN,  # noqa: F401
    CONTINUUM_P95,  # noqa: F401
    check_continuum_normalised,
)
from jaxspec.spectrum import Spectrum, as_spectrum

__all__ = [
    "Observation",
    "Spectrum",
    "as_spectrum",
    "check_normalized",
    "normalize_continuum",
    "observe",
    "pad_observation",
    "stack_observations",
]



def normalize_continuum(spectrum: Spectrum, order: int = 5, *, quantile: float = 0.9,
                        n_bins: int | None = None) -> Spectrum:
    r"""Divide an observed spectrum by its continuum, fitted as for the grid.

    The grid's method (:func:`jaxspec.preprocess.continuum_normalize`, the :math:`Q_n`
    of blase3D eq. 1: a degree-``order`` Chebyshev series through the upper envelope of
    the flux in ``n_bins`` bins, lower outliers rejected) is applied to the used pixels
    of each segment (echelle order) separately, since every order has its own blaze:

    .. math:: \bar F_i = F_i / Q(\lambda_i),\qquad \bar\sigma_i = \sigma_i / Q(\lambda_i).

    The continuum at masked pixels is interpolated linearly between used ones. There is
    no blackbody division (the grid divides by :math:`B_\lambda(T_{eff})` first, but a
    star's T_eff is what is sought; over a spectrograph's band the polynomial absorbs
    the smooth blackbody shape).

    Args:
        spectrum: ``(n,)`` pixels, any flux units (positive continuum).
        order: Chebyshev degree (5, as blase3D uses for the grid).
        quantile: flux quantile per envelope bin, in (0, 1]. The grid uses the bin
            maximum (1) on noise-free spectra; the maximum of noisy pixels is biased
            high by about 2σ, so observed spectra default to 0.9.
        n_bins: envelope bins per segment (default as ``continuum_normalize``:
            ``min(20 (order + 1), n_used // 4)``).

    Returns:
        A new :class:`Spectrum` (same pixels, mask, medium and segments) with
        ``flux / Q`` and ``uncertainty / Q``.

    Raises:
        ValueError: a segment has too few used pixels for ``order`` or a continuum
            that is not positive (the message names the spectrum and the segment).
    """
    from jaxspec.preprocess import continuum_normalize

    segments = (np.zeros(spectrum.n_pix, np.int64) if spectrum.segment is None
                else spectrum.segment)
    continuum = np.full(spectrum.n_pix, np.nan)
    for label in np.unique(segments):
        pix = segments == label
        used = pix & spectrum.mask
        where = (f"{spectrum.name}" + (f", segment {label}" if spectrum.segment is not None
                                       else ""))
        if used.sum() < 4 * (order + 1):
            if spectrum.segment is not None and used.sum() == 0:
                continue  # an order with no usable pixel stays masked
            raise ValueError(
                f"{where}: {int(used.sum())} used pixel(s) are too few for a degree-{order} "
                "continuum; pass a lower order (--normalize-order) or more pixels"
            )
        try:
            _, fit = continuum_normalize(spectrum.wavelength[used], spectrum.flux[used],
                                         order, n_bins=n_bins, quantile=quantile)
        except ValueError as err:
            raise ValueError(f"{where}: continuum normalisation failed: {err}") from None
        continuum[pix] = np.interp(spectrum.wavelength[pix], spectrum.wavelength[used], fit)
    ok = np.isfinite(continuum)
    continuum = np.where(ok, continuum, 1.0)
    unc = None if spectrum.uncertainty is None else spectrum.uncertainty / continuum
    return spectrum.replace(flux=spectrum.flux / continuum, uncertainty=unc,
                            mask=spectrum.mask & ok)


def check_normalized(spectrum: Spectrum, scale=(1.0, 1.0)) -> None:
    """Raise a ValueError naming the spectrum when its flux is not continuum-normalised.

    The rule of the clone step's input check: over the used pixels, the 95th flux
    percentile must lie in ``CONTINUUM_P95`` = [0.75, 1.25] (the continuum near 1; lines
    only lower the flux) and the median must exceed 0.2. A flux-calibrated spectrum
    (1e-15 erg/s/cm²/Å) or counts (1e4) fails it by orders of magnitude, and fitting it
    gives χ²/ν of 1e30 and a meaningless answer.

    Args:
        spectrum: the :class:`Spectrum` (or a ``specutils.Spectrum``).
        scale: ``(low, high)`` multiplier range of a fitted continuum (the box of the
            Chebyshev ``c0`` when one is fitted): the limits widen to
            ``[0.75 low, 1.25 high]``.
    """
    spectrum = as_spectrum(spectrum)
    check_continuum_normalised(
        spectrum.flux[spectrum.mask], spectrum.name,
        "(jaxspec infer --normalize, or jaxspec.infer.spectrum.normalize_continuum)", scale)


class Observation(eqx.Module):
    """A spectrum on its comparison pixels, ready for the likelihoods (see module doc).

    Fields (shape ``(m,)``, or ``(n_spectra, m)`` when stacked):

    wavelength
        comparison pixels, Å, float64.
    flux
        data; 0 at masked pixels (always finite, so gradients stay finite).
    sigma
        1σ uncertainty; 1 at masked pixels and everywhere when none was given.
    mask
        bool, True where the pixel counts.
    index, weight
        model flux at pixel j is ``(1 - weight[j]) * M[index[j]] + weight[j] *
        M[index[j] + 1]`` for emulator flux ``M``.
    has_uncertainty
        static bool: False when the spectrum had no uncertainties (methods then fit a
        noise scale by default).
    """

    wavelength: Float[Array, " m"]
    flux: Float[Array, " m"]
    sigma: Float[Array, " m"]
    mask: Bool[Array, " m"]
    index: Int[Array, " m"]
    weight: Float[Array, " m"]
    has_uncertainty: bool = eqx.field(static=True, default=True)

    def project(self, model_flux: Float[Array, "... n_pix"]) -> Float[Array, "... m"]:
        """Emulator flux on its pixels ``(..., n_pix)`` → flux on the comparison pixels."""
        lo = jnp.take(model_flux, self.index, axis=-1)
        hi = jnp.take(model_flux, self.index + 1, axis=-1)
        return lo + self.weight * (hi - lo)

    @property
    def n_used(self):
        """Number of pixels that count."""
        return jnp.sum(self.mask, axis=-1)


def observe(spectrum: Spectrum, emulator_or_wavelength, resample: str = "model") -> Observation:
    """Match a spectrum's pixels to an emulator's (see the module docstring).

    Args:
        spectrum: the :class:`Spectrum` (or a ``specutils.Spectrum``, :func:`as_spectrum`).
        emulator_or_wavelength: an :class:`~jaxspec.emulator.Emulator` or its
            ``(n_pix,)`` wavelength array, Å. An emulator's ``model_variance`` (if not
            None) is added to the data variance (module docstring).
        resample: ``"model"`` (default; emulator onto the data pixels) or ``"data"``
            (data onto the emulator pixels).

    Returns:
        An :class:`Observation`.

    Raises:
        ValueError: the spectrum and the emulator do not overlap in wavelength (the
            message gives both ranges), fewer than 2 usable pixels overlap, or an unknown
            ``resample``.
    """
    spectrum = as_spectrum(spectrum)
    model_wl = getattr(emulator_or_wavelength, "wavelength", emulator_or_wavelength)
    model_wl = np.asarray(model_wl, dtype=np.float64)
    if resample not in ("model", "data"):
        raise ValueError(f"resample={resample!r}; pass 'model' or 'data'")
    wl, n = spectrum.wavelength, model_wl.size
    if n < 2:
        raise ValueError("the emulator has fewer than 2 pixels; nothing to interpolate")
    lo_m, hi_m = model_wl[0], model_wl[-1]
    inside = (wl >= lo_m) & (wl <= hi_m)
    used = spectrum.mask & inside
    ranges = (
        f"{spectrum.name} covers {wl[0]:.2f}–{wl[-1]:.2f} Å but the emulator covers "
        f"{lo_m:.2f}–{hi_m:.2f} Å"
    )
    if used.sum() < 2:
        what = "they do not overlap" if not inside.any() else "fewer than 2 usable pixels overlap"
        raise ValueError(
            f"{ranges}; {what}: pass a spectrum of the emulator's wavelength range (or an "
            "emulator of the spectrum's)"
        )
    if (spectrum.mask & ~inside).any():
        warnings.warn(
            f"{ranges}; {int((spectrum.mask & ~inside).sum())} pixel(s) outside the "
            "emulator's range are ignored",
            stacklevel=2,
        )
    has_unc = spectrum.uncertainty is not None
    sigma = spectrum.uncertainty if has_unc else np.ones_like(spectrum.flux)
    if resample == "model":
        index, weight = _bracket(model_wl, wl)
        flux = np.where(used, spectrum.flux, 0.0)
        sig = np.where(used, sigma, 1.0)
        out_wl, mask = wl, used
    else:
        index = np.minimum(np.arange(n), n - 2)
        weight = (np.arange(n) - index).astype(np.float64)  # 0, or 1 at the last pixel
        j, w = _bracket(wl, model_wl)
        covered = (model_wl >= wl[0]) & (model_wl <= wl[-1])
        ok_lo = spectrum.mask[j]
        ok_hi = spectrum.mask[j + 1] | (w == 0.0)
        ok_lo = ok_lo | (w == 1.0)
        mask = covered & ok_lo & ok_hi
        f_lo = np.where(spectrum.mask[j], spectrum.flux[j], 0.0)
        f_hi = np.where(spectrum.mask[j + 1], spectrum.flux[j + 1], 0.0)
        s_lo = np.where(spectrum.mask[j], sigma[j], 0.0)
        s_hi = np.where(spectrum.mask[j + 1], sigma[j + 1], 0.0)
        flux = (1 - w) * f_lo + w * f_hi
        var = (1 - w) ** 2 * s_lo**2 + w**2 * s_hi**2
        data_step = np.gradient(wl)[j]
        model_step = np.gradient(model_wl)
        var = var * np.maximum(1.0, data_step / model_step)
        flux = np.where(mask, flux, 0.0)
        sig = np.where(mask & (var > 0), np.sqrt(np.where(var > 0, var, 1.0)), 1.0)
        out_wl = model_wl
        if mask.sum() < 2:
            raise ValueError(f"{ranges}; fewer than 2 emulator pixels are covered by usable data")
    model_var = getattr(emulator_or_wavelength, "model_variance", None)
    if has_unc and model_var is not None:
        v = np.asarray(model_var, dtype=np.float64)
        if v.shape != model_wl.shape:
            raise ValueError(
                f"the emulator's model_variance has shape {v.shape}; it must have one value "
                f"per emulator pixel {model_wl.shape}"
            )
        v_at = (1 - weight) * v[index] + weight * v[np.minimum(index + 1, n - 1)]
        sig = np.where(mask, np.sqrt(sig**2 + v_at), sig)
    return Observation(
        wavelength=jnp.asarray(out_wl, dtype=jnp.float64),
        flux=jnp.asarray(flux, dtype=jnp.float64),
        sigma=jnp.asarray(sig, dtype=jnp.float64),
        mask=jnp.asarray(mask),
        index=jnp.asarray(index, dtype=jnp.int32),
        weight=jnp.asarray(weight, dtype=jnp.float64),
        has_uncertainty=has_unc,
    )


def _bracket(grid: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left index into ``grid`` and fractional position (clipped to [0, 1]) of each x."""
    i = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, grid.size - 2)
    w = (x - grid[i]) / (grid[i + 1] - grid[i])
    return i, np.clip(w, 0.0, 1.0)


def stack_observations(observations, length: int | None = None) -> Observation:
    """Stack observations into one with a leading batch axis, padding with masked pixels.

    Args:
        observations: sequence of :class:`Observation` (same ``has_uncertainty``).
        length: pad every one to this many pixels (default: the longest); a fixed value
            keeps one compiled shape across calls.

    Returns:
        An :class:`Observation` with fields ``(n_spectra, length)``.
    """
    observations = list(observations)
    if not observations:
        raise ValueError("no observations to stack")
    kinds = {o.has_uncertainty for o in observations}
    if len(kinds) > 1:
        raise ValueError(
            "some spectra have uncertainties and some do not; stack them separately"
        )
    m = max(int(o.flux.shape[-1]) for o in observations)
    length = m if length is None else int(length)
    if length < m:
        raise ValueError(f"length={length} is shorter than the longest observation ({m})")
    return Observation(
        **{
            name: jnp.stack([_pad(getattr(o, name), length, fill) for o in observations])
            for name, fill in (
                ("wavelength", None), ("flux", 0.0), ("sigma", 1.0), ("mask", False),
                ("index", 0), ("weight", 0.0),
            )
        },
        has_uncertainty=kinds.pop(),
    )


def pad_observation(obs: Observation, length: int) -> Observation:
    """One observation padded with masked pixels to ``length`` (one compiled shape)."""
    return Observation(
        **{
            name: _pad(getattr(obs, name), length, fill)
            for name, fill in (
                ("wavelength", None), ("flux", 0.0), ("sigma", 1.0), ("mask", False),
                ("index", 0), ("weight", 0.0),
            )
        },
        has_uncertainty=obs.has_uncertainty,
    )


def _pad(a, length, fill):
    extra = length - a.shape[-1]
    if extra <= 0:
        return a
    value = a[-1] if fill is None else fill
    return jnp.concatenate([a, jnp.full((extra,), value, dtype=a.dtype)])
