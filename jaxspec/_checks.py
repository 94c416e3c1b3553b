"""Input checks shared by every stage: wavelengths, fluxes, uncertainties, ranges.

Each check is written once here and raises a ``ValueError`` a person can act on: it names
the field (``label``, e.g. ``"wavelength"`` or ``"grid.h5: dataset /wavelength"``), says
what is wrong with numbers (the first bad pixel, its wavelength) and how to fix it (the
default advice, or ``fix``, which readers of files set to e.g. "; rewrite the file ...").

A leaf module: numpy only, imported by the grid, the clones, the synthesis, the emulators,
the readers and inference alike.
"""

from __future__ import annotations

import numpy as np

#: Where the 95th flux percentile of a continuum-normalised spectrum lies, and the lowest
#: median it may have (:func:`check_continuum_normalised`).
CONTINUUM_P95 = (0.75, 1.25)
CONTINUUM_MEDIAN_MIN = 0.2

__all__ = [
    "CONTINUUM_MEDIAN_MIN",
    "CONTINUUM_P95",
    "check_continuum_normalised",
    "check_increasing",
    "check_pixels",
    "check_range",
    "check_uncertainty",
    "check_wavelength",
    "fmt",
    "fmt_node",
    "nonfinite",
    "sigma_from",
]


def fmt(value: float) -> str:
    """A parameter value as short text (``5800``, ``4.5``, ``-0.5``)."""
    return f"{float(value):g}"


def fmt_node(names: tuple[str, ...], values) -> str:
    """A grid node as text, e.g. ``"teff=5800, logg=4.5, feh=0"``."""
    return ", ".join(f"{n}={fmt(v)}" for n, v in zip(names, values))


def check_increasing(
    values,
    label: str,
    fix: str = "",
    *,
    unit: str = "",
    places: int | None = None,
    at: str = "position",
    sort_advice: str = "sort the values and drop duplicates",
    min_size: int = 1,
) -> np.ndarray:
    """A 1-D, finite, strictly increasing float64 array (wavelengths, grid axes).

    Args:
        values: the array to check.
        label: names it in messages (``"wavelength"``, ``"axes['teff']"``,
            ``"grid.h5: dataset /wavelength"``).
        fix: advice appended to every message, replacing ``sort_advice`` for an unsorted
            array (readers of files pass "; rewrite the file with ...").
        unit: unit shown after values (``" Å"``).
        places: decimals of values in messages; None: the shortest form (``5000``).
        at: what an index counts (``"pixel"``, ``"position"``).
        sort_advice: how to fix an array that is not strictly increasing.
        min_size: fewest values accepted.

    Raises:
        ValueError: not numeric, not 1-D, too short, NaN/inf (first index given), or not
            strictly increasing (the first offending pair given).
    """
    show = fmt if places is None else (lambda v: f"{v:.{places}f}")
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{label} is not numeric; pass a 1-D float array{unit}{fix}") from None
    if a.ndim != 1:
        raise ValueError(f"{label} has shape {a.shape}; pass a 1-D array{unit}{fix}")
    if a.size == 0:
        raise ValueError(f"{label} is empty; pass at least {min_size} value(s){fix}")
    if a.size < min_size:
        raise ValueError(f"{label} has {a.size} {at}(s); pass at least {min_size}{fix}")
    bad = ~np.isfinite(a)
    if np.any(bad):
        raise ValueError(
            f"{label} has {int(bad.sum())} NaN/inf values (first at {at} "
            f"{int(np.flatnonzero(bad)[0])}); pass finite values{unit} (remove or fill the "
            f"non-finite {at}s){fix}"
        )
    steps = np.diff(a)
    if np.any(steps <= 0):
        j = int(np.flatnonzero(steps <= 0)[0])
        raise ValueError(
            f"{label} is not strictly increasing ({show(a[j])}{unit} then "
            f"{show(a[j + 1])}{unit} at {at}s {j}, {j + 1}); "
            + (fix.lstrip("; ") or sort_advice)
        )
    return a


def check_wavelength(
    wavelength, label: str = "wavelength", fix: str = "", min_pixels: int = 1
) -> np.ndarray:
    """A wavelength array checked and converted to float64 (:func:`check_increasing`).

    Args:
        wavelength: ``(n_pix,)`` Å; must be numeric, 1-D, at least ``min_pixels`` long,
            finite and strictly increasing.
        label: names the array in messages (e.g. ``"LineEmulator: wavelength"``).
        fix: advice appended to every message, replacing the default advice for an
            unsorted array (readers pass "; rewrite the file with ...").
        min_pixels: fewest pixels accepted.

    Returns:
        ``(n_pix,)`` float64, Å (0.001 Å precision at 10,000 Å needs more than float32).

    Raises:
        ValueError: naming ``label``, the first bad pixel and the fix, e.g.
            ``"wavelength is not strictly increasing (8019.9000 Å then 8019.9000 Å at
            pixels 199, 200); sort it (and flux with it) and drop duplicate pixels"``.
    """
    return check_increasing(
        wavelength, label, fix, unit=" Å", places=4, at="pixel", min_size=min_pixels,
        sort_advice="sort it (and flux with it) and drop duplicate pixels",
    )


def check_pixels(values, wavelength: np.ndarray, label: str = "flux",
                 advice: str = "pass one flux value per wavelength pixel") -> np.ndarray:
    """``values`` as float64 with one value per wavelength pixel.

    Args:
        values: ``(n_pix,)`` per-pixel values (flux, uncertainty, ...).
        wavelength: ``(n_pix,)`` the pixels' wavelengths, Å (already checked).
        label: names ``values`` in the message (``"flux"``, ``"star.fits: uncertainty"``).
        advice: what to pass instead.

    Raises:
        ValueError: ``"flux has shape (10,) but wavelength has (5001,); pass ..."``.
    """
    a = np.asarray(values, dtype=np.float64)
    if a.shape != wavelength.shape:
        raise ValueError(
            f"{label} has shape {a.shape} but wavelength has {wavelength.shape}; {advice}"
        )
    return a


