r"""Fast windowed synthesis of line-list spectra on two levels (private machinery).

The log flux is a sum over lines of :math:`T_j(\lambda) = \ln[1 - a_j V_j(\lambda)]`.
Evaluating every :math:`T_j` at every pixel costs ``n_lines × n_pix``; evaluating it only
in a fixed window truncates the Lorentzian wings, which decay as :math:`x^{-2}` and need
windows of thousands of pixels to reach 1e-4 accuracy. We split each term in two:

.. math::
    T_j = \underbrace{\left(T_j - \mathcal{I}[S_j]\right)}_{\text{fine}}
          + \underbrace{\mathcal{I}[S_j]}_{\text{coarse}},
    \qquad S_j(\lambda) = \ln\left[1 - a_j \eta_j L(\lambda - \mu_j; f_j/2)\right],

where :math:`S_j` is the smooth Lorentzian part of the line and :math:`\mathcal{I}` is
cubic Lagrange interpolation from *coarse nodes* placed every ``h`` pixels (in pixel-index
space, so any smooth wavelength grid works). Because :math:`\mathcal{I}` is linear,
:math:`\sum_j \mathcal{I}[S_j] = \mathcal{I}[\sum_j S_j]`: the coarse parts of all lines
are summed on the nodes (a ``1/h``-sized array) and interpolated once.

* The fine part decays like the Gaussian core plus the interpolation error of
  :math:`S_j`, which falls as :math:`x^{-6}`: a short window of ``m_j`` cells of ``h``
  pixels suffices.
* The coarse part is the Lorentzian wing, evaluated on nodes only, in a window of
  ``K_j`` nodes that reaches where it falls below the tolerance.

Window sizes depend on the line parameters, so they are chosen from concrete values
(``plan_windows``) and rounded up to a few static sizes; lines are grouped into buckets
of equal size so that every bucket is one dense gather/evaluate/scatter-add.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.profiles import pseudo_voigt_eta, pseudo_voigt_fwhm

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_MAX_DEPTH = 1.0 - 1e-7
# Error constant of cubic Lagrange interpolation on nodes (-1, 0, 1, 2):
# max |(t+1) t (t-1) (t-2)| / 4! = (9/16) / 24.
_CUBIC_ERR = 9.0 / 16.0 / 24.0


def _window_sizes() -> np.ndarray:
    """Allowed window sizes: 4, 6, 8, 12, 16, 24, ... (ratio <= 1.5 between steps)."""
    sizes = []
    k = 4
    while k < 2**24:
        sizes += [k, 3 * k // 2]
        k *= 2
    return np.array(sorted(set(sizes)))


_SIZES = _window_sizes()


def _round_up(n: np.ndarray) -> np.ndarray:
    return _SIZES[np.searchsorted(_SIZES, np.maximum(n, _SIZES[0]))]


def _merge_sizes(sizes: np.ndarray, keep: np.ndarray, max_buckets: int) -> np.ndarray:
    """Round window sizes up into at most ``max_buckets`` distinct values.

    Partitions the sorted distinct sizes of the kept lines into contiguous groups, each
    taking its largest size, minimising the total evaluated size (dynamic programming).
    """
    values, counts = np.unique(sizes[keep], return_counts=True)
    n, b = values.size, max(1, int(max_buckets))
    if n <= b:
        return sizes
    # cost[i][j]: lines with sizes values[i..j] all evaluated at values[j].
    cum = np.concatenate([[0], np.cumsum(counts)])
    best = np.full((b + 1, n + 1), np.inf)
    cut = np.zeros((b + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    for g in range(1, b + 1):
        for j in range(1, n + 1):
            for i in range(j):
                c = best[g - 1, i] + (cum[j] - cum[i]) * values[j - 1]
                if c < best[g, j]:
                    best[g, j], cut[g, j] = c, i
    g = int(np.argmin(best[:, n]))
    tops, j = [], n
    while j > 0:
        tops.append(values[j - 1])
        j, g = cut[g, j], g - 1
    tops = np.sort(np.array(tops))
    merged = sizes.copy()
    merged[keep] = tops[np.searchsorted(tops, sizes[keep])]
    return merged


def _cubic_weights(h: int) -> np.ndarray:
    """(h, 4) weights of nodes at (-1, 0, 1, 2) for offsets t = r/h, r = 0..h-1."""
    t = np.arange(h) / h
    return np.stack(
        [
            -t * (t - 1) * (t - 2) / 6,
            (t + 1) * (t - 1) * (t - 2) / 2,
            -(t + 1) * t * (t - 2) / 2,
            (t + 1) * t * (t - 1) / 6,
        ],
        axis=1,
    )


def line_shape_np(ln_amplitude, ln_sigma, ln_gamma):
    """Concrete (numpy) a, total FWHM f and Lorentz fraction eta of each line."""
    a = np.exp(np.asarray(ln_amplitude, dtype=np.float64))
    sigma = np.exp(np.asarray(ln_sigma, dtype=np.float64))
    gamma = np.exp(np.asarray(ln_gamma, dtype=np.float64))
    f = np.asarray(pseudo_voigt_fwhm(sigma, gamma))
    eta = np.asarray(pseudo_voigt_eta(sigma, gamma))
    return a, f, eta


def _take_windows(array, start, size):
    """array[start_b : start_b + size] (along axis 0) for every b → (n_b, size, ...)."""
    slice_sizes = (size,) + array.shape[1:]
    dnums = jax.lax.GatherDimensionNumbers(
        offset_dims=tuple(range(1, array.ndim + 1)),
        collapsed_slice_dims=(),
        start_index_map=(0,),
    )
    return jax.lax.gather(
        array, start[:, None], dnums, slice_sizes, mode=jax.lax.GatherScatterMode.CLIP
    )


def _add_windows(array, start, updates):
    """array[start_b : start_b + size] += updates[b] for every b (overlaps accumulate)."""
    dnums = jax.lax.ScatterDimensionNumbers(
        update_window_dims=tuple(range(1, updates.ndim)),
        inserted_window_dims=(),
        scatter_dims_to_operand_dims=(0,),
    )
    return jax.lax.scatter_add(
        array, start[:, None], updates, dnums, mode=jax.lax.GatherScatterMode.CLIP
    )


def _interpolate(nodes, weights):
    """Cubic interpolation from nodes (..., n + 3) to cells (..., n, h); see module doc.

    ``weights`` is (h, 4) for index-space interpolation shared by every cell, or
    (..., n, h, 4) with one set per cell (wavelength-space Lagrange weights).
    """
    n = nodes.shape[-1] - 3
    return sum(nodes[..., k : k + n, None] * weights[..., k] for k in range(4))


def _lagrange_weights(x: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Cubic Lagrange weights of ``nodes`` (n, 4) at points ``x`` (n, h) → (n, h, 4)."""
    w = np.ones(x.shape + (4,))
    for k in range(4):
        for j in range(4):
            if j != k:
                w[..., k] *= (x - nodes[:, j, None]) / (nodes[:, k, None] - nodes[:, j, None])
    return w


