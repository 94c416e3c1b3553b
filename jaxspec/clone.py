r"""Clone spectra into pseudo-Voigt line lists (the blase method).

A *clone* of a continuum-normalised spectrum :math:`\bar S(\lambda)` is a
:class:`~jaxspec.lines.LineList` whose model

.. math::
    F(\lambda) = \prod_j \left[1 - a_j V(\lambda - \mu'_j; \sigma_j, \gamma_j)\right]

(pseudo-Voigt :math:`V`, blase3D paper eq. 2) reproduces it: the blase step of the blase3D
paper (Shankar, Gully-Santiago & Morley), Sect. 2.3. :func:`clone` clones one spectrum;
:func:`clone_grid` clones every node of a :class:`~jaxspec.grid.SpectralGrid` into an HDF5
clone store (:mod:`jaxspec.io.clone_store`), batched and resumable.

Method (the paper's settings are the defaults: Adam, learning rate 0.05, 100 epochs,
prominence 0.005, wing cut 6000 pixels):

1. **Detection.** Lines are the peaks of :math:`1 - \bar S` with at least ``prominence``
   (``scipy.signal.find_peaks``), plus *shoulders*: maxima of the curvature
   :math:`-\Delta^2(1 - \bar S)` at least 3 pixels from every peak, at least
   ``prominence`` deep and curved like a line of that depth (blended lines that make no
   minimum of their own; curvature separates lines about twice as close as minima).
   The pre-optimisation centre :math:`\mu_j` is the vertex of the parabola through the
   peak pixel and its neighbours (in pixel index: any monotonic sampling works).
2. **Widths.** The full width at half prominence (``scipy.signal.peak_widths``) is the
   FWHM :math:`f_0`, unless the *local width*, 1.47 × the distance between the curvature
   zeros (or valleys) around the peak, is smaller but at least 0.4 × it: then the peak is
   taken as blended and the local width used (1.47 is FWHM / inflection distance of the
   pseudo-Voigt below). Shoulders take their local width. Floored at one pixel.
   :math:`f_0` is split so that the Gaussian and Lorentzian FWHMs are equal,
   :math:`2\sqrt{2\ln 2}\,\sigma = 2\gamma = f_0 / 11.67117^{1/5}` (Ida et al. 2000
   eq. 3 with equal components; Lorentz fraction :math:`\eta = 0.68`).
3. **Amplitude.** An isolated line has depth :math:`D = 1 - \bar S(\mu) = a V(0)`, so
   :math:`a_0 = D / V(0; \sigma, \gamma)` (D capped at 0.95). Blended lines share depth:
   ``deblend`` multiplicative iterations :math:`a_j \leftarrow a_j \min(1, \tau^{obs}_j /
   \tau^{mod}_j)`, :math:`\tau = -\ln F` at each line's peak pixel, make the initial model
   as deep as the spectrum at every detected line (a Richardson–Lucy-like fixed point).
4. **Optimisation.** Adam on the squared residual over valid pixels (NaN pixels and
   ``mask`` are left out), all four parameters of every line: :math:`\ln a`,
   :math:`\ln\sigma`, :math:`\ln\gamma`, and the centre
   :math:`\mu'_j = \mu_j + s \tanh u_j` (the paper's shifted centre, bounded to
   :math:`\pm s`, ``max_shift`` = 0.05 Å; :math:`\mu_j` stays the line's identifier).
   After every step amplitudes and widths are projected into a box: total FWHM
   :math:`\le f_{max} = \max(e^{1.1} f_0, w_{1/2})` (``width_margin``; σ and γ are
   scaled down together beyond it), :math:`w_{1/2}` the peak's width at half its depth
   below the continuum (which lets broad lines, whose f0 overlapping wings cut short,
   grow), and :math:`\ln a \le \ln a_0 + 1 + \ln(f_{max} / e^{1.1} f_0)`
   (``amplitude_margin``). The synthesis windows are planned once for the box's edges,
   so the whole loop (``lax.scan`` over epochs) is one compiled program. The sum of squared residuals is minimised (Adam is
   scale-invariant except for its ε = 1e-8, which would throttle the tiny gradients of
   a mean over 10⁵–10⁶ pixels); ``loss_history`` records the mean.
5. **Refinement** (``passes=2``, the default; ``passes=1`` is the paper's single pass):
   the residual :math:`1 - \bar S / F` is searched for further lines as in 1–3 (blends
   the first detection missed) and all lines are optimised again for ``epochs``.

``wing_cut`` (pixels) is blase's wing cut, the longest window over which a line is
evaluated during fitting: each line's profile is evaluated where it exceeds ``tolerance``
(1e-5 in ln flux), but never beyond ``wing_cut`` pixels (the Lorentzian wing of a strong
line is cut there). Cloned lines are ordinary line lists: :meth:`LineList.flux` evaluates
them with full wings.

Line identifiers: ``line_id`` is :math:`\mu_j` rounded to 0.01 Å (blase3D Sect. 3.1),
unique within a clone (a second line with the same identifier is not added).

Numerics: the fitting model is a private windowed synthesis specialised for gradients
(see the comment above ``_Problem``); float32 profile arithmetic on float64 offsets from
the line centres; agrees with :meth:`LineList.flux_exact` to about 1e-5 where the wing
cut does not act.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float
from scipy.signal import find_peaks, peak_widths

from jaxspec.lines import LineList
from jaxspec.profiles import FWHM_PER_SIGMA, pseudo_voigt_eta, pseudo_voigt_fwhm
from jaxspec.synthesis import ABSENT_LN_AMPLITUDE, MAX_DEPTH, _cubic_weights, _extend

__all__ = ["ABSENT_LN_AMPLITUDE", "CloneResult", "CloneSettings", "clone", "clone_grid"]


# Equal Gaussian and Lorentzian FWHMs: total FWHM f = f' (sum of Ida's coefficients)^(1/5).
_EQUAL_SPLIT = (1.0 + 2.69269 + 2.42843 + 4.47163 + 0.07842 + 1.0) ** 0.2
_MAX_INIT_DEPTH = 0.95
_MIN_WIDTH = 1e-4  # Å, lower bound of σ and γ (profiles are tested down to it)
_BLEND_RATIO = 0.4  # smallest local/half-prominence width ratio read as a blend


@dataclass(frozen=True)
class CloneSettings:
    """Everything that determines a clone; stored with a clone store and compared on resume.

    Attributes:
        prominence: minimum peak prominence in normalised flux (blase3D: 0.005).
        wing_cut: longest window, in pixels, over which a line is evaluated during
            fitting (blase3D: 6000); see the module docstring.
        epochs: Adam steps per optimisation pass (blase3D: 100).
        learning_rate: Adam learning rate (blase3D: 0.05).
        max_shift: bound of the centre shift |μ' − μ|, Å.
        passes: 1 (the paper: detect, optimise) or 2 (then re-detect lines in the
            residual and optimise all again).
        deblend: multiplicative amplitude iterations at initialisation (0: none).
        amplitude_margin: ln a may grow at most this much above its initial value.
        width_margin: the total FWHM may grow to at most e^width_margin times the
            detected FWHM (σ and γ are scaled down together beyond it).
        tolerance: per-line truncation tolerance of the windowed synthesis (ln flux).
    """

    prominence: float = 0.005
    wing_cut: int = 6000
    epochs: int = 100
    learning_rate: float = 0.05
    max_shift: float = 0.05
    passes: int = 2
    deblend: int = 8
    amplitude_margin: float = 1.0
    width_margin: float = 1.1
    tolerance: float = 1e-5

    def __post_init__(self):
        checks = [
            ("prominence", self.prominence > 0, "a positive normalised-flux depth, e.g. 0.005"),
            ("wing_cut", int(self.wing_cut) == self.wing_cut and self.wing_cut >= 256,
             "an integer number of pixels >= 256, e.g. 6000"),
            ("epochs", int(self.epochs) == self.epochs and self.epochs >= 1,
             "an integer >= 1, e.g. 100"),
            ("learning_rate", self.learning_rate > 0, "a positive number, e.g. 0.05"),
            ("max_shift", self.max_shift > 0, "a positive shift in Å, e.g. 0.05"),
            ("passes", self.passes in (1, 2), "1 or 2"),
            ("deblend", int(self.deblend) == self.deblend and self.deblend >= 0,
             "an integer >= 0"),
            ("amplitude_margin", self.amplitude_margin > 0, "a positive ln factor"),
            ("width_margin", self.width_margin > 0, "a positive ln factor"),
            ("tolerance", 0 < self.tolerance < 1, "a small positive number, e.g. 1e-5"),
        ]
        for name, ok, fix in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; pass {fix}")
        object.__setattr__(self, "wing_cut", int(self.wing_cut))
        object.__setattr__(self, "epochs", int(self.epochs))
        object.__setattr__(self, "passes", int(self.passes))
        object.__setattr__(self, "deblend", int(self.deblend))
        for name in ("prominence", "learning_rate", "max_shift", "amplitude_margin",
                     "width_margin", "tolerance"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def as_dict(self) -> dict:
        """Settings as a plain dict (the clone store's root attributes)."""
        return asdict(self)


class CloneResult(eqx.Module):
    """The clone of one spectrum.

    Attributes:
        lines: fitted :class:`~jaxspec.lines.LineList` (centres μ' in Å), sorted by
            ``line_id``.
        initial_lines: the line list before optimisation (centres μ), same order.
        line_id: (n,) float64, pre-optimisation centre rounded to 0.01 Å (blase3D 3.1).
        loss_history: (passes × epochs,) mean squared residual before each Adam step.
        residual_rms: RMS of (model − flux) over valid pixels, the model as fitted
            (wings cut at ``wing_cut``).
        model_flux: (n_pix,) fitted model flux on the input wavelengths.
        n_masked: number of pixels left out of the loss (NaN flux or ``mask``).
    """

    lines: LineList
    initial_lines: LineList
    line_id: Float[Array, " n_lines"]
    loss_history: Float[Array, " n_steps"]
    residual_rms: Float[Array, ""]
    model_flux: Float[Array, " n_pix"]
    n_masked: int = eqx.field(static=True)

    @property
    def n_lines(self) -> int:
        """Number of fitted lines."""
        return self.lines.n_lines


# ---------------------------------------------------------------------- input checks


def _check_input(wavelength, flux, mask=None, *, what="spectrum"):
    """Validate a spectrum; return (wavelength float64, flux with NaN→1, weight, n_bad)."""
    wl = np.asarray(wavelength, dtype=np.float64)
    f = np.asarray(flux, dtype=np.float64)
    if wl.ndim != 1 or wl.size < 8:
        raise ValueError(
            f"wavelength: expected a 1-D array of at least 8 pixels (Å), got shape {wl.shape}"
        )
    if f.shape != wl.shape:
        raise ValueError(
            f"flux has shape {f.shape} but wavelength has {wl.shape}; pass one flux value "
            "per wavelength pixel"
        )
    if not np.all(np.isfinite(wl)):
        raise ValueError(
            f"wavelength has {int(np.sum(~np.isfinite(wl)))} NaN/inf values; pass finite Å"
        )
    steps = np.diff(wl)
    if np.any(steps <= 0):
        j = int(np.flatnonzero(steps <= 0)[0])
        raise ValueError(
            f"wavelength is not strictly increasing ({wl[j]:.4f} Å then {wl[j + 1]:.4f} Å "
            f"at pixels {j}, {j + 1}); sort the spectrum (np.argsort, flux with it) and drop "
            "duplicate pixels"
        )
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
    if n_bad and np.any(~np.isfinite(f)):
        first = float(wl[np.flatnonzero(~np.isfinite(f))[0]])
        warnings.warn(
            f"{what}: flux has {int(np.sum(~np.isfinite(f)))} NaN/inf pixel(s) (first at "
            f"{first:.3f} Å); they are left out of the loss",
            stacklevel=3,
        )
    valid = f[good]
    median = float(np.median(valid))
    upper = float(np.percentile(valid, 95))
    if not (0.75 <= upper <= 1.25 and median > 0.2):
        raise ValueError(
            f"{what}: flux does not look continuum-normalised (median {median:.4g}, 95th "
            f"percentile {upper:.4g}; the continuum should be at 1); normalise it first "
            "with jaxspec.preprocess.continuum_normalize (or preprocess_grid for a grid)"
        )
    f = np.where(good, f, 1.0)
    return wl, f, good.astype(np.float64), n_bad


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


# ---------------------------------------------------------------------- fitting model
#
# The fitting model evaluates ln F = sum_j ln(1 - a_j V_j) with the two-level split of
# jaxspec._synthesis: T_j = ln(1 - a_j V_j) is written as (T_j - I[S_j]) + I[S_j], where
# S_j = ln(1 - a_j eta_j L_j) is the smooth Lorentz part and I cubic interpolation (in pixel
# index) from coarse nodes every h pixels. The first term is evaluated at full resolution
# in a short *fine* window around the core; the second, summed over lines on the nodes of
# a longer *coarse* window, is interpolated once. It is specialised for optimisation:
#
# * windows are fixed at planning time around the pre-optimisation centres (the centre
#   moves at most max_shift) for the largest amplitude and widths the optimisation box
#   allows, and the offsets wavelength - mu0 are precomputed;
# * every window is cut into chunks of a fixed size (m0 cells fine, k0 nodes coarse), so
#   one fine and one coarse kernel serve all lines whatever their widths: XLA compile
#   time grows with the number of distinct kernels, not with the number of lines;
#   chunk counts are rounded up a ladder so later passes and batches reuse the program;
# * the VJP of the window terms is written by hand (XLA:CPU runs autodiff's dozen
#   window-sized temporaries several times slower);
# * a batch of spectra is laid end to end in one long array. Adam is elementwise, so
#   minimising the sum of per-spectrum losses optimises every spectrum independently.

_H = 16  # pixels per coarse cell
_FINE_CHUNK = 4  # cells per fine chunk (64 pixels)
_COARSE_CHUNK = 32  # nodes per coarse chunk
_REFINE_HEADROOM = 0.12  # room for the refinement pass's lines in the first problem
# Problem sizes (slots, fine chunks, coarse chunks) planned so far in this process, per
# geometry: reusing one reuses its compiled programs (XLA compiles take seconds).
_MENUS: dict[tuple, list[tuple[int, int, int]]] = {}
_COARSE_FACTOR = 1.0  # the bare Lorentz wings reach coarse_factor × tolerance
_CORE_HALVES = 2.0  # fine windows reach at least this many half widths beyond the core
_CUBIC_ERR = 9.0 / 16.0 / 24.0  # cubic Lagrange error constant (nodes -1, 0, 1, 2)
_B = jax.lax.optimization_barrier  # materialise: stops XLA:CPU duplicating producers


def _ladder(ratio: float, start: int = 4, stop: int = 2**26) -> np.ndarray:
    out, k = [], float(start)
    while k < stop:
        out.append(math.ceil(k))
        k *= ratio
    return np.unique(out)


_SIZE_LADDER = _ladder(1.25)  # window sizes (cells, nodes)
_COUNT_LADDER = _ladder(2**0.25, start=8)  # lines per class (compiled-shape reuse)


def _round_up(n, ladder=_SIZE_LADDER):
    n = np.asarray(n)
    return ladder[np.minimum(np.searchsorted(ladder, n), ladder.size - 1)]


def _interpolate(nodes, weights):
    """Cubic interpolation from nodes (..., n + 3) to cells (..., n, h), as a matrix
    product on materialised taps (one elementwise fusion is ~10× slower on XLA:CPU)."""
    n = nodes.shape[-1] - 3
    taps = _B(jnp.stack([nodes[..., k : k + n] for k in range(4)], axis=-1))
    return _B(jnp.matmul(taps, weights.T.astype(taps.dtype)))


def _interpolate_transpose(g, weights):
    """Adjoint of :func:`_interpolate`: cotangents (n, m, h) → (n, m + 3)."""
    per = _B(jnp.matmul(g, weights.astype(g.dtype)))  # (n, m, 4)
    m = g.shape[1]
    out = jnp.zeros(g.shape[:-2] + (m + 3,), g.dtype)
    for k in range(4):
        out = out.at[:, k : k + m].add(per[:, :, k])
    return out


def _add_windows(array, start, updates):
    """array[start_b : start_b + size] += updates[b] (1-D array, overlaps accumulate)."""
    dnums = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(1,), inserted_window_dims=(), scatter_dims_to_operand_dims=(0,)
    )
    return jax.lax.scatter_add(array, start[:, None], _B(updates), dnums,
                               mode=jax.lax.GatherScatterMode.CLIP)


