"""Line detection and initial line parameters of a clone (blase3D Sect. 2.3, steps 1-3).

:func:`_detect` finds lines (peaks, shoulders, broad companions) in a depth curve,
:func:`_initial` turns them into :class:`_Lines` (initial parameters and the optimisation
box). See :mod:`jaxspec.clone` for the method.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.signal import find_peaks, peak_widths

from jaxspec._checks import (
    check_continuum_normalised,
    check_pixels,
    check_wavelength,
    fmt_node,
    nonfinite,
)
from jaxspec.clone.settings import CloneSettings
from jaxspec.profiles import FWHM_PER_SIGMA

_EQUAL_SPLIT = (1.0 + 2.69269 + 2.42843 + 4.47163 + 0.07842 + 1.0) ** 0.2
_MAX_INIT_DEPTH = 0.95
_MIN_WIDTH = 1e-4  # Å, lower bound of σ and γ (profiles are tested down to it)
_BLEND_RATIO = 0.4  # smallest local/half-prominence width ratio read as a blend

# ---------------------------------------------------------------------- input checks


def _check_input(wavelength, flux, mask=None, *, what="spectrum"):
    """Validate a spectrum; return (wavelength float64, flux with NaN→1, weight, n_bad)."""
    wl = check_wavelength(wavelength, min_pixels=8)
    f = check_pixels(flux, wl)
    good = np.isfinite(f)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != wl.shape:
            raise ValueError(
                f"mask has shape {mask.shape} but wavelength has {wl.shape}; pass one bool "
                "per pixel, True where the flux is valid"
            )
        good &= mask
    n_bad = int(np.sum(~good))
    if n_bad == wl.size:
        raise ValueError(f"{what}: every flux pixel is NaN or masked; nothing to clone")
    note = nonfinite(f, wl) if n_bad else None
    if note:
        warnings.warn(f"{what}: flux has {note}; they are left out of the loss", stacklevel=3)
    check_continuum_normalised(
        f[good], what, "with jaxspec.preprocess.continuum_normalize (or preprocess_grid for "
        "a grid)")
    f = np.where(good, f, 1.0)
    return wl, f, good.astype(np.float64), n_bad


def _batch_spectra(grid, indices):
    """Validated (flux, good, n_bad) of grid nodes, stacked."""
    flux, good, n_bad = [], [], []
    names = grid.param_names
    for idx in indices:
        where = f"node {fmt_node(names, [grid.axes[n][i] for n, i in zip(names, idx)])}"
        _, f, g, bad = _check_input(grid.wavelength, grid.flux[idx], what=where)
        flux.append(f)
        good.append(g)
        n_bad.append(bad)
    return np.stack(flux), np.stack(good), n_bad


# ---------------------------------------------------------------------- initialisation


def _v0_equal_split(fwhm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """σ, γ with equal Gaussian/Lorentzian FWHM giving total FWHM ``fwhm``, and V(0).

    Host-side numpy (eager JAX would compile every primitive for every new length)."""
    f_each = fwhm / _EQUAL_SPLIT
    sigma = f_each / FWHM_PER_SIGMA
    gamma = 0.5 * f_each
    ratio = 1.0 / _EQUAL_SPLIT  # f_L / f
    eta = ratio * (1.36603 + ratio * (-0.47719 + ratio * 0.11116))
    gsig = fwhm / FWHM_PER_SIGMA
    v0 = eta / (np.pi * 0.5 * fwhm) + (1.0 - eta) / (gsig * math.sqrt(2.0 * math.pi))
    return sigma, gamma, v0


def _fwhm_eta(ln_s, ln_g) -> tuple[np.ndarray, np.ndarray]:
    """Total FWHM f (Å) and Lorentz fraction η of the pseudo-Voigt for ln σ, ln γ
    (numpy; Ida et al. 2000 eqs. 3-4, blase3D eq. 2)."""
    fg = FWHM_PER_SIGMA * np.exp(ln_s)
    fl = 2.0 * np.exp(ln_g)
    f = (fg**5 + 2.69269 * fg**4 * fl + 2.42843 * fg**3 * fl**2 + 4.47163 * fg**2 * fl**3
         + 0.07842 * fg * fl**4 + fl**5) ** 0.2
    q = fl / f
    return f, q * (1.36603 + q * (-0.47719 + q * 0.11116))


def _peak_value(ln_s, ln_g) -> np.ndarray:
    """V(0) of the pseudo-Voigt (1/Å) for ln σ, ln γ (numpy)."""
    f, eta = _fwhm_eta(ln_s, ln_g)
    gsig = f / FWHM_PER_SIGMA
    return eta / (np.pi * 0.5 * f) + (1.0 - eta) / (gsig * math.sqrt(2.0 * math.pi))


def _parabola_vertex(y: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Sub-pixel position (pixel index) of the maximum of y near pixels k."""
    k = np.clip(k, 1, y.size - 2)
    ym, y0, yp = y[k - 1], y[k], y[k + 1]
    curv = ym - 2.0 * y0 + yp
    delta = np.where(curv < 0, 0.5 * (ym - yp) / np.where(curv < 0, curv, -1.0), 0.0)
    return k + np.clip(delta, -0.5, 0.5)


