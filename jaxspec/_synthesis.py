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
    """Cubic interpolation from nodes (..., n + 3) to cells (..., n, h); see module doc."""
    n = nodes.shape[-1] - 3
    return sum(nodes[..., k : k + n, None] * weights[:, k] for k in range(4))


class _Bucket(eqx.Module):
    lines: jax.Array  # (n_b,) int indices into the line list
    size: int = eqx.field(static=True)  # cells (fine) or nodes (coarse)


class Synthesizer(eqx.Module):
    """Precomputed geometry and window plan for fast synthesis on one wavelength grid.

    Built by :func:`plan_windows`; called as ``synth(center, ln_a, ln_sigma, ln_gamma)``.
    """

    pixel_wavelength: jax.Array  # (n_cells, h) float64, padded
    node_wavelength: jax.Array  # (n_cells + 3,) float64: node i at padded pixel (i-1) h
    weights: jax.Array  # (h, 4)
    index_anchor: jax.Array  # (n_knots,) float64 wavelengths of every h-th real pixel
    index_value: jax.Array  # (n_knots,) padded pixel index of those wavelengths
    fine: tuple[_Bucket, ...]
    coarse: tuple[_Bucket, ...]
    h: int = eqx.field(static=True)
    pad_cells: int = eqx.field(static=True)
    n_pix: int = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def pixel_index(self, center):
        """Fractional padded pixel index of wavelength ``center`` (linear beyond the ends)."""
        xa, ya = self.index_anchor, self.index_value
        inner = jnp.interp(center, xa, ya)
        lo_slope = (ya[1] - ya[0]) / (xa[1] - xa[0])
        hi_slope = (ya[-1] - ya[-2]) / (xa[-1] - xa[-2])
        below = ya[0] + (center - xa[0]) * lo_slope
        above = ya[-1] + (center - xa[-1]) * hi_slope
        return jnp.where(center < xa[0], below, jnp.where(center > xa[-1], above, inner))

    def __call__(self, center, ln_amplitude, ln_sigma, ln_gamma):
        dt = jnp.dtype(self.dtype)
        n_cells, h = self.pixel_wavelength.shape
        n_nodes = n_cells + 3
        amp = jnp.exp(ln_amplitude)
        sigma = jnp.exp(ln_sigma)
        gamma = jnp.exp(ln_gamma)
        f = pseudo_voigt_fwhm(sigma, gamma)
        eta = pseudo_voigt_eta(sigma, gamma)
        # Per-line constants of the two profile components (amplitudes in flux units).
        half = 0.5 * f
        lor_amp = (amp * eta * half / jnp.pi).astype(dt)
        half2 = (half * half).astype(dt)
        gsig = f / _FWHM_PER_SIGMA
        gau_amp = (amp * (1.0 - eta) / (gsig * math.sqrt(2.0 * math.pi))).astype(dt)
        gau_k = (0.5 / (gsig * gsig)).astype(dt)
        cell = jnp.floor(self.pixel_index(center) / h).astype(jnp.int32)

        def lorentz_log(x2, i):
            depth = lor_amp[i][..., None] / (x2 + half2[i][..., None])
            return jnp.log1p(-jnp.minimum(depth, _MAX_DEPTH))

        fine = jnp.zeros((n_cells, h), dt)
        for b in self.fine:
            i, m = b.lines, b.size
            c0 = jnp.clip(cell[i] - m // 2, 0, n_cells - m)
            x = (_take_windows(self.pixel_wavelength, c0, m) - center[i][:, None, None]).astype(dt)
            x2 = (x * x).reshape(len(i), m * h)
            lor = lor_amp[i][:, None] / (x2 + half2[i][:, None])
            gau = gau_amp[i][:, None] * jnp.exp(-gau_k[i][:, None] * x2)
            full = jnp.log1p(-jnp.minimum(lor + gau, _MAX_DEPTH)).reshape(len(i), m, h)
            xn = _take_windows(self.node_wavelength, c0, m + 3) - center[i][:, None]
            s = lorentz_log((xn * xn).astype(dt), i)  # (n_b, m + 3)
            interp = _interpolate(s, self.weights.astype(dt))  # (n_b, m, h)
            fine = _add_windows(fine, c0, full - interp)

        coarse = jnp.zeros((n_nodes,), dt)
        for b in self.coarse:
            i, k = b.lines, b.size
            n0 = jnp.clip(cell[i] + 2 - k // 2, 0, n_nodes - k)
            xn = _take_windows(self.node_wavelength, n0, k) - center[i][:, None]
            coarse = _add_windows(coarse, n0, lorentz_log((xn * xn).astype(dt), i))

        log_flux = fine + _interpolate(coarse, self.weights.astype(dt))
        start = self.pad_cells * h
        return jnp.exp(log_flux.reshape(-1)[start : start + self.n_pix])


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
    coarse_factor: float = 0.1,
    dtype: str = "float32",
) -> Synthesizer:
    """Choose per-line fine/coarse windows from concrete line parameters.

    Args:
        wavelength: (n_pix,) strictly increasing, Å.
        ln_amplitude, ln_sigma, ln_gamma: (n_lines,) concrete upper bounds (for a batch
            or a parameter range: the per-line maxima).
        center: (n_lines,) Å, typical centres (used for the local pixel spacing).
        center_span: optional ((n_lines,), (n_lines,)) lowest and highest centre each
            line may take; lines whose wings cannot reach the grid are left out.
        tolerance: per-line truncation threshold in ln flux for the fine windows.
        cell: coarse node spacing ``h`` in pixels.
        coarse_factor: the coarse (Lorentz-wing) windows reach ``coarse_factor ×
            tolerance``, because x^-2 tails of neighbouring lines add up.
        dtype: float dtype of the profile arithmetic.

    Returns:
        A :class:`Synthesizer` for this wavelength grid and line list.
    """
    wl = np.asarray(wavelength, dtype=np.float64)
    n_pix = wl.size
    h = int(cell)
    if h < 2:
        raise ValueError(f"cell: node spacing must be >= 2 pixels, got {cell}")
    a, f, eta = line_shape_np(ln_amplitude, ln_sigma, ln_gamma)
    center = np.asarray(center, dtype=np.float64)
    lo_c, hi_c = (center, center) if center_span is None else map(np.asarray, center_span)
    spacing = np.gradient(wl)
    dl = np.interp(center, wl, spacing)  # local pixel spacing, Å
    hl = h * dl  # node spacing at the line, Å

    lor_area = a * eta
    half = 0.5 * f
    gsig = f / _FWHM_PER_SIGMA
    gau_peak = a * (1.0 - eta) / (gsig * math.sqrt(2.0 * math.pi))
    t = tolerance
    x_gauss = gsig * np.sqrt(2.0 * np.log(np.maximum(gau_peak / t, 1.0)))
    # Interpolation error of the Lorentzian part: c h^4 S, S ~ 120 A w / (pi x^6).
    x_interp = (_CUBIC_ERR * 120.0 / math.pi * lor_area * half * hl**4 / t) ** (1.0 / 6.0)
    x_fine = np.maximum.reduce([x_gauss, x_interp, 4.0 * half, 2.0 * hl])
    # Lorentz wings decay as x^-2 and the truncated tails of neighbouring lines add up,
    # so the coarse windows reach a lower threshold than the fine ones.
    x_coarse = np.sqrt(lor_area * half / (math.pi * t * coarse_factor))

    reach = np.maximum(x_coarse, x_fine)
    keep = (a > 0) & (hi_c + reach >= wl[0]) & (lo_c - reach <= wl[-1])
    keep &= (gau_peak > t * coarse_factor) | (lor_area / (math.pi * half) > t * coarse_factor)
    index = np.flatnonzero(keep)
    m = _round_up(2 * np.ceil(x_fine[index] / hl[index]).astype(np.int64) + 2)
    k = _round_up(
        np.maximum(2 * np.ceil(x_coarse[index] / hl[index]).astype(np.int64) + 4, m + 4)
    )

    n_real_cells = -(-n_pix // h)
    pad = (int(m.max()) if m.size else 4) // 2 + 4
    n_cells = n_real_cells + 2 * pad
    n_nodes = n_cells + 3
    k = np.minimum(k, n_nodes)  # a window never needs more than every node
    if np.any(k < m + 4):  # the whole padded range is smaller than a core window
        raise ValueError(
            f"wavelength: the grid ({n_pix} pixels) is too short for the widest lines' "
            "cores; synthesise with LineList.flux_exact instead"
        )

    # Padded pixel wavelengths: linear extension with the end spacings; one extra cell
    # each side so that every node (padded pixel (i - 1) h) has a wavelength.
    n_tail = n_cells * h - pad * h - n_pix
    ext = np.concatenate(
        [
            wl[0] - spacing[0] * np.arange(pad * h + h, 0, -1),
            wl,
            wl[-1] + spacing[-1] * np.arange(1, n_tail + 3 * h + 1),
        ]
    )
    padded = ext[h : h + n_cells * h]
    node_wl = ext[np.arange(n_nodes) * h]

    knots = np.unique(np.concatenate([np.arange(0, n_pix, h), [n_pix - 1]]))

    def buckets(sizes):
        return tuple(
            _Bucket(jnp.asarray(index[sizes == size], dtype=jnp.int32), int(size))
            for size in np.unique(sizes)
        )

    return Synthesizer(
        pixel_wavelength=jnp.asarray(padded.reshape(n_cells, h)),
        node_wavelength=jnp.asarray(node_wl),
        weights=jnp.asarray(_cubic_weights(h)),
        index_anchor=jnp.asarray(wl[knots]),
        index_value=jnp.asarray(knots + pad * h, dtype=jnp.float64),
        fine=buckets(m),
        coarse=buckets(k),
        h=h,
        pad_cells=pad,
        n_pix=n_pix,
        dtype=dtype,
    )
