r"""The jaxspec-grid HDF5 format (version 1): reading, writing and streaming.

Layout (a contract other tools rely on; see ``docs_grid_format.md``)::

    /                  attrs: format = "jaxspec-grid"   (str)
                              version = 1               (int)
                              param_names = [k str]     (axis order)
                              normalized = bool         (True: continuum-normalised flux)
    /wavelength        (n_pix,) float64, Å, strictly increasing
    /axes/<name>       (n_i,) float64, strictly increasing, one per name in param_names
    /flux              (n_1, ..., n_k, n_pix) float32 or float64,
                       chunks = (1, ..., 1, n_pix): one spectrum per chunk
    /mask  (optional)  (n_1, ..., n_k) bool, True where the node exists;
                       absent means every node exists

Writers here always write ``/mask`` and fill missing nodes' flux with NaN. Files are written
under a temporary name (``<name>.<pid>.partial``, :mod:`jaxspec.io.atomic`) and renamed when
complete, so a crashed import never leaves a file that looks like a finished grid, and an
existing grid stays intact until its replacement is complete. A writer holds the lock
file ``<name>.lock`` (:mod:`jaxspec.io.locking`) while it writes: a second writer of the
same file fails at once, naming the first.

:func:`grid_checksum` / :func:`grid_file_checksum` fingerprint a grid's spectra (SHA-256
over axes, wavelengths, mask and flux); clone stores record it so that resuming a store or
refining against a grid can tell a different grid with the same axes.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path

import h5py
import numpy as np

from jaxspec._axes import check_axes, node_index, select
from jaxspec._checks import check_pixels, check_wavelength, fmt_node
from jaxspec.io.atomic import AtomicFile
from jaxspec.io.locking import WriterLock, open_hdf5

__all__ = [
    "FORMAT",
    "VERSION",
    "GridWriter",
    "grid_checksum",
    "grid_file_checksum",
    "read_grid_fields",
    "write_grid_hdf5",
]

FORMAT = "jaxspec-grid"
VERSION = 1

_REWRITE = "; rewrite the file with SpectralGrid.to_hdf5 or jaxspec.io.GridWriter"


class GridWriter:
    r"""Stream a grid to HDF5 one spectrum at a time (memory: one spectrum).

    Creates the jaxspec-grid layout at once with ``/flux`` filled with NaN and every node
    marked missing; each :meth:`write` stores one node's spectrum and marks it present. On a
    clean exit the file is completed, flushed and renamed from ``<path>.<pid>.partial`` to
    ``path`` (an existing ``path`` stays intact until then); if the ``with`` block raises,
    the partial file is deleted. The writer lock ``<path>.lock`` is held from construction
    to :meth:`close` / :meth:`abort`, so a second writer of ``path`` fails at once with
    :class:`~jaxspec.io.locking.FileInUseError`.

    Args:
        path: output file (``.h5``).
        axes: ordered ``{name: 1-D strictly increasing values}``, as for
            :class:`~jaxspec.grid.SpectralGrid`.
        wavelength: ``(n_pix,)`` Å, strictly increasing; stored as float64.
        dtype: flux dtype on disk, ``float32`` or ``float64`` (default float64).
        normalized: value of the root attribute ``normalized``.
        overwrite: replace an existing ``path`` (default: refuse).
        compression: h5py compression filter for ``/flux`` (e.g. ``"gzip"``), or None.

    Example:
        >>> with GridWriter("grid.h5", {"teff": [5000.0, 5100.0]}, wl) as w:
        ...     w.write(flux_5000, teff=5000)
        ...     w.write(flux_5100, teff=5100)
        >>> grid = SpectralGrid.from_hdf5("grid.h5")
    """

    def __init__(
        self,
        path: str | PathLike,
        axes: Mapping[str, np.ndarray],
        wavelength: np.ndarray,
        *,
        dtype: type | str = np.float64,
        normalized: bool = False,
        overwrite: bool = False,
        compression: str | None = None,
    ):
        self.path = Path(path)
        self.axes = check_axes(axes)
        self.wavelength = check_wavelength(wavelength)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype={self.dtype} is not supported; pass np.float32 or np.float64")
        if self.path.exists() and not overwrite:
            raise FileExistsError(
                f"{self.path}: file exists; pass overwrite=True to replace it or choose "
                "another path"
            )
        self.shape = tuple(a.size for a in self.axes.values())
        self._mask = np.zeros(self.shape, dtype=bool)
        self._file = None
        self._lock = WriterLock(self.path, what="grid file").acquire()
        try:
            self._target = AtomicFile(self.path, overwrite=overwrite)
            self._tmp = self._target.partial
            self._file = open_hdf5(self._tmp, "w")
            self._flux = self._create_layout(normalized, compression)
        except BaseException:
            self.abort()
            raise

    def _create_layout(self, normalized: bool, compression: str | None) -> h5py.Dataset:
        f = self._file
        f.attrs["format"] = FORMAT
        f.attrs["version"] = np.int64(VERSION)
        f.attrs["param_names"] = list(self.axes)
        f.attrs["normalized"] = np.bool_(normalized)
        f.create_dataset("wavelength", data=self.wavelength, dtype=np.float64)
        for name, values in self.axes.items():
            f.create_dataset(f"axes/{name}", data=values, dtype=np.float64)
        n_pix = self.wavelength.size
        return f.create_dataset(
            "flux",
            shape=(*self.shape, n_pix),
            dtype=self.dtype,
            chunks=(*(1 for _ in self.shape), n_pix),
            fillvalue=np.nan,
            compression=compression,
        )

    # -------------------------------------------------------------- writing

    def write(self, flux: np.ndarray, **params: float) -> None:
        """Store the ``(n_pix,)`` spectrum of the node with these exact parameter values
        (e.g. ``teff=5800, logg=4.5, feh=0.0``) and mark it present."""
        self.write_at(node_index(self.axes, params), flux)

    def write_at(self, index: tuple[int, ...], flux: np.ndarray) -> None:
        """Store the ``(n_pix,)`` spectrum of the node at integer ``index`` (one per axis)."""
        self._check_open()
        index = tuple(int(i) for i in index)
        if len(index) != len(self.shape) or not all(
            0 <= i < n for i, n in zip(index, self.shape)
        ):
            raise ValueError(f"index {index} is outside the grid of shape {self.shape}")
        flux = check_pixels(flux, self.wavelength, f"flux for node {self._describe(index)}",
                            "pass one value per wavelength pixel")
        bad = ~np.isfinite(flux)
        if np.any(bad):
            raise ValueError(
                f"flux for node {self._describe(index)} has {int(bad.sum())} NaN/inf "
                f"pixel(s), first at {self.wavelength[int(np.flatnonzero(bad)[0])]:.3f} Å; "
                "clean the spectrum or leave the node unwritten (it is then masked)"
            )
        self._flux[index] = flux.astype(self.dtype, copy=False)
        self._mask[index] = True

    @property
    def mask(self) -> np.ndarray:
        """``(n_1, ..., n_k)`` bool: True at nodes written so far (a copy)."""
        return self._mask.copy()

    # -------------------------------------------------------------- finishing

    def close(self) -> None:
        """Write ``/mask``, close the file and move it to ``path``. Idempotent."""
        if self._file is None:
            return
        try:
            self._file.create_dataset("mask", data=self._mask, dtype=bool)
            self._file.close()
            self._file = None
            self._target.commit()
        except BaseException:
            self.abort()
            raise
        finally:
            self._lock.release()

    def abort(self) -> None:
        """Close and delete the partial file; ``path`` is left untouched. Idempotent."""
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
            target = getattr(self, "_target", None)
            if target is not None:
                target.abort()
        finally:
            self._lock.release()

    def __enter__(self) -> GridWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _check_open(self) -> None:
        if self._file is None:
            raise ValueError(f"{self.path}: the GridWriter is closed; open a new one to write")

    def _describe(self, index: tuple[int, ...]) -> str:
        return fmt_node(tuple(self.axes), [a[i] for a, i in zip(self.axes.values(), index)])


def write_grid_hdf5(
    grid,
    path: str | PathLike,
    *,
    overwrite: bool = False,
    compression: str | None = None,
) -> None:
    """Write ``grid`` to ``path`` in the jaxspec-grid HDF5 layout (version 1).

    ``/flux`` keeps the grid's dtype (float32 or float64), chunked one spectrum per chunk;
    ``/mask`` is always written; missing nodes' flux is written as stored in the grid.

    Args:
        grid: the :class:`~jaxspec.grid.SpectralGrid` to write (its ``axes``,
            ``wavelength``, ``flux``, ``mask`` and ``normalized``).
        path: output file; refused if it exists unless ``overwrite=True``.
        overwrite: replace an existing file.
        compression: h5py compression for ``/flux`` (e.g. ``"gzip"``), or None.
    """
    writer = GridWriter(
        path,
        grid.axes,
        grid.wavelength,
        dtype=grid.flux.dtype,
        normalized=grid.normalized,
        overwrite=overwrite,
        compression=compression,
    )
    try:
        writer._flux[...] = grid.flux
        writer._mask[...] = grid.mask
    except BaseException:
        writer.abort()
        raise
    writer.close()


def read_grid_fields(
    path: str | PathLike,
    *,
    wavelength: tuple[float, float] | None = None,
    **ranges: tuple[float, float],
) -> dict:
    """Read and check the layout of a jaxspec-grid HDF5 file into memory.

    The arrays of a grid, for :meth:`jaxspec.grid.SpectralGrid.from_hdf5` (and
    :func:`jaxspec.io.read_grid_hdf5`), which validate the grid itself. Everything
    selected is loaded into memory (no lazy access). To open part of a grid that does not
    fit, pass inclusive ranges: only that hyperslab of ``/flux`` is read.

    Args:
        path: the ``.h5`` file.
        wavelength: ``(lo, hi)`` Å, inclusive; None reads every pixel.
        **ranges: ``name=(lo, hi)`` inclusive per parameter, e.g. ``teff=(5000, 6000)``.

    Returns:
        ``{"axes": {name: (n_i,) float64}, "wavelength": (n_pix,) float64 Å, "flux":
        (n_1, ..., n_k, n_pix) float32/float64, "mask": (n_1, ..., n_k) bool or None,
        "normalized": bool}``: the arguments of :class:`~jaxspec.grid.SpectralGrid`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not HDF5, wrong ``format``, unsupported ``version``, missing attribute
            or dataset, shape or dtype mismatch, non-increasing axes or wavelength; the
            message names the file, the field and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file; check the path, or create the grid with "
            "SpectralGrid.to_hdf5 or jaxspec.io.read_phoenix_grid(..., out=...)"
        )
    if path.is_dir() or not h5py.is_hdf5(path):
        raise ValueError(
            f"{path}: not an HDF5 file; jaxspec grids are HDF5 files written by "
            "SpectralGrid.to_hdf5 or jaxspec.io.GridWriter (import PHOENIX FITS "
            "directories with jaxspec.io.read_phoenix_grid)"
        )
    with _reading(path) as f:
        return _read_open_grid(f, path, wavelength, ranges)