def _detect(wl, depth_curve, prominence, good):
    """Lines in ``depth_curve`` (1 − flux, or 1 − flux/model for a residual).

    Three kinds of lines:

    * *peaks*: local maxima of the depth with at least ``prominence``
      (``scipy.signal.find_peaks``, the blase detection);
    * *shoulders*: maxima of the curvature κ = −Δ²(depth) (second difference in pixel
      index) at least 3 pixels from every peak, with depth ≥ prominence and κ ≥ 2.8
      prominence / w², w the median FWHM (pixels) of the peaks (half the peak curvature
      of a Gaussian line of depth ``prominence`` and that FWHM). Curvature separates
      blended lines about twice as close as depth minima do;
    * *broad companions*: a peak whose local width (below) is under 0.4 × its width at
      half prominence sits on a broad feature. If no other peak of at least a quarter of
      its prominence lies within that half-prominence interval, the broad feature is a
      line of its own: it is added at the interval's midpoint with the half-prominence
      width and the depth at the narrow line's curvature stops; the narrow line keeps the
      rest of the depth (1 − D = (1 − D_broad)(1 − D_narrow)). When the midpoint has the
      narrow peak's identifier (0.01 Å), the peak is taken as one broad line instead.

    FWHM: the width at half prominence (``scipy.signal.peak_widths``) or the *local
    width*, 1.47 times the distance between the curvature zeros (or valleys) around the
    peak (for the equal-split pseudo-Voigt FWHM = 1.47 × the inflection-point distance;
    blending does not widen it), whichever is smaller. Shoulders take their local width.
    Floored at one pixel. *Extent*: the width of a peak at half its depth below the
    continuum (at most down to its bases), an upper bound for broad lines whose
    half-prominence or local widths are cut short by overlapping wings.

    Returns (peak pixel, centre Å, depth, FWHM Å, extent Å), peaks/shoulders first.
    """
    n = wl.size
    index = np.arange(n)
    peaks, props = find_peaks(depth_curve, prominence=prominence)
    if peaks.size == 0:
        empty = np.zeros(0)
        return peaks, empty, empty, empty, empty
    prominence_data = (props["prominences"], props["left_bases"], props["right_bases"])
    width_px, _, left_ips, right_ips = peak_widths(
        depth_curve, peaks, rel_height=0.5, prominence_data=prominence_data)
    # Width at half the depth below the continuum; rel_height is relative to the
    # prominence, and 1 reaches the bases.
    absolute = np.clip(0.5 * depth_curve[peaks] / props["prominences"], 0.5, 1.0)
    extent_px = np.array([
        peak_widths(depth_curve, peaks[i : i + 1], rel_height=float(r),
                    prominence_data=tuple(d[i : i + 1] for d in prominence_data))[0][0]
        for i, r in enumerate(absolute)
    ]) if np.any(absolute > 0.5) else width_px
    kappa = np.zeros(n)
    kappa[1:-1] = 2.0 * depth_curve[1:-1] - depth_curve[:-2] - depth_curve[2:]
    typical = max(float(np.median(width_px)), 2.0)
    cand, _ = find_peaks(kappa, height=2.8 * prominence / typical**2, distance=3)
    cand = cand[depth_curve[cand] >= prominence]
    near = np.searchsorted(peaks, cand)
    gap = np.minimum(np.abs(cand - peaks[np.clip(near - 1, 0, peaks.size - 1)]),
                     np.abs(cand - peaks[np.clip(near, 0, peaks.size - 1)]))
    shoulders = cand[gap >= 3]
    # Local widths: distance between the curvature zeros/valleys around each line.
    stops = np.flatnonzero(
        (kappa <= 0) | ((kappa <= np.roll(kappa, 1)) & (kappa <= np.roll(kappa, -1)))
    )
    stops = np.r_[0, stops, n - 1]
    every = np.r_[peaks, shoulders]
    right = stops[np.clip(np.searchsorted(stops, every, side="right"), 0, stops.size - 1)]
    left = stops[np.clip(np.searchsorted(stops, every, side="left") - 1, 0, stops.size - 1)]
    local = 1.47 * (right - left).astype(np.float64)
    width = np.r_[np.minimum(local[: peaks.size], width_px), local[peaks.size :]]
    extent = np.r_[np.maximum(extent_px, width_px), local[peaks.size :]]
    height = depth_curve[every].astype(np.float64)
    pos = np.r_[_parabola_vertex(depth_curve, peaks), _parabola_vertex(kappa, shoulders)]
    # Broad companions of narrow peaks on broad features without a peak of their own.
    prom = props["prominences"]
    narrow = np.flatnonzero(local[: peaks.size] < _BLEND_RATIO * width_px)
    comp_pos, comp_width, comp_depth, comp_pix = [], [], [], []
    for j in narrow:
        inside = (peaks > left_ips[j]) & (peaks < right_ips[j]) & (prom >= 0.25 * prom[j])
        inside[j] = False
        if inside.any():
            continue
        base = float(np.clip(0.5 * (depth_curve[left[j]] + depth_curve[right[j]]),
                             0.0, 0.95))
        if base < prominence:
            continue
        mid = 0.5 * (left_ips[j] + right_ips[j])
        same = np.round(np.interp([mid, pos[j]], index, wl), 2)
        if same[0] == same[1]:  # centred on the narrow peak: one broad line instead
            width[j] = width_px[j]
            continue
        comp_pos.append(mid)
        comp_width.append(width_px[j])
        comp_depth.append(base)
        comp_pix.append(round(mid))
        height[j] = 1.0 - (1.0 - height[j]) / (1.0 - base)
    if comp_pos:
        every = np.r_[every, np.asarray(comp_pix, dtype=np.int64)]
        pos = np.r_[pos, comp_pos]
        width = np.r_[width, comp_width]
        extent = np.r_[extent, comp_width]
        height = np.r_[height, comp_depth]
    # A line next to a masked pixel is not trustworthy (its shape is unknown).
    ok = (good[every] > 0) & (good[np.maximum(every - 1, 0)] > 0)
    ok &= good[np.minimum(every + 1, n - 1)] > 0
    every, pos, width, extent, height = (v[ok] for v in (every, pos, width, extent, height))
    center = np.interp(pos, index, wl)
    spacing = np.interp(pos, index, np.gradient(wl))
    fwhm = np.maximum(width, 1.0) * spacing
    return every, center, height, fwhm, np.maximum(extent, 1.0) * spacing


