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

from jaxspec._axes import check_axes, node_index, select
from jaxspec._checks import check_wavelength, fmt, fmt_node

__all__ = ["SpectralGrid", "read_grid_hdf5"]


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
        axes = check_axes(axes)
        wavelength = check_wavelength(wavelength)
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
            f"{n}: {a.size} in [{fmt(a[0])}, {fmt(a[-1])}]" for n, a in self.axes.items()
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
        return node_index(self.axes, params)

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
                f"node {fmt_node(self.param_names, [params[n] for n in self.param_names])} "
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
        slices, wsl = select(self.axes, self.wavelength, wavelength, ranges)
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
        from jaxspec.io.grid_hdf5 import read_grid_fields

        fields = read_grid_fields(path, wavelength=wavelength, **ranges)
        try:
            return cls(**fields)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def read_grid_hdf5(
    path: str | PathLike,
    *,
    wavelength: tuple[float, float] | None = None,
    **ranges: tuple[float, float],
) -> SpectralGrid:
    """Read and validate a jaxspec-grid HDF5 file into memory: :meth:`SpectralGrid.from_hdf5`
    as a function (also :func:`jaxspec.io.read_grid_hdf5`).

    Everything selected is loaded into memory (no lazy access). To open part of a grid
    that does not fit, pass inclusive ranges: only that hyperslab of ``/flux`` is read.

    Args:
        path: the ``.h5`` file.
        wavelength: ``(lo, hi)`` Å, inclusive; None reads every pixel.
        **ranges: ``name=(lo, hi)`` inclusive per parameter, e.g. ``teff=(5000, 6000)``.

    Returns:
        A validated :class:`SpectralGrid`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not HDF5, wrong ``format``, unsupported ``version``, missing attribute
            or dataset, shape or dtype mismatch, non-increasing axes or wavelength, NaN
            flux at an existing node; the message names the file, the field and the fix
            (the layout: :mod:`jaxspec.io.grid_hdf5`).
    """
    return SpectralGrid.from_hdf5(path, wavelength=wavelength, **ranges)


# ---------------------------------------------------------------------- validation


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
        f"{fmt_node(names, values)} with {int(pix.sum())} bad pixel(s), first at "
        f"{wavelength[int(np.flatnonzero(pix)[0])]:.3f} Å; clean those spectra or set "
        "mask=False at those nodes"
    )


