r"""Import PHOENIX-ACES-AGSS-COND-2011 HiRes spectra (Husser et al. 2013, A&A 553, A6).

Files are read from a local copy of the PHOENIX server's ``HiResFITS`` tree (nothing is
downloaded)::

    HiResFITS/WAVE_PHOENIX-ACES-AGSS-COND-2011.fits        wavelength, Å, vacuum
    HiResFITS/PHOENIX-ACES-AGSS-COND-2011/                  <- pass this as ``directory``
        Z-0.0/lte05800-4.50-0.0.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits
        Z-0.5/lte05800-4.50-0.5.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits   ([Fe/H] = -0.5)
        Z+0.5/lte05800-4.50+0.5.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits   ([Fe/H] = +0.5)

The wavelength file may sit in ``directory`` or one level up. Spectrum files may also sit
directly in ``directory``. Each spectrum's primary HDU holds the surface flux
(erg s⁻¹ cm⁻² cm⁻¹) on the wavelength file's grid, and its header the parameters
``PHXTEFF`` (K), ``PHXLOGG`` (dex, cgs), ``PHXM_H`` ([Fe/H], dex) and ``PHXALPHA``
([α/Fe], dex). Only the α = 0 files are read: ``Z-0.0.Alpha=+0.20``-style folders and files
are ignored.

In filenames ``-`` after the temperature is a separator, so ``lte05800-4.50-0.5`` is
Teff = 5800 K, log g = 4.50, [Fe/H] = -0.5; solar metallicity is written ``-0.0``.
"""

from __future__ import annotations

import re
import warnings
from os import PathLike
from pathlib import Path
from typing import NamedTuple

import numpy as np
from astropy.io import fits
from tqdm.auto import tqdm

from jaxspec._axes import range_slice
from jaxspec._checks import check_wavelength, fmt
from jaxspec.grid import SpectralGrid
from jaxspec.io.grid_hdf5 import GridWriter

__all__ = [
    "PhoenixSpectrum",
    "WAVELENGTH_FILENAME",
    "phoenix_filename",
    "read_phoenix_grid",
    "read_phoenix_spectrum",
    "read_phoenix_wavelength",
]

WAVELENGTH_FILENAME = "WAVE_PHOENIX-ACES-AGSS-COND-2011.fits"
_SUFFIX = ".PHOENIX-ACES-AGSS-COND-2011-HiRes.fits"
_FILE_RE = re.compile(
    r"^lte(?P<teff>\d{5})-(?P<logg>\d+\.\d{2})(?P<feh>[+-]\d+\.\d)"
    + re.escape(_SUFFIX)
    + "$"
)
_ZDIR_RE = re.compile(r"^Z(?P<feh>[+-]\d+\.\d)$")

# Header key per parameter, and the largest header-filename difference accepted (the
# filename rounds Teff to 1 K, log g to 0.01 and [Fe/H] to 0.1).
_HEADER_KEYS = {"teff": "PHXTEFF", "logg": "PHXLOGG", "feh": "PHXM_H", "alpha": "PHXALPHA"}
_TOLERANCE = {"teff": 0.5, "logg": 0.005, "feh": 0.05, "alpha": 0.05}
_PARAMS = ("teff", "logg", "feh")
_REDOWNLOAD = "re-download it from https://phoenix.astro.physik.uni-goettingen.de"


class PhoenixSpectrum(NamedTuple):
    """One PHOENIX spectrum: ``wavelength`` (n_pix,) float64 Å (vacuum), ``flux`` (n_pix,)
    float32 erg s⁻¹ cm⁻² cm⁻¹, ``params`` {"teff", "logg", "feh", "alpha"} from the header."""

    wavelength: np.ndarray
    flux: np.ndarray
    params: dict[str, float]


def _feh_str(feh: float) -> str:
    # PHOENIX writes solar metallicity as "-0.0".
    return "-0.0" if abs(feh) < 0.05 else f"{feh:+.1f}"


def phoenix_filename(teff: float, logg: float, feh: float) -> str:
    """Relative path of a PHOENIX-ACES HiRes file (α = 0) as laid out on the server.

    Example: ``phoenix_filename(5800, 4.5, -0.5)`` is
    ``"Z-0.5/lte05800-4.50-0.5.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits"``.
    """
    z = _feh_str(feh)
    return f"Z{z}/lte{int(round(teff)):05d}-{logg:.2f}{z}{_SUFFIX}"