class _Problem(eqx.Module):
    """Window geometry of a batch of spectra laid end to end (each padded by ``pad``
    pixels on both sides to ``n_cells`` cells of ``h`` pixels), as chunks: fine chunk i
    covers m0 cells from flat pixel ``fine_start[i]`` for line ``fine_index[i]`` of the
    flat parameter arrays; coarse chunk i covers k0 nodes from flat node
    ``coarse_start[i]``. ``d_*`` hold wavelength − μ0 (Å, float32) at the chunk's pixels
    and nodes (fine chunks also at the m0 + 3 nodes they interpolate from)."""

    fine_index: jax.Array  # (n_f,) int32
    fine_start: jax.Array  # (n_f,) int32
    fine_d_pix: jax.Array  # (n_f, m0 h) float32
    fine_d_node: jax.Array  # (n_f, m0 + 3) float32
    coarse_index: jax.Array  # (n_c,) int32
    coarse_start: jax.Array  # (n_c,) int32
    coarse_d_node: jax.Array  # (n_c, k0) float32
    weights: jax.Array  # (h, 4) float32
    n_spec: int = eqx.field(static=True)
    n_cells: int = eqx.field(static=True)
    pad: int = eqx.field(static=True)
    h: int = eqx.field(static=True)

    @property
    def shapes(self) -> tuple[int, int]:
        """(fine chunks, coarse chunks)."""
        return self.fine_index.shape[0], self.coarse_index.shape[0]


