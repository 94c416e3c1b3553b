r"""Posteriors of a batch of fits as one arviz ``InferenceData`` NetCDF file.

``jaxspec infer --posterior POST.nc`` writes the posterior of every fitted star into one
file with a ``star`` dimension (coordinate: the spectrum's path as given; ``checksum``:
SHA-256 of the file, as in the results table), so ``idata.posterior.sel(star=path)`` is
one star's posterior and arviz functions apply per star.

Groups by method:

NUTS (:func:`jaxspec.infer.sample_nuts`)
    ``posterior``: one variable per parameter (and ``noise_scale`` when the noise was
    fitted), dims ``(star, chain, draw)``, physical units (Teff in K); ``sample_stats``:
    ``diverging``, ``n_steps``, ``acceptance_rate``, ``energy``, ``lp``, ``step_size``,
    dims ``(star, chain, draw)``.
MAP (:func:`jaxspec.infer.fit_map`)
    ``laplace``: the Laplace approximation :math:`\mathcal N(\hat\theta, \Sigma)` with
    :math:`\Sigma = H^{-1}` at the MAP :math:`\hat\theta`: ``mean`` (star, parameter),
    ``covariance`` (star, parameter, parameter_j), ``sigma`` = :math:`\sqrt{\Sigma_{jj}}`
    (star, parameter) and ``noise_scale`` (star). Draws for plotting:
    ``rng.multivariate_normal(mean, covariance)``.

Every group's ``attrs`` hold ``jaxspec_settings`` (JSON of the run's options, as in the
results table): a rerun adds to a file only under equal settings.

Durability follows :mod:`jaxspec.io.results_writer`. Each star's posterior is written,
as soon as it is known, to its own small NetCDF file in ``POST.nc.parts/`` (atomically:
:func:`jaxspec.io.atomic.atomic_path`), so a killed run keeps every finished star;
:meth:`PosteriorWriter.finish` merges the stars of an earlier ``POST.nc`` and the parts
into a new ``POST.nc`` (atomically; the old one intact until then) and removes the
parts. ``POST.nc.lock`` (:class:`jaxspec.io.locking.WriterLock`) keeps a second writer
out. NetCDF is written with the ``h5netcdf`` engine (HDF5 through h5py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from os import PathLike
from pathlib import Path

import numpy as np

from jaxspec.io.atomic import atomic_path
from jaxspec.io.locking import WriterLock

__all__ = ["PosteriorWriter", "laplace_payload", "nuts_payload", "read_posterior"]

_ENGINE = "h5netcdf"
_SETTINGS = "jaxspec_settings"


def _az():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def nuts_payload(result) -> dict:
    """What :class:`PosteriorWriter` stores of a :class:`~jaxspec.infer.nuts.NutsResult`:
    ``{"kind": "nuts", "posterior": {site: (C, S)}, "sample_stats": {name: (C, S)}}``
    (plain numpy, cheap to send between processes)."""
    return {"kind": "nuts",
            "posterior": {k: np.asarray(v) for k, v in result.samples.items()},
            "sample_stats": {k: np.asarray(v) for k, v in result.sample_stats.items()}}


def laplace_payload(result, names) -> dict:
    """What :class:`PosteriorWriter` stores of one :class:`~jaxspec.infer.map.MapResult`:
    ``{"kind": "laplace", "names", "mean" (k,), "covariance" (k, k), "sigma" (k,),
    "noise_scale"}``."""
    return {"kind": "laplace", "names": list(names),
            "mean": np.asarray(result.params, dtype=np.float64).reshape(-1),
            "covariance": np.asarray(result.covariance, dtype=np.float64).reshape(
                len(names), len(names)),
            "sigma": np.asarray(result.sigma, dtype=np.float64).reshape(-1),
            "noise_scale": float(np.asarray(result.noise_scale).reshape(-1)[0])}


def _star_dataset(payload: dict, file: str, checksum: str, settings: str) -> dict:
    """``{group: xarray.Dataset}`` of one star (star dimension of length 1)."""
    import xarray as xr

    coords = {"star": [str(file)], "checksum": ("star", [str(checksum)])}
    attrs = {_SETTINGS: settings}
    if payload["kind"] == "nuts":
        out = {}
        for group in ("posterior", "sample_stats"):
            data = {k: (("star", "chain", "draw"), np.asarray(v)[None])
                    for k, v in payload[group].items()}
            c, s = next(iter(payload[group].values())).shape
            out[group] = xr.Dataset(data, coords={**coords, "chain": np.arange(c),
                                                  "draw": np.arange(s)}, attrs=attrs)
        return out
    if payload["kind"] == "laplace":
        names = list(payload["names"])
        ds = xr.Dataset(
            {"mean": (("star", "parameter"), payload["mean"][None]),
             "covariance": (("star", "parameter", "parameter_j"),
                            payload["covariance"][None]),
             "sigma": (("star", "parameter"), payload["sigma"][None]),
             "noise_scale": (("star",), [payload["noise_scale"]])},
            coords={**coords, "parameter": names, "parameter_j": names}, attrs=attrs)
        return {"laplace": ds}
    raise ValueError(f"unknown posterior kind {payload['kind']!r}")


def _load_groups(path: Path) -> dict:
    """``{group: Dataset}`` of a posterior file, read into memory (the file is closed)."""
    import h5py
    import xarray as xr

    try:
        with h5py.File(path, "r") as f:
            groups = [g for g in f if isinstance(f[g], h5py.Group)]
    except OSError as err:
        raise ValueError(f"{path}: not a readable NetCDF/HDF5 file ({err}); pass "
                         "--overwrite to replace it, or another --posterior") from None
    out = {}
    for g in groups:
        with xr.open_dataset(path, group=g, engine=_ENGINE) as ds:
            out[g] = ds.load()
    return out


def read_posterior(path: str | PathLike):
    """The ``InferenceData`` of a posterior file written by :class:`PosteriorWriter`
    (groups and dims in the module docstring), read into memory.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a NetCDF/HDF5 file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such posterior file")
    return _az().InferenceData(**_load_groups(path))