def _params_from_filename(path: Path) -> dict[str, float] | None:
    m = _FILE_RE.match(path.name)
    if m is None:
        return None
    return {"teff": float(m["teff"]), "logg": float(m["logg"]), "feh": float(m["feh"])}


def read_phoenix_wavelength(path: str | PathLike) -> np.ndarray:
    """Read ``WAVE_PHOENIX-ACES-AGSS-COND-2011.fits``: ``(n,)`` float64 vacuum wavelength, Å.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the primary HDU holds no 1-D, finite, strictly increasing array.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file; download {WAVELENGTH_FILENAME} from "
            "https://phoenix.astro.physik.uni-goettingen.de (HiResFITS/)"
        )
    with fits.open(path, memmap=False) as hdul:
        data = hdul[0].data
        if data is None:
            raise ValueError(f"{path}: primary HDU holds no data; {_REDOWNLOAD}")
        wl = np.array(data, dtype=np.float64)
    return check_wavelength(
        wl, label=f"{path}: primary HDU wavelength", fix=f"; {_REDOWNLOAD}"
    )


def _read_flux(
    path: Path, expected: dict[str, float] | None, n_wave: int, pix: slice
) -> tuple[np.ndarray, dict[str, float]]:
    """Read and check one spectrum file; return flux[pix] (float32) and header params."""
    with fits.open(path, memmap=True) as hdul:
        header = hdul[0].header
        params = {}
        for name, key in _HEADER_KEYS.items():
            if key not in header:
                raise ValueError(
                    f"{path}: header key {key} is missing from the primary HDU; PHOENIX-ACES "
                    f"HiRes files carry {', '.join(_HEADER_KEYS.values())}; {_REDOWNLOAD}"
                )
            try:
                params[name] = float(header[key])
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}: header key {key} = {header[key]!r} is not a number; {_REDOWNLOAD}"
                ) from None
        if expected is not None:
            for name in (*_PARAMS, "alpha"):
                want = expected.get(name, 0.0)
                if abs(params[name] - want) > _TOLERANCE[name]:
                    raise ValueError(
                        f"{path}: header key {_HEADER_KEYS[name]} = {fmt(params[name])} "
                        f"disagrees with the filename ({name} = {fmt(want)}); the file was "
                        f"renamed or corrupted: {_REDOWNLOAD}, or rename it after its header"
                        + (
                            ""
                            if name == "alpha"
                            else f" ({phoenix_filename(**{**expected, name: params[name]})})"
                        )
                    )
        data = hdul[0].data
        if data is None or data.ndim != 1 or data.shape[0] != n_wave:
            shape = None if data is None else data.shape
            raise ValueError(
                f"{path}: primary HDU flux has shape {shape} but the wavelength file has "
                f"{n_wave} pixels; {_REDOWNLOAD} (and the matching {WAVELENGTH_FILENAME})"
            )
        flux = np.array(data[pix], dtype=np.float32)
        del data
    bad = ~np.isfinite(flux)
    if np.any(bad):
        raise ValueError(
            f"{path}: flux has {int(bad.sum())} NaN/inf pixel(s) in the selected range; "
            f"{_REDOWNLOAD}"
        )
    return flux, params


def _pixels(wl: np.ndarray, wavelength, wavelength_file) -> slice:
    """The pixels of the wavelength file's ``wl`` inside ``wavelength = (lo, hi)`` Å (all
    when None); a range that selects nothing names ``wavelength_file``."""
    if wavelength is None:
        return slice(None)
    try:
        return range_slice("wavelength", wl, wavelength, " Å")
    except ValueError as e:
        raise ValueError(f"{wavelength_file}: {e}") from None


def read_phoenix_spectrum(
    path: str | PathLike,
    wavelength_file: str | PathLike,
    wavelength: tuple[float, float] | None = None,
) -> PhoenixSpectrum:
    """Read one PHOENIX-ACES HiRes spectrum.

    Args:
        path: ``lte*.PHOENIX-ACES-AGSS-COND-2011-HiRes.fits``. If its name follows the
            PHOENIX pattern, the header parameters are checked against it.
        wavelength_file: ``WAVE_PHOENIX-ACES-AGSS-COND-2011.fits``.
        wavelength: ``(lo, hi)`` Å, inclusive crop; None keeps all pixels.

    Returns:
        :class:`PhoenixSpectrum` ``(wavelength, flux, params)``; flux in
        erg s⁻¹ cm⁻² cm⁻¹ (float32), wavelength in Å (float64, vacuum).

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a header key is missing or disagrees with the filename, or the flux does
            not match the wavelength file; the message names the file and key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; check the path")
    wl = read_phoenix_wavelength(wavelength_file)
    pix = _pixels(wl, wavelength, wavelength_file)
    flux, params = _read_flux(path, _params_from_filename(path), wl.size, pix)
    return PhoenixSpectrum(wl[pix], flux, params)


