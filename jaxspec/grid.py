r"""Rectilinear grids of precomputed spectra.

A :class:`SpectralGrid` holds spectra :math:`S(\lambda; \theta)` computed on the nodes of a
rectilinear parameter grid :math:`\theta \in \theta_1 \times \dots \times \theta_k` (for
PHOENIX: ``teff`` × ``logg`` × ``feh``), all on one wavelength grid. It is the first stage of
the data flow ``grid -> clones -> manifold -> emulator -> inference``: the blase3D paper
(Shankar, Gully-Santiago & Morley), Sect. 2.1, clones a rectilinear PHOENIX subset of 1,314
spectra.

Grids are host-side data (numpy arrays, often gigabytes), not JAX models: nothing here is
traced, jitted or differentiated. Reading and writing files lives in :mod:`jaxspec.io`;
:meth:`SpectralGrid.to_hdf5` and :meth:`SpectralGrid.from_hdf5` only forward to it.

Conventions
-----------
``axes``
    Ordered mapping ``name -> 1-D float64 array``, strictly increasing; the order of the
    mapping is the order of the parameters and of the leading axes of ``flux``.
``wavelength``
    ``(n_pix,)`` float64, Å, strictly increasing (vacuum for PHOENIX).
``flux``
    ``(n_1, ..., n_k, n_pix)`` float32 or float64, in the grid's native units (PHOENIX:
    erg s⁻¹ cm⁻² cm⁻¹) or dimensionless when ``normalized``.
``mask``
    ``(n_1, ..., n_k)`` bool, True where the node exists. Missing nodes hold NaN flux.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike

import numpy as np

__all__ = ["SpectralGrid"]

_RESERVED_NAMES = frozenset({"wavelength"})


def _fmt(value: float) -> str:
    return f"{float(value):g}"


def _fmt_node(names: tuple[str, ...], values) -> str:
    return ", ".join(f"{n}={_fmt(v)}" for n, v in zip(names, values))


def _nearest_values(axis: np.ndarray, value: float, k: int = 3) -> str:
    nearest = np.sort(axis[np.argsort(np.abs(axis - value), kind="stable")[:k]])
    return ", ".join(_fmt(v) for v in nearest)


def _node_index(axes: dict[str, np.ndarray], params: Mapping[str, float]) -> tuple[int, ...]:
    """Index of the node with exactly ``params`` (one value per axis, to a relative 1e-9)."""
    missing = [n for n in axes if n not in params]
    unknown = [n for n in params if n not in axes]
    if missing or unknown:
        raise ValueError(
            f"got parameters {sorted(params)} but the grid has {list(axes)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unknown {unknown})" if unknown else "")
            + "; pass exactly one value per grid parameter"
        )
    idx = []
    for name, axis in axes.items():
        value = float(params[name])
        hits = np.flatnonzero(np.abs(axis - value) <= 1e-9 * max(1.0, abs(value)))
        if hits.size == 0:
            raise ValueError(
                f"{name}={_fmt(value)} is not a node of the grid; nearest available "
                f"{name} values: {_nearest_values(axis, value)}"
            )
        idx.append(int(hits[0]))
    return tuple(idx)


def _check_range(arg: str, rng) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in rng)
    except (TypeError, ValueError):
        raise ValueError(
            f"{arg}={rng!r} is not a (lo, hi) pair of numbers; pass e.g. {arg}=(5000, 6000)"
        ) from None
    if not lo <= hi:
        raise ValueError(f"{arg}=({_fmt(lo)}, {_fmt(hi)}) has lo > hi or NaN; pass lo <= hi")
    return lo, hi


@dataclass(frozen=True, eq=False, repr=False, init=False)
class SpectralGrid:
    r"""Spectra on a rectilinear grid of stellar parameters.

    A frozen container of numpy arrays, validated once at construction. It is not an
    ``eqx.Module`` on purpose: grids live on the host, can exceed device memory, and are
    never traced; later stages (clones, manifolds) read from them.

    Args:
        axes: ordered mapping ``{name: values}``; each ``values`` is 1-D, non-empty,
            finite and strictly increasing (e.g. ``{"teff": [...] K, "logg": [...] dex,
            "feh": [...] dex}``). Names must be Python identifiers other than
            ``"wavelength"``. Any number k >= 1 of parameters.
        wavelength: ``(n_pix,)`` wavelength, Å, strictly increasing, finite; stored as
            float64 (0.001 Å precision at 10,000 Å needs more than float32).
        flux: ``(n_1, ..., n_k, n_pix)`` fluxes; float32 stays float32, other dtypes become
            float64. Must be finite at every existing node.
        mask: ``(n_1, ..., n_k)`` bool, True where the node exists, or None (every node
            exists). Stored as an all-True array when None. Flux at missing nodes is
            ignored (conventionally NaN).
        normalized: True when ``flux`` is continuum-normalised (dimensionless), e.g. by
            :func:`jaxspec.preprocess.preprocess_grid`.

    Raises:
        ValueError: naming the argument, what is wrong and how to fix it.

    Example:
        >>> wl = np.linspace(8000.0, 8010.0, 501)
        >>> grid = SpectralGrid(axes={"teff": [5000.0, 5100.0], "logg": [4.0, 4.5, 5.0]},
        ...                     wavelength=wl, flux=np.ones((2, 3, wl.size)))
        >>> grid.spectrum(teff=5100, logg=4.5).shape
        (501,)
    """

    axes: dict[str, np.ndarray]
    wavelength: np.ndarray
    flux: np.ndarray
    mask: np.ndarray
    normalized: bool

    def __init__(
        self,
        axes: Mapping[str, np.ndarray],
        wavelength: np.ndarray,
        flux: np.ndarray,
        mask: np.ndarray | None = None,
        normalized: bool = False,
    ):
        axes = _validate_axes(axes)
        wavelength = _validate_wavelength(wavelength)
        shape = tuple(a.size for a in axes.values())
        flux = np.asarray(flux)
        # float32 (of either byte order, e.g. from FITS) stays float32; all else float64.
        keep32 = flux.dtype.kind == "f" and flux.dtype.itemsize == 4
        flux = flux.astype(np.float32 if keep32 else np.float64, copy=False)
        expected = (*shape, wavelength.size)
        if flux.shape != expected:
            names = " x ".join(f"{n}={a.size}" for n, a in axes.items())
            raise ValueError(
                f"flux has shape {flux.shape} but axes ({names}) and wavelength "
                f"(n_pix={wavelength.size}) give {expected}; pass flux with one spectrum "
                "per node, parameter axes first and wavelength last"
            )
        if mask is None:
            mask = np.ones(shape, dtype=bool)
        else:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_:
                raise ValueError(
                    f"mask has dtype {mask.dtype}; pass a bool array, True where the node "
                    "exists"
                )
            if mask.shape != shape:
                raise ValueError(
                    f"mask has shape {mask.shape} but axes give {shape}; pass one bool per "
                    "node (parameter axes only, no wavelength axis)"
                )
        _check_finite(axes, wavelength, flux, mask)
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "wavelength", wavelength)
        object.__setattr__(self, "flux", flux)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "normalized", bool(normalized))

    # ------------------------------------------------------------------ properties

    @property
    def param_names(self) -> tuple[str, ...]:
        """Parameter names in axis order."""
        return tuple(self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        """Axis lengths ``(n_1, ..., n_k)``."""
        return tuple(a.size for a in self.axes.values())

    @property
    def n_pix(self) -> int:
        """Number of wavelength pixels."""
        return int(self.wavelength.size)

    @property
    def n_nodes(self) -> int:
        """Number of existing (unmasked) nodes; ``math.prod(shape)`` counts missing ones too."""
        return int(np.count_nonzero(self.mask))

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        """``{name: (lowest, highest)}`` node value of each parameter axis."""
        return {n: (float(a[0]), float(a[-1])) for n, a in self.axes.items()}

    def __repr__(self) -> str:
        axes = ", ".join(
            f"{n}: {a.size} in [{_fmt(a[0])}, {_fmt(a[-1])}]" for n, a in self.axes.items()
        )
        return (
            f"SpectralGrid({axes}; {self.n_pix} px in [{self.wavelength[0]:.3f}, "
            f"{self.wavelength[-1]:.3f}] Å; {self.n_nodes}/{math.prod(self.shape)} nodes; "
            f"flux {self.flux.dtype}; normalized={self.normalized})"
        )

    # ------------------------------------------------------------------ access

    def index(self, **params: float) -> tuple[int, ...]:
        """Integer index ``(i_1, ..., i_k)`` of the node with exactly these parameters.

        Args:
            **params: one value per parameter, e.g. ``teff=5800, logg=4.5, feh=0.0``.

        Raises:
            ValueError: a parameter is missing or unknown, or a value is not on its axis
                (the message lists the nearest available values).
        """
        return _node_index(self.axes, params)

    def spectrum(self, **params: float) -> np.ndarray:
        """Flux at one existing grid node.

        Args:
            **params: one value per parameter, exactly on the axes, e.g.
                ``grid.spectrum(teff=5800, logg=4.5, feh=0.0)``.

        Returns:
            ``(n_pix,)`` flux (a view into ``flux``), on ``wavelength``.

        Raises:
            ValueError: a value is not on its axis (lists the nearest values), or the node
                is missing (masked).
        """
        idx = self.index(**params)
        if not self.mask[idx]:
            raise ValueError(
                f"node {_fmt_node(self.param_names, [params[n] for n in self.param_names])} "
                "is missing from the grid (mask is False there); pick an existing node from "
                "grid.node_params()"
            )
        return self.flux[idx]

    def node_params(self, include_missing: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Parameter values of the grid nodes, in C (row-major) order.

        Args:
            include_missing: also list masked nodes (default: existing nodes only).

        Returns:
            ``(params, flat_index)``: ``params`` is ``(n_nodes, k)`` float64, one row per
            node and one column per parameter in ``param_names`` order; ``flat_index`` is
            ``(n_nodes,)`` int64 into ``flux.reshape(-1, n_pix)``, so that
            ``flux.reshape(-1, n_pix)[flat_index[j]]`` is the spectrum at ``params[j]``.
        """
        mesh = np.meshgrid(*self.axes.values(), indexing="ij")
        params = np.stack([m.reshape(-1) for m in mesh], axis=-1)
        flat_index = np.arange(params.shape[0], dtype=np.int64)
        if not include_missing:
            keep = self.mask.reshape(-1)
            params, flat_index = params[keep], flat_index[keep]
        return params, flat_index

    def subset(
        self, wavelength: tuple[float, float] | None = None, **ranges: tuple[float, float]
    ) -> SpectralGrid:
        """A new grid restricted to inclusive ranges of wavelength and parameters.

        Args:
            wavelength: ``(lo, hi)``, Å, inclusive; None keeps every pixel.
            **ranges: ``name=(lo, hi)`` per parameter, inclusive; omitted parameters keep
                their whole axis.

        Returns:
            A :class:`SpectralGrid` holding copies of the selected arrays (the parent can be
            freed).

        Raises:
            ValueError: an unknown parameter, a malformed range, or a range that selects
                nothing (the message gives the available span).
        """
        slices, wsl = _select(self.axes, self.wavelength, wavelength, ranges)
        axes = {name: axis[sl] for (name, axis), sl in zip(self.axes.items(), slices)}
        return SpectralGrid(
            axes=axes,
            wavelength=self.wavelength[wsl].copy(),
            flux=self.flux[(*slices, wsl)].copy(),
            mask=self.mask[slices].copy(),
            normalized=self.normalized,
        )

    # ------------------------------------------------------------------ files

    def to_hdf5(
        self, path: str | PathLike, *, overwrite: bool = False, compression: str | None = None
    ) -> None:
        """Write the grid to ``path`` in the jaxspec-grid HDF5 layout (version 1).

        See :func:`jaxspec.io.write_grid_hdf5` for the layout and arguments.
        """
        from jaxspec.io.grid_hdf5 import write_grid_hdf5

        write_grid_hdf5(self, path, overwrite=overwrite, compression=compression)

    @classmethod
    def from_hdf5(
        cls,
        path: str | PathLike,
        *,
        wavelength: tuple[float, float] | None = None,
        **ranges: tuple[float, float],
    ) -> SpectralGrid:
        """Read a grid written in the jaxspec-grid HDF5 layout, validating it.

        Loads the selected part into memory; ``wavelength=(lo, hi)`` and ``name=(lo, hi)``
        ranges read only that hyperslab from disk, so a grid bigger than memory can be
        opened piecewise. See :func:`jaxspec.io.read_grid_hdf5`.
        """
        from jaxspec.io.grid_hdf5 import read_grid_hdf5

        return read_grid_hdf5(path, wavelength=wavelength, **ranges)