def _line_constants(ln_a, ln_s, ln_g):
    """float32 per-line constants (lor, half², gau, gau_k): V's Lorentzian is
    lor / (x² + half²) and its Gaussian gau exp(−gau_k x²), times a."""
    sigma, gamma = jnp.exp(ln_s), jnp.exp(ln_g)
    f = pseudo_voigt_fwhm(sigma, gamma)
    eta = pseudo_voigt_eta(sigma, gamma)
    amp = jnp.exp(ln_a)
    half = 0.5 * f
    gsig = f / FWHM_PER_SIGMA
    f32 = jnp.float32
    return ((amp * eta * half / jnp.pi).astype(f32), (half * half).astype(f32),
            (amp * (1.0 - eta) / (gsig * math.sqrt(2.0 * math.pi))).astype(f32),
            (0.5 / (gsig * gsig)).astype(f32))


def _smooth_forward(consts, d_node):
    lor, half2, shift = (c[:, None] for c in consts)
    return jnp.log1p(-jnp.minimum(lor / (jnp.square(d_node - shift) + half2), MAX_DEPTH))


def _smooth_partials(consts, d_node, g):
    """Gradients of sum(g S) w.r.t. (lor, half2, shift), S = ln(1 - lor/(x² + half²))."""
    lor, half2, shift = (c[:, None] for c in consts)
    x = d_node - shift
    inv = 1.0 / (x * x + half2)
    depth = lor * inv
    wi = _B(jnp.where(depth < MAX_DEPTH, -g / (1.0 - depth), 0.0) * inv)
    wii = _B(wi * inv)
    return (jnp.sum(wi, axis=1), -lor[:, 0] * jnp.sum(wii, axis=1),
            2.0 * lor[:, 0] * jnp.sum(wii * x, axis=1))


