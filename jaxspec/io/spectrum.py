"""Observed spectra from files: tables (ECSV, FITS, CSV, ...) and survey FITS layouts.

:func:`read_spectrum` reads

- a table (any format astropy reads; in a FITS file, the first table HDU with
  ``wavelength`` and ``flux`` columns), described below;
- an APOGEE apStar/aspcapStar file, a multi-order (HPF-style) echelle file or a 1-D FITS
  image with a wavelength WCS (:mod:`jaxspec.io.fits_spectrum`), chosen from the file or
  by ``layout=``.

Table columns (names case-insensitive):

``wavelength``
    Å. A column with a unit (e.g. ``nm``, ``um``, ``Angstrom``) is converted to Å; a
    column without one is taken to be in Å.
``flux``
    normalised like the emulator's spectra.
``uncertainty`` (optional; or ``variance`` / ``var``, or ``ivar`` / ``inverse_variance``)
    1σ flux uncertainty, same units as flux. From a variance v: σ = √v; from an inverse
    variance (the SDSS convention): σ = 1/√ivar, and pixels with ivar ≤ 0 ("no data")
    are masked. At most one of these columns.
``segment`` or ``order`` (optional)
    integer echelle order (segment) of each pixel (:class:`jaxspec.infer.Spectrum`).
``mask`` (optional)
    bool or 0/1, True (1) where the pixel is used. An integer bitmask (flags, 0 = good)
    is an error unless ``mask_bits`` says which bits mark a bad pixel: then a pixel is
    used where ``(mask & mask_bits) == 0``.

The wavelength medium comes from ``medium=``, else the table's ``meta`` (``medium``,
``wavelength_medium`` or ``AIRORVAC``: air / vac[uum]), else it is not recorded (None).

:func:`read_spectrum` validates them through :class:`jaxspec.infer.Spectrum` (NaN flux
masked with a warning, non-positive uncertainties rejected), sorts wavelengths that are
not increasing (with a warning) and names the file in every message;
:func:`write_spectrum` writes the same layout.
"""

from __future__ import annotations

import warnings
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["read_spectrum", "write_spectrum"]

_FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".txt": "ascii", ".dat": "ascii"}
_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
_LAYOUTS = ("table", "apogee", "echelle", "image")
_UNCERTAINTY_COLUMNS = {"uncertainty": "sigma", "variance": "var", "var": "var",
                        "ivar": "ivar", "inverse_variance": "ivar", "invvar": "ivar"}


