"""specutils spectra in and out (optional dependency: ``pip install 'jaxspec[specutils]'``).

:func:`from_specutils` turns a ``specutils.Spectrum`` (specutils >= 2.0; the deprecated
``Spectrum1D``, a subclass of it, too) into a :class:`jaxspec.infer.Spectrum`, which every
function that takes a spectrum also does by itself (:func:`jaxspec.infer.spectrum.as_spectrum`);
:func:`to_specutils` (:meth:`jaxspec.infer.Spectrum.to_specutils`) goes back.

Correspondence (specutils → jaxspec):

``spectral_axis``
    any spectral unit (Å, nm, µm, Hz, eV, cm⁻¹...) → Å by ``astropy.units.spectral()``;
    a descending axis (e.g. frequency) is reversed.
``flux``
    its values (a flux with a physical unit is kept as numbers: the spectrum then fails
    the continuum check unless normalised, e.g. ``jaxspec infer --normalize``).
``uncertainty``
    ``StdDevUncertainty`` σ, ``VarianceUncertainty`` √v, ``InverseVariance`` 1/√ivar
    (pixels with ivar ≤ 0, the SDSS convention for "no data", are masked); converted to
    the flux's unit.
``mask``
    NDData's convention, True = *bad*, is inverted: jaxspec's ``mask`` is True where a
    pixel is used.
``meta``
    ``name``; ``medium`` (or ``wavelength_medium``, ``AIRORVAC``; "air"/"vac[uum]");
    ``segment`` ``(n,)`` ints.

jaxspec itself never touches ``specutils.Spectrum1D`` (whose use is deprecated), so it
raises no deprecation warning; a ``Spectrum1D`` passed in is read like any Spectrum.
"""

from __future__ import annotations

import numpy as np

__all__ = ["from_specutils", "is_specutils", "to_specutils"]

_INSTALL = ("specutils is not installed; install it with `pip install 'jaxspec[specutils]'` "
            "(or `pip install 'specutils>=2.0'`)")


def _specutils():
    """The specutils module, or ImportError naming the fix; requires >= 2.0 (the
    ``Spectrum`` class)."""
    try:
        import specutils
    except ImportError:
        raise ImportError(_INSTALL) from None
    if not hasattr(specutils, "Spectrum"):
        raise ImportError(f"specutils {getattr(specutils, '__version__', '?')} is older than "
                          "2.0 (no specutils.Spectrum); upgrade: pip install 'specutils>=2.0'")
    return specutils


def is_specutils(obj) -> bool:
    """True when ``obj`` is a ``specutils.Spectrum`` (or ``Spectrum1D``); never imports
    specutils for other objects."""
    module = type(obj).__module__ or ""
    if not module.startswith("specutils"):
        return False
    return isinstance(obj, _specutils().Spectrum)


def _meta_get(meta, *keys):
    for key in keys:
        for k in (key, key.upper(), key.lower()):
            if k in meta:
                return meta[k]
    return None