def _unique_ids(center: np.ndarray, taken: np.ndarray | None = None) -> np.ndarray:
    """Mask of lines whose 0.01 Å identifier is new (not in ``taken``, first of equals)."""
    ids = np.round(center, 2)
    keep = np.ones(ids.size, dtype=bool)
    if taken is not None and taken.size:
        keep &= ~np.isin(ids, np.round(taken, 2))
    _, first = np.unique(ids, return_index=True)
    once = np.zeros(ids.size, dtype=bool)
    once[first] = True
    return keep & once


# ---------------------------------------------------------------------- batched core


_FIELDS = ("mu0", "u", "ln_a", "ln_s", "ln_g", "a0", "s0", "g0",
           "lo_a", "hi_a", "lo_s", "hi_s", "lo_g", "hi_g", "hi_f", "peak", "ident")


@dataclass
class _Lines:
    """Lines of one spectrum during cloning (numpy, in detection order).

    ``u, ln_a, ln_s, ln_g`` are the current values (μ' = μ0 + max_shift tanh u);
    ``a0, s0, g0`` the initial ln a (after deblending), ln σ and ln γ; ``lo_*``/``hi_*``
    the optimisation box; ``peak`` the pixel of the detected peak; ``ident`` the line's
    identity across a grid (continuation cloning; −1 when it has none yet).
    """

    mu0: np.ndarray
    u: np.ndarray
    ln_a: np.ndarray
    ln_s: np.ndarray
    ln_g: np.ndarray
    a0: np.ndarray
    s0: np.ndarray
    g0: np.ndarray
    lo_a: np.ndarray
    hi_a: np.ndarray
    lo_s: np.ndarray
    hi_s: np.ndarray
    lo_g: np.ndarray
    hi_g: np.ndarray
    hi_f: np.ndarray
    peak: np.ndarray
    ident: np.ndarray

    @property
    def n(self) -> int:
        return self.mu0.size

    def concat(self, other: _Lines) -> _Lines:
        return _Lines(**{k: np.concatenate([getattr(self, k), getattr(other, k)])
                         for k in _FIELDS})

    def select(self, keep) -> _Lines:
        """The lines selected by a boolean mask or index array (copies)."""
        return _Lines(**{k: np.array(getattr(self, k)[keep]) for k in _FIELDS})

    def copy(self) -> _Lines:
        return _Lines(**{k: np.array(getattr(self, k)) for k in _FIELDS})