def read_spectrum(path: str | PathLike, *, name: str | None = None,
                  mask_bits: int | None = None, layout: str | None = None,
                  medium: str | None = None, visit: int | None = None, orders=None):
    """Read an observed spectrum (module docstring for the formats).

    Args:
        path: a table (ECSV, FITS, CSV, ...) or a FITS file of a layout of
            :mod:`jaxspec.io.fits_spectrum`.
        name: label for messages (default: the file name).
        mask_bits: None, or an integer N > 0: the bits of an integer mask that make a
            pixel unusable (a table's ``mask`` column, where without it the column must
            be bool or 0/1, True = use; an APOGEE ``APOGEE_PIXMASK``, default
            :data:`~jaxspec.io.fits_spectrum.APOGEE_BAD_BITS`; an image's MASK/DQ HDU,
            default any non-zero bit).
        layout: None (from the file), ``"table"``, ``"apogee"``, ``"echelle"`` or
            ``"image"``.
        medium: ``"air"`` or ``"vacuum"``: the medium of the file's wavelengths, when the
            file does not record it (or records it wrongly).
        visit: APOGEE apStar visit number (1 … NVISITS) instead of the combined spectrum.
        orders: echelle orders (row indices) to read, default all.

    Returns:
        :class:`jaxspec.infer.Spectrum` (float64 wavelengths, Å).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, a required column or HDU missing (the message lists
            what is present and says how to fix it), a mask column that is neither bool
            nor 0/1 (a bitmask: pass ``mask_bits``), options that do not fit the layout,
            or σ ≤ 0 at a used pixel.

    Warns:
        UserWarning: wavelengths not in increasing order (they are sorted, flux,
            uncertainty and mask with them); a 0/1 mask that uses fewer than half of the
            pixels (1 means *used*: a bitmask with 0 = good needs ``mask_bits``).
    """
    from astropy.table import Table

    from jaxspec.spectrum import Spectrum

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such spectrum file")
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(
            f"{path}: the file is empty (0 bytes), perhaps an interrupted copy or download; "
            "copy it again, or write the spectrum as ECSV, FITS or CSV with columns "
            "wavelength, flux [, uncertainty]"
        )
    if layout is not None and layout not in _LAYOUTS:
        raise ValueError(f"layout={layout!r}; pass one of {', '.join(_LAYOUTS)} or None (from "
                         "the file)")
    fits_hdu = None
    if _is_fits(path):
        layout, fits_hdu, spectrum = _read_fits(path, layout, name=name, mask_bits=mask_bits,
                                                medium=medium, visit=visit, orders=orders)
        if spectrum is not None:
            return spectrum
    elif layout not in (None, "table"):
        raise ValueError(f"{path}: layout={layout!r} needs a FITS file; this one is read as a "
                         "table (ECSV, CSV, ...)")
    for flag, value in (("visit", visit), ("orders", orders)):
        if value is not None:
            raise ValueError(f"{path}: {flag}= (--{flag}) applies to APOGEE / echelle FITS "
                             "files; this one is a table: drop it")
    fmt = "fits" if fits_hdu is not None else _FORMATS.get(path.suffix.lower())
    try:
        if fits_hdu is not None:
            table = Table.read(path, format="fits", hdu=fits_hdu)
        else:
            table = Table.read(path, format=fmt) if fmt else Table.read(path)
    except Exception as err:  # astropy raises many kinds for unreadable input
        # first line only: astropy's format-guessing errors list its whole registry
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"{path}: astropy cannot read it as a table ({type(err).__name__}: {detail}); "
            "write the spectrum as ECSV, FITS or CSV with columns wavelength, flux "
            "[, uncertainty]"
        ) from None
    cols = {c.lower(): c for c in table.colnames}
    missing = [c for c in ("wavelength", "flux") if c not in cols]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)} (columns present: "
            f"{', '.join(table.colnames) or 'none'}); a spectrum table needs 'wavelength' "
            "(Å) and 'flux', and optionally 'uncertainty' (1σ) and 'mask': rename the "
            "columns accordingly"
        )
    wl_col = table[cols["wavelength"]]
    if getattr(wl_col, "unit", None) is not None:
        import astropy.units as u

        try:
            wavelength = wl_col.quantity.to_value(u.AA, equivalencies=u.spectral())
        except u.UnitConversionError:
            raise ValueError(
                f"{path}: column wavelength has unit {wl_col.unit}, which is not a "
                "wavelength; store Å (or nm, µm)"
            ) from None
    else:
        wavelength = np.asarray(wl_col, dtype=np.float64)

    def column(key):
        col = table[cols[key]]
        data = np.ma.filled(np.ma.asarray(col, dtype=np.float64), np.nan)
        return np.asarray(data, dtype=np.float64)

    flux = column("flux")
    found = [c for c in _UNCERTAINTY_COLUMNS if c in cols]
    if len(found) > 1:
        raise ValueError(f"{path}: columns {', '.join(cols[c] for c in found)} all give the "
                         "uncertainty; keep one (uncertainty = 1σ, variance, or ivar)")
    uncertainty, no_data = None, None
    if found:
        from jaxspec._checks import sigma_from

        uncertainty, ok = sigma_from(_UNCERTAINTY_COLUMNS[found[0]], column(found[0]))
        if _UNCERTAINTY_COLUMNS[found[0]] != "sigma":
            no_data = ~ok  # ivar <= 0 / var <= 0: no data, masked without a warning
            uncertainty = np.where(ok, uncertainty, 1.0)
    mask = None
    if "mask" in cols:
        mask = _read_mask(path, table[cols["mask"]], mask_bits)
    elif mask_bits is not None:
        raise ValueError(f"{path}: mask_bits={mask_bits} (--mask-bits) was given but the "
                         f"table has no mask column (columns: {', '.join(table.colnames)})")
    if no_data is not None:
        mask = ~no_data if mask is None else mask & ~no_data
    segment = None
    seg_key = next((k for k in ("segment", "order") if k in cols), None)
    if seg_key is not None:
        raw = np.asarray(table[cols[seg_key]])
        if raw.dtype.kind not in "iu":
            raise ValueError(f"{path}: column {cols[seg_key]} has dtype {raw.dtype}; a "
                             "segment (echelle order) column holds integers")
        segment = raw.astype(np.int64)
    if medium is None:
        meta = {str(k).lower(): v for k, v in table.meta.items()}
        medium = next((meta[k] for k in ("medium", "wavelength_medium", "airorvac")
                       if isinstance(meta.get(k), str)), None)
    order = np.argsort(wavelength, kind="stable")
    steps = np.diff(wavelength)
    if np.any(steps < 0):
        if np.all(steps < 0):  # descending files (common in FITS)
            warnings.warn(f"{path}: wavelengths are in decreasing order; the spectrum is "
                          "reversed", stacklevel=2)
        else:
            j = int(np.flatnonzero(steps < 0)[0])
            warnings.warn(
                f"{path}: wavelengths are not sorted ({wavelength[j]:.3f} Å then "
                f"{wavelength[j + 1]:.3f} Å at rows {j}, {j + 1}); the pixels are sorted "
                "by wavelength (flux, uncertainty and mask with them): check the file",
                stacklevel=2)
        wavelength, flux = wavelength[order], flux[order]
        uncertainty = None if uncertainty is None else uncertainty[order]
        mask = None if mask is None else mask[order]
        segment = None if segment is None else segment[order]
    return Spectrum(wavelength, flux, uncertainty, mask, name=name or path.name,
                    medium=medium, segment=segment)