# ---------------------------------------------------------------------- validation helpers


def _validate_axes(
    axes: Mapping[str, np.ndarray], label: str = "axes[{!r}]", fix: str = ""
) -> dict[str, np.ndarray]:
    """Check and convert axes; ``label.format(name)`` names an axis in messages, ``fix``
    replaces the default advice (readers pass "rewrite the file ...")."""
    if not isinstance(axes, Mapping):
        raise ValueError(
            f"axes is a {type(axes).__name__}; pass a dict {{name: 1-D array}} in parameter "
            "order, e.g. {'teff': [...], 'logg': [...]}"
        )
    if len(axes) == 0:
        raise ValueError("axes is empty; a grid needs at least one parameter axis")
    out = {}
    for name, values in axes.items():
        field = label.format(name)
        if not isinstance(name, str) or not name.isidentifier() or name in _RESERVED_NAMES:
            raise ValueError(
                f"{field}: {name!r} is not a valid parameter name; use a Python identifier "
                f"other than 'wavelength' (e.g. 'teff', 'logg', 'feh'){fix}"
            )
        try:
            a = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{field} is not numeric; pass a 1-D array of floats{fix}") from None
        if a.ndim != 1:
            raise ValueError(f"{field} has shape {a.shape}; pass a 1-D array of values{fix}")
        if a.size == 0:
            raise ValueError(f"{field} is empty; every axis needs at least one value{fix}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{field} contains NaN or inf; pass finite values{fix}")
        steps = np.diff(a)
        if np.any(steps <= 0):
            j = int(np.flatnonzero(steps <= 0)[0])
            raise ValueError(
                f"{field} is not strictly increasing ({_fmt(a[j])} then {_fmt(a[j + 1])} at "
                f"positions {j}, {j + 1}); "
                + (fix.lstrip("; ") or "sort the values, drop duplicates and reorder flux")
            )
        out[name] = a
    return out


