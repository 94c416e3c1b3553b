"""Observed spectra as tables: any format astropy reads (ECSV, FITS, CSV, ...).

Columns (names case-insensitive):

``wavelength``
    Å. A column with a unit (e.g. ``nm``, ``um``, ``Angstrom``) is converted to Å; a
    column without one is taken to be in Å.
``flux``
    normalised like the emulator's spectra.
``uncertainty`` (optional)
    1σ flux uncertainty, same units as flux.
``mask`` (optional)
    bool or 0/1, True (1) where the pixel is used. An integer bitmask (flags, 0 = good)
    is an error unless ``mask_bits`` says which bits mark a bad pixel: then a pixel is
    used where ``(mask & mask_bits) == 0``.

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


def read_spectrum(path: str | PathLike, *, name: str | None = None,
                  mask_bits: int | None = None):
    """Read a spectrum table.

    Args:
        path: ECSV, FITS (first table HDU), CSV or any table astropy reads.
        name: label for messages (default: the file name).
        mask_bits: None (a ``mask`` column is bool or 0/1, True = use), or an integer
            N > 0: the ``mask`` column is an integer bitmask and a pixel is used where
            ``(mask & N) == 0`` (e.g. N = 1 for "bit 0 set = bad").

    Returns:
        :class:`jaxspec.infer.Spectrum`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, a required column missing (the message lists the
            columns present and says how to fix it), a mask column that is neither bool
            nor 0/1 (a bitmask: pass ``mask_bits``), or σ ≤ 0 at a used pixel.

    Warns:
        UserWarning: wavelengths not in increasing order (they are sorted, flux,
            uncertainty and mask with them); a 0/1 mask that uses fewer than half of the
            pixels (1 means *used*: a bitmask with 0 = good needs ``mask_bits``).
    """
    from astropy.table import Table

    from jaxspec.infer.spectrum import Spectrum

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such spectrum file")
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(
            f"{path}: the file is empty (0 bytes), perhaps an interrupted copy or download; "
            "copy it again, or write the spectrum as ECSV, FITS or CSV with columns "
            "wavelength, flux [, uncertainty]"
        )
    fmt = _FORMATS.get(path.suffix.lower())
    try:
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
    uncertainty = column("uncertainty") if "uncertainty" in cols else None
    mask = None
    if "mask" in cols:
        mask = _read_mask(path, table[cols["mask"]], mask_bits)
    elif mask_bits is not None:
        raise ValueError(f"{path}: mask_bits={mask_bits} (--mask-bits) was given but the "
                         f"table has no mask column (columns: {', '.join(table.colnames)})")
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
    return Spectrum(wavelength, flux, uncertainty, mask, name=name or path.name)


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
    """Write a :class:`jaxspec.infer.Spectrum` as a table (format from the suffix:
    ``.ecsv``, ``.fits``, ``.csv``); wavelength carries the unit Å. Returns the path.

    Atomic (:func:`jaxspec.io.atomic.write_table`): an existing file stays intact until
    the new one is complete. FileExistsError if ``path`` exists and ``overwrite`` is
    False."""
    import astropy.units as u
    from astropy.table import Table

    from jaxspec.io.atomic import write_table

    path = Path(path)
    table = Table()
    table["wavelength"] = spectrum.wavelength * u.AA
    table["flux"] = spectrum.flux
    if spectrum.uncertainty is not None:
        table["uncertainty"] = spectrum.uncertainty
    if not np.all(spectrum.mask):
        table["mask"] = spectrum.mask
    return write_table(table, path, overwrite=overwrite)