def _is_fits(path: Path) -> bool:
    """By suffix, else by the FITS signature (``SIMPLE  =`` at the start of the file)."""
    if path.name.lower().endswith(_FITS_SUFFIXES):
        return True
    if path.suffix.lower() in _FORMATS:
        return False
    try:
        with open(path, "rb") as f:
            return f.read(9) == b"SIMPLE  ="
    except OSError:
        return False


def _read_fits(path: Path, layout, **options):
    """``(layout, table_hdu, spectrum)``: a spectrum read by a FITS layout reader, or the
    index of the table HDU to read as a table (spectrum None)."""
    from astropy.io import fits

    from jaxspec.io import fits_spectrum as fs

    try:
        hdul = fits.open(path, memmap=False)
    except Exception as err:  # astropy raises OSError, TypeError, ... for broken files
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path}: astropy cannot open it as FITS ({type(err).__name__}: "
                         f"{detail}); the file is damaged or not FITS: copy it again") from None
    with hdul:
        try:
            layout = layout or fs.detect_layout(path, hdul)
        except Exception as err:
            if isinstance(err, ValueError):
                raise
            raise ValueError(f"{path}: cannot read its HDUs ({type(err).__name__}: {err}); the "
                             "file is damaged or truncated: copy it again") from None
        visit, orders = options.pop("visit"), options.pop("orders")
        if layout != "apogee" and visit is not None:
            raise ValueError(f"{path}: visit= (--visit) applies to APOGEE apStar files; this "
                             f"file is read as {layout!r}: drop it")
        if layout != "echelle" and orders is not None:
            raise ValueError(f"{path}: orders= (--orders) applies to echelle files; this file "
                             f"is read as {layout!r}: drop it")
        if layout == "table":
            for i, hdu in enumerate(hdul):
                if hasattr(hdu, "columns") and hdu.data is not None and {
                        "wavelength", "flux"} <= {c.lower() for c in hdu.columns.names}:
                    return layout, i, None
            i = next((i for i, h in enumerate(hdul) if hasattr(h, "columns")), None)
            if i is None:
                raise ValueError(f"{path}: layout 'table' but no table HDU "
                                 f"({fs._describe(hdul)}); pass layout=None to detect it")
            return layout, i, None  # read it for the missing-column message
        if layout == "apogee":
            return layout, None, fs.read_apogee(path, hdul, visit=visit, **options)
        if layout == "echelle":
            if options.pop("mask_bits") is not None:
                raise ValueError(f"{path}: mask_bits= (--mask-bits) has no mask to apply to "
                                 "in an echelle file: drop it")
            return layout, None, fs.read_echelle(path, hdul, orders=orders, **options)
        return layout, None, fs.read_fits_image(path, hdul, **options)


