r"""The observed-spectrum type: :class:`Spectrum`, and its conversion to and from specutils.

What the observer has: ``wavelength`` (Å), ``flux`` (normalised like the emulator's),
optional 1σ ``uncertainty`` and a pixel ``mask`` (True = use the pixel), the wavelength
``medium`` (``"air"``, ``"vacuum"`` or None: not recorded) and, for an echelle spectrum,
the ``segment`` (order) of each pixel. Host-side numpy, validated once: NaN/inf flux is
masked with a warning, non-positive uncertainties are an error.

A core module, below both the readers (:mod:`jaxspec.io.spectrum` makes Spectrum objects
from files) and inference (:mod:`jaxspec.infer.spectrum` matches them to an emulator's
pixels); also importable as ``jaxspec.infer.Spectrum``.

specutils (optional dependency: ``pip install 'jaxspec[specutils]'``)
---------------------------------------------------------------------
:func:`from_specutils` turns a ``specutils.Spectrum`` (specutils >= 2.0; the deprecated
``Spectrum1D``, a subclass of it, too) into a :class:`Spectrum`, which every function that
takes a spectrum also does by itself (:func:`as_spectrum`); :func:`to_specutils`
(:meth:`Spectrum.to_specutils`) goes back (also importable from
:mod:`jaxspec.io.specutils`).

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

import warnings
from dataclasses import dataclass

import numpy as np

from jaxspec._checks import (
    check_pixels,
    check_uncertainty,
    check_wavelength,
    nonfinite,
    sigma_from,
)

__all__ = ["Spectrum", "as_spectrum", "from_specutils", "is_specutils", "to_specutils"]


@dataclass(frozen=True, eq=False, init=False)
class Spectrum:
    """An observed (or simulated) spectrum, validated.

    Args:
        wavelength: ``(n,)`` Å, finite, strictly increasing; stored float64.
        flux: ``(n,)`` flux, normalised like the emulator's spectra. NaN/inf pixels are
            masked with a warning.
        uncertainty: ``(n,)`` 1σ flux uncertainty (same units as flux) or None (unknown:
            the inference methods then fit a noise scale). Must be > 0 at every used
            pixel; NaN/inf pixels are masked with a warning.
        mask: ``(n,)`` bool, True where the pixel is used, or None (all).
        name: label used in messages (e.g. the file name).
        medium: ``"air"``, ``"vacuum"`` (``"vac"``) or None (not recorded): the medium of
            ``wavelength`` (:mod:`jaxspec.medium`; :meth:`to_medium` converts).
        segment: ``(n,)`` int, the echelle order (or any segment label) of each pixel, or
            None (one segment). Segments are continuum-normalised separately
            (:func:`jaxspec.infer.spectrum.normalize_continuum`); pixels of overlapping orders are interleaved
            in wavelength order.

    Raises:
        ValueError: shapes differ, wavelengths are not increasing, an uncertainty is zero
            or negative, an unknown medium, or no pixel is left.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    uncertainty: np.ndarray | None
    mask: np.ndarray
    name: str
    medium: str | None
    segment: np.ndarray | None

    def __init__(self, wavelength, flux, uncertainty=None, mask=None, name: str = "spectrum",
                 *, medium: str | None = None, segment=None):
        from jaxspec.medium import check_medium

        where = f"{name}: "
        medium = check_medium(medium, where=f"{where}medium")
        wl = check_wavelength(wavelength, label=f"{where}wavelength")
        flux = check_pixels(flux, wl, f"{where}flux", "pass one flux value per pixel")
        if mask is None:
            mask = np.ones(wl.shape, dtype=bool)
        else:
            mask = np.asarray(mask)
            if mask.shape != wl.shape or mask.dtype != np.bool_:
                raise ValueError(
                    f"{where}mask has shape {mask.shape} and dtype {mask.dtype}; pass a bool "
                    f"array of shape {wl.shape}, True where the pixel is used"
                )
            mask = mask.copy()
        if uncertainty is not None:
            uncertainty = check_pixels(uncertainty, wl, f"{where}uncertainty",
                                       "pass one 1σ value per pixel or None")
        for label, values in (("flux", flux), ("uncertainty", uncertainty)):
            note = None if values is None else nonfinite(values, wl, where=mask)
            if note:  # NaN/inf pixels are masked, flux first, then uncertainty
                warnings.warn(f"{where}{label} has {note}; they are masked", stacklevel=2)
                mask &= np.isfinite(values)
        if uncertainty is not None:
            check_uncertainty(uncertainty, wl, mask, f"{where}uncertainty")
        if not mask.any():
            raise ValueError(f"{where}no usable pixel (all masked or non-finite)")
        if segment is not None:
            seg = np.asarray(segment)
            if seg.shape != wl.shape or seg.dtype.kind not in "iu":
                raise ValueError(
                    f"{where}segment has shape {seg.shape} and dtype {seg.dtype}; pass one "
                    f"integer label (e.g. the echelle order) per pixel, shape {wl.shape}"
                )
            segment = seg.astype(np.int64)
        object.__setattr__(self, "wavelength", wl)
        object.__setattr__(self, "flux", flux)
        object.__setattr__(self, "uncertainty", uncertainty)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "name", str(name))
        object.__setattr__(self, "medium", medium)
        object.__setattr__(self, "segment", segment)

    @property
    def n_pix(self) -> int:
        """Number of pixels (used or not)."""
        return int(self.wavelength.size)

    def replace(self, **changes) -> Spectrum:
        """A copy with some fields changed (validated again), e.g. ``flux=...``."""
        fields = {k: getattr(self, k) for k in (
            "wavelength", "flux", "uncertainty", "mask", "name", "medium", "segment")}
        fields.update(changes)
        return Spectrum(**fields)

    def to_medium(self, medium: str) -> Spectrum:
        """The spectrum with wavelengths in ``medium`` (``"air"`` or ``"vacuum"``), by
        the formulas of :mod:`jaxspec.medium` (Morton 2000 eq. 3 and its VALD inverse).

        Raises:
            ValueError: this spectrum's medium is None (not recorded: say it with
                ``read_spectrum(..., medium=)`` or ``Spectrum(..., medium=)``).
        """
        from jaxspec.medium import check_medium, convert_medium

        target = check_medium(medium, where="medium")
        if self.medium is None:
            raise ValueError(
                f"{self.name}: the wavelength medium is not recorded, so it cannot be "
                f"converted to {target}; pass medium='air' or 'vacuum' when reading it "
                "(CLI: --spectrum-medium)"
            )
        if self.medium == target:
            return self
        return self.replace(wavelength=convert_medium(self.wavelength, self.medium, target),
                            medium=target)

    def to_specutils(self):
        """This spectrum as a ``specutils.Spectrum`` (specutils >= 2.0, optional):
        ``spectral_axis`` in Å, dimensionless flux, ``StdDevUncertainty``, ``mask`` True
        where a pixel is *not* used (the NDData convention, the opposite of ours), and
        ``meta`` ``{"name", "medium", "segment"}``.

        Raises:
            ImportError: specutils is not installed (the message names the fix).
        """
        return to_specutils(self)

    def __repr__(self) -> str:
        extra = f", {self.medium}" if self.medium else ""
        if self.segment is not None:
            extra += f", {np.unique(self.segment).size} segments"
        return (
            f"Spectrum({self.name!r}: {self.n_pix} px in [{self.wavelength[0]:.3f}, "
            f"{self.wavelength[-1]:.3f}] Å, {int(self.mask.sum())} used, uncertainty "
            f"{'given' if self.uncertainty is not None else 'none'}{extra})"
        )


def as_spectrum(data, name: str | None = None) -> Spectrum:
    """A :class:`Spectrum` from a Spectrum (returned as is) or a ``specutils.Spectrum``
    (specutils >= 2.0; the deprecated ``Spectrum1D`` too), converted by
    :func:`from_specutils` (``name`` labels it in messages).

    Raises:
        TypeError: anything else (the message names what is accepted).
    """
    if isinstance(data, Spectrum):
        return data
    if is_specutils(data):
        return from_specutils(data, name=name)
    raise TypeError(
        f"{type(data).__name__} is not a spectrum; pass a jaxspec.infer.Spectrum or a "
        "specutils.Spectrum (or read a file with jaxspec.io.read_spectrum)"
    )


# ---------------------------------------------------------------------- specutils

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
            sigma, ok = sigma_from("ivar", a)
            used &= ok
            unit = None if unit is None else unit ** -0.5
        elif isinstance(unc, VarianceUncertainty):
            sigma, ok = sigma_from("var", a)
            used &= ok
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