def _scan(directory: Path) -> dict[tuple[float, float, float], Path]:
    """Map (teff, logg, feh) -> file for every α = 0 PHOENIX file under ``directory``."""
    found: dict[tuple[float, float, float], Path] = {}
    folders = [directory] + sorted(
        p for p in directory.iterdir() if p.is_dir() and _ZDIR_RE.match(p.name)
    )
    for folder in folders:
        zdir = _ZDIR_RE.match(folder.name) if folder != directory else None
        for path in sorted(folder.glob("lte*" + _SUFFIX)):
            params = _params_from_filename(path)
            if params is None:
                continue
            if zdir is not None and abs(float(zdir["feh"]) - params["feh"]) > 0.05:
                raise ValueError(
                    f"{path}: filename says [Fe/H] = {_feh_str(params['feh'])} but the file "
                    f"sits in folder {folder.name}; move it to "
                    f"Z{_feh_str(params['feh'])}/ or re-download it"
                )
            key = (params["teff"], params["logg"], params["feh"])
            if key in found:
                raise ValueError(
                    f"{path}: duplicate of {found[key]} (same teff, logg, feh); delete one"
                )
            found[key] = path
    return found


def _find_wavelength_file(directory: Path) -> Path:
    candidates = [directory / WAVELENGTH_FILENAME, directory.parent / WAVELENGTH_FILENAME]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"{directory}: {WAVELENGTH_FILENAME} not found in {candidates[0].parent} or "
        f"{candidates[1].parent}; download it from https://phoenix.astro.physik.uni-goettingen.de "
        "(HiResFITS/) or pass wavelength_file="
    )


