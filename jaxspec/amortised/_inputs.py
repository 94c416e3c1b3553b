"""Observed spectra → network inputs: flux and 1σ on the network's pixels, and the S/N.

* A flux array must already be on the network's pixels (``(m,)`` or ``(n, m)``).
* A :class:`~jaxspec.infer.Spectrum` on the network's own wavelengths is used as it is.
  On finer (or equal) pixels it is averaged into the network's pixels by the same
  :class:`~jaxspec.amortised.simulate.Rebin` that made the training spectra from the
  emulator's, so a spectrum on the emulator's pixels meets exactly the training
  convolution; on coarser pixels it is linearly interpolated at the pixel centres.
  Masked pixels are first filled by linear interpolation from their unmasked neighbours
  and given the largest allowed uncertainty (below).
* 1σ on the network's pixels: averaged, :math:`\\sigma_i^2 = R(\\sigma^2)_i\\,
  R(\\Delta c)_i / w_i` (the mean variance over the number of data cells of width
  :math:`\\Delta c` per bin of width :math:`w_i`; exact for equal cells); interpolated,
  the interpolated σ.
* S/N (an input of the flow, and the scale of the regressor's noise draws): given, else
  ``1 / median(σ)`` over the network's pixels (continuum S/N of a normalised spectrum,
  matching the simulator), else :func:`~jaxspec.amortised.simulate.der_snr`.
* σ is capped at 5× its median per spectrum (BOSS Net, Sizemore et al. sect. 4).
"""

from __future__ import annotations

import warnings

import numpy as np

from jaxspec.amortised.simulate import Rebin, cell_edges, der_snr

#: BOSS Net caps uncertainties at 5× the median across the spectrum (sect. 4).
SIGMA_CAP = 5.0


def prepare(model, data, uncertainty=None, snr=None):
    """``(flux (n, m), sigma (n, m) or None, snr (n,), labels, batched)`` float64.

    ``model`` supplies ``wavelength`` ``(m,)``, ``edges`` ``(m + 1,)`` and ``snr_range``.
    """
    from jaxspec.infer.spectrum import Spectrum, as_spectrum
    from jaxspec.io.specutils import is_specutils

    if is_specutils(data):  # a specutils.Spectrum is accepted wherever a Spectrum is
        data = as_spectrum(data)
    elif isinstance(data, (list, tuple)) and data and any(map(is_specutils, data)):
        data = [as_spectrum(d) if is_specutils(d) else d for d in data]
    wl = np.asarray(model.wavelength, dtype=np.float64)
    m = wl.size
    if isinstance(data, Spectrum) or (
        isinstance(data, (list, tuple)) and data and isinstance(data[0], Spectrum)
    ):
        batched = not isinstance(data, Spectrum)
        spectra = list(data) if batched else [data]
        if uncertainty is not None:
            raise ValueError(
                "uncertainty= is for flux arrays; a Spectrum carries its own uncertainty"
            )
        rows = [_from_spectrum(s, model.edges, wl) for s in spectra]
        flux = np.stack([r[0] for r in rows])
        sigma = [r[1] for r in rows]
        labels = [s.name for s in spectra]
    else:
        try:
            flux = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"data is a {type(data).__name__}; pass a flux array on the network's "
                f"{m} pixels, a jaxspec.infer.Spectrum, or a list of them"
            ) from None
        if flux.ndim not in (1, 2) or flux.shape[-1] != m:
            raise ValueError(
                f"flux has shape {flux.shape}; pass (m,) or (n_spectra, m) with m = {m} (the "
                f"network's pixels, {wl[0]:.3f}–{wl[-1]:.3f} Å), or a Spectrum on any "
                "wavelengths to be resampled"
            )
        batched = flux.ndim == 2
        flux = np.atleast_2d(flux)
        bad = ~np.isfinite(flux)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValueError(
                f"flux has {int(bad.sum())} NaN/inf value(s) (first: spectrum {i} at "
                f"{wl[j]:.3f} Å); pass a Spectrum with a mask to have them filled"
            )
        if uncertainty is None:
            sigma = [None] * flux.shape[0]
        else:
            unc = np.broadcast_to(np.asarray(uncertainty, dtype=np.float64), flux.shape)
            if not np.all(np.isfinite(unc) & (unc > 0)):
                raise ValueError(
                    "uncertainty has non-finite or non-positive values; pass 1σ > 0 at "
                    "every pixel (or None to estimate the S/N from the flux)"
                )
            sigma = list(unc)
        labels = [f"spectrum_{i}" for i in range(flux.shape[0])]
    n = flux.shape[0]
    snr_out = np.empty(n)
    given = None if snr is None else np.broadcast_to(np.asarray(snr, dtype=np.float64), (n,))
    if given is not None and not np.all(np.isfinite(given) & (given > 0)):
        raise ValueError(f"snr={snr!r}; pass positive S/N value(s) (one, or one per spectrum)")
    for i in range(n):
        if given is not None:
            snr_out[i] = given[i]
        elif sigma[i] is not None:
            snr_out[i] = 1.0 / np.median(sigma[i])
        else:
            snr_out[i] = float(der_snr(flux[i]))
    lo, hi = model.snr_range
    out = (snr_out < lo * 0.999) | (snr_out > hi * 1.001)
    if out.any():
        warnings.warn(
            f"{int(out.sum())} spectrum/spectra have S/N outside the training range "
            f"{lo:g}–{hi:g} (first: {labels[int(np.flatnonzero(out)[0])]} at "
            f"{snr_out[out][0]:.3g}); it is clipped to the range",
            stacklevel=3,
        )
    snr_out = np.clip(snr_out, lo, hi)
    sig = np.stack([1.0 / snr_out[i] * np.ones(m) if s is None else s
                    for i, s in enumerate(sigma)])
    med = np.median(sig, axis=1, keepdims=True)
    sig = np.minimum(sig, SIGMA_CAP * med)
    return flux, sig, snr_out, labels, batched


def _from_spectrum(spectrum, edges, wl):
    """One Spectrum on the network's pixels: ``(flux (m,), sigma (m,) or None)``."""
    x = spectrum.wavelength
    mask = spectrum.mask
    flux = np.where(mask, spectrum.flux, np.interp(x, x[mask], spectrum.flux[mask]))
    unc = spectrum.uncertainty
    if unc is not None:
        med = np.median(unc[mask])
        unc = np.where(mask, unc, SIGMA_CAP * med)
    width = np.diff(edges)
    same = x.size == wl.size and np.allclose(x, wl, rtol=0, atol=1e-3 * np.min(width))
    if same:
        return flux, unc
    rebin = Rebin.between(x, edges, label=spectrum.name)  # also checks the coverage
    if np.median(np.diff(x)) > 1.01 * np.median(width):  # coarser data: interpolate
        return np.interp(wl, x, flux), None if unc is None else np.interp(wl, x, unc)
    out = np.asarray(rebin(flux))
    if unc is None:
        return out, None
    cells = np.diff(cell_edges(x))
    var = np.asarray(rebin(unc**2)) * np.minimum(1.0, np.asarray(rebin(cells)) / width)
    return out, np.sqrt(var)