@jax.custom_vjp
def _coarse_terms(consts, d_node):
    """S on the coarse nodes, (n, k); consts = (lor, half2, shift)."""
    return _smooth_forward(consts, d_node)


def _coarse_terms_fwd(consts, d_node):
    return _smooth_forward(consts, d_node), (consts, d_node)


def _coarse_terms_bwd(residuals, g):
    consts, d_node = residuals
    return _smooth_partials(consts, d_node, g), jnp.zeros_like(d_node)


_coarse_terms.defvjp(_coarse_terms_fwd, _coarse_terms_bwd)


def _full_forward(consts, d_pix, d_node, weights):
    lor, half2, gau, gau_k, shift = (c[:, None] for c in consts)
    x2 = jnp.square(d_pix - shift)
    full = jnp.log1p(-jnp.minimum(lor / (x2 + half2) + gau * jnp.exp(-gau_k * x2), MAX_DEPTH))
    smooth = _B(_smooth_forward((consts[0], consts[1], consts[4]), d_node))
    interp = _interpolate(smooth, weights)
    return full - interp.reshape(full.shape)


@jax.custom_vjp
def _fine_terms(consts, d_pix, d_node, weights):
    """T − I[S] on the fine pixels, (n, m h); consts = (lor, half2, gau, gau_k, shift)."""
    return _full_forward(consts, d_pix, d_node, weights)


def _fine_terms_fwd(consts, d_pix, d_node, weights):
    return _full_forward(consts, d_pix, d_node, weights), (consts, d_pix, d_node, weights)


def _fine_terms_bwd(residuals, g):
    consts, d_pix, d_node, weights = residuals
    lor, half2, gau, gau_k, shift = (c[:, None] for c in consts)
    n, m = d_node.shape[0], d_node.shape[1] - 3
    # -I[S]: S on the window's nodes gets the interpolation adjoint of g.
    g_node = -_interpolate_transpose(g.reshape(n, m, weights.shape[0]), weights)
    s_lor, s_half2, s_shift = _smooth_partials((consts[0], consts[1], consts[4]), d_node,
                                               g_node)
    # T = ln(1 - D), D = lor / (x² + half²) + gau exp(-gau_k x²), x = d - shift.
    x = d_pix - shift
    x2 = x * x
    inv = 1.0 / (x2 + half2)
    gauss = jnp.exp(-gau_k * x2)
    depth = lor * inv + gau * gauss
    w = jnp.where(depth < MAX_DEPTH, -g / (1.0 - depth), 0.0)
    wi, wg = _B((w * inv, w * gauss))
    wii = _B(wi * inv)
    g_lor = jnp.sum(wi, axis=1) + s_lor
    g_half2 = -lor[:, 0] * jnp.sum(wii, axis=1) + s_half2
    g_gau = jnp.sum(wg, axis=1)
    g_gau_k = -gau[:, 0] * jnp.sum(wg * x2, axis=1)
    g_shift = (2.0 * lor[:, 0] * jnp.sum(wii * x, axis=1)
               + 2.0 * gau[:, 0] * gau_k[:, 0] * jnp.sum(wg * x, axis=1) + s_shift)
    zeros = (jnp.zeros_like(d_pix), jnp.zeros_like(d_node), jnp.zeros_like(weights))
    return ((g_lor, g_half2, g_gau, g_gau_k, g_shift), *zeros)


_fine_terms.defvjp(_fine_terms_fwd, _fine_terms_bwd)


def _log_flux(problem: _Problem, params, max_shift):
    """ln F over the padded batch, (n_spec, n_cells h) float32; params = (u, ln_a, ln_s,
    ln_g) flat over all lines, centre mu' = mu0 + max_shift tanh(u)."""
    h, n_cells, n_spec = problem.h, problem.n_cells, problem.n_spec
    u, ln_a, ln_s, ln_g = params
    lor, half2, gau, gau_k = _line_constants(ln_a, ln_s, ln_g)
    shift = (max_shift * jnp.tanh(u)).astype(jnp.float32)
    index = problem.fine_index
    consts = tuple(c[index] for c in (lor, half2, gau, gau_k, shift))
    terms = _fine_terms(consts, problem.fine_d_pix, problem.fine_d_node, problem.weights)
    pixels = _add_windows(jnp.zeros(n_spec * n_cells * h, jnp.float32), problem.fine_start,
                          terms)
    index = problem.coarse_index
    consts = tuple(c[index] for c in (lor, half2, shift))
    nodes = _add_windows(jnp.zeros(n_spec * (n_cells + 3), jnp.float32),
                         problem.coarse_start, _coarse_terms(consts, problem.coarse_d_node))
    coarse = _interpolate(nodes.reshape(n_spec, n_cells + 3), problem.weights)
    return pixels.reshape(n_spec, n_cells * h) + coarse.reshape(n_spec, n_cells * h)


def _window_needs(wl, mu0, hi_a, hi_f, settings: CloneSettings):
    """Fine cells m and coarse nodes k each line needs for every parameter in its box."""
    dl = np.interp(mu0, wl, np.gradient(wl))
    a = np.exp(hi_a)
    f = np.exp(hi_f)
    half, gsig = 0.5 * f, f / FWHM_PER_SIGMA
    t = settings.tolerance
    # Bounds over the box: Lorentz area <= a (eta <= 1), Gaussian peak <= a / (gsig sqrt 2pi).
    peak = a / (gsig * math.sqrt(2.0 * math.pi))
    x_gauss = gsig * np.sqrt(2.0 * np.log(np.maximum(peak / t, 1.0)))
    spacing = _H * dl
    x_interp = np.maximum(
        (_CUBIC_ERR * 120.0 / math.pi * a * half * spacing**4 / t) ** (1 / 6), 2.0 * spacing
    )
    x_fine = np.maximum.reduce([x_gauss, x_interp, _CORE_HALVES * half]) + settings.max_shift
    x_coarse = np.sqrt(a * half / (math.pi * t * _COARSE_FACTOR)) + settings.max_shift
    cap = _cap(settings)
    m = np.clip(2 * np.ceil(x_fine / spacing).astype(np.int64) + 2, 2, cap - 9)
    k = np.minimum(2 * np.ceil(x_coarse / spacing).astype(np.int64) + 4, cap)
    return m, k


def _cap(settings: CloneSettings) -> int:
    """Largest window, in nodes (cells), that the wing cut allows."""
    return settings.wing_cut // _H