class _Bucket(eqx.Module):
    lines: jax.Array  # (n_b,) int indices into the line list
    size: int = eqx.field(static=True)  # window length: cells (windowed levels) or nodes (top)


class _Level(eqx.Module):
    """One level of the hierarchy: its padded sample wavelengths and its windows.

    Level 0 samples are the pixels; the samples of level l + 1 are the nodes of level l
    (one every ``h`` samples, node ``i`` at sample ``(i - 1) h``), padded on both sides.
    """

    wavelength: jax.Array  # (n_cells * h,) float64, padded, increasing
    buckets: tuple[_Bucket, ...]
    # (n_cells, h, 4) wavelength-space weights from the next level's nodes, on grids
    # whose spacing is not smooth in pixel index (else None: shared index weights).
    cell_weights: jax.Array | None
    offset: int = eqx.field(static=True)  # index of the first real sample (pixel or node)
    n_real: int = eqx.field(static=True)  # number of real samples


class Synthesizer(eqx.Module):
    """Precomputed geometry and window plan for fast synthesis on one wavelength grid.

    Built by :func:`plan_windows`; called as ``synth(center, ln_a, ln_sigma, ln_gamma)``
    with (n_lines,) arrays, returning (n_pix,) flux. Levels ``0 .. L-1`` hold windows of
    ``T - I[S]`` (level 0) or ``S - I[S]`` (higher levels) in cells of ``h`` samples; the
    top level holds ``S`` itself on its samples.
    """

    levels: tuple[_Level, ...]
    weights: jax.Array  # (h, 4) cubic Lagrange weights
    h: int = eqx.field(static=True)
    n_pix: int = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    @property
    def fine(self):
        """Buckets of the full-resolution level (for diagnostics)."""
        return self.levels[0].buckets

    @property
    def coarse(self):
        """Buckets of every coarser level (for diagnostics)."""
        return tuple(b for level in self.levels[1:] for b in level.buckets)

    def n_evaluations(self) -> int:
        """Profile evaluations per spectrum (samples covered by all windows)."""
        h, total = self.h, 0
        for depth, level in enumerate(self.levels):
            per = h if depth < len(self.levels) - 1 else 1
            total += sum(b.size * per * b.lines.shape[0] for b in level.buckets)
        return total

    def __call__(self, center, ln_amplitude, ln_sigma, ln_gamma):
        dt = jnp.dtype(self.dtype)
        h = self.h
        weights = self.weights.astype(dt)
        amp = jnp.exp(ln_amplitude)
        f = pseudo_voigt_fwhm(jnp.exp(ln_sigma), jnp.exp(ln_gamma))
        eta = pseudo_voigt_eta(jnp.exp(ln_sigma), jnp.exp(ln_gamma))
        # Per-line constants of the two profile components (amplitudes in flux units).
        half = 0.5 * f
        lor_amp = (amp * eta * half / jnp.pi).astype(dt)
        half2 = (half * half).astype(dt)
        gsig = f / _FWHM_PER_SIGMA
        gau_amp = (amp * (1.0 - eta) / (gsig * math.sqrt(2.0 * math.pi))).astype(dt)
        gau_k = (0.5 / (gsig * gsig)).astype(dt)

        def offsets2(wl, i):
            x = (wl - center[i].reshape((-1,) + (1,) * (wl.ndim - 1))).astype(dt)
            return x * x

        def smooth(x2, i):  # S = ln(1 - a eta L(x; f/2))
            shape = (-1,) + (1,) * (x2.ndim - 1)
            depth = lor_amp[i].reshape(shape) / (x2 + half2[i].reshape(shape))
            return jnp.log1p(-jnp.minimum(depth, _MAX_DEPTH))

        def full(x2, i):  # T = ln(1 - a V(x))
            shape = (-1,) + (1,) * (x2.ndim - 1)
            lor = lor_amp[i].reshape(shape) / (x2 + half2[i].reshape(shape))
            gau = gau_amp[i].reshape(shape) * jnp.exp(-gau_k[i].reshape(shape) * x2)
            return jnp.log1p(-jnp.minimum(lor + gau, _MAX_DEPTH))

        sums = []
        top = len(self.levels) - 1
        for depth, level in enumerate(self.levels):
            pos = jnp.searchsorted(level.wavelength, center).astype(jnp.int32)
            if depth == top:
                acc = jnp.zeros(level.wavelength.shape, dt)
                for b in level.buckets:
                    i, k = b.lines, b.size
                    n0 = jnp.clip(pos[i] - k // 2, 0, level.wavelength.size - k)
                    x2 = offsets2(_take_windows(level.wavelength, n0, k), i)
                    acc = _add_windows(acc, n0, smooth(x2, i))
                sums.append(acc)
                break
            cells = level.wavelength.reshape(-1, h)
            nodes = self.levels[depth + 1]
            evaluate = full if depth == 0 else smooth
            acc = jnp.zeros(cells.shape, dt)
            for b in level.buckets:
                i, m = b.lines, b.size
                c0 = jnp.clip(pos[i] // h - m // 2, 0, cells.shape[0] - m)
                here = evaluate(offsets2(_take_windows(cells, c0, m), i), i)
                node_wl = _take_windows(nodes.wavelength, nodes.offset + c0, m + 3)
                w = weights if level.cell_weights is None else _take_windows(
                    level.cell_weights.astype(dt), c0, m
                )
                interp = _interpolate(smooth(offsets2(node_wl, i), i), w)
                acc = _add_windows(acc, c0, here - interp)
            sums.append(acc)

        total = sums[top]
        for depth in range(top - 1, -1, -1):
            nodes = self.levels[depth + 1]
            n_cells = sums[depth].shape[0]
            node_values = total[nodes.offset : nodes.offset + n_cells + 3]
            level = self.levels[depth]
            w = weights if level.cell_weights is None else level.cell_weights.astype(dt)
            total = (sums[depth] + _interpolate(node_values, w)).reshape(-1)
        start = self.levels[0].offset
        return jnp.exp(total[start : start + self.n_pix])


def _extend(wl: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Wavelength at (integer) pixel positions, linear beyond the ends."""
    n = wl.size
    positions = np.round(positions).astype(np.int64)
    inner = wl[np.clip(positions, 0, n - 1)]
    below = wl[0] + (positions - 0) * (wl[1] - wl[0])
    above = wl[-1] + (positions - (n - 1)) * (wl[-1] - wl[-2])
    return np.where(positions < 0, below, np.where(positions > n - 1, above, inner))


def plan_windows(
    wavelength: np.ndarray,
    ln_amplitude: np.ndarray,
    ln_sigma: np.ndarray,
    ln_gamma: np.ndarray,
    center: np.ndarray,
    *,
    center_span: tuple[np.ndarray, np.ndarray] | None = None,
    tolerance: float = 1e-6,
    cell: int = 16,
    levels: int | None = None,
    coarse_factor: float = 0.1,
    max_buckets: int = 4,
    dtype: str = "float32",
) -> Synthesizer:
    """Choose per-line windows on every level from concrete line parameters.

    Args:
        wavelength: (n_pix,) strictly increasing, Å.
        ln_amplitude, ln_sigma, ln_gamma: (n_lines,) concrete upper bounds (for a batch
            or a parameter range: the per-line maxima).
        center: (n_lines,) Å, typical centres (used for the local pixel spacing).
        center_span: optional ((n_lines,), (n_lines,)) lowest and highest centre each
            line may take; lines whose wings cannot reach the grid are left out.
        tolerance: per-line truncation threshold in ln flux for the windowed levels.
        cell: node spacing ``h`` between levels, in samples of the level below.
        levels: number of interpolated levels above the pixels (default: 2 for grids of
            at least 64 h² pixels, else 1).
        coarse_factor: the top level (the bare Lorentz wings) reaches ``coarse_factor ×
            tolerance``, because x^-2 tails of neighbouring lines add up.
        max_buckets: most distinct window sizes per level (each is one gather/evaluate/
            scatter block: fewer blocks compile faster, more waste less work).
        dtype: float dtype of the profile arithmetic.

    Returns:
        A :class:`Synthesizer` for this wavelength grid and line list.
    """
    wl = np.asarray(wavelength, dtype=np.float64)
    n_pix = wl.size
    h = int(cell)
    if h < 2:
        raise ValueError(f"cell: node spacing must be >= 2 samples, got {cell}")
    if levels is None:
        levels = 2 if n_pix >= 64 * h * h else 1
    a, f, eta = line_shape_np(ln_amplitude, ln_sigma, ln_gamma)
    center = np.asarray(center, dtype=np.float64)
    lo_c, hi_c = (center, center) if center_span is None else map(np.asarray, center_span)
    dl = np.interp(center, wl, np.gradient(wl))  # local pixel spacing, Å

    lor_area = a * eta
    half = 0.5 * f
    gsig = f / _FWHM_PER_SIGMA
    gau_peak = a * (1.0 - eta) / (gsig * math.sqrt(2.0 * math.pi))
    t = tolerance
    x_coarse = np.sqrt(lor_area * half / (math.pi * t * coarse_factor))

    def interp_reach(spacing):
        # Interpolation error of the Lorentz part: c h^4 S, S ~ 120 A w / (pi x^6).
        reach = (_CUBIC_ERR * 120.0 / math.pi * lor_area * half * spacing**4 / t) ** (1 / 6)
        return np.maximum(reach, 2.0 * spacing)

    x_gauss = gsig * np.sqrt(2.0 * np.log(np.maximum(gau_peak / t, 1.0)))
    x0 = np.maximum.reduce([x_gauss, interp_reach(h * dl), 4.0 * half])
    reach = np.maximum(x_coarse, x0)
    keep = (a > 0) & (hi_c + reach >= wl[0]) & (lo_c - reach <= wl[-1])
    keep &= np.maximum(gau_peak, lor_area / (math.pi * half)) > t * coarse_factor

    # Window sizes, in cells of h samples, level by level; each level's sizes are merged
    # into at most `max_buckets` distinct values (fewer gathers: faster compiles) before
    # the next level's coverage is derived from them.
    merge = functools.partial(_merge_sizes, keep=keep, max_buckets=max_buckets)
    sizes = [merge(_round_up(2 * np.ceil(x0 / (h * dl)).astype(np.int64) + 2))]
    for depth in range(1, levels):
        spacing = h ** (depth + 1) * dl
        need = 2 * np.ceil(interp_reach(spacing) / spacing).astype(np.int64) + 2
        cover = 2 * np.ceil((sizes[-1] // 2 + 4) / h).astype(np.int64) + 2
        sizes.append(merge(_round_up(np.maximum(need, cover))))
    top_need = 2 * np.ceil(x_coarse / (h**levels * dl)).astype(np.int64) + 4
    sizes.append(merge(_round_up(np.maximum(top_need, sizes[-1] + 6))))

    # Sample positions of every level, in pixel units relative to real pixel 0.
    steps = np.diff(wl)
    smooth_grid = bool(np.all(np.abs(np.diff(steps) / steps[:-1]) < 1e-3)) if n_pix > 2 else True
    built, first, step, n_real = [], 0.0, 1, n_pix
    for depth in range(levels + 1):
        window = sizes[depth][keep]
        widest = int(window.max()) if window.size else 4
        if depth == levels:
            # The top level may clip its windows at the ends: it is exact wherever it
            # evaluates, and clipping keeps the nodes the level below used (K >= m + 6).
            pad = 4
            n_samples = n_real + 2 * pad
            chosen = np.minimum(sizes[depth], n_samples)
            inside = keep
        else:
            # Windowed levels pad by a full widest window, so that every line whose
            # window could touch a real sample has its whole window inside the array.
            pad_cells = widest + 4
            n_cells = -(-n_real // h) + 2 * pad_cells
            pad, n_samples = pad_cells * h, n_cells * h
            chosen = np.minimum(sizes[depth], n_cells)
            margin = (pad_cells - chosen // 2 - 1) * h * step * dl  # Å, no-clip zone
            inside = keep & (hi_c >= wl[0] - margin) & (lo_c <= wl[-1] + margin)
        positions = first + step * (np.arange(n_samples) - pad)
        index = np.flatnonzero(inside)
        buckets = tuple(
            _Bucket(jnp.asarray(index[chosen[index] == size], dtype=jnp.int32), int(size))
            for size in np.unique(chosen[index])
        )
        built.append([_extend(wl, positions), buckets, pad, n_real])
        # The nodes of this level (node i at sample (i - 1) h) are the next level's
        # real samples.
        first, step, n_real = positions[0] - step * h, step * h, n_samples // h + 3
    levels_out = []
    for depth, (level_wl, buckets, pad, n_real) in enumerate(built):
        cell_weights = None
        if not smooth_grid and depth < levels:
            # Kinks in the pixel spacing: interpolate in wavelength, not in pixel index.
            nxt_wl, _, nxt_pad, _ = built[depth + 1]
            n_cells = level_wl.size // h
            node_wl = nxt_wl[nxt_pad : nxt_pad + n_cells + 3]
            corners = np.stack([node_wl[k : k + n_cells] for k in range(4)], axis=1)
            cell_weights = jnp.asarray(
                _lagrange_weights(level_wl.reshape(n_cells, h), corners), dtype=dtype
            )
        levels_out.append(_Level(jnp.asarray(level_wl), buckets, cell_weights, pad, n_real))
    return Synthesizer(
        levels=tuple(levels_out),
        weights=jnp.asarray(_cubic_weights(h)),
        h=h,
        n_pix=n_pix,
        dtype=dtype,
    )