def _part_name(file: str) -> str:
    return hashlib.sha256(str(file).encode()).hexdigest()[:24] + ".nc"


class PosteriorWriter:
    """Durable, resumable writer of one posterior file for a batch (module docstring).

    Args:
        path: the final ``.nc`` file.
        settings: JSON-serialisable options of the run (as given to
            :class:`~jaxspec.io.results_writer.ResultsWriter`).
        overwrite: ignore (and finally replace) an earlier file and its parts.

    Use as a context manager; :meth:`has` says whether a star is already stored,
    :meth:`write` stores one, :meth:`finish` writes the file.

    Raises (from :meth:`open`):
        ValueError: the folder is not writable, or an earlier file or part was written
            with other settings (the message says how to proceed).
        FileInUseError: another process writes the same file.
    """

    def __init__(self, path: str | PathLike, *, settings: dict, overwrite: bool = False):
        from jaxspec.io.results_writer import _plain

        self.path = Path(path)
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.settings = json.dumps(_plain(dict(settings)), sort_keys=True)
        self.overwrite = bool(overwrite)
        self._lock = WriterLock(self.path, what="posterior file",
                                alternative="pass another --posterior")
        self._stored: dict[str, str] = {}  # file -> checksum (earlier file and parts)
        self._earlier: dict | None = None

    def __enter__(self) -> PosteriorWriter:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> PosteriorWriter:
        """Check the folder, take the lock, index an earlier file and its parts."""
        if self.path.suffix.lower() not in (".nc", ".netcdf", ".h5", ".hdf5"):
            raise ValueError(f"{self.path}: a posterior file is NetCDF; name it *.nc")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"{self.path}: cannot create its folder ({err.strerror}); pass "
                             "a writable --posterior") from None
        self._lock.acquire()
        try:
            if self.overwrite:
                shutil.rmtree(self.parts, ignore_errors=True)
            else:
                self._index_earlier()
            self.parts.mkdir(exist_ok=True)
        except BaseException:
            self._lock.release()
            raise
        return self

    def close(self) -> None:
        """Release the lock (parts are kept for a rerun)."""
        self._lock.release()

    def _check(self, found: str | None, source: Path) -> None:
        if found is not None and found != self.settings:
            raise ValueError(
                f"{source}: written by a run with other options (method, emulator or fit "
                f"settings); pass --overwrite to start {self.path} afresh, or another "
                "--posterior")

    def _index_earlier(self) -> None:
        if self.path.exists():
            groups = _load_groups(self.path)
            for ds in groups.values():
                self._check(ds.attrs.get(_SETTINGS), self.path)
            self._earlier = groups
            first = next(iter(groups.values()), None)
            if first is not None:
                for f, c in zip(first["star"].values, first["checksum"].values):
                    self._stored[str(f)] = str(c)
        if self.parts.is_dir():
            for part in sorted(self.parts.glob("*.nc")):
                try:
                    groups = _load_groups(part)
                except ValueError:
                    part.unlink(missing_ok=True)  # a torn part: that star is fitted again
                    continue
                ds = next(iter(groups.values()))
                self._check(ds.attrs.get(_SETTINGS), part)
                self._stored[str(ds["star"].values[0])] = str(ds["checksum"].values[0])

    def has(self, file: str, checksum: str) -> bool:
        """True when the posterior of ``file`` with this ``checksum`` is stored."""
        return self._stored.get(str(file)) == str(checksum)

    def write(self, file: str, checksum: str, payload: dict) -> Path:
        """Store one star's posterior (``payload`` from :func:`nuts_payload` or
        :func:`laplace_payload`) durably in ``POST.nc.parts/``; returns the part's path."""
        self._lock.check()
        groups = _star_dataset(payload, file, checksum, self.settings)
        target = self.parts / _part_name(file)
        with atomic_path(target, overwrite=True) as tmp:
            _az().InferenceData(**groups).to_netcdf(str(tmp), engine=_ENGINE)
        self._stored[str(file)] = str(checksum)
        return target

    def finish(self, keep: dict, order=None) -> Path | None:
        """Write ``POST.nc`` from the earlier file and the parts, remove the parts,
        release the lock.

        Args:
            keep: ``{file: checksum}`` of the stars to include (those of the final
                results table that were fitted): a stored posterior of another checksum
                (a changed file) or of a file not in ``keep`` is left out.
            order: files in the order of the ``star`` dimension (others first).

        Returns:
            The path, or None when no star has a posterior (nothing is written).
        """
        import xarray as xr

        by_star: dict[str, dict] = {}
        if self._earlier:
            first = next(iter(self._earlier.values()))
            for j, f in enumerate(first["star"].values):
                by_star[str(f)] = {g: ds.isel(star=[j]) for g, ds in self._earlier.items()}
        for part in sorted(self.parts.glob("*.nc")) if self.parts.is_dir() else []:
            groups = _load_groups(part)
            by_star[str(next(iter(groups.values()))["star"].values[0])] = groups
        chosen = [f for f in by_star
                  if f in keep and str(by_star[f][next(iter(by_star[f]))]["checksum"].values[0])
                  == str(keep[f])]
        if order is not None:
            position = {str(f): i for i, f in enumerate(order)}
            chosen.sort(key=lambda f: (f in position, position.get(f, 0)))
        self._lock.check()
        if not chosen:
            if self.overwrite:  # this run replaces the earlier file, and has no star
                self.path.unlink(missing_ok=True)
            shutil.rmtree(self.parts, ignore_errors=True)
            self._lock.release()
            return None
        merged = {}
        for g in by_star[chosen[0]]:
            sets = [by_star[f][g] for f in chosen if g in by_star[f]]
            names = sorted({v for ds in sets for v in ds.data_vars})
            filled = []
            for ds in sets:  # a variable missing for some stars (noise_scale) becomes NaN
                for v in names:
                    if v not in ds.data_vars:
                        ref = next(s[v] for s in sets if v in s.data_vars)
                        shape = (1,) + ref.shape[1:]
                        ds = ds.assign({v: (ref.dims, np.full(shape, np.nan))})
                filled.append(ds)
            merged[g] = xr.concat(filled, dim="star")
            merged[g].attrs = {_SETTINGS: self.settings}
        with atomic_path(self.path, overwrite=True) as tmp:
            _az().InferenceData(**merged).to_netcdf(str(tmp), engine=_ENGINE)
        shutil.rmtree(self.parts, ignore_errors=True)
        self._lock.release()
        return self.path
