"""Training sets for the peer emulators: grid nodes → (labels, spectra), hold-outs, splits.

Host-side numpy only; nothing here is traced.
"""

from __future__ import annotations

import numpy as np

from jaxspec.grid import SpectralGrid


def holdout_mask(grid: SpectralGrid, holdout) -> np.ndarray:
    """``grid.shape`` bool, True at nodes to leave out of training.

    Args:
        grid: the grid.
        holdout: None (none), a bool array of ``grid.shape`` (True = hold out), an
            ``(n, k)`` array of node parameters in ``grid.param_names`` order, or a
            sequence of ``{name: value}`` dicts (one value per parameter).

    Raises:
        ValueError: a hold-out that is not a node of the grid (the message lists the
            nearest values), or an array of the wrong shape.
    """
    names = grid.param_names
    k = len(names)
    held = np.zeros(grid.shape, dtype=bool)
    if holdout is None:
        return held
    arr = holdout if isinstance(holdout, np.ndarray) else None
    if arr is not None and arr.dtype == np.bool_:
        if arr.shape != grid.shape:
            raise ValueError(
                f"holdout is a bool array of shape {arr.shape} but the grid has shape "
                f"{grid.shape}; pass one bool per node (True = hold out) or node parameters"
            )
        return arr.copy()
    if isinstance(holdout, dict):
        holdout = [holdout]
    rows = []
    for item in holdout:
        if isinstance(item, dict):
            if set(item) != set(names):
                raise ValueError(
                    f"holdout entry {item} must give exactly the parameters {names}"
                )
            rows.append([float(item[n]) for n in names])
        else:
            rows.append(np.asarray(item, dtype=np.float64).reshape(-1))
    for row in rows:
        if len(row) != k:
            raise ValueError(
                f"holdout row {list(row)} has {len(row)} values; pass {k} node parameters "
                f"{names} per row"
            )
        held[grid.index(**dict(zip(names, row)))] = True
    return held


def training_set(grid: SpectralGrid, holdout=None) -> tuple[np.ndarray, np.ndarray]:
    """Labels and spectra of the existing, not held-out nodes.

    Args:
        grid: a :class:`~jaxspec.grid.SpectralGrid` (normalised flux is what every peer
            emulator of the seed papers models).
        holdout: nodes to leave out (see :func:`holdout_mask`).

    Returns:
        ``(labels (n, k) float64, flux (n, n_pix))`` in ``grid.param_names`` order; flux
        keeps the grid's dtype.

    Raises:
        ValueError: fewer than 2 training nodes are left.
    """
    if not isinstance(grid, SpectralGrid):
        raise TypeError(
            f"grid is a {type(grid).__name__}; pass a jaxspec.grid.SpectralGrid (e.g. "
            "SpectralGrid.from_hdf5(path))"
        )
    held = holdout_mask(grid, holdout)
    params, flat = grid.node_params()
    keep = ~held.reshape(-1)[flat]
    labels = params[keep]
    flux = grid.flux.reshape(-1, grid.n_pix)[flat[keep]]
    if labels.shape[0] < 2:
        raise ValueError(
            f"only {labels.shape[0]} training node(s) left after the hold-out; hold out fewer "
            "nodes or use a larger grid"
        )
    return labels, flux


def split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(train_index, val_index)`` of ``n`` items, ``round(val_fraction n)``
    (at least 1 when ``val_fraction > 0``, leaving at least 1 for training) in validation."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}; pass a fraction in [0, 1)")
    n_val = 0 if val_fraction == 0 else min(max(1, round(val_fraction * n)), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def min_max(labels: np.ndarray, names) -> tuple[np.ndarray, np.ndarray]:
    """Per-label minimum and maximum of the training labels; every label must vary.

    Raises:
        ValueError: a label takes one value only (its scaling would divide by zero).
    """
    lo, hi = labels.min(axis=0), labels.max(axis=0)
    flat = np.flatnonzero(hi <= lo)
    if flat.size:
        raise ValueError(
            f"parameter {names[flat[0]]} takes the single value {lo[flat[0]]:g} in the "
            "training set; a label that does not vary cannot be learnt: subset the grid "
            "to drop that axis or hold out fewer nodes"
        )
    return lo, hi


def check_positive_int(name: str, value) -> int:
    """``value`` as int, raising a ValueError naming ``name`` unless it is >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}; pass a positive integer")
    return int(value)


def check_widths(name: str, widths) -> tuple[int, ...]:
    """A tuple of positive layer widths, raising a ValueError naming ``name``."""
    try:
        out = tuple(widths)
    except TypeError:
        raise ValueError(f"{name}={widths!r}; pass a sequence of layer widths, e.g. (100, 100)")
    for w in out:
        check_positive_int(f"{name} entry", w)
    return tuple(int(w) for w in out)


def scaled_set(labels: np.ndarray, flux: np.ndarray, names, val_fraction: float,
               seed: int) -> dict:
    """The networks' training arrays: labels scaled to [-0.5, 0.5] by their training
    minimum and maximum, flux centred on the mean spectrum and divided by one scale.

    Returns:
        ``{"lo", "hi"}`` ``(k,)`` label minimum and maximum, ``"x"`` ``(n, k)`` and ``"y"``
        ``(n, n_pix)`` float32 scaled labels and flux, ``"mean"`` ``(n_pix,)`` and
        ``"std"`` (float) of the flux scaling, ``"train"`` and ``"val"`` the index split
        (:func:`split`).
    """
    lo, hi = min_max(labels, names)
    mean = flux.mean(axis=0, dtype=np.float64)
    std = float(np.std(flux - mean)) or 1.0
    train, val = split(len(labels), val_fraction, seed)
    return {"lo": lo, "hi": hi, "x": ((labels - lo) / (hi - lo) - 0.5).astype(np.float32),
            "y": ((flux - mean) / std).astype(np.float32), "mean": mean, "std": std,
            "train": train, "val": val}