def _validate_wavelength(
    wavelength: np.ndarray, label: str = "wavelength", fix: str = ""
) -> np.ndarray:
    """Check and convert a wavelength array to float64; ``label`` names it in messages."""
    try:
        wl = np.asarray(wavelength, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{label} is not numeric; pass a 1-D float array in Å{fix}") from None
    if wl.ndim != 1:
        raise ValueError(f"{label} has shape {wl.shape}; pass a 1-D array in Å{fix}")
    if wl.size == 0:
        raise ValueError(f"{label} is empty; pass at least one pixel{fix}")
    bad = ~np.isfinite(wl)
    if np.any(bad):
        raise ValueError(
            f"{label} has {int(bad.sum())} NaN/inf values (first at pixel "
            f"{int(np.flatnonzero(bad)[0])}); pass finite wavelengths in Å{fix}"
        )
    steps = np.diff(wl)
    if np.any(steps <= 0):
        j = int(np.flatnonzero(steps <= 0)[0])
        raise ValueError(
            f"{label} is not strictly increasing ({wl[j]:.4f} Å then {wl[j + 1]:.4f} Å at "
            f"pixels {j}, {j + 1}); "
            + (fix.lstrip("; ") or "sort it (and flux with it) and drop duplicate pixels")
        )
    return wl


def _check_finite(axes, wavelength, flux, mask) -> None:
    names = tuple(axes)
    if flux.size == 0:
        return
    bad_pix = ~np.isfinite(flux)
    bad_nodes = bad_pix.any(axis=-1) & mask
    if not np.any(bad_nodes):
        return
    first = tuple(int(i[0]) for i in np.nonzero(bad_nodes))
    values = [axes[n][i] for n, i in zip(names, first)]
    pix = bad_pix[first]
    raise ValueError(
        f"flux is NaN or inf at {int(bad_nodes.sum())} existing node(s); the first is "
        f"{_fmt_node(names, values)} with {int(pix.sum())} bad pixel(s), first at "
        f"{wavelength[int(np.flatnonzero(pix)[0])]:.3f} Å; clean those spectra or set "
        "mask=False at those nodes"
    )


def _range_slice(name: str, values: np.ndarray, rng, unit: str) -> slice:
    lo, hi = _check_range(name, rng)
    # Sorted values: an inclusive range is one contiguous slice.
    start = int(np.searchsorted(values, lo, side="left"))
    stop = int(np.searchsorted(values, hi, side="right"))
    if stop <= start:
        raise ValueError(
            f"{name}=({_fmt(lo)}, {_fmt(hi)}) selects nothing; available {name} values "
            f"span {_fmt(values[0])} to {_fmt(values[-1])}{unit}; widen or move the range"
        )
    return slice(start, stop)


def _select(
    axes: dict[str, np.ndarray],
    wavelength: np.ndarray,
    wavelength_range: tuple[float, float] | None,
    ranges: Mapping[str, tuple[float, float]],
) -> tuple[tuple[slice, ...], slice]:
    """Slices of each axis and of ``wavelength`` for inclusive ``(lo, hi)`` ranges."""
    unknown = [n for n in ranges if n not in axes]
    if unknown:
        raise ValueError(
            f"got ranges for unknown parameters {unknown}; the grid has {list(axes)} and "
            "wavelength"
        )
    slices = tuple(
        _range_slice(name, axis, ranges[name], "") if name in ranges else slice(None)
        for name, axis in axes.items()
    )
    wsl = slice(None)
    if wavelength_range is not None:
        wsl = _range_slice("wavelength", wavelength, wavelength_range, " Å")
    return slices, wsl