@contextlib.contextmanager
def _reading(path: Path):
    """The grid file open for reading (lock-free, :func:`open_hdf5`); a file that cannot
    be opened or read, e.g. one cut short by a full disk or a killed copy (it fails only
    while its data are read), is a one-line ValueError naming it."""
    try:
        f = open_hdf5(path, "r")
    except OSError as err:
        raise ValueError(_unreadable(path, err)) from None
    try:
        with f:
            yield f
    except (OSError, RuntimeError, KeyError) as err:
        raise ValueError(_unreadable(path, err)) from None


def _unreadable(path: Path, err: BaseException) -> str:
    """One line for an HDF5 file that cannot be read (truncated or corrupt)."""
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return (
        f"{path}: HDF5 file cannot be read ({detail}); it is probably truncated (an "
        "interrupted copy or write) or corrupt: copy or write it again"
    )


def _read_open_grid(f, path: Path, wavelength, ranges) -> dict:
    """Validate and read the open grid file ``f`` (the body of :func:`read_grid_fields`)."""
    names, normalized = _read_root_attrs(f, path)
    wl = _dataset(f, "wavelength", path)
    wl = check_wavelength(wl[()], label=f"{path}: dataset /wavelength", fix=_REWRITE)
    axes = _read_axes(f, names, path)
    shape = tuple(a.size for a in axes.values())
    flux_ds = _dataset(f, "flux", path)
    if flux_ds.shape != (*shape, wl.size):
        raise ValueError(
            f"{path}: dataset /flux has shape {flux_ds.shape} but /axes give {shape} "
            f"nodes and /wavelength {wl.size} pixels, i.e. {(*shape, wl.size)}{_REWRITE}"
        )
    if flux_ds.dtype not in (np.float32, np.float64):
        raise ValueError(
            f"{path}: dataset /flux has dtype {flux_ds.dtype}; the format allows float32 "
            f"or float64{_REWRITE}"
        )
    mask_ds = None
    if "mask" in f:
        mask_ds = _dataset(f, "mask", path)
        if mask_ds.shape != shape:
            raise ValueError(
                f"{path}: dataset /mask has shape {mask_ds.shape} but /axes give "
                f"{shape} nodes{_REWRITE}"
            )
        if mask_ds.dtype != np.bool_:
            raise ValueError(
                f"{path}: dataset /mask has dtype {mask_ds.dtype}; the format needs bool "
                f"(True where the node exists){_REWRITE}"
            )

    try:
        slices, wsl = select(axes, wl, wavelength, ranges)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    axes = {name: values[sl] for (name, values), sl in zip(axes.items(), slices)}
    flux = flux_ds[(*slices, wsl)]
    mask = None if mask_ds is None else mask_ds[slices]
    return dict(axes=axes, wavelength=wl[wsl], flux=flux, mask=mask, normalized=normalized)