def _read_mask(path: Path, col, mask_bits: int | None) -> np.ndarray:
    """The ``mask`` column as bool, True where the pixel is used (module docstring)."""
    raw = np.ma.asarray(col)
    if mask_bits is not None:
        if isinstance(mask_bits, bool) or int(mask_bits) != mask_bits or mask_bits < 1:
            raise ValueError(f"{path}: mask_bits={mask_bits!r} (--mask-bits); pass a positive "
                             "integer, the bits that mark a bad pixel (e.g. 1, or 7 for bits 0-2)")
        if raw.dtype.kind not in "iub":
            raise ValueError(f"{path}: column mask has dtype {raw.dtype}; --mask-bits needs an "
                             "integer bitmask column")
        bits = np.ma.filled(raw.astype(np.int64), 0)
        return (bits & int(mask_bits)) == 0
    if raw.dtype.kind == "b":
        return np.asarray(np.ma.filled(raw, False), dtype=bool)
    if raw.dtype.kind not in "iuf":
        raise ValueError(f"{path}: column mask has dtype {raw.dtype}; write it as bool (True "
                         "where the pixel is used) or 0/1")
    values = np.ma.filled(raw.astype(np.float64), 0.0)
    other = np.setdiff1d(np.unique(values), [0.0, 1.0])
    if other.size:
        shown = ", ".join(f"{v:g}" for v in other[:5])
        raise ValueError(
            f"{path}: column mask holds values other than 0/1 ({shown}): it looks like a "
            "bitmask (0 = good). Pass --mask-bits N (read_spectrum(..., mask_bits=N)) to use "
            "the pixels where (mask & N) == 0, or write a bool column, True where the pixel "
            "is used (e.g. mask = (flags == 0))")
    mask = values == 1.0
    if mask.mean() < 0.5:
        warnings.warn(
            f"{path}: the 0/1 mask column uses only {int(mask.sum())} of {mask.size} pixels "
            "(1 = used); if it is a bitmask with 0 = good, pass --mask-bits 1", stacklevel=3)
    return mask


def write_spectrum(spectrum, path: str | PathLike, *, overwrite: bool = False) -> Path:
    """Write a :class:`jaxspec.infer.Spectrum` (or a ``specutils.Spectrum``) as a table
    (format from the suffix: ``.ecsv``, ``.fits``, ``.csv``); wavelength carries the unit
    Å, a ``segment`` column and ``meta["medium"]`` are written when known. Returns the
    path.

    Atomic (:func:`jaxspec.io.atomic.write_table`): an existing file stays intact until
    the new one is complete. FileExistsError if ``path`` exists and ``overwrite`` is
    False."""
    import astropy.units as u
    from astropy.table import Table

    from jaxspec.spectrum import as_spectrum
    from jaxspec.io.atomic import write_table

    spectrum = as_spectrum(spectrum)
    path = Path(path)
    table = Table()
    table["wavelength"] = spectrum.wavelength * u.AA
    table["flux"] = spectrum.flux
    if spectrum.uncertainty is not None:
        table["uncertainty"] = spectrum.uncertainty
    if not np.all(spectrum.mask):
        table["mask"] = spectrum.mask
    if spectrum.segment is not None:
        table["segment"] = spectrum.segment
    if spectrum.medium is not None:
        table.meta["medium"] = spectrum.medium
    return write_table(table, path, overwrite=overwrite)