_EDGE_SMOOTH = 51  # pixels of the median filter that hides narrow lines on an edge wing
_EDGE_MAX_PIXELS = 4000  # longest stretch of an edge wing fitted


def _edge_lines(wl, depth_curve, good, prominence):
    """Lines centred outside the band (or on its edge pixel) whose wing enters it.

    find_peaks cannot see them: the depth is largest at the edge pixel. Where the depth
    at an edge, median-filtered over ``_EDGE_SMOOTH`` px (narrow lines on the wing
    removed), is at least ``prominence`` and falls away from the edge, a Lorentzian
    D(x) = A / (1 + ((x + c) / h)²) is fitted to the filtered wing (x: Å from the edge
    into the band), giving a line centred c Å outside the band with FWHM 2h and peak
    depth A. Returns (peak pixel, centre Å, depth, FWHM Å, extent Å) like :func:`_detect`.
    """
    from scipy.ndimage import median_filter
    from scipy.optimize import curve_fit

    out = [[] for _ in range(5)]
    n = wl.size
    for side in (0, 1):
        sl = slice(0, min(_EDGE_MAX_PIXELS, n)) if side == 0 else slice(
            max(n - _EDGE_MAX_PIXELS, 0), n)
        d = np.where(good[sl] > 0, depth_curve[sl], 0.0)
        w = wl[sl]
        if side == 1:
            d, w = d[::-1], w[::-1]
        if d.size < 3 * _EDGE_SMOOTH:
            continue
        smooth = median_filter(d, size=_EDGE_SMOOTH, mode="nearest")
        edge = float(smooth[_EDGE_SMOOTH // 2])
        if edge < prominence or smooth[_EDGE_SMOOTH] > edge:
            continue
        # the wing ends where it falls below 5 % of the edge depth or where the next
        # feature starts to rise (first upturn of the filtered depth)
        below = np.flatnonzero(smooth < max(prominence, 0.05 * edge))
        stop = int(below[0]) if below.size else smooth.size
        coarse = smooth[_EDGE_SMOOTH // 2 :: 10]
        rise = np.flatnonzero(np.diff(coarse) > 0)
        if rise.size:
            stop = min(stop, _EDGE_SMOOTH // 2 + 10 * int(rise[0]))
        if stop < 8:
            continue
        x = np.abs(w[:stop] - w[0])
        step = float(abs(w[1] - w[0]))
        try:
            (a, c, h), _ = curve_fit(
                lambda x, a, c, h: a / (1.0 + ((x + c) / h) ** 2), x, smooth[:stop],
                p0=(min(2 * edge, 0.9), max(x[-1] / 4, step), max(x[-1] / 4, step)),
                bounds=([prominence, 0.0, step], [0.95, 3 * x[-1] + step, 3 * x[-1] + step]),
                maxfev=2000)
        except (RuntimeError, ValueError):
            continue
        center = float(w[0] - c) if side == 0 else float(w[0] + c)
        out[0].append(0 if side == 0 else n - 1)
        out[1].append(center)
        out[2].append(float(a))
        out[3].append(2.0 * float(h))
        out[4].append(2.0 * float(h))
    return tuple(np.asarray(v, dtype=np.int64 if k == 0 else np.float64)
                 for k, v in enumerate(out))


def _initial(wl, depth_curve, good, settings: CloneSettings, taken=None) -> _Lines:
    """Lines detected in ``depth_curve`` (peaks, shoulders, broad companions and lines
    centred outside the band, :func:`_edge_lines`) with their initial parameters and
    box."""
    found = _detect(wl, depth_curve, settings.prominence, good)
    edge = _edge_lines(wl, depth_curve, good, settings.prominence)
    peak, mu0, height, fwhm, extent = (np.r_[a, b] for a, b in zip(found, edge))
    keep = _unique_ids(mu0, taken)
    peak, mu0, height, fwhm, extent = (v[keep] for v in (peak, mu0, height, fwhm, extent))
    sigma, gamma, v0 = _v0_equal_split(fwhm)
    depth = np.clip(height, 1e-6, _MAX_INIT_DEPTH)
    ln_a = np.log(depth / v0)
    ln_s, ln_g = np.log(sigma), np.log(gamma)
    floor = np.full_like(ln_s, math.log(_MIN_WIDTH))
    x = _Lines(
        mu0=mu0, u=np.zeros_like(mu0), ln_a=ln_a, ln_s=ln_s, ln_g=ln_g,
        a0=ln_a.copy(), s0=ln_s.copy(), g0=ln_g.copy(),
        lo_a=ln_a - 30.0, hi_a=np.full_like(ln_a, -np.inf),
        lo_s=floor, hi_s=np.empty_like(ln_s), lo_g=floor, hi_g=np.empty_like(ln_g),
        hi_f=np.log(extent), peak=peak, ident=np.full(mu0.size, -1, np.int64),
    )
    # Box: total FWHM up to e^width_margin f0, or the extent of broad lines.
    _grow_box(x, slice(None), np.log(fwhm), settings)
    return x


def _grow_box(x: _Lines, sel, ln_f, settings: CloneSettings, credit: bool = True) -> None:
    """Widen in place the box of lines ``x[sel]`` (FWHM ``e^ln_f`` Å, amplitude
    ``x.ln_a``) to what a line detected at those values gets, never narrowing it: total
    FWHM up to e^width_margin f (``hi_f``; ``hi_s``, ``hi_g`` follow, as σ and γ alone
    reach f at FWHM_PER_SIGMA σ and 2 γ), ln a up to amplitude_margin above its value
    plus, with ``credit``, what the extra width beyond e^width_margin f needs at the same
    depth (a detected line whose extent is wider than that)."""
    s = settings
    x.hi_f[sel] = np.maximum(x.hi_f[sel], ln_f + s.width_margin)
    x.hi_s[sel] = x.hi_f[sel] - math.log(FWHM_PER_SIGMA)
    x.hi_g[sel] = x.hi_f[sel] - math.log(2.0)
    extra = (x.hi_f[sel] - ln_f - s.width_margin) if credit else 0.0
    x.hi_a[sel] = np.maximum(x.hi_a[sel], x.ln_a[sel] + s.amplitude_margin + extra)


# ---------------------------------------------------------------------- redundant lines

#: Two lines are one feature when their centres are closer than half the broader one's
#: FWHM and the narrower one is at least this fraction of the broader one's FWHM (a
#: narrow line on a broad one, Ca II on a Paschen line, is a line of its own).
_MERGE_WIDTH_RATIO = 0.25
_MERGE_REACH = 0.5  # centre distance, in FWHM of the broader line
_BROAD_PIXELS = 25.0  # a fitted line this many pixels wide or more is broad
# A cold clone merges a family only where the merged line changes the model by at most
# this fraction of ``prominence`` (RMS over its centre ± _CHANGE_REACH FWHM). On the
# real T4700 clone (residual RMS, default settings, before the exceptions below and
# fresh boxes): every family merged 7.0e-4; 0.2 3.3e-4; 0.6 3.6e-4; 2 4.6e-4.
_MERGE_CHANGE_COLD = 0.2
_CHANGE_REACH = 4.0
# ... except a family with a line at least this many times the median FWHM of the
# spectrum's lines: a broad line's shape (Stark-broadened Paschen lines, which are not
# pseudo-Voigt) is refined by side lines that no single line reproduces; they are merged.
_BROAD_MEDIANS = 30.0
# ... or a concentric family: every member centred within this fraction of the narrower
# FWHM of the strongest line's centre (one line's shape refined by another, which the
# refit after the merge redoes; a blend's lines are further apart than that).
_CONCENTRIC = 0.25


def _centers(x: _Lines, max_shift: float) -> np.ndarray:
    """Fitted centres μ' = μ0 + max_shift tanh u (Å) of lines ``x``."""
    return x.mu0 + max_shift * np.tanh(x.u)


def _broad_fwhm(wl: np.ndarray, x: _Lines | None = None) -> float:
    """FWHM (Å) from which a fitted line counts as broad: ``_BROAD_PIXELS`` median
    pixels of ``wl``; with the lines ``x`` of a spectrum, at least ``_BROAD_MEDIANS``
    times their median FWHM (a cold clone: on the real T4700 clone 5 Å, which its metal
    blends stay below and the Paschen lines of an A star exceed)."""
    broad = _BROAD_PIXELS * float(np.median(np.diff(wl)))
    if x is not None and x.n:
        broad = max(broad, _BROAD_MEDIANS * float(np.median(_fwhm_eta(x.ln_s, x.ln_g)[0])))
    return broad


def _merge_redundant(x: _Lines, settings: CloneSettings, wl: np.ndarray,
                     checked: bool = True) -> tuple[_Lines, int]:
    r"""Merge families of lines that describe one feature: centres within
    ``_MERGE_REACH`` FWHM of the broader line and widths within a factor
    1/``_MERGE_WIDTH_RATIO`` of each other (:func:`_families`, :func:`_merge_families`),
    where the merged line reproduces the family: the model on ``wl`` (Å) changes by at
    most ``_MERGE_CHANGE_COLD`` × ``prominence`` RMS over the merged line's centre ±
    ``_CHANGE_REACH`` FWHM (:func:`_merge_change`), or where the family is concentric
    (``_CONCENTRIC``) or broad (a line of at least :func:`_broad_fwhm`, with
    ``_BROAD_MEDIANS``). A blend of two real lines (on the
    real T4700 clone: 9274.00 Å, 0.29 Å wide, and 9274.13 Å, 0.11 Å wide, 0.1 deep
    each) is a family by centres and widths, but one line cannot reproduce it.
    ``checked=False``: every family is merged (a grid's cold clones,
    :func:`~jaxspec.clone.fit._clone_batch`). Returns (lines, number removed)."""
    groups, _ = _families(x, settings.max_shift, _MERGE_WIDTH_RATIO)
    if not groups:
        return x, 0
    y = _merge_families(x, groups, settings)
    made = groups
    if checked:
        limit = _MERGE_CHANGE_COLD * settings.prominence
        fwhm = _fwhm_eta(x.ln_s, x.ln_g)[0]
        broad = _broad_fwhm(wl, x)
        center = _centers(x, settings.max_shift)

        def concentric(i, family):
            return bool(np.all(np.abs(center[family] - center[i])
                               < _CONCENTRIC * np.minimum(fwhm[family], fwhm[i])))

        made = [g for g in groups if fwhm[np.r_[g[0], g[1]]].max() >= broad
                or concentric(*g)
                or _merge_change(wl, x, y, g, y.mu0[g[0]], settings.max_shift) <= limit]
    if not made:
        return x, 0
    if len(made) < len(groups):  # each family's merge depends on its own lines only
        y = _merge_families(x, made, settings)
    absorbed = np.zeros(x.n, dtype=bool)
    for _, family in made:
        absorbed[family] = True
    return y.select(~absorbed), int(absorbed.sum())


def _rebox(x: _Lines, settings: CloneSettings) -> _Lines:
    """A copy of ``x`` in which every line that ended a pass at the edge of its box
    (total FWHM within 1 % of e^hi_f, or ln a within 0.01 of hi_a) gets the box a line
    detected at its current values would get: FWHM up to e^width_margin times its
    current FWHM, ln a up to amplitude_margin above its current value (never smaller
    than before)."""
    x = x.copy()
    ln_f = np.log(_fwhm_eta(x.ln_s, x.ln_g)[0])
    edge = (ln_f >= x.hi_f - 0.01) | (x.ln_a >= x.hi_a - 0.01)
    _grow_box(x, edge, ln_f[edge], settings)
    return x


def _merge_change(wl: np.ndarray, x: _Lines, y: _Lines, group, at: float,
                  max_shift: float) -> float:
    """RMS change of the model Π (1 − a V) on ``wl`` (Å) over the merged line's centre
    ± ``_CHANGE_REACH`` FWHM when the family ``group = (i, members)`` of ``x`` is
    replaced by line i of the merged lines ``y`` (:func:`_merge_families`), centred at
    ``at`` (Å)."""
    i, family = group
    members = np.r_[i, family]
    center = _centers(x.select(members), max_shift)
    f = float(_fwhm_eta(y.ln_s[i], y.ln_g[i])[0])
    lo, hi = np.searchsorted(wl, [at - _CHANGE_REACH * f, at + _CHANGE_REACH * f])
    w = wl[lo:hi]
    if not w.size:
        return 0.0
    before = np.ones_like(w)
    for j, c in zip(members, center):
        before *= 1.0 - math.exp(x.ln_a[j]) * _profile(w, c, x.ln_s[j], x.ln_g[j])
    after = 1.0 - math.exp(y.ln_a[i]) * _profile(w, at, y.ln_s[i], y.ln_g[i])
    return math.sqrt(float(np.mean((after - before) ** 2)))


def _profile(wl, center, ln_s, ln_g):
    """Pseudo-Voigt V(λ − μ) (1/Å), numpy (Ida et al. 2000; blase3D eq. 2)."""
    f, eta = (float(v) for v in _fwhm_eta(float(ln_s), float(ln_g)))
    x = wl - center
    half = 0.5 * f
    gsig = f / FWHM_PER_SIGMA
    return (eta * half / math.pi / (x * x + half * half)
            + (1.0 - eta) * np.exp(-0.5 * (x / gsig) ** 2) / (gsig * math.sqrt(2.0 * math.pi)))


def _families(x: _Lines, max_shift: float, width_ratio: float, members=None):
    """Families of lines that describe one feature: centres within ``_MERGE_REACH`` FWHM
    of the broader line and FWHMs within a factor 1/``width_ratio`` of each other; with
    ``members`` ((n,) bool), only those lines take part.

    Greedy from the strongest line (largest a: the equivalent width in the weak-line
    limit, since V has unit area): it absorbs its family. Returns (groups, absorbed):
    a list of (index of the strongest line, indices of its family) and the (n,) mask of
    the absorbed lines."""
    absorbed = np.zeros(x.n, dtype=bool)
    if x.n < 2:
        return [], absorbed
    out = np.zeros(x.n, dtype=bool) if members is None else ~np.asarray(members, bool)
    center = _centers(x, max_shift)
    fwhm = _fwhm_eta(x.ln_s, x.ln_g)[0]
    a = np.exp(np.clip(x.ln_a, -700.0, 50.0))
    order = np.argsort(center)
    c_sorted = center[order]
    reach = _MERGE_REACH * float(fwhm.max())
    groups = []
    for i in np.argsort(-a, kind="stable"):
        if absorbed[i] or out[i]:
            continue
        lo, hi = np.searchsorted(c_sorted, [center[i] - reach, center[i] + reach])
        near = order[lo:hi]
        near = near[~absorbed[near] & ~out[near] & (near != i)]
        broad = np.maximum(fwhm[near], fwhm[i])
        narrow = np.minimum(fwhm[near], fwhm[i])
        family = near[(np.abs(center[near] - center[i]) < _MERGE_REACH * broad)
                      & (narrow >= width_ratio * broad)]
        if family.size:
            absorbed[family] = True
            groups.append((i, family))
    return groups, absorbed


def _merge_families(x: _Lines, groups, settings: CloneSettings) -> _Lines:
    r"""A copy of ``x`` in which the strongest line of every family of ``groups``
    (:func:`_families`) carries the family: the merged line conserves the total a; its
    centre is the a-weighted mean, and its FWHM follows the a-weighted second moment,
    :math:`f^2 = \sum_j w_j (f_j^2 + 8\ln 2\,(\mu_j - \bar\mu)^2)` (exact for
    Gaussians), with the strongest line's Lorentz fraction (σ and γ scaled together).
    The merged line keeps the strongest line's identity, with a fresh optimisation box
    around its new values (as a detected line's). The absorbed lines are left as they
    are (the caller drops them or fades them)."""
    s = settings
    center = _centers(x, s.max_shift)
    fwhm = _fwhm_eta(x.ln_s, x.ln_g)[0]
    a = np.exp(np.clip(x.ln_a, -700.0, 50.0))
    x = x.copy()
    for i, family in groups:
        members = np.r_[i, family]
        w = a[members] / a[members].sum()
        mu = float(np.sum(w * center[members]))
        f2 = float(np.sum(w * (fwhm[members] ** 2
                               + 8.0 * math.log(2.0) * (center[members] - mu) ** 2)))
        scale = math.log(math.sqrt(f2) / fwhm[i])
        x.mu0[i], x.u[i] = mu, 0.0
        x.ln_a[i] = math.log(a[members].sum())
        x.ln_s[i] += scale
        x.ln_g[i] += scale
        x.a0[i], x.s0[i], x.g0[i] = x.ln_a[i], x.ln_s[i], x.ln_g[i]
        _grow_box(x, i, math.log(math.sqrt(f2)), s, credit=False)
        x.lo_a[i] = min(x.lo_a[i], x.ln_a[i] - 30.0)
    return x


def _misfits(cand: _Lines, x: _Lines, max_shift: float, min_fwhm: float = 0.0
             ) -> np.ndarray:
    """Mask of candidate lines (found in a residual) that sit inside a fitted line of
    comparable width (within ``_MERGE_REACH`` of its FWHM, at least
    ``_MERGE_WIDTH_RATIO`` of its width) whose FWHM is at least ``min_fwhm`` Å: the
    residual of that line's shape, not a line of their own. Narrow candidates on broad
    lines (blends), and blends of narrow lines (a molecular forest), are kept."""
    x = x.select(_fwhm_eta(x.ln_s, x.ln_g)[0] >= min_fwhm)
    if cand.n == 0 or x.n == 0:
        return np.zeros(cand.n, dtype=bool)
    center = _centers(x, max_shift)
    fwhm = _fwhm_eta(x.ln_s, x.ln_g)[0]
    f_cand = _fwhm_eta(cand.ln_s, cand.ln_g)[0]
    order = np.argsort(center)
    c_sorted = center[order]
    reach = _MERGE_REACH * float(fwhm.max())
    out = np.zeros(cand.n, dtype=bool)
    for k in range(cand.n):
        lo, hi = np.searchsorted(c_sorted, [cand.mu0[k] - reach, cand.mu0[k] + reach])
        near = order[lo:hi]
        out[k] = bool(np.any((np.abs(center[near] - cand.mu0[k]) < _MERGE_REACH * fwhm[near])
                             & (f_cand[k] >= _MERGE_WIDTH_RATIO * fwhm[near])))
    return out