# ------------------------------------------------------------------ checksums

_CHECKSUM_TAG = b"jaxspec-grid-sha256-v1\0"


def _digest(axes: Mapping[str, np.ndarray], wavelength: np.ndarray, mask: np.ndarray,
            blocks: Iterable[np.ndarray]) -> str:
    """SHA-256 over names and float64 values of the axes, the wavelengths, the mask and
    the flux of the present nodes (``blocks``: (m, n_pix) spectra in C order)."""
    h = hashlib.sha256(_CHECKSUM_TAG)
    for name, values in axes.items():
        h.update(str(name).encode() + b"\0")
        h.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
    h.update(b"wavelength\0")
    h.update(np.ascontiguousarray(wavelength, dtype="<f8").tobytes())
    h.update(b"mask\0")
    h.update(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    h.update(b"flux\0")
    for block in blocks:
        h.update(np.ascontiguousarray(block, dtype="<f8").tobytes())
    return h.hexdigest()


def grid_checksum(grid) -> str:
    r"""SHA-256 (hex) fingerprint of a grid's spectra.

    Hashes, in order: each axis name and its node values, the wavelengths, the node mask
    (bytes 0/1, C order), then the flux of every present node in C order; all numbers as
    little-endian float64 (float32 flux is widened exactly, so a grid and the file it
    was written to or read from give the same digest). Missing nodes' flux is ignored.
    Computed block by block (memory: one block of spectra).

    Args:
        grid: the :class:`~jaxspec.grid.SpectralGrid`.

    Returns:
        64 hex characters; equal to :func:`grid_file_checksum` of the grid's HDF5 file.
    """
    flux = np.asarray(grid.flux).reshape(-1, grid.n_pix)
    present = np.flatnonzero(np.asarray(grid.mask).reshape(-1))
    step = max(1, (1 << 24) // max(grid.n_pix * 8, 1))  # ~16 MiB per block
    blocks = (flux[present[i:i + step]] for i in range(0, present.size, step))
    return _digest(grid.axes, grid.wavelength, grid.mask, blocks)


def grid_file_checksum(
    path: str | PathLike,
    wavelength: tuple[float, float] | None = None,
) -> str:
    r"""SHA-256 fingerprint of the spectra in a jaxspec-grid HDF5 file, read streaming.

    The same digest as :func:`grid_checksum` of the grid the file holds (or of
    ``read_grid_hdf5(path, wavelength=wavelength)`` when a range is given), computed
    one row of spectra at a time so grids larger than memory can be checked.

    Args:
        path: the grid file.
        wavelength: ``(lo, hi)`` Å, inclusive: fingerprint only these pixels (to compare
            with a store cloned from a wavelength cut of the grid), or None for all.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable jaxspec grid (the message names the file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such grid file")
    with _reading(path) as f:
        names, _ = _read_root_attrs(f, path)
        wl = _dataset(f, "wavelength", path)[()]
        axes = _read_axes(f, names, path)
        flux = _dataset(f, "flux", path)
        shape = tuple(a.size for a in axes.values())
        mask = (np.asarray(_dataset(f, "mask", path)[()], dtype=bool) if "mask" in f
                else np.ones(shape, dtype=bool))
        if flux.shape != (*shape, wl.size) or mask.shape != shape:
            raise ValueError(
                f"{path}: /flux {flux.shape} or /mask {mask.shape} disagree with /axes "
                f"{shape} and /wavelength ({wl.size},){_REWRITE}"
            )
        if wavelength is None:
            wsl = slice(None)
        else:
            inside = np.flatnonzero((wl >= wavelength[0]) & (wl <= wavelength[1]))
            wsl = slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0)

        def rows():
            # one row of spectra along the last axis per read (chunk-aligned)
            for lead in np.ndindex(*shape[:-1]):
                keep = np.flatnonzero(mask[lead])
                if keep.size:
                    yield flux[(*lead, slice(None), wsl)][keep]

        return _digest(axes, wl[wsl], mask, rows())


# ------------------------------------------------------------------ reading helpers


def _dataset(f: h5py.File, name: str, path: Path) -> h5py.Dataset:
    if name not in f:
        raise ValueError(f"{path}: dataset /{name} is missing{_REWRITE}")
    ds = f[name]
    if not isinstance(ds, h5py.Dataset):
        raise ValueError(f"{path}: /{name} is a group, not a dataset{_REWRITE}")
    return ds


def _read_root_attrs(f: h5py.File, path: Path) -> tuple[list[str], bool]:
    for key in ("format", "version", "param_names", "normalized"):
        if key not in f.attrs:
            raise ValueError(f"{path}: root attribute '{key}' is missing{_REWRITE}")
    fmt = f.attrs["format"]
    fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    if fmt != FORMAT:
        raise ValueError(
            f"{path}: root attribute format={fmt!r}, expected {FORMAT!r}; this is not a "
            f"jaxspec grid{_REWRITE}"
        )
    version = f.attrs["version"]
    if np.ndim(version) != 0 or not np.issubdtype(np.asarray(version).dtype, np.integer):
        raise ValueError(
            f"{path}: root attribute version={version!r} is not an integer{_REWRITE}"
        )
    if int(version) != VERSION:
        raise ValueError(
            f"{path}: root attribute version={int(version)} is not supported; this jaxspec "
            f"reads version {VERSION}; upgrade jaxspec or rewrite the file in version "
            f"{VERSION}"
        )
    raw = np.atleast_1d(f.attrs["param_names"])
    names = [n.decode() if isinstance(n, bytes) else n for n in raw.tolist()]
    if len(names) == 0 or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"{path}: root attribute param_names={names!r} is not a non-empty list of "
            f"strings{_REWRITE}"
        )
    normalized = f.attrs["normalized"]
    if np.ndim(normalized) != 0 or not (
        np.asarray(normalized).dtype == np.bool_
        or (np.issubdtype(np.asarray(normalized).dtype, np.integer) and normalized in (0, 1))
    ):
        raise ValueError(
            f"{path}: root attribute normalized={normalized!r} is not a bool{_REWRITE}"
        )
    return names, bool(normalized)


def _read_axes(f: h5py.File, names: list[str], path: Path) -> dict[str, np.ndarray]:
    if "axes" not in f or not isinstance(f["axes"], h5py.Group):
        raise ValueError(f"{path}: group /axes is missing{_REWRITE}")
    extra = sorted(set(f["axes"]) - set(names))
    if extra:
        raise ValueError(
            f"{path}: /axes holds {extra}, not listed in root attribute param_names="
            f"{names}{_REWRITE}"
        )
    raw = {name: _dataset(f, f"axes/{name}", path)[()] for name in names}
    return check_axes(raw, label=f"{path}: dataset /axes/{{}}", fix=_REWRITE)
