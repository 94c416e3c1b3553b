"""The search box of an inference: the emulator's bounds, optionally with a window
``guess ± window`` on one parameter (Teff by default, as in blase3D sect. 4.2).

Methods work in unit coordinates ``u = (theta - lower) / (upper - lower)`` of the box
(and MAP in ``z = logit(u)``), so that one step size suits every parameter.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# Relative distance to a face under which a value counts as on it.
EDGE_TOL = 1e-3
#: The parameter a ``guess`` applies to unless ``window_param`` says otherwise.
DEFAULT_WINDOW_PARAM = "teff"
#: Default half width of a Teff window, K (blase3D sect. 4.2: ± 500 K around the truth).
DEFAULT_TEFF_WINDOW = 500.0


def resolve_window(guess=None, window=None, window_param: str = DEFAULT_WINDOW_PARAM,
                   teff_guess=None, teff_window=None):
    """``(guess, window, param)`` from an inference's window keywords.

    ``teff_guess`` and ``teff_window`` are the older names of ``guess`` and ``window``
    for a Teff window (kept as aliases); a window without a guess is ignored, a guess
    without a window gets :data:`DEFAULT_TEFF_WINDOW` for Teff and is an error for any
    other parameter (its unit is not known here).

    Raises:
        ValueError: a keyword and its alias both given, an alias with ``window_param``
            other than ``"teff"``, or a non-Teff guess without a window.
    """
    for name, new, old in (("guess", guess, teff_guess), ("window", window, teff_window)):
        if old is None:
            continue
        if new is not None:
            raise ValueError(f"pass {name}= or its alias teff_{name}=, not both")
        if window_param != "teff":
            raise ValueError(
                f"teff_{name}= is the alias of {name}= for a Teff window, but "
                f"window_param={window_param!r}; pass {name}= instead"
            )
    guess = teff_guess if guess is None else guess
    window = teff_window if window is None else window
    if guess is not None and window is None:
        if window_param != "teff":
            raise ValueError(
                f"a {window_param} guess needs window= (its half width, in the unit of "
                f"{window_param}); only Teff has a default ({DEFAULT_TEFF_WINDOW:g} K)"
            )
        window = DEFAULT_TEFF_WINDOW
    return guess, (DEFAULT_TEFF_WINDOW if window is None else window), window_param


def search_box(emulator, guess=None, window: float = DEFAULT_TEFF_WINDOW,
               param: str = DEFAULT_WINDOW_PARAM):
    """Lower and upper limits of the search, per spectrum.

    Args:
        emulator: any :class:`~jaxspec.emulator.Emulator`.
        guess: None (search the whole box), a number, or ``(n,)`` numbers (one per
            spectrum): the search of ``param`` is limited to ``guess ± window`` within
            the emulator's bounds (blase3D sect. 4.2 uses Teff ± 500 K around the truth).
        window: half width of the window, same unit as ``param`` (K for Teff).
        param: the parameter the window applies to (any of ``emulator.param_names``).

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
    if guess is None:
        return lower, upper, windowed
    if param not in names:
        raise ValueError(
            f"a {param} guess was given but the emulator's parameters are {names}; drop the "
            f"guess, pass window_param= one of them, or use an emulator with a {param} "
            "parameter"
        )
    if not window > 0:
        raise ValueError(f"window={window} for {param}; pass a positive half width (e.g. "
                         "500 K for teff)")
    j = names.index(param)
    guess = np.asarray(guess, dtype=np.float64)
    bad = ~np.isfinite(guess) | (guess + window < lower[j]) | (guess - window > upper[j])
    if np.any(bad):
        g = np.atleast_1d(guess)[np.flatnonzero(np.atleast_1d(bad))[0]]
        raise ValueError(
            f"{param} guess {g:g} ± {window:g} lies outside the emulator's range "
            f"{lower[j]:g}–{upper[j]:g}; pass a guess inside it"
        )
    shape = guess.shape + (len(names),)
    lo = np.broadcast_to(lower, shape).copy()
    hi = np.broadcast_to(upper, shape).copy()
    lo[..., j] = np.maximum(lower[j], guess - window)
    hi[..., j] = np.minimum(upper[j], guess + window)
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