def _plan(wl, batch: list[_Lines], settings: CloneSettings, *, headroom: float = 0.0,
          at_least=(0, 0, 0)):
    """Geometry (_Problem) of a batch and the slot map (spectrum, line) of every entry of
    the flat parameter arrays (line -1: padding slot, inert).

    Counts of slots and chunks are enlarged by ``headroom`` (a fraction), rounded up a
    ladder, and raised to at least ``at_least`` (slots, fine chunks, coarse chunks), so
    that later calls can reuse a compiled program. Counts already used in this process
    for the same geometry (``_MENUS``) are preferred: the cheapest that holds this
    problem with little extra work is taken (see :func:`_choose_counts`)."""
    n_spec, n_pix = len(batch), wl.size
    spec = np.concatenate([np.full(x.n, b) for b, x in enumerate(batch)]).astype(np.int64)
    line = np.concatenate([np.arange(x.n) for x in batch]).astype(np.int64)
    cat = {k: np.concatenate([getattr(x, k) for x in batch]) for k in ("mu0", "hi_a", "hi_f")}
    n_lines = spec.size
    # Flat parameter slots: every line, then inert padding (at least one, the target of
    # padding chunks).
    grow = 1.0 + headroom
    n_slots = max(int(_round_up(grow * n_lines + 1, _COUNT_LADDER)), at_least[0])
    dummy = n_lines
    slots = (np.r_[spec, np.zeros(n_slots - n_lines, np.int64)],
             np.r_[line, np.full(n_slots - n_lines, -1, np.int64)])
    cap = _cap(settings)
    m0, k0 = _FINE_CHUNK, min(_COARSE_CHUNK, cap)
    pad = (cap // 2 + k0 + 4) * _H  # no window crosses the padding
    n_cells = -(-(n_pix + 2 * pad) // _H)
    m, k = _window_needs(wl, cat["mu0"], cat["hi_a"], cat["hi_f"], settings)
    n_fine = -(-m // m0)  # chunks per line
    m = n_fine * m0
    # A coarse window must hold the nodes its fine window interpolates from.
    n_coarse = np.minimum(-(-np.maximum(k, m + 6) // k0),
                          np.maximum(cap // k0, -(-(m + 6) // k0)))
    k = n_coarse * k0
    pos = np.interp(cat["mu0"], wl, np.arange(n_pix)) + pad  # padded pixel coordinate
    cell = np.floor(pos / _H).astype(np.int64)

    def chunks(count, first, size, minimum):
        """Per chunk: its line and its first cell/node."""
        owner = np.repeat(np.arange(n_lines), count)
        rank = np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count)
        total = max(int(_round_up(grow * owner.size + 1, _COUNT_LADDER)), minimum)
        return owner, first[owner] + rank * size, total

    def padded(values, n, fill=0):
        out = np.full((n,) + values.shape[1:], fill, values.dtype)
        out[: values.shape[0]] = values
        return out

    need = (int(n_slots), math.ceil(grow * n_fine.sum()) + 1,
            math.ceil(grow * n_coarse.sum()) + 1)
    menu = _MENUS.setdefault((n_spec, n_cells, pad, m0, k0), [])
    at_least = _choose_counts(need, at_least, menu, m0 * _H, k0)
    n_slots = max(n_slots, at_least[0])
    slots = (np.r_[spec, np.zeros(n_slots - n_lines, np.int64)],
             np.r_[line, np.full(n_slots - n_lines, -1, np.int64)])
    owner, c0, n_f = chunks(n_fine, cell - m // 2, m0, at_least[1])
    mu = cat["mu0"][owner][:, None]
    d_pix = _extend(wl, c0[:, None] * _H + np.arange(m0 * _H) - pad) - mu
    d_node = _extend(wl, (c0[:, None] + np.arange(m0 + 3) - 1) * _H - pad) - mu
    fine = (
        padded(owner, n_f, dummy).astype(np.int32),
        padded(spec[owner] * n_cells * _H + c0 * _H, n_f).astype(np.int32),
        padded(d_pix.astype(np.float32), n_f),
        padded(d_node.astype(np.float32), n_f),
    )
    owner, n0, n_c = chunks(n_coarse, cell + 1 - k // 2, k0, at_least[2])
    mu = cat["mu0"][owner][:, None]
    d_node = _extend(wl, (n0[:, None] + np.arange(k0) - 1) * _H - pad) - mu
    coarse = (
        padded(owner, n_c, dummy).astype(np.int32),
        padded(spec[owner] * (n_cells + 3) + n0, n_c).astype(np.int32),
        padded(d_node.astype(np.float32), n_c),
    )
    problem = _Problem(
        *(jnp.asarray(v) for v in fine + coarse),
        jnp.asarray(_cubic_weights(_H), jnp.float32), n_spec, n_cells, pad, _H,
    )
    if (n_slots, n_f, n_c) not in menu:
        menu.append((n_slots, n_f, n_c))
    return problem, slots


def _choose_counts(need, at_least, menu, fine_size, coarse_size):
    """Counts to plan with: ``at_least`` if it holds ``need``, else the cheapest entry
    of ``menu`` holding ``need`` with little waste, else just ``need`` (0, 0, 0)."""

    def cost(c):
        return c[1] * fine_size + 0.5 * c[2] * coarse_size

    if all(a >= n for a, n in zip(at_least, need)):
        return at_least
    # Reuse when the extra work is small: 40 %, or ~1.5e6 profile evaluations per epoch
    # (well under a second over a pass, against seconds for a new compile).
    fits = [c for c in (menu or ()) if all(a >= n for a, n in zip(c, need))
            and cost(c) <= max(1.4 * cost(need), cost(need) + 1.5e6)]
    if fits:
        return min(fits, key=cost)
    return (0, 0, 0)


def _gather_slots(batch: list[_Lines], slots, name: str, fill: float) -> np.ndarray:
    """(n_slots,) values of field ``name`` in slot order (``fill`` in padding slots)."""
    slot_spec, slot_line = slots
    v = np.full(slot_line.size, fill, np.float64)
    for b, x in enumerate(batch):
        sel = (slot_spec == b) & (slot_line >= 0)
        v[sel] = getattr(x, name)[slot_line[sel]]
    return v


def _scatter_slots(batch: list[_Lines], slots, name: str, values) -> None:
    """Write slot values back into field ``name`` of every spectrum's lines."""
    slot_spec, slot_line = slots
    values = np.asarray(values, dtype=np.float64)
    for b, x in enumerate(batch):
        sel = (slot_spec == b) & (slot_line >= 0)
        getattr(x, name)[slot_line[sel]] = values[sel]


# ---------------------------------------------------------------------- jitted kernels


@eqx.filter_jit
def _deblend(problem, params, peak_index, tau_obs, max_shift, n_iter: int):
    """Multiplicative amplitude iterations ln a += ln(tau_obs / tau_model) (clipped to
    [-2, 0]: blends only lower amplitudes), tau = -ln F at each line's peak pixel."""
    u, ln_a, ln_s, ln_g = params
    real = ln_a > ABSENT_LN_AMPLITUDE / 2

    def body(ln_a, _):
        log_flux = _log_flux(problem, (u, ln_a, ln_s, ln_g), max_shift).reshape(-1)
        tau_mod = jnp.maximum(-log_flux[peak_index].astype(ln_a.dtype), 1e-9)
        step = jnp.clip(jnp.log(jnp.maximum(tau_obs, 1e-9) / tau_mod), -2.0, 0.0)
        return jnp.where(real, ln_a + step, ln_a), None

    ln_a, _ = jax.lax.scan(body, ln_a, None, length=n_iter)
    return ln_a


@eqx.filter_jit
def _train(problem, params, lower, upper, flux, weight, max_shift, learning_rate,
           epochs: int):
    """Adam on the sum of squared residuals over valid pixels (``weight`` 1 or 0).

    Adam is invariant to the scale of the loss except through its ε (1e-8): the mean
    squared residual of a 481,100-pixel spectrum has per-line gradients near 1e-10, where
    ε would throttle every step, so the sum is minimised (equivalent otherwise). The
    history records the mean squared residual per spectrum.

    params = (u, ln_a, ln_s, ln_g); ln a, ln σ, ln γ are clipped into [lower, upper]
    (triples) after every step. Returns the final params, the per-spectrum loss history
    (epochs, n_spec) and the model flux (n_spec, P)."""
    optimizer = optax.adam(learning_rate)

    n_valid = jnp.maximum(jnp.sum(weight, axis=1), 1.0)

    def loss(p):
        r = jnp.exp(_log_flux(problem, p, max_shift)) - flux
        per_spec = jnp.sum(r * r * weight, axis=1)
        return jnp.sum(per_spec), per_spec / n_valid

    def step(carry, _):
        p, state = carry
        (_, per_spec), grad = jax.value_and_grad(loss, has_aux=True)(p)
        updates, state = optimizer.update(grad, state, p)
        u, *rest = optax.apply_updates(p, updates)
        ln_a, ln_s, ln_g = (jnp.clip(x, lo, hi) for x, lo, hi in zip(rest, lower, upper))
        # Total FWHM at most e^hi_f: scale σ and γ down together (f is homogeneous).
        ln_f = jnp.log(pseudo_voigt_fwhm(jnp.exp(ln_s), jnp.exp(ln_g)))
        excess = jnp.maximum(ln_f - upper[3], 0.0)
        p = (u, ln_a, ln_s - excess, ln_g - excess)
        return (p, state), per_spec

    (p, _), history = jax.lax.scan(step, (params, optimizer.init(params)), None,
                                   length=epochs)
    return p, history, jnp.exp(_log_flux(problem, p, max_shift))


# ---------------------------------------------------------------------- batched core


_FIELDS = ("mu0", "u", "ln_a", "ln_s", "ln_g", "a0", "s0", "g0",
           "lo_a", "hi_a", "lo_s", "hi_s", "lo_g", "hi_g", "hi_f", "peak")


@dataclass
class _Lines:
    """Lines of one spectrum during cloning (numpy, in detection order).

    ``u, ln_a, ln_s, ln_g`` are the current values (μ' = μ0 + max_shift tanh u);
    ``a0, s0, g0`` the initial ln a (after deblending), ln σ and ln γ; ``lo_*``/``hi_*``
    the optimisation box; ``peak`` the pixel of the detected peak.
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

    @property
    def n(self) -> int:
        return self.mu0.size

    def concat(self, other: _Lines) -> _Lines:
        return _Lines(**{k: np.concatenate([getattr(self, k), getattr(other, k)])
                         for k in _FIELDS})


def _initial(wl, depth_curve, good, settings: CloneSettings, taken=None) -> _Lines:
    """Lines detected in ``depth_curve`` with their initial parameters and box."""
    peak, mu0, height, fwhm, extent = _detect(wl, depth_curve, settings.prominence, good)
    keep = _unique_ids(mu0, taken)
    peak, mu0, height, fwhm, extent = (v[keep] for v in (peak, mu0, height, fwhm, extent))
    sigma, gamma, v0 = _v0_equal_split(fwhm)
    depth = np.clip(height, 1e-6, _MAX_INIT_DEPTH)
    ln_a = np.log(depth / v0)
    ln_s, ln_g = np.log(sigma), np.log(gamma)
    floor = np.full_like(ln_s, math.log(_MIN_WIDTH))
    # Box: total FWHM up to e^width_margin f0, or the extent of broad lines; the area may
    # grow by e^amplitude_margin beyond what that extra width needs at the same depth.
    hi_f = np.maximum(np.log(fwhm) + settings.width_margin, np.log(extent))
    hi_a = ln_a + settings.amplitude_margin + (hi_f - np.log(fwhm) - settings.width_margin)
    return _Lines(
        mu0=mu0, u=np.zeros_like(mu0), ln_a=ln_a, ln_s=ln_s, ln_g=ln_g,
        a0=ln_a.copy(), s0=ln_s.copy(), g0=ln_g.copy(),
        lo_a=ln_a - 30.0, hi_a=hi_a,
        lo_s=floor, hi_s=hi_f - math.log(FWHM_PER_SIGMA),
        lo_g=floor, hi_g=hi_f - math.log(2.0), hi_f=hi_f,
        peak=peak,
    )


def _fit(wl, flux, good, batch, settings, *, deblend=False, headroom=0.0, at_least=(0, 0, 0)):
    """One optimisation pass over ``batch`` (lines updated in place).

    Returns (history (B, epochs), model (B, n_pix), problem shapes for ``at_least``)."""
    n_spec, n_pix = flux.shape
    max_shift = jnp.asarray(settings.max_shift)
    problem, slots = _plan(wl, batch, settings, headroom=headroom, at_least=at_least)
    pad, width = problem.pad, problem.n_cells * problem.h
    flux_pad = np.ones((n_spec, width), np.float32)
    weight = np.zeros((n_spec, width), np.float32)
    flux_pad[:, pad : pad + n_pix] = flux
    weight[:, pad : pad + n_pix] = good

    def slot_values(name, fill):
        return jnp.asarray(_gather_slots(batch, slots, name, fill))

    params = (slot_values("u", 0.0), slot_values("ln_a", ABSENT_LN_AMPLITUDE),
              slot_values("ln_s", -5.0), slot_values("ln_g", -5.0))
    if deblend:
        spec = slots[0]
        peak = _gather_slots(batch, slots, "peak", 0).astype(np.int64)
        peak_index = jnp.asarray((spec * width + pad + peak).astype(np.int32))
        tau_obs = jnp.asarray(-np.log(np.clip(flux[spec, peak], 1e-3, 1.0)))
        ln_a = _deblend(problem, params, peak_index, tau_obs, max_shift, settings.deblend)
        params = (params[0], ln_a, *params[2:])
        _scatter_slots(batch, slots, "a0", ln_a)
    lower = tuple(slot_values(k, v) for k, v in
                  (("lo_a", ABSENT_LN_AMPLITUDE), ("lo_s", -5.0), ("lo_g", -5.0)))
    upper = tuple(slot_values(k, v) for k, v in
                  (("hi_a", ABSENT_LN_AMPLITUDE), ("hi_s", -5.0), ("hi_g", -5.0),
                   ("hi_f", 0.0)))
    params, history, model_pad = _train(
        problem, params, lower, upper, jnp.asarray(flux_pad), jnp.asarray(weight),
        max_shift, jnp.asarray(settings.learning_rate), settings.epochs,
    )
    for name, value in zip(("u", "ln_a", "ln_s", "ln_g"), params):
        _scatter_slots(batch, slots, name, value)
    model = np.asarray(model_pad, dtype=np.float64)[:, pad : pad + n_pix]
    return np.asarray(history).T, model, (slots[0].size, *problem.shapes)


def _clone_batch(wl, flux, good, settings: CloneSettings):
    """Clone a batch of validated spectra (B, n_pix) sharing one wavelength grid.

    Returns (lines per spectrum, loss history (B, passes × epochs), model (B, n_pix)).
    """
    n_spec = flux.shape[0]
    batch = [_initial(wl, 1.0 - flux[b], good[b], settings) for b in range(n_spec)]
    if all(x.n == 0 for x in batch):
        empty = np.zeros((n_spec, settings.epochs * settings.passes))
        return batch, empty, np.ones_like(flux)
    # With a refinement pass, leave room for its added lines in the first pass's
    # problem, so that both passes run the same compiled program.
    headroom = _REFINE_HEADROOM if settings.passes > 1 else 0.0
    history, model, shapes = _fit(wl, flux, good, batch, settings,
                                  deblend=settings.deblend > 0, headroom=headroom)
    histories = [history]
    for _ in range(1, settings.passes):
        # Lines the first detection missed (mostly blends) show in the residual; all
        # lines are then refitted from their current values.
        batch = [
            x.concat(_initial(wl, 1.0 - flux[b] / np.maximum(model[b], 1e-6), good[b],
                              settings, taken=x.mu0))
            for b, x in enumerate(batch)
        ]
        history, model, shapes = _fit(wl, flux, good, batch, settings, at_least=shapes)
        histories.append(history)
    return batch, np.concatenate(histories, axis=-1), model


def _results(wl, flux, good, batch, history, model, settings, n_bad) -> list[CloneResult]:
    """CloneResults (lines sorted by identifier) from the batched core's output."""
    out = []
    for b, x in enumerate(batch):
        order = np.argsort(x.mu0, kind="stable")
        center = x.mu0 + settings.max_shift * np.tanh(x.u)
        lines = LineList(center[order], x.ln_a[order], x.ln_s[order], x.ln_g[order])
        initial = LineList(x.mu0[order], x.a0[order], x.s0[order], x.g0[order])
        r = (model[b] - flux[b]) * good[b]
        rms = math.sqrt(float(np.sum(r * r) / np.sum(good[b])))
        out.append(CloneResult(
            lines=lines, initial_lines=initial, line_id=jnp.asarray(np.round(x.mu0[order], 2)),
            loss_history=jnp.asarray(history[b]), residual_rms=jnp.asarray(rms),
            model_flux=jnp.asarray(model[b]), n_masked=int(n_bad[b]),
        ))
    return out


def clone(
    wavelength,
    flux,
    prominence: float = 0.005,
    wing_cut: int = 6000,
    epochs: int = 100,
    learning_rate: float = 0.05,
    *,
    mask=None,
    max_shift: float = 0.05,
    passes: int = 2,
    deblend: int = 8,
    amplitude_margin: float = 1.0,
    width_margin: float = 1.1,
    tolerance: float = 1e-5,
) -> CloneResult:
    r"""Clone one continuum-normalised spectrum into a pseudo-Voigt line list.

    Fits :math:`F(\lambda) = \prod_j [1 - a_j V(\lambda - \mu'_j; \sigma_j, \gamma_j)]`
    (blase3D eq. 2) to ``flux`` by Adam on the mean squared residual; see the module
    docstring for detection, initialisation and the bounds.

    Args:
        wavelength: (n_pix,) Å, strictly increasing (float64).
        flux: (n_pix,) continuum-normalised flux; NaN pixels are left out of the loss.
        prominence: minimum peak prominence of detected lines (normalised flux).
        wing_cut: longest window (pixels) over which a line is evaluated during fitting.
        epochs: Adam steps per pass.
        learning_rate: Adam learning rate.
        mask: optional (n_pix,) bool, True where the flux is valid.
        max_shift: bound of |μ' − μ|, Å.
        passes: 2 (default) re-detects lines in the residual and refits; 1 is the paper's.
        deblend: initial amplitude iterations for blends (0 to skip).
        amplitude_margin, width_margin: ln-space room above the initial amplitude and
            width (the optimisation box; the synthesis windows are planned for its edges).
        tolerance: truncation tolerance of the windowed synthesis.

    Returns:
        :class:`CloneResult`. A spectrum with no line above ``prominence`` gives an empty
        line list (0 lines, model flux 1) and a warning.

    Raises:
        ValueError: wavelengths not strictly increasing, flux not normalised (continuum
            far from 1), shapes that do not match, all pixels NaN, or a bad setting.
    """
    settings = CloneSettings(
        prominence=prominence, wing_cut=wing_cut, epochs=epochs, learning_rate=learning_rate,
        max_shift=max_shift, passes=passes, deblend=deblend,
        amplitude_margin=amplitude_margin, width_margin=width_margin, tolerance=tolerance,
    )
    wl, f, good, n_bad = _check_input(wavelength, flux, mask)
    batch, history, model = _clone_batch(wl, f[None], good[None], settings)
    (result,) = _results(wl, f[None], good[None], batch, history, model, settings, [n_bad])
    if result.n_lines == 0:
        warnings.warn(
            f"no line deeper than prominence={settings.prominence:g} in the spectrum "
            f"({wl[0]:.2f}-{wl[-1]:.2f} Å); returning an empty clone (model flux 1). Lower "
            "prominence to detect shallower lines",
            stacklevel=2,
        )
    return result


def clone_grid(
    grid,
    out,
    prominence: float = 0.005,
    wing_cut: int = 6000,
    epochs: int = 100,
    learning_rate: float = 0.05,
    *,
    batch_size: int = 8,
    resume: bool = True,
    overwrite_settings: bool = False,
    progress: bool = True,
    max_nodes: int | None = None,
    callback: Callable[[int, int], None] | None = None,
    grid_file: str | PathLike | None = None,
    max_shift: float = 0.05,
    passes: int = 2,
    deblend: int = 8,
    amplitude_margin: float = 1.0,
    width_margin: float = 1.1,
    tolerance: float = 1e-5,
):
    r"""Clone every existing node of a grid into a clone store, batched and resumable.

    Spectra are cloned ``batch_size`` at a time (one optimisation problem: the batch's
    spectra laid end to end; Adam is elementwise, so each spectrum is optimised exactly
    as by :func:`clone`). After each batch its nodes are written to ``out`` and the file
    is closed, each node group marked ``complete`` only after all its data; a killed run
    loses at most the batch in progress. Run again with the same settings, it skips the
    finished nodes (and redoes incomplete groups, with a warning).

    Args:
        grid: a :class:`~jaxspec.grid.SpectralGrid` with ``normalized=True``, or the path
            of a jaxspec-grid HDF5 file (recorded as the store's ``grid_file``).
        out: the clone store (``.h5``); see :mod:`jaxspec.io.clone_store` for the layout.
        prominence, wing_cut, epochs, learning_rate, max_shift, passes, deblend,
            amplitude_margin, width_margin, tolerance: as for :func:`clone`.
        batch_size: spectra per optimisation problem (the last batch is padded with
            repeats so every batch has the same shape).
        resume: continue an existing ``out`` (default). False: an existing file is an
            error.
        overwrite_settings: continue an existing store whose settings differ (the new
            ones are recorded; a warning says how many nodes used the old ones).
        progress: show a tqdm progress bar (nodes, with ETA).
        max_nodes: stop after cloning this many new nodes (None: all). Handy for
            splitting a long job; the store is resumable either way.
        callback: called as ``callback(n_done, n_total)`` after every batch is written;
            an exception raised there stops the run (finished batches stay in ``out``).
        grid_file: path recorded as ``grid_file`` (default: ``grid`` when it is a path).

    Returns:
        The :class:`~jaxspec.io.clone_store.CloneStore` at ``out``.

    Raises:
        TypeError: ``grid`` is neither a SpectralGrid nor a path.
        ValueError: a grid that is not normalised (or a node whose flux is not), a bad
            setting, or on resume a foreign/corrupt store, a store of another grid, or
            different settings without ``overwrite_settings``.
        FileExistsError: ``out`` exists and ``resume`` is False.
    """
    from tqdm.auto import tqdm

    from jaxspec.grid import SpectralGrid, _fmt_node
    from jaxspec.io.clone_store import CloneStore, CloneStoreWriter, NodeClone
    from jaxspec.io.grid_hdf5 import grid_checksum

    if isinstance(grid, (str, PathLike)):
        grid_file = grid_file if grid_file is not None else Path(grid).resolve()
        grid = SpectralGrid.from_hdf5(grid)
    if not isinstance(grid, SpectralGrid):
        raise TypeError(
            f"grid is a {type(grid).__name__}; pass a jaxspec.grid.SpectralGrid or the path "
            "of a grid file"
        )
    if not grid.normalized:
        raise ValueError(
            "grid.normalized is False: clones model continuum-normalised spectra; normalise "
            "the grid first with jaxspec.preprocess.preprocess_grid (or `jaxspec grid "
            "phoenix` without --raw)"
        )
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; pass an integer >= 1, e.g. 8")
    settings = CloneSettings(
        prominence=prominence, wing_cut=wing_cut, epochs=epochs, learning_rate=learning_rate,
        max_shift=max_shift, passes=passes, deblend=deblend,
        amplitude_margin=amplitude_margin, width_margin=width_margin, tolerance=tolerance,
    )
    writer = CloneStoreWriter(
        out, grid.axes, grid.wavelength, settings.as_dict(), resume=resume,
        overwrite_settings=overwrite_settings,
        grid_file=None if grid_file is None else str(grid_file),
        grid_checksum=grid_checksum(grid),
    )
    params, flat = grid.node_params()
    indices = [tuple(int(i) for i in idx) for idx in zip(*np.unravel_index(flat, grid.shape))]
    todo = [j for j, idx in enumerate(indices) if not writer.done[idx]]
    if max_nodes is not None:
        todo = todo[: max(int(max_nodes), 0)]
    n_total = len(indices)
    n_done = n_total - sum(not writer.done[idx] for idx in indices)
    wl = grid.wavelength
    spectra = grid.flux.reshape(-1, grid.n_pix)
    names = grid.param_names
    bar = tqdm(total=n_total, initial=n_done, disable=not progress, unit="node",
               desc=f"cloning {Path(out).name}", dynamic_ncols=True)
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            rows = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one shape per run
            flux, good, n_bad = [], [], []
            for j in rows:
                where = f"node {_fmt_node(names, params[j])}"
                _, f, g, bad = _check_input(wl, spectra[flat[j]], what=where)
                flux.append(f)
                good.append(g)
                n_bad.append(bad)
            flux, good = np.stack(flux), np.stack(good)
            batch, history, model = _clone_batch(wl, flux, good, settings)
            results = _results(wl, flux, good, batch, history, model, settings, n_bad)
            nodes = [
                NodeClone(
                    index=indices[j], params=params[j],
                    line_id=np.asarray(r.line_id), center=np.asarray(r.lines.center),
                    ln_amplitude=np.asarray(r.lines.ln_amplitude),
                    ln_sigma=np.asarray(r.lines.ln_sigma),
                    ln_gamma=np.asarray(r.lines.ln_gamma),
                    residual_rms=float(r.residual_rms),
                )
                for j, r in zip(chunk, results)
            ]
            writer.write(nodes)
            n_done += len(chunk)
            bar.update(len(chunk))
            bar.set_postfix(rms=f"{np.median([n.residual_rms for n in nodes]):.2g}",
                            lines=int(np.median([n.n_lines for n in nodes])))
            if callback is not None:
                callback(n_done, n_total)
    finally:
        bar.close()
        writer.close()
    return CloneStore(out)
