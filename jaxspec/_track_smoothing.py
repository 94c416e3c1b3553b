r"""The smoothing solve of the joint fit (:func:`jaxspec.refine.refine`, ``presmooth=``).

Adam moves every node value by at most ~its learning rate per epoch, so the curvature
penalty of the joint fit would need hundreds of epochs to pull a rough line track
straight. This solves for the smooth tracks at once, with each node's misfit replaced by
its local quadratic model around the clone's values:

.. math::
    \min_v \sum_{n,l} (v_{nl} - v^0_{nl})^\top H_{nl} (v_{nl} - v^0_{nl})
        + P_\lambda(v), \qquad P_\lambda(v) = v^\top Q v,

with :math:`P_\lambda` the :class:`~jaxspec.refine.CurvaturePenalty` (weights λ folded in,
a quadratic form) and :math:`H_{nl}` the 4 × 4 Gauss–Newton block of line l alone at node
n, in the units of the per-node mean squared flux misfit:

.. math::
    H_{nl} = \frac{1}{n_{pix}} \sum_i \frac{\partial d_{nl}(\lambda_i)}{\partial\theta}
        \frac{\partial d_{nl}(\lambda_i)}{\partial\theta}^\top ,

:math:`d = a V(\lambda - \mu'; σ, γ)` the line's depth profile and θ = (μ' − μ, ln a,
ln σ, ln γ) (a line alone has flux 1 − d, so this is :math:`J^\top J / n_{pix}`). A line
wider than 8 pixels is integrated over :math:`x = f \sinh t` (f its FWHM; ±60 FWHM) and
divided by the pixel step; a narrower one is summed over the pixels around its centre.
The directions the flux does not see (the Lorentzian width of a Gaussian-dominated line,
and the reverse) cost nothing in :math:`H` and are set by the penalty alone: they are
what the clones leave rough. The solution of :math:`(H + Q + \epsilon)\,v = H v^0 + \epsilon v^0`
is found by conjugate gradients preconditioned with the 4 × 4 diagonal blocks; a ridge ε
of 10⁻³ of each column's median sensitivity keeps directions neither term constrains in
place. Only lines wider than 2 pixels and deeper than 10⁻³ at a node move there: the
widths of a narrower or weaker line are invisible, and solving for them is ill-posed
(measured: steps of tens in ln σ). Overlapping lines make the true misfit stiffer than
the sum of isolated blocks, so the solve smooths a little more than the flux allows;
the Adam epochs after it correct the misfit.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.lines import LineTable
from jaxspec.profiles import pseudo_voigt, pseudo_voigt_fwhm

# Quadrature of a line's profile in units of its FWHM: x = f sinh(t), t uniform, so the
# core is sampled at ~0.02 FWHM and the Lorentzian wings out to ±60 FWHM.
_QUAD_T = np.linspace(-math.asinh(60.0), math.asinh(60.0), 241)
_CHUNK = 16384
# Lines narrower than _PIX_BROAD pixels (FWHM) are summed over the _QUAD_T.size pixels
# around their centre instead.
_PIX_BROAD = 8.0
_PIX_HALF = (_QUAD_T.size - 1) // 2


def fwhm_and_depth(values) -> tuple[np.ndarray, np.ndarray]:
    """FWHM (Å, Ida et al. 2000) and peak depth min(a V(0), 1) of node values
    ``(..., 4)`` (μ' − μ, ln a, ln σ, ln γ), each ``(...)`` float64."""
    v = np.asarray(values, dtype=np.float64)
    sigma = np.exp(np.clip(v[..., LineTable.LN_SIGMA], -30, 30))
    gamma = np.exp(np.clip(v[..., LineTable.LN_GAMMA], -30, 30))
    peak = np.asarray(pseudo_voigt(0.0, sigma, gamma))  # V(0), 1/Å
    depth = np.minimum(np.exp(np.clip(v[..., LineTable.LN_AMPLITUDE], -700, 50)) * peak, 1.0)
    return np.asarray(pseudo_voigt_fwhm(sigma, gamma)), depth


@jax.jit
def _blocks(theta, step, frac, n_pix):
    u = jnp.sinh(jnp.asarray(_QUAD_T))
    du = jnp.cosh(jnp.asarray(_QUAD_T)) * float(_QUAD_T[1] - _QUAD_T[0])
    offsets = jnp.arange(-_PIX_HALF, _PIX_HALF + 1, dtype=theta.dtype)

    def one(th, st, ph):
        sigma, gamma = jnp.exp(th[LineTable.LN_SIGMA]), jnp.exp(th[LineTable.LN_GAMMA])
        fwhm = pseudo_voigt_fwhm(sigma, gamma)
        broad = fwhm > _PIX_BROAD * st
        # broad lines: the integral over x = fwhm sinh(t); narrow ones: the pixels
        # themselves (a line narrower than a pixel is seen only where pixels sample it)
        x = jnp.where(broad, fwhm * u, (offsets - ph) * st)
        w = jnp.where(broad, fwhm * du / st, 1.0) / n_pix

        def depth(t):
            return jnp.exp(t[LineTable.LN_AMPLITUDE]) * pseudo_voigt(
                x - t[LineTable.SHIFT], jnp.exp(t[LineTable.LN_SIGMA]),
                jnp.exp(t[LineTable.LN_GAMMA]))

        jac = jax.jacfwd(depth)(th)  # (K, 4)
        return jnp.einsum("k,ki,kj->ij", w, jac, jac)

    return jax.vmap(one)(theta, step, frac)


def line_blocks(flat: np.ndarray, present: np.ndarray, center: np.ndarray,
                wavelength: np.ndarray) -> np.ndarray:
    r"""Isolated-line Gauss–Newton blocks :math:`H_{nl}` (module docstring).

    Args:
        flat: ``(n_nodes, n_lines, 4)`` node values (μ' − μ Å, ln a, ln σ, ln γ).
        present: ``(n_nodes, n_lines)`` bool, the entries fitted.
        center: ``(n_lines,)`` Å, reference centres μ.
        wavelength: ``(n_pix,)`` Å, the pixels of the misfit (step and count).

    Returns:
        ``(n_nodes, n_lines, 4, 4)`` float64, zero where not ``present``, in units of
        the per-node mean squared flux per unit² of each column.
    """
    flat = np.asarray(flat, dtype=np.float64)
    out = np.zeros(flat.shape + (flat.shape[-1],))
    idx = np.nonzero(present)
    if idx[0].size == 0:
        return out
    theta = flat[idx]
    theta[:, LineTable.LN_AMPLITUDE] = np.clip(theta[:, LineTable.LN_AMPLITUDE], -100, 50)
    theta[:, LineTable.LN_SIGMA:] = np.clip(theta[:, LineTable.LN_SIGMA:], -30, 30)
    wl = np.asarray(wavelength, dtype=np.float64)
    mu = np.asarray(center, dtype=np.float64)[idx[1]] + theta[:, LineTable.SHIFT]
    if wl.size > 1:
        step = np.interp(mu, wl, np.gradient(wl))
        pos = np.interp(mu, wl, np.arange(wl.size))
        frac = pos - np.round(pos)  # the centre's offset from the nearest pixel, in pixels
    else:
        step, frac = np.ones(theta.shape[0]), np.zeros(theta.shape[0])
    blocks = []
    for start in range(0, theta.shape[0], _CHUNK):  # fixed chunk: one compiled program
        sl = slice(start, start + _CHUNK)
        pad = _CHUNK - theta[sl].shape[0]
        th, st, ph = (np.concatenate([a[sl], np.repeat(a[sl][:1], pad, 0)])
                      for a in (theta, step, frac))
        blocks.append(np.asarray(_blocks(jnp.asarray(th), jnp.asarray(st), jnp.asarray(ph),
                                         float(wl.size)))[: _CHUNK - pad])
    out[idx] = np.concatenate(blocks)
    return out


class SmoothingSystem(eqx.Module):
    """The system of the smoothing solve (module docstring), dense over
    ``(n_nodes, n_lines, 4)``; entries outside ``mask`` are held fixed.

    Attributes:
        blocks: ``(n_nodes, n_lines, 4, 4)`` :math:`H_{nl}` (:func:`line_blocks`).
        mask: ``(n_nodes, n_lines, 1)`` 1.0 where the entry is fitted.
        penalty: the λ-weighted curvature penalty (or None).
        floor: ``(n_nodes, n_lines, 4)`` a ridge keeping directions the flux does not see
            in place.
        penalty_diag: ``(n_nodes, n_lines, 4)`` the diagonal of Q (for the
            preconditioner).
    """

    blocks: jax.Array
    mask: jax.Array
    penalty: eqx.Module | None
    floor: jax.Array
    penalty_diag: jax.Array

    @classmethod
    def build(cls, blocks: np.ndarray, mask: np.ndarray, penalty) -> SmoothingSystem:
        blocks = np.asarray(blocks, dtype=np.float64)
        # A ridge per column, 1e-3 of the column's median sensitivity: directions the
        # flux does not see (the widths of a line narrower than a pixel) stay put unless
        # the penalty moves them, instead of being left to the solver's round-off.
        diag_h = np.diagonal(blocks, axis1=-2, axis2=-1)
        seen = diag_h[mask] if mask.any() else np.ones((1, blocks.shape[-1]))
        floor = np.broadcast_to(1e-3 * np.median(np.where(seen > 0, seen, np.nan), axis=0),
                                diag_h.shape)
        floor = np.where(np.isfinite(floor), floor, 1.0)
        diag = np.zeros(blocks.shape[:-1])
        if penalty is not None:
            index, coef = np.asarray(penalty.index), np.asarray(penalty.coef, dtype=np.float64)
            weight = np.asarray(penalty.weight, dtype=np.float64)
            for j in range(index.shape[1]):
                np.add.at(diag, index[:, j], coef[:, j, None, None] ** 2 * weight)
        return cls(jnp.asarray(blocks), jnp.asarray(mask[..., None], dtype=jnp.float64),
                   penalty, jnp.asarray(floor), jnp.asarray(diag))

    def penalty_matvec(self, x):
        """Q x (the penalty's Hessian / 2 times x)."""
        if self.penalty is None:
            return jnp.zeros_like(x)
        return 0.5 * jax.grad(lambda y: self.penalty(y))(x)

    @eqx.filter_jit
    def solve(self, rhs, tol: float = 1e-4, max_iter: int = 300):
        """Δ with ``(H + Q + floor) Δ = rhs`` on the masked entries.

        Returns ``(Δ, iterations, relative residual)``.
        """
        h = self.blocks
        eye = jnp.eye(h.shape[-1], dtype=h.dtype)

        def matvec(x):
            out = jnp.einsum("nlkm,nlm->nlk", h, x) + self.floor * x + self.penalty_matvec(x)
            return self.mask * out

        pre = jnp.linalg.inv(h + (self.floor + self.penalty_diag)[..., None] * eye
                             + (1.0 - self.mask[..., None]) * eye)

        def precondition(r):
            return self.mask * jnp.einsum("nlkm,nlm->nlk", pre, r)

        b = self.mask * rhs
        b_norm = jnp.sqrt(jnp.sum(b * b))
        x = jnp.zeros_like(b)
        r = b
        z = precondition(r)
        p = z
        rz = jnp.sum(r * z)

        def cond(c):
            _, r, _, _, k = c
            return (k < max_iter) & (jnp.sqrt(jnp.sum(r * r)) > tol * b_norm)

        def body(c):
            x, r, p, rz, k = c
            ap = matvec(p)
            alpha = rz / jnp.sum(p * ap)
            x = x + alpha * p
            r = r - alpha * ap
            z = precondition(r)
            rz_new = jnp.sum(r * z)
            p = z + (rz_new / rz) * p
            return x, r, p, rz_new, k + 1

        x, r, _, _, k = jax.lax.while_loop(cond, body, (x, r, p, rz, 0))
        return x, k, jnp.sqrt(jnp.sum(r * r)) / jnp.where(b_norm > 0, b_norm, 1.0)


def smooth_tracks(flat, present: np.ndarray, center: np.ndarray, wavelength: np.ndarray,
                  penalty, *, min_fwhm_px: float = 2.0, min_depth: float = 1e-3,
                  tol: float = 1e-4, max_iter: int = 300):
    """The smoothing solve (module docstring).

    Args:
        flat: ``(n_nodes, n_lines, 4)`` node values v⁰ (μ' − μ Å, ln a, ln σ, ln γ).
        present: ``(n_nodes, n_lines)`` bool, the entries fitted (detected, trained).
        center: ``(n_lines,)`` Å, reference centres μ.
        wavelength: ``(n_pix,)`` Å, the pixels of the misfit.
        penalty: the λ-weighted :class:`~jaxspec.refine.CurvaturePenalty`.
        min_fwhm_px, min_depth: entries of narrower or weaker lines are held.
        tol, max_iter: conjugate gradients' relative residual and iteration cap.

    Returns:
        ``(values, info)``: the smoothed ``(n_nodes, n_lines, 4)`` values (the dtype of
        ``flat``) and ``{"moved", "iterations", "residual"}``.
    """
    v0 = np.asarray(flat, dtype=np.float64)
    fwhm, depth = fwhm_and_depth(v0)
    wl = np.asarray(wavelength, dtype=np.float64)
    step = float(np.median(np.diff(wl))) if wl.size > 1 else 1.0
    moving = np.asarray(present) & (fwhm > min_fwhm_px * step) & (depth > min_depth)
    system = SmoothingSystem.build(line_blocks(v0, moving, center, wl), moving, penalty)
    start = jnp.asarray(v0)
    delta, k, res = system.solve(-system.penalty_matvec(start), tol=tol, max_iter=max_iter)
    values = np.asarray(start + delta).astype(np.asarray(flat).dtype)
    return values, {"moved": int(moving.sum()), "iterations": int(k), "residual": float(res)}