def read_phoenix_grid(
    directory: str | PathLike,
    teff: tuple[float, float] | None = None,
    logg: tuple[float, float] | None = None,
    feh: tuple[float, float] | None = None,
    wavelength: tuple[float, float] | None = None,
    out: str | PathLike | None = None,
    progress: bool = True,
    *,
    wavelength_file: str | PathLike | None = None,
    overwrite: bool = False,
    load: bool = True,
    return_missing: bool = False,
) -> SpectralGrid | Path | tuple[SpectralGrid | Path, list[str]]:
    r"""Import a rectilinear subset of the PHOENIX-ACES HiRes grid (α = 0).

    Finds the files under ``directory`` by name, keeps those inside the inclusive ranges,
    and builds axes ``teff`` (K), ``logg`` (dex), ``feh`` (dex) as the union of the values
    found. Nodes of that rectilinear product without a file are masked and reported. Each
    file's header (PHXTEFF, PHXLOGG, PHXM_H, PHXALPHA) is checked against its filename and
    its flux cropped to ``wavelength``.

    With ``out``, spectra are streamed to a jaxspec-grid HDF5 file one at a time (memory:
    one spectrum), so grids larger than memory can be imported; the blase3D subset
    (Sect. 2.1, Table 1: Teff 2300-12000 K, log g 2-6, [Fe/H] -0.5-0, 8038-12849 Å) is
    ``read_phoenix_grid(d, teff=(2300, 12000), logg=(2, 6), feh=(-0.5, 0),
    wavelength=(8038, 12849), out="phoenix.h5", load=False)``. Without ``out`` the grid is
    built in memory.

    Args:
        directory: folder holding the ``Z±x.x/`` folders (or the spectrum files).
        teff, logg, feh: ``(lo, hi)`` inclusive ranges; None keeps all values found.
        wavelength: ``(lo, hi)`` Å, inclusive crop; None keeps all pixels.
        out: HDF5 file to stream to; None builds the grid in memory.
        progress: show a tqdm progress bar.
        wavelength_file: ``WAVE_PHOENIX-ACES-AGSS-COND-2011.fits``; default: looked for in
            ``directory``, then its parent.
        overwrite: replace an existing ``out``.
        load: with ``out``, load the written grid and return it (default); False returns
            ``Path(out)`` instead, for grids bigger than memory (open parts later with
            ``SpectralGrid.from_hdf5(out, teff=(lo, hi), ...)``).
        return_missing: also return the list of missing files.

    Returns:
        The :class:`~jaxspec.grid.SpectralGrid` (flux float32, erg s⁻¹ cm⁻² cm⁻¹,
        ``normalized=False``), or ``Path(out)`` when ``load=False``. With
        ``return_missing=True``, a pair ``(result, missing)`` where ``missing`` lists the
        expected relative paths (``phoenix_filename``) of masked nodes, in C order.

    Warns:
        UserWarning: when nodes are missing (count and first few filenames).

    Raises:
        FileNotFoundError: ``directory`` or the wavelength file does not exist.
        ValueError: no files, a range selecting nothing, a header key missing or
            disagreeing with the filename, a flux length mismatch; names the file and fix.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory; pass the folder holding Z-0.0/")
    found = _scan(directory)
    if not found:
        raise ValueError(
            f"{directory}: no PHOENIX-ACES-AGSS-COND-2011 HiRes files found (expected e.g. "
            f"{phoenix_filename(5800, 4.5, 0.0)}); pass the folder that holds the Z±x.x "
            "folders"
        )
    ranges = {"teff": teff, "logg": logg, "feh": feh}
    keys = list(found)
    for i, name in enumerate(_PARAMS):
        if ranges[name] is None:
            continue
        values = np.unique([k[i] for k in keys])
        try:
            selected = set(values[range_slice(name, values, ranges[name], "")].tolist())
        except ValueError as e:
            raise ValueError(f"{directory}: among the files found, {e}") from None
        keys = [k for k in keys if k[i] in selected]
    axes = {n: np.unique([k[i] for k in keys]) for i, n in enumerate(_PARAMS)}

    wl_path = Path(wavelength_file) if wavelength_file is not None else _find_wavelength_file(
        directory
    )
    wl_full = read_phoenix_wavelength(wl_path)
    pix = _pixels(wl_full, wavelength, wl_path)
    wl = wl_full[pix]

    shape = tuple(a.size for a in axes.values())
    index = {n: {v: j for j, v in enumerate(a)} for n, a in axes.items()}
    node_of = {k: tuple(index[n][v] for n, v in zip(_PARAMS, k)) for k in keys}
    order = sorted(keys, key=node_of.__getitem__)

    if out is not None:
        writer = GridWriter(out, axes, wl, dtype=np.float32, overwrite=overwrite)
        store = writer.write_at
    else:
        flux = np.full((*shape, wl.size), np.nan, dtype=np.float32)
        mask = np.zeros(shape, dtype=bool)

        def store(idx, spectrum):
            flux[idx] = spectrum
            mask[idx] = True

    try:
        for key in tqdm(order, desc="PHOENIX", unit="spectrum", disable=not progress):
            expected = dict(zip(_PARAMS, key))
            spectrum, _ = _read_flux(found[key], expected, wl_full.size, pix)
            store(node_of[key], spectrum)
    except BaseException:
        if out is not None:
            writer.abort()
        raise
    if out is not None:
        mask = writer.mask
        writer.close()

    missing = [
        phoenix_filename(*(axes[n][i] for n, i in zip(_PARAMS, idx)))
        for idx in zip(*np.nonzero(~mask))
    ]
    if missing:
        warnings.warn(
            f"{directory}: {len(missing)} of {mask.size} nodes of the rectilinear grid have no "
            f"file and are masked, e.g. {', '.join(missing[:3])}; download them or narrow "
            "the ranges (pass return_missing=True for the full list)",
            UserWarning,
            stacklevel=2,
        )

    if out is None:
        result = SpectralGrid(axes=axes, wavelength=wl, flux=flux, mask=mask)
    elif load:
        result = SpectralGrid.from_hdf5(out)
    else:
        result = Path(out)
    return (result, missing) if return_missing else result
