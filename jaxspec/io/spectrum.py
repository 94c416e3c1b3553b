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
    bool or 0/1, True (1) where the pixel is used.

:func:`read_spectrum` validates them through :class:`jaxspec.infer.Spectrum` (NaN flux
masked with a warning, non-positive uncertainties rejected) and names the file in every
message; :func:`write_spectrum` writes the same layout.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["read_spectrum", "write_spectrum"]

_FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".txt": "ascii", ".dat": "ascii"}


def read_spectrum(path: str | PathLike, *, name: str | None = None):
    """Read a spectrum table.

    Args:
        path: ECSV, FITS (first table HDU), CSV or any table astropy reads.
        name: label for messages (default: the file name).

    Returns:
        :class:`jaxspec.infer.Spectrum`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, or a required column missing (the message lists the
            columns present and says how to fix it).
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
        mask = np.asarray(np.ma.filled(np.ma.asarray(table[cols["mask"]]), 0)).astype(bool)
    order = np.argsort(wavelength, kind="stable")
    if np.any(np.diff(wavelength) < 0):  # descending files (common in FITS) are reordered
        wavelength, flux = wavelength[order], flux[order]
        uncertainty = None if uncertainty is None else uncertainty[order]
        mask = None if mask is None else mask[order]
    return Spectrum(wavelength, flux, uncertainty, mask, name=name or path.name)


def write_spectrum(spectrum, path: str | PathLike, *, overwrite: bool = False) -> Path:
    """Write a :class:`jaxspec.infer.Spectrum` as a table (format from the suffix:
    ``.ecsv``, ``.fits``, ``.csv``); wavelength carries the unit Å. Returns the path."""
    import astropy.units as u
    from astropy.table import Table

    path = Path(path)
    table = Table()
    table["wavelength"] = spectrum.wavelength * u.AA
    table["flux"] = spectrum.flux
    if spectrum.uncertainty is not None:
        table["uncertainty"] = spectrum.uncertainty
    if not np.all(spectrum.mask):
        table["mask"] = spectrum.mask
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = _FORMATS.get(path.suffix.lower())
    table.write(path, format=fmt, overwrite=overwrite) if fmt else table.write(
        path, overwrite=overwrite
    )
    return path
