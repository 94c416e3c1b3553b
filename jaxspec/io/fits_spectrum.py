r"""Observed spectra from survey and instrument FITS files.

:func:`jaxspec.io.read_spectrum` picks the reader from the file (or ``layout=``); each
returns a :class:`jaxspec.infer.Spectrum` and names the file, the HDU and the fix in every
error.

``"apogee"``: SDSS APOGEE ``apStar`` / ``asStar`` and ``aspcapStar`` (:func:`read_apogee`)
    Image HDUs on one log-linear wavelength grid (SDSS convention, ``CTYPE1 =
    'LOG-LINEAR'``, 0-based pixel :math:`i`):

    .. math:: \log_{10}\lambda_i = \mathrm{CRVAL1} + \mathrm{CDELT1}\,(i + 1 - \mathrm{CRPIX1})

    (DR17: CRVAL1 = 4.179, CDELT1 = 6e-6, 8,575 px, 15,100–17,000 Å; rest-frame vacuum
    wavelengths, so ``medium="vacuum"``). apStar: HDU 1 flux (1e-17 erg s⁻¹ cm⁻² Å⁻¹,
    not normalised), HDU 2 1σ error, HDU 3 ``APOGEE_PIXMASK`` bitmask; rows are the
    combined spectrum with pixel-based weighting (row 0, the default), with global
    weighting (row 1) and the visits (rows 2 … NVISITS + 1; a one-visit file's visit is
    its combined row). A pixel is used where ``(bitmask & bits) == 0`` with ``bits`` =
    :data:`APOGEE_BAD_BITS` (the bits apogee_drp's ``PixelBitMask`` marks BAD: BADPIX,
    CRPIX, SATPIX, UNFIXABLE, BADDARK, BADFLAT, BADERR, NOSKY, NOT_ENOUGH_PSF) unless
    ``mask_bits`` says otherwise, and flux and error are finite (NaN marks pixels
    without data). The three detectors (blue, green, red: pixels BMIN–BMAX, GMIN–GMAX,
    RMIN–RMAX of the primary header) are segments 0, 1, 2, so ``--normalize`` fits each
    chip's continuum separately. aspcapStar: HDU 1 continuum-normalised flux, HDU 2 its error (no
    bitmask; zero, non-finite or ≥ 1e9 errors are unused pixels).

``"echelle"``: multi-order echelle images, HPF-style (:func:`read_echelle`)
    2-D image HDUs ``(n_orders, n_pix)`` found by EXTNAME: flux (``SCI FLUX``, ``FLUX``,
    ``SPEC``), wavelength (``SCI WAVL``, ``WAVELENGTH``, ``WAVE``, ``LAMBDA``; Å unless
    its BUNIT/CUNIT1 says nm or µm) and optionally an uncertainty: variance (``SCI
    VARIANCE``, ``VARIANCE``, ``VAR``: σ = √v), 1σ (``ERROR``, ``ERR``, ``SIGMA``,
    ``UNCERTAINTY``) or inverse variance (``IVAR``: σ = 1/√ivar). The HPF Goldilocks
    pipeline writes ``Sci Flux`` (HDU 1), ``Sci Variance`` (4) and ``Sci Wavl`` (7), 28
    orders × 2,048 px, vacuum wavelengths. Each order (row) becomes a ``segment`` of one
    spectrum (pixels of all orders in wavelength order); ``orders`` picks rows.

``"image"``: a 1-D image with a wavelength WCS (:func:`read_fits_image`)
    The first HDU with 1-D data (or one row). Wavelength of FITS pixel :math:`p = i + 1`:

    - linear (``CTYPE1`` ``WAVE``, ``LINEAR``, ``AWAV`` or absent, ``DC-FLAG`` 0):
      :math:`\lambda = \mathrm{CRVAL1} + \mathrm{CDELT1}\,(p - \mathrm{CRPIX1})` (``CD1_1``
      if no ``CDELT1``), in ``CUNIT1`` (default Å);
    - log-linear, IRAF/SDSS (``DC-FLAG`` = 1 or ``CTYPE1`` ``LOG-LINEAR``):
      :math:`\log_{10}\lambda = \mathrm{CRVAL1} + \mathrm{CDELT1}\,(p - \mathrm{CRPIX1})`;
    - ``WAVE-LOG`` (FITS WCS paper III, Greisen et al. 2006, eq. 5):
      :math:`\lambda = \mathrm{CRVAL1}\,\exp(\mathrm{CDELT1}\,(p - \mathrm{CRPIX1}) /
      \mathrm{CRVAL1})`.

    Companion image HDUs of the same length, by EXTNAME: 1σ (``ERROR``, ``ERR``,
    ``SIGMA``, ``UNCERTAINTY``, ``NOISE``), variance (``VARIANCE``, ``VAR``), inverse
    variance (``IVAR``, ``INVVAR``) and a bad-pixel mask (``MASK``, ``BITMASK``, ``DQ``,
    ``FLAGS``; image masks follow the FITS data-quality convention, 0 = good, or use the
    pixels where ``(mask & mask_bits) == 0``).

Medium. ``medium=`` wins; else the header's ``AIRORVAC`` / ``WAVEMED`` (air, vac); else
vacuum for APOGEE and HPF (both pipelines' convention); else None (not recorded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxspec._checks import sigma_from

__all__ = ["APOGEE_BAD_BITS", "detect_layout", "read_apogee", "read_echelle",
           "read_fits_image"]

#: ``APOGEE_PIXMASK`` bits apogee_drp marks BAD (level 1): 0-7 (BADPIX, CRPIX, SATPIX,
#: UNFIXABLE, BADDARK, BADFLAT, BADERR, NOSKY) and 14 (NOT_ENOUGH_PSF).
APOGEE_BAD_BITS = 0xFF | (1 << 14)

_FLUX_NAMES = ("SCI FLUX", "FLUX", "SPEC", "SPECTRUM")
_WAVE_NAMES = ("SCI WAVL", "WAVELENGTH", "WAVE", "WAVL", "LAMBDA")
_SIGMA_NAMES = ("ERROR", "ERR", "SIGMA", "UNCERTAINTY", "NOISE", "SCI ERROR")
_VAR_NAMES = ("SCI VARIANCE", "VARIANCE", "VAR")
_IVAR_NAMES = ("IVAR", "INVVAR", "INVERSE_VARIANCE", "SCI IVAR")
_MASK_NAMES = ("MASK", "BITMASK", "DQ", "FLAGS", "SCI MASK")
_LAYOUTS = ("table", "apogee", "echelle", "image")


# ---------------------------------------------------------------- helpers


def _hdu_label(hdul, i: int) -> str:
    name = hdul[i].name.strip()
    return f"HDU {i}" + (f" ({name})" if name else "")


def _describe(hdul) -> str:
    parts = []
    for i, hdu in enumerate(hdul):
        shape = getattr(hdu, "shape", None) if hdu.data is not None else None
        kind = "table" if hasattr(hdu, "columns") else "image"
        what = f"{kind} {tuple(shape)}" if shape else "no data"
        if kind == "table" and hdu.data is not None:
            what = f"table with columns {', '.join(hdu.columns.names[:8])}"
        parts.append(f"{_hdu_label(hdul, i)}: {what}")
    return "; ".join(parts)


def _find(hdul, names, *, ndim=None):
    """Index of the first image HDU whose EXTNAME is one of ``names`` (case-insensitive)."""
    wanted = {n.upper() for n in names}
    for i, hdu in enumerate(hdul):
        if hdu.name.strip().upper() in wanted and not hasattr(hdu, "columns") \
                and hdu.data is not None and (ndim is None or hdu.data.ndim in ndim):
            return i
    return None


def _medium(header_list, given, default):
    from jaxspec.medium import check_medium

    if given is not None:
        return check_medium(given)
    for header in header_list:
        for key in ("AIRORVAC", "WAVEMED", "MEDIUM"):
            value = header.get(key)
            if isinstance(value, str) and value.strip():
                try:
                    return check_medium(value)
                except ValueError:
                    continue
    return default


def _is_hpf(header) -> bool:
    return str(header.get("INSTRUME", "")).strip().upper() == "HPF"


def _to_angstrom(values, unit, where: str):
    if unit is None or str(unit).strip() == "":
        return values
    import astropy.units as u

    try:
        return (values * u.Unit(str(unit).strip())).to_value(u.AA, equivalencies=u.spectral())
    except (ValueError, u.UnitConversionError, TypeError):
        raise ValueError(f"{where}: wavelength unit {unit!r} is not a wavelength; store Å, "
                         "nm or µm (BUNIT/CUNIT1)") from None


def _uncertainty_hdu(hdul):
    """``(index, kind)`` of the uncertainty image HDU, or ``(None, None)``."""
    for names, kind in ((_SIGMA_NAMES, "sigma"), (_VAR_NAMES, "var"), (_IVAR_NAMES, "ivar")):
        i = _find(hdul, names)
        if i is not None:
            return i, kind
    return None, None


def detect_layout(path: str | Path, hdul) -> str:
    """``"table"``, ``"apogee"``, ``"echelle"`` or ``"image"`` for an open FITS file
    (module docstring); ValueError listing the HDUs when none fits."""
    stem = Path(path).name.lower()
    h0 = hdul[0].header
    if stem.startswith(("apstar", "asstar", "aspcapstar")) or (
            "NVISITS" in h0 and len(hdul) > 3 and hdul[1].data is not None):
        return "apogee"
    if _find(hdul, _FLUX_NAMES, ndim=(2,)) is not None and _find(hdul, _WAVE_NAMES) is not None:
        return "echelle"
    for hdu in hdul:
        if hasattr(hdu, "columns") and hdu.data is not None:
            names = {c.lower() for c in hdu.columns.names}
            if {"wavelength", "flux"} <= names:
                return "table"
    for hdu in hdul:
        if not hasattr(hdu, "columns") and hdu.data is not None and (
                hdu.data.ndim == 1 or (hdu.data.ndim == 2 and hdu.data.shape[0] == 1)):
            return "image"
    raise ValueError(
        f"{path}: no HDU holds a spectrum jaxspec reads ({_describe(hdul)}); expected a "
        "table HDU with columns wavelength, flux [, uncertainty]; an APOGEE apStar or "
        "aspcapStar file; an echelle file with 2-D FLUX and WAVELENGTH image HDUs; or a "
        "1-D image with a wavelength WCS (CRVAL1, CDELT1): convert the file to one of them"
    )


# ---------------------------------------------------------------- APOGEE


def read_apogee(path, hdul, *, visit: int | None = None, row: int | None = None,
                mask_bits: int | None = None, medium: str | None = None,
                name: str | None = None):
    """An APOGEE ``apStar``/``asStar`` or ``aspcapStar`` spectrum (module docstring).

    Args:
        path: the file (for messages and the kind: names starting ``aspcapStar`` are
            read as aspcapStar).
        hdul: the open ``astropy.io.fits.HDUList``.
        visit: None (the combined spectrum) or a visit number 1 … NVISITS (apStar).
        row: a raw image row instead (0 = combined, pixel weighting; 1 = combined,
            global weighting; 2 … = visits), apStar only.
        mask_bits: ``APOGEE_PIXMASK`` bits that make a pixel unusable (default
            :data:`APOGEE_BAD_BITS`).
        medium: override the vacuum of the APOGEE pipeline.
        name: label (default: the file name, with ``[visit K]`` or ``[row R]``).

    Returns:
        :class:`jaxspec.infer.Spectrum` of 8,575 px (DR17), log-linear wavelengths in Å,
        flux in the file's units (apStar: 1e-17 erg s⁻¹ cm⁻² Å⁻¹, normalise it with
        ``--normalize``; aspcapStar: normalised).

    Raises:
        ValueError: a missing or misshaped HDU, no log-linear WCS, a visit or row out of
            range, or a row without data (each names the file, the HDU and the fix).
    """
    from jaxspec.spectrum import Spectrum

    path = Path(path)
    aspcap = path.name.lower().startswith("aspcapstar")
    h0 = hdul[0].header
    if len(hdul) < 3 or hdul[1].data is None or hdul[2].data is None:
        raise ValueError(f"{path}: an APOGEE file needs flux in HDU 1 and its error in HDU 2 "
                         f"({_describe(hdul)}); pass an apStar or aspcapStar file")
    flux_all = np.asarray(hdul[1].data, dtype=np.float64)
    err_all = np.asarray(hdul[2].data, dtype=np.float64)
    if flux_all.shape != err_all.shape or flux_all.ndim not in (1, 2):
        raise ValueError(f"{path}: HDU 1 (flux) has shape {flux_all.shape} and HDU 2 (error) "
                         f"{err_all.shape}; APOGEE files hold equal 1-D or 2-D images")
    header = hdul[1].header
    crval = header.get("CRVAL1", h0.get("CRVAL1"))
    cdelt = header.get("CDELT1", h0.get("CDELT1"))
    crpix = header.get("CRPIX1", h0.get("CRPIX1", 1.0))
    if crval is None or cdelt is None:
        raise ValueError(f"{path}: HDU 1 has no CRVAL1/CDELT1 (log10 of the first wavelength "
                         "and its step); the file is not an apStar/aspcapStar, pass "
                         "layout='image' or 'table' for other files")
    n_rows = 1 if flux_all.ndim == 1 else flux_all.shape[0]
    n_visits = int(h0.get("NVISITS", max(n_rows - 2, 1)))
    label = name or path.name
    if aspcap or flux_all.ndim == 1:
        if (visit not in (None, 1) or row not in (None, 0)) and flux_all.ndim == 1:
            raise ValueError(f"{path}: holds one spectrum ({'aspcapStar' if aspcap else '1-D'}"
                             f" images); drop --visit / row")
        r = 0
    elif row is not None:
        if not 0 <= row < n_rows:
            raise ValueError(f"{path}: row {row} does not exist (HDU 1 has {n_rows} rows: 0 "
                             "combined/pixel weighting, 1 combined/global weighting, then "
                             "visits); pass 0 … " + str(n_rows - 1))
        r = int(row)
        label = name or f"{path.name}[row {r}]"
    elif visit is not None:
        if not 1 <= visit <= n_visits:
            raise ValueError(f"{path}: visit {visit} does not exist (NVISITS = {n_visits}); "
                             f"pass --visit 1 … {n_visits}, or none for the combined spectrum")
        r = 0 if n_visits == 1 else visit + 1
        if r >= n_rows:
            raise ValueError(f"{path}: visit {visit} would be row {r} but HDU 1 has {n_rows} "
                             "rows; the file is truncated or not an apStar")
        label = name or f"{path.name}[visit {visit}]"
    else:
        r = 0
    flux = flux_all if flux_all.ndim == 1 else flux_all[r]
    err = err_all if err_all.ndim == 1 else err_all[r]
    n = flux.size
    i = np.arange(n, dtype=np.float64)
    wavelength = 10.0 ** (float(crval) + float(cdelt) * (i + 1.0 - float(crpix)))
    used = np.isfinite(flux) & np.isfinite(err) & (err > 0)
    if aspcap:
        used &= (err < 1e9) & (flux != 0)
    elif len(hdul) > 3 and hdul[3].data is not None:
        bits_all = np.asarray(hdul[3].data)
        if bits_all.shape != flux_all.shape or bits_all.dtype.kind not in "iu":
            raise ValueError(f"{path}: HDU 3 (pixel bitmask) has shape {bits_all.shape} and "
                             f"dtype {bits_all.dtype}; expected integers shaped like HDU 1 "
                             f"{flux_all.shape}")
        bits = bits_all if bits_all.ndim == 1 else bits_all[r]
        bad = APOGEE_BAD_BITS if mask_bits is None else int(mask_bits)
        used &= (bits.astype(np.int64) & bad) == 0
    if not used.any():
        raise ValueError(f"{path}: HDU 1 row {r} has no usable pixel (flux NaN or 0, or every "
                         "pixel flagged); pick another --visit or file")
    segment = None
    chips = [(h0.get(f"{c}MIN"), h0.get(f"{c}MAX")) for c in "BGR"]
    if all(isinstance(a, int) and isinstance(b, int) for a, b in chips):
        segment = np.full(n, -1, dtype=np.int64)  # -1: between chips (no data there)
        for k, (a, b) in enumerate(chips):
            segment[max(a, 0):min(b + 1, n)] = k
    return Spectrum(wavelength, np.where(used, flux, 0.0), np.where(used, err, 1.0), used,
                    name=label, medium=_medium([header, h0], medium, "vacuum"),
                    segment=segment)


# ---------------------------------------------------------------- echelle


def read_echelle(path, hdul, *, orders=None, medium: str | None = None,
                 name: str | None = None):
    """A multi-order echelle spectrum (module docstring): every selected order becomes a
    ``segment`` of one :class:`jaxspec.infer.Spectrum`.

    Args:
        path: the file (messages).
        hdul: the open ``HDUList``.
        orders: row indices (0-based) of the orders to use, or None (all).
        medium: wavelength medium (default: the header's, vacuum for HPF, else None).
        name: label (default: the file name).

    Returns:
        :class:`jaxspec.infer.Spectrum`, pixels of all orders sorted by wavelength, with
        ``segment`` = the order's row index.

    Raises:
        ValueError: flux and wavelength images of different shapes, an order index out
            of range, non-positive wavelengths, or two orders with a pixel at exactly
            the same wavelength.
    """
    from jaxspec.spectrum import Spectrum

    path = Path(path)
    i_flux = _find(hdul, _FLUX_NAMES, ndim=(2,))
    i_wave = _find(hdul, _WAVE_NAMES)
    if i_flux is None or i_wave is None:
        raise ValueError(f"{path}: an echelle file needs 2-D flux and wavelength image HDUs "
                         f"named e.g. 'SCI FLUX' and 'SCI WAVL' ({_describe(hdul)}); rename "
                         "the extensions (EXTNAME) or pass layout='image' / 'table'")
    flux = np.asarray(hdul[i_flux].data, dtype=np.float64)
    wave_hdu = hdul[i_wave]
    wave = np.asarray(wave_hdu.data, dtype=np.float64)
    if wave.shape != flux.shape:
        raise ValueError(f"{path}: {_hdu_label(hdul, i_wave)} (wavelength) has shape "
                         f"{wave.shape} but {_hdu_label(hdul, i_flux)} (flux) has "
                         f"{flux.shape}; they must match, one wavelength per pixel")
    unit = wave_hdu.header.get("BUNIT") or wave_hdu.header.get("CUNIT1")
    wave = _to_angstrom(wave, unit, f"{path}: {_hdu_label(hdul, i_wave)}")
    i_unc, kind = _uncertainty_hdu(hdul)
    sigma, ok_unc = None, np.ones(flux.shape, dtype=bool)
    if i_unc is not None:
        a = np.asarray(hdul[i_unc].data, dtype=np.float64)
        if a.shape != flux.shape:
            raise ValueError(f"{path}: {_hdu_label(hdul, i_unc)} has shape {a.shape} but the "
                             f"flux has {flux.shape}; pass one uncertainty per pixel")
        sigma, ok_unc = sigma_from(kind, a)
    n_orders = flux.shape[0]
    rows = list(range(n_orders)) if orders is None else [int(o) for o in orders]
    bad = [o for o in rows if not 0 <= o < n_orders]
    if bad or not rows:
        raise ValueError(f"{path}: order(s) {bad or rows} do not exist; "
                         f"{_hdu_label(hdul, i_flux)} has {n_orders} orders, pass indices "
                         f"0 … {n_orders - 1} (--orders)")
    wl = wave[rows].ravel()
    keep = np.isfinite(wl)
    if np.any(wl[keep] <= 0):
        raise ValueError(f"{path}: {_hdu_label(hdul, i_wave)} holds wavelengths <= 0; store Å")
    seg = np.repeat(np.asarray(rows, dtype=np.int64), flux.shape[1])
    f = flux[rows].ravel()
    used = (np.isfinite(f) & ok_unc[rows].ravel())[keep]
    s = None if sigma is None else sigma[rows].ravel()[keep]
    wl, f, seg = wl[keep], f[keep], seg[keep]
    order = np.argsort(wl, kind="stable")
    wl, f, seg, used = wl[order], f[order], seg[order], used[order]
    s = None if s is None else s[order]
    same = np.flatnonzero(np.diff(wl) == 0)
    if same.size:
        j = same[0]
        raise ValueError(f"{path}: orders {seg[j]} and {seg[j + 1]} both have a pixel at "
                         f"{wl[j]:.4f} Å; pick orders that do not share a wavelength (--orders)")
    h0 = hdul[0].header
    default = "vacuum" if _is_hpf(h0) else None
    return Spectrum(wl, np.where(used, f, 0.0), None if s is None else np.where(used, s, 1.0),
                    used, name=name or path.name,
                    medium=_medium([hdul[i_flux].header, h0], medium, default), segment=seg)


# ---------------------------------------------------------------- 1-D image


def _wcs_wavelength(header, n: int, where: str) -> np.ndarray:
    """Wavelengths (Å) of ``n`` pixels from a 1-D spectral WCS (module docstring)."""
    crval = header.get("CRVAL1")
    cdelt = header.get("CDELT1", header.get("CD1_1"))
    if crval is None or cdelt is None:
        raise ValueError(f"{where}: no wavelength WCS (CRVAL1 and CDELT1 or CD1_1); add them "
                         "to the header or write the spectrum as a table with a wavelength "
                         "column")
    crpix = float(header.get("CRPIX1", 1.0))
    ctype = str(header.get("CTYPE1", "")).strip().upper()
    dcflag = header.get("DC-FLAG")
    p = np.arange(1, n + 1, dtype=np.float64)
    step = float(cdelt) * (p - crpix)
    if ctype and not ctype.startswith(("WAVE", "AWAV", "LINEAR", "LOG-LINEAR", "LAMBDA")):
        raise ValueError(f"{where}: CTYPE1 = {ctype!r} is not a wavelength axis; jaxspec reads "
                         "WAVE, AWAV, LINEAR, LOG-LINEAR and WAVE-LOG")
    if ctype in ("WAVE-LOG", "AWAV-LOG"):
        wl = float(crval) * np.exp(step / float(crval))
    elif ctype == "LOG-LINEAR" or dcflag == 1:
        wl = 10.0 ** (float(crval) + step)
    else:
        wl = float(crval) + step
    unit = header.get("CUNIT1")
    if ctype == "LOG-LINEAR" or dcflag == 1:
        unit = None  # log10 of Å by the IRAF/SDSS convention
    return _to_angstrom(wl, unit, where)


def read_fits_image(path, hdul, *, mask_bits: int | None = None, medium: str | None = None,
                    name: str | None = None):
    """A spectrum stored as a 1-D FITS image with a wavelength WCS (module docstring).

    Args:
        path: the file (messages).
        hdul: the open ``HDUList``.
        mask_bits: bits of a MASK/DQ image that make a pixel unusable (default: any
            non-zero value).
        medium: wavelength medium (default: the header's AIRORVAC, else None).
        name: label (default: the file name).

    Returns:
        :class:`jaxspec.infer.Spectrum`.

    Raises:
        ValueError: no 1-D image, no wavelength WCS, a companion HDU of another length.
    """
    from jaxspec.spectrum import Spectrum

    path = Path(path)
    i_flux = _find(hdul, _FLUX_NAMES, ndim=(1, 2))
    if i_flux is None:
        i_flux = next((i for i, h in enumerate(hdul) if not hasattr(h, "columns")
                       and h.data is not None and (h.data.ndim == 1 or (
                           h.data.ndim == 2 and h.data.shape[0] == 1))), None)
    if i_flux is None:
        raise ValueError(f"{path}: no 1-D image HDU ({_describe(hdul)}); pass a file whose "
                         "flux is a 1-D image with a wavelength WCS")
    flux = np.asarray(hdul[i_flux].data, dtype=np.float64).reshape(-1)
    where = f"{path}: {_hdu_label(hdul, i_flux)}"
    header = hdul[i_flux].header.copy()
    for key in ("CRVAL1", "CDELT1", "CD1_1", "CRPIX1", "CTYPE1", "CUNIT1", "DC-FLAG"):
        if key not in header and key in hdul[0].header:
            header[key] = hdul[0].header[key]
    wl = _wcs_wavelength(header, flux.size, where)

    def companion(i):
        a = np.asarray(hdul[i].data).reshape(-1)
        if a.size != flux.size:
            raise ValueError(f"{path}: {_hdu_label(hdul, i)} has {a.size} pixels but the flux "
                             f"({_hdu_label(hdul, i_flux)}) has {flux.size}; pass one value "
                             "per pixel")
        return a

    used = np.isfinite(flux)
    sigma = None
    i_unc, kind = _uncertainty_hdu(hdul)
    if i_unc is not None and i_unc != i_flux:
        sigma, ok = sigma_from(kind, companion(i_unc))
        used &= ok
    i_mask = _find(hdul, _MASK_NAMES)
    if i_mask is not None:
        m = companion(i_mask)
        if m.dtype.kind == "b":
            used &= ~m
        elif m.dtype.kind in "iu":
            bits = m.astype(np.int64)
            used &= (bits == 0) if mask_bits is None else (bits & int(mask_bits)) == 0
        else:
            raise ValueError(f"{path}: {_hdu_label(hdul, i_mask)} (mask) has dtype {m.dtype}; "
                             "an image mask holds integers (0 = good) or booleans (True = bad)")
    if wl.size > 1 and np.all(np.diff(wl) < 0):  # a descending WCS (CDELT1 < 0)
        wl, flux, used = wl[::-1], flux[::-1], used[::-1]
        sigma = None if sigma is None else sigma[::-1]
    return Spectrum(wl, np.where(used, flux, 0.0),
                    None if sigma is None else np.where(used, sigma, 1.0), used,
                    name=name or path.name,
                    medium=_medium([hdul[i_flux].header, hdul[0].header], medium, None))
