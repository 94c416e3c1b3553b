"""The search box of an inference: the emulator's bounds, optionally with a Teff window.

Methods work in unit coordinates ``u = (theta - lower) / (upper - lower)`` of the box
(and MAP in ``z = logit(u)``), so that one step size suits every parameter.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# Relative distance to a face under which a value counts as on it.
EDGE_TOL = 1e-3


def search_box(emulator, teff_guess=None, teff_window: float = 500.0, param: str = "teff"):
    """Lower and upper limits of the search, per spectrum.

    Args:
        emulator: any :class:`~jaxspec.emulator.Emulator`.
        teff_guess: None (search the whole box), a number, or ``(n,)`` numbers (one per
            spectrum): the search of ``param`` is limited to ``guess ± teff_window``
            within the emulator's bounds (blase3D sect. 4.2 uses ± 500 K around the truth).
        teff_window: half width of the window, same unit as ``param`` (K).
        param: the parameter the window applies to.

    Returns:
        ``(lower, upper, windowed)``: ``lower`` and ``upper`` ``(n_params,)`` or
        ``(n, n_params)`` float64; ``windowed`` bool ``(n_params,)``, True for the
        parameter whose limits come from a window rather than from the emulator.

    Raises:
        ValueError: the emulator has no ``param``, or a guess whose window misses the
            emulator's range.
    """
    bounds = np.asarray(emulator.bounds, dtype=np.float64)
    names = tuple(emulator.param_names)
    lower, upper = bounds[:, 0].copy(), bounds[:, 1].copy()
    windowed = np.zeros(len(names), dtype=bool)
    if teff_guess is None:
        return lower, upper, windowed
    if param not in names:
        raise ValueError(
            f"a {param} guess was given but the emulator's parameters are {names}; drop the "
            "guess or use an emulator with a teff parameter"
        )
    if not teff_window > 0:
        raise ValueError(f"teff_window={teff_window}; pass a positive half width (e.g. 500 K)")
    j = names.index(param)
    guess = np.asarray(teff_guess, dtype=np.float64)
    bad = ~np.isfinite(guess) | (guess + teff_window < lower[j]) | (guess - teff_window > upper[j])
    if np.any(bad):
        g = np.atleast_1d(guess)[np.flatnonzero(np.atleast_1d(bad))[0]]
        raise ValueError(
            f"{param} guess {g:g} ± {teff_window:g} lies outside the emulator's range "
            f"{lower[j]:g}–{upper[j]:g}; pass a guess inside it"
        )
    shape = guess.shape + (len(names),)
    lo = np.broadcast_to(lower, shape).copy()
    hi = np.broadcast_to(upper, shape).copy()
    lo[..., j] = np.maximum(lower[j], guess - teff_window)
    hi[..., j] = np.minimum(upper[j], guess + teff_window)
    windowed[j] = True
    return lo, hi, windowed


def to_physical(u, lower, upper):
    return lower + (upper - lower) * u


def to_unit(theta, lower, upper):
    return (theta - lower) / (upper - lower)


def window_edge(u, lower, upper, bounds_lower, bounds_upper):
    """True where a parameter sits on a face of the box that is not the emulator's face
    (i.e. a window face: the answer may lie outside the window)."""
    at_lo = (u < EDGE_TOL) & (lower > bounds_lower + 1e-9 * jnp.abs(bounds_lower) + 1e-12)
    at_hi = (u > 1 - EDGE_TOL) & (upper < bounds_upper - 1e-9 * jnp.abs(bounds_upper) - 1e-12)
    return jnp.any(at_lo | at_hi, axis=-1)


def box_edge(u):
    """True where any parameter sits on a face of the box."""
    return jnp.any((u < EDGE_TOL) | (u > 1 - EDGE_TOL), axis=-1)