def nonfinite(values, wavelength: np.ndarray, where=None) -> str | None:
    """``"N NaN/inf pixel(s) (first at λ Å)"`` for the non-finite ``values`` (only those
    where ``where`` is True, when given), or None when there are none; callers raise or
    warn with it (``f"flux has {note}; ..."``)."""
    bad = ~np.isfinite(values)
    if where is not None:
        bad &= where
    if not np.any(bad):
        return None
    return (f"{int(bad.sum())} NaN/inf pixel(s) (first at "
            f"{wavelength[int(np.flatnonzero(bad)[0])]:.3f} Å)")


def check_uncertainty(sigma, wavelength: np.ndarray, used, label: str = "uncertainty",
                      pixels: str = "pixel(s)", fix: str = "pass no uncertainty to fit a "
                      "noise scale") -> None:
    """Raise unless the 1σ uncertainties ``sigma`` are > 0 at every ``used`` pixel.

    Args:
        sigma: ``(n_pix,)`` 1σ, flux units (already of the right shape).
        wavelength: ``(n_pix,)`` Å, for the message.
        used: ``(n_pix,)`` bool, the pixels that enter the fit.
        label: names ``sigma`` in the message.
        pixels: how the message counts them (``"used pixel(s)"``).
        fix: the last of the remedies offered.

    Raises:
        ValueError: ``"uncertainty is zero or negative at 2 pixel(s) (first -0.1 at
            8500.000 Å); uncertainties are 1σ and must be > 0: fix them, mask those
            pixels, or pass no uncertainty to fit a noise scale"``.
    """
    bad = used & (sigma <= 0)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{label} is zero or negative at {int(bad.sum())} {pixels} (first {sigma[j]:g} "
            f"at {wavelength[j]:.3f} Å); uncertainties are 1σ and must be > 0: fix them, "
            f"mask those pixels, or {fix}"
        )


def sigma_from(kind: str, values) -> tuple[np.ndarray, np.ndarray]:
    """1σ uncertainties from a 1σ, variance or inverse-variance array.

    Args:
        kind: ``"sigma"`` (σ), ``"var"`` (σ², e.g. astropy ``VarianceUncertainty``) or
            ``"ivar"`` (1/σ², e.g. SDSS ``IVAR``, ``InverseVariance``).
        values: ``(n,)`` the array, flux units to the power of its kind.

    Returns:
        ``(sigma, usable)``: ``(n,)`` float64 σ (1.0 where unusable) and ``(n,)`` bool,
        False where a variance or inverse variance is ≤ 0 or not finite (ivar ≤ 0 is
        SDSS's "no data") or a σ is not finite.
    """
    a = np.asarray(values, dtype=np.float64)
    if kind == "sigma":
        return a, np.isfinite(a)
    ok = np.isfinite(a) & (a > 0)
    safe = np.where(ok, a, 1.0)
    return (1.0 / np.sqrt(safe) if kind == "ivar" else np.sqrt(safe)), ok


def check_range(arg: str, rng) -> tuple[float, float]:
    """An inclusive ``(lo, hi)`` range of numbers with ``lo <= hi`` (a wavelength or
    parameter box), as floats; the message names ``arg`` and shows a valid call."""
    try:
        lo, hi = (float(v) for v in rng)
    except (TypeError, ValueError):
        raise ValueError(
            f"{arg}={rng!r} is not a (lo, hi) pair of numbers; pass e.g. {arg}=(5000, 6000)"
        ) from None
    if not lo <= hi:
        raise ValueError(f"{arg}=({fmt(lo)}, {fmt(hi)}) has lo > hi or NaN; pass lo <= hi")
    return lo, hi


def check_continuum_normalised(flux, label: str, how: str, scale=(1.0, 1.0)) -> None:
    """Raise unless ``flux`` looks continuum-normalised (the continuum near 1).

    The rule: the 95th percentile of ``flux`` lies in ``CONTINUUM_P95`` = [0.75, 1.25]
    (lines only lower the flux) and its median exceeds ``CONTINUUM_MEDIAN_MIN`` = 0.2. A
    flux-calibrated spectrum (1e-15 erg/s/cm²/Å) or counts (1e4) fail it by orders of
    magnitude.

    Args:
        flux: the used pixels' flux (finite).
        label: names the spectrum in the message.
        how: how to normalise it, e.g. ``"with jaxspec.preprocess.continuum_normalize"``.
        scale: ``(low, high)`` multiplier range of a fitted continuum: the limits widen to
            ``[0.75 low, 1.25 high]`` and the median's to ``0.2 low``.

    Raises:
        ValueError: ``"star.fits: flux does not look continuum-normalised (median 3e-15,
            95th percentile 4e-15; ...); normalise it first ..."``.
    """
    median = float(np.median(flux))
    upper = float(np.percentile(flux, 95))
    lo = CONTINUUM_P95[0] * min(scale)
    hi = CONTINUUM_P95[1] * max(scale)
    if not (lo <= upper <= hi and median > CONTINUUM_MEDIAN_MIN * min(scale)):
        raise ValueError(
            f"{label}: flux does not look continuum-normalised (median {median:.4g}, 95th "
            f"percentile {upper:.4g}; the continuum should be near 1, 95th percentile in "
            f"[{lo:g}, {hi:g}]); normalise it first {how}"
        )
