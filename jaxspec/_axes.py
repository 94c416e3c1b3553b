"""Parameter axes of a rectilinear grid: validation, node lookup, range selection.

Shared by :class:`~jaxspec.grid.SpectralGrid` and the grid file readers and writers
(:mod:`jaxspec.io.grid_hdf5`, :mod:`jaxspec.io.phoenix`) and the clone store, so that a
grid in memory and a grid on disk are checked and indexed by the same code. ``axes`` is an
ordered mapping ``name -> (n_i,) float64``, strictly increasing (the order is the order of
the parameters and of the leading axes of the flux). A leaf module: numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jaxspec._checks import check_increasing, check_range, fmt

__all__ = ["RESERVED_NAMES", "check_axes", "nearest_values", "node_index", "range_slice", "select"]

#: Names a parameter axis may not take (they name other datasets of a grid file).
RESERVED_NAMES = frozenset({"wavelength"})


def check_axes(
    axes: Mapping[str, np.ndarray], label: str = "axes[{!r}]", fix: str = ""
) -> dict[str, np.ndarray]:
    """Axes checked and converted to ``{name: (n_i,) float64}``, in the given order.

    Each axis must be named by a Python identifier other than ``"wavelength"`` and be 1-D,
    non-empty, finite and strictly increasing. ``label.format(name)`` names an axis in
    messages; ``fix`` replaces the default advice (readers pass "; rewrite the file ...").

    Raises:
        ValueError: naming the axis, what is wrong and how to fix it.
    """
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
        if not isinstance(name, str) or not name.isidentifier() or name in RESERVED_NAMES:
            raise ValueError(
                f"{field}: {name!r} is not a valid parameter name; use a Python identifier "
                f"other than 'wavelength' (e.g. 'teff', 'logg', 'feh'){fix}"
            )
        out[name] = check_increasing(
            values, field, fix, sort_advice="sort the values, drop duplicates and reorder flux"
        )
    return out


def nearest_values(axis: np.ndarray, value: float, k: int = 3) -> str:
    """The ``k`` values of ``axis`` nearest ``value``, sorted, as text for messages."""
    nearest = np.sort(axis[np.argsort(np.abs(axis - value), kind="stable")[:k]])
    return ", ".join(fmt(v) for v in nearest)




def node_index(axes: dict[str, np.ndarray], params: Mapping[str, float]) -> tuple[int, ...]:
    """Index ``(i_1, ..., i_k)`` of the node with exactly ``params`` (one value per axis,
    to a relative 1e-9).

    Raises:
        ValueError: a parameter is missing or unknown, or a value is not on its axis (the
            message lists the nearest available values).
    """
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
                f"{name}={fmt(value)} is not a node of the grid; nearest available "
                f"{name} values: {nearest_values(axis, value)}"
            )
        idx.append(int(hits[0]))
    return tuple(idx)




def range_slice(name: str, values: np.ndarray, rng, unit: str) -> slice:
    """The slice of sorted ``values`` inside the inclusive range ``rng = (lo, hi)``;
    ``name`` and ``unit`` (e.g. ``" Å"``) label the message when it selects nothing."""
    lo, hi = check_range(name, rng)
    # Sorted values: an inclusive range is one contiguous slice.
    start = int(np.searchsorted(values, lo, side="left"))
    stop = int(np.searchsorted(values, hi, side="right"))
    if stop <= start:
        raise ValueError(
            f"{name}=({fmt(lo)}, {fmt(hi)}) selects nothing; available {name} values "
            f"span {fmt(values[0])} to {fmt(values[-1])}{unit}; widen or move the range"
        )
    return slice(start, stop)




def select(
    axes: dict[str, np.ndarray],
    wavelength: np.ndarray,
    wavelength_range: tuple[float, float] | None,
    ranges: Mapping[str, tuple[float, float]],
) -> tuple[tuple[slice, ...], slice]:
    """Slices of each axis and of ``wavelength`` for inclusive ``(lo, hi)`` ranges
    (``ranges``: ``{name: (lo, hi)}``; an omitted axis, or ``wavelength_range=None``,
    keeps all of it).

    Raises:
        ValueError: an unknown parameter, a malformed range or one selecting nothing.
    """
    unknown = [n for n in ranges if n not in axes]
    if unknown:
        raise ValueError(
            f"got ranges for unknown parameters {unknown}; the grid has {list(axes)} and "
            "wavelength"
        )
    slices = tuple(
        range_slice(name, axis, ranges[name], "") if name in ranges else slice(None)
        for name, axis in axes.items()
    )
    wsl = slice(None)
    if wavelength_range is not None:
        wsl = range_slice("wavelength", wavelength, wavelength_range, " Å")
    return slices, wsl