def from_specutils(spec, name: str | None = None):
    """A :class:`jaxspec.infer.Spectrum` from a 1-D ``specutils.Spectrum`` (module
    docstring for the correspondence).

    Args:
        spec: ``specutils.Spectrum`` with ``(n,)`` flux.
        name: label for messages (default ``spec.meta["name"]``, else "specutils
            spectrum").

    Returns:
        :class:`jaxspec.infer.Spectrum` of ``n`` pixels, wavelengths in Å (float64).

    Raises:
        ImportError: specutils is missing or older than 2.0.
        TypeError: ``spec`` is not a specutils Spectrum.
        ValueError: flux not 1-D (index a single spectrum: ``spec[i]``), a spectral axis
            that is not a wavelength/frequency/energy, or an uncertainty whose unit does
            not convert to the flux's.
    """
    import astropy.units as u
    from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

    from jaxspec.infer.spectrum import Spectrum

    specutils = _specutils()
    if not isinstance(spec, specutils.Spectrum):
        raise TypeError(f"{type(spec).__name__} is not a specutils.Spectrum")
    meta = dict(spec.meta or {})
    label = name or _meta_get(meta, "name") or "specutils spectrum"
    flux_q = spec.flux
    if flux_q.ndim != 1:
        raise ValueError(
            f"{label}: the specutils spectrum holds {flux_q.shape[:-1]} spectra of "
            f"{flux_q.shape[-1]} pixels; pass one at a time (e.g. spec[i]) or a list of them"
        )
    try:
        wavelength = spec.spectral_axis.to_value(u.AA, equivalencies=u.spectral())
    except u.UnitConversionError:
        raise ValueError(f"{label}: the spectral axis has unit {spec.spectral_axis.unit}, "
                         "which is not a wavelength, frequency or energy") from None
    wavelength = np.asarray(wavelength, dtype=np.float64)
    flux = np.asarray(flux_q.value, dtype=np.float64)
    used = np.ones(flux.shape, dtype=bool)
    if spec.mask is not None:
        used &= ~np.asarray(spec.mask, dtype=bool)
    sigma = None
    unc = spec.uncertainty
    if unc is not None:
        a = np.asarray(unc.array, dtype=np.float64)
        unit = unc.unit
        if isinstance(unc, InverseVariance):
            used &= np.isfinite(a) & (a > 0)
            sigma = 1.0 / np.sqrt(np.where(a > 0, a, 1.0))
            unit = None if unit is None else unit ** -0.5
        elif isinstance(unc, VarianceUncertainty):
            used &= np.isfinite(a) & (a > 0)
            sigma = np.sqrt(np.where(a > 0, a, 1.0))
            unit = None if unit is None else unit ** 0.5
        elif isinstance(unc, StdDevUncertainty):
            sigma = a
        else:
            raise ValueError(f"{label}: uncertainty of type {type(unc).__name__}; pass a "
                             "StdDevUncertainty, VarianceUncertainty or InverseVariance")
        if unit is not None and flux_q.unit is not None and unit != flux_q.unit:
            try:
                sigma = (sigma * unit).to_value(flux_q.unit)
            except u.UnitConversionError:
                raise ValueError(f"{label}: uncertainty unit {unit} does not convert to the "
                                 f"flux unit {flux_q.unit}") from None
    segment = _meta_get(meta, "segment")
    if segment is not None:
        segment = np.asarray(segment)
        if segment.shape != flux.shape:
            segment = None  # a per-spectrum label, not one per pixel
    if wavelength.size > 1 and np.all(np.diff(wavelength) < 0):  # e.g. a frequency axis
        wavelength, flux, used = wavelength[::-1], flux[::-1], used[::-1]
        sigma = None if sigma is None else sigma[::-1]
        segment = None if segment is None else segment[::-1]
    medium = _meta_get(meta, "medium", "wavelength_medium", "airorvac")
    return Spectrum(wavelength, flux, sigma, used, name=str(label),
                    medium=None if medium is None else str(medium), segment=segment)


def to_specutils(spectrum):
    """``specutils.Spectrum`` of a :class:`jaxspec.infer.Spectrum`: ``spectral_axis``
    ``(n,)`` Å, dimensionless ``flux``, ``StdDevUncertainty`` (when given), ``mask`` True
    where a pixel is not used, ``meta`` ``{"name", "medium", "segment"}``.

    Raises:
        ImportError: specutils is missing or older than 2.0 (the message names the fix).
    """
    import astropy.units as u
    from astropy.nddata import StdDevUncertainty

    specutils = _specutils()
    meta = {"name": spectrum.name, "medium": spectrum.medium}
    if spectrum.segment is not None:
        meta["segment"] = np.asarray(spectrum.segment)
    unc = None
    if spectrum.uncertainty is not None:
        unc = StdDevUncertainty(np.asarray(spectrum.uncertainty))
    return specutils.Spectrum(
        flux=np.asarray(spectrum.flux) * u.dimensionless_unscaled,
        spectral_axis=np.asarray(spectrum.wavelength) * u.AA,
        uncertainty=unc, mask=~np.asarray(spectrum.mask), meta=meta,
    )
