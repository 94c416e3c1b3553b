r"""The Cannon (Ness et al. 2015, ApJ 808, 16): a quadratic model of each pixel in the labels.

Every pixel λ of a normalised spectrum is a quadratic polynomial in the labels plus an
intrinsic scatter :math:`s_\lambda`,

.. math::
    f_{n\lambda} = \boldsymbol\theta_\lambda^\top \boldsymbol\ell(x_n) + \text{noise},
    \qquad \operatorname{Var}[\text{noise}] = \sigma_{n\lambda}^2 + s_\lambda^2,

    \boldsymbol\ell(x) = (1,\ x_1, \dots, x_k,\ x_1^2, x_1 x_2, \dots, x_k^2),
    \qquad x_d = (\text{label}_d - p_d) / c_d,

the paper's "training step" model (their sect. 2: quadratic label vector, noise = data
uncertainty and intrinsic scatter added in quadrature). Labels are pivoted at the training
mean :math:`p_d` and divided by the training standard deviation :math:`c_d`; this only
conditions the least squares (a full quadratic is unchanged by affine maps of its labels).

Training (:func:`train_cannon`) maximises, pixel by pixel,

.. math:: \ln L_\lambda = -\tfrac12 \sum_n \left[\frac{(f_{n\lambda} - \boldsymbol
    \theta_\lambda^\top\boldsymbol\ell_n)^2}{\sigma_{n\lambda}^2 + s_\lambda^2} +
    \ln(\sigma_{n\lambda}^2 + s_\lambda^2)\right].

For noise-free training spectra (grids; ``flux_sigma=None``) this is ordinary least squares
for all pixels at once, :math:`\Theta = A^+ F` with the ``(n, p)`` design matrix
:math:`A_{nm} = \ell_m(x_n)` and ``(n, n_pix)`` fluxes F (minimum-norm solution when A
is rank deficient, e.g. a label with only two values makes its square redundant), and
:math:`s_\lambda^2 = \mathrm{RSS}_\lambda / (n - \operatorname{rank} A)` (the
restricted-likelihood estimate; the maximum-likelihood one divides by n and is biased low
when n is close to p). With ``flux_sigma`` the paper's objective is maximised by
alternating weighted least squares for θ (all pixels in one batched solve) and a 1-D
root search for :math:`s_\lambda^2`.

In inference the scatter enters the likelihood: :attr:`CannonEmulator.model_variance`
is :math:`s_\lambda^2`, which :func:`jaxspec.infer.observe` adds to the data variance
:math:`\sigma_\lambda^2`, as in the paper's "test step".

Labels with fewer than 3 distinct training values (a grid axis with two nodes) get no
squared term: their :math:`x_d^2` is a linear function of :math:`x_d` on the training set,
so its coefficient is undetermined and the model bends arbitrarily between the nodes. Its
coefficient row is then 0 (the model is linear in that label; ``info["linear_only"]``
lists such labels) and :func:`train_cannon` warns.

Limits. One quadratic per pixel is a good description over a narrow label range (the
paper trains on red giants); over a grid spanning 3000–11000 K it cannot follow how lines
appear and vanish, and its errors there are large. Label scaling cannot fix that.
"""

from __future__ import annotations

import json
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxspec.emulator import register_emulator
from jaxspec.grid import SpectralGrid
from jaxspec.peers._base import PeerEmulator
from jaxspec.peers._data import check_positive_int, min_max, training_set

__all__ = ["CannonEmulator", "label_vector", "train_cannon"]


def label_vector(x: Float[Array, "... k"]) -> Float[Array, "... p"]:
    r"""The Cannon's quadratic label vector :math:`(1, x_d, x_d x_e\ (d \le e))`.

    Args:
        x: ``(..., k)`` scaled labels.

    Returns:
        ``(..., p)`` with :math:`p = 1 + k + k(k+1)/2` (10 for 3 labels), ordered
        constant, linear terms, then products ``x_d x_e`` for d ≤ e in row-major order.
    """
    x = jnp.asarray(x)
    k = x.shape[-1]
    i, j = np.triu_indices(k)
    ones = jnp.ones(x.shape[:-1] + (1,), x.dtype)
    return jnp.concatenate([ones, x, x[..., i] * x[..., j]], axis=-1)


@register_emulator("cannon")
class CannonEmulator(PeerEmulator):
    r"""The Cannon's per-pixel quadratic model (module docstring).

    Fields:

    coefficients
        ``(p, n_pix)`` float64 :math:`\Theta`, rows in :func:`label_vector` order.
    scatter
        ``(n_pix,)`` intrinsic scatter :math:`s_\lambda` (flux units).
    pivot, scale
        ``(k,)`` label offsets and divisors, :math:`x = (\text{label} - p)/c`.
    bounds_
        ``(k, 2)`` training label box.
    wavelength_, names, provenance
        as in :class:`~jaxspec.peers._base.PeerEmulator` (which also gives ``save`` /
        ``load``).

    ``emulator(params)``: params ``(..., k)`` → flux ``(..., n_pix)`` float64; jit-,
    vmap- and grad-safe. Train with :func:`train_cannon`.
    """

    coefficients: Float[Array, "p n_pix"]
    scatter: Float[Array, " n_pix"]
    pivot: Float[Array, " k"]
    scale: Float[Array, " k"]
    bounds_: np.ndarray

    file_arrays = ("coefficients", "scatter", "pivot", "scale")
    file_networks = ()

    def __check_init__(self):
        k = len(self.names)
        p = 1 + k + k * (k + 1) // 2
        n_pix = int(np.shape(self.wavelength_)[0])
        if tuple(self.coefficients.shape) != (p, n_pix):
            raise ValueError(
                f"CannonEmulator: coefficients have shape {tuple(self.coefficients.shape)}, "
                f"expected ({p}, {n_pix}) (quadratic terms of {k} labels × pixels)"
            )
        for name, arr, shape in (("scatter", self.scatter, (n_pix,)),
                                 ("pivot", self.pivot, (k,)), ("scale", self.scale, (k,)),
                                 ("bounds_", self.bounds_, (k, 2))):
            if tuple(np.shape(arr)) != shape:
                raise ValueError(
                    f"CannonEmulator: {name} has shape {tuple(np.shape(arr))}, expected {shape}"
                )

    # ------------------------------------------------------------------ interface

    @property
    def bounds(self) -> np.ndarray:
        return np.asarray(self.bounds_, dtype=np.float64)

    @property
    def model_variance(self) -> Float[Array, " n_pix"]:
        r""":math:`s_\lambda^2`, ``(n_pix,)`` flux², added to the data variance in inference."""
        return self.scatter**2

    def __call__(self, params) -> Float[Array, "... n_pix"]:
        r""":math:`f_\lambda = \boldsymbol\theta_\lambda^\top \boldsymbol\ell(x)`:
        params ``(..., k)`` (order of ``param_names``) → flux ``(..., n_pix)``."""
        params = self._check_params(params)
        x = (params - self.pivot) / self.scale
        return label_vector(x) @ self.coefficients



def train_cannon(
    grid: SpectralGrid,
    holdout=None,
    *,
    flux_sigma=None,
    n_iter: int = 10,
) -> CannonEmulator:
    r"""Train The Cannon on the nodes of a grid (module docstring for the maths).

    Args:
        grid: a :class:`~jaxspec.grid.SpectralGrid` of normalised spectra with k >= 1
            parameters, each taking at least two values among the training nodes.
        holdout: nodes to leave out: None, a bool array of ``grid.shape``, ``(n, k)``
            node parameters or ``{name: value}`` dicts.
        flux_sigma: None (noise-free training spectra: one least-squares solve), or 1σ
            flux uncertainties of the training spectra broadcastable to ``(n_train,
            n_pix)`` (> 0): then the paper's likelihood is maximised over θ and s by
            ``n_iter`` rounds of weighted least squares and a root search for s².
        n_iter: alternation rounds with ``flux_sigma``.

    Returns:
        A :class:`CannonEmulator`; ``info`` records n_train, the number of terms p, the
        rank of the design matrix and the training time.

    Raises:
        ValueError: fewer training spectra than independent terms, a label with one
            value, or invalid ``flux_sigma``.
    """
    t0 = time.perf_counter()
    labels, flux = training_set(grid, holdout)
    names = grid.param_names
    lo, hi = min_max(labels, names)
    pivot = labels.mean(axis=0)
    scale = labels.std(axis=0)
    full = np.asarray(label_vector(jnp.asarray((labels - pivot) / scale)))
    keep = _kept_terms(labels, names)
    design = full[:, keep]
    flux = np.asarray(flux, dtype=np.float64)
    n, p = full.shape
    rank = int(np.linalg.matrix_rank(design))
    if n <= rank:
        raise ValueError(
            f"{n} training spectra for a quadratic model of rank {rank} in {names}: the "
            "scatter cannot be estimated; train on more nodes (hold out fewer)"
        )
    coeff, *_ = np.linalg.lstsq(design, flux, rcond=None)  # (p_kept, n_pix)
    resid = flux - design @ coeff
    dropped = [d for d, name in enumerate(names) if not keep[_square_index(d, len(names))]]
    info = {"n_train": n, "n_terms": int(keep.sum()), "rank": rank,
            "linear_only": [names[d] for d in dropped]}
    if flux_sigma is None:
        s2 = np.sum(resid**2, axis=0) / (n - rank)
    else:
        n_iter = check_positive_int("n_iter", n_iter)
        try:
            var = np.broadcast_to(np.asarray(flux_sigma, dtype=np.float64), flux.shape) ** 2
        except ValueError:
            raise ValueError(
                f"flux_sigma has shape {np.shape(flux_sigma)}; pass a scalar, (n_pix,) or "
                f"(n_train, n_pix) = {flux.shape} 1σ uncertainties"
            ) from None
        if not np.all(np.isfinite(var)) or np.any(var <= 0):
            raise ValueError("flux_sigma has non-finite or non-positive values; pass 1σ > 0")
        s2 = _max_likelihood_scatter(resid**2, var)
        for _ in range(n_iter):
            coeff = _weighted_lstsq(design, flux, 1.0 / (var + s2))
            resid = flux - design @ coeff
            s2 = _max_likelihood_scatter(resid**2, var)
        info["n_iter"] = n_iter
    info["seconds"] = time.perf_counter() - t0
    info["train_rms"] = float(np.sqrt(np.mean(resid**2)))
    coeff_full = np.zeros((p, flux.shape[1]))
    coeff_full[keep] = coeff  # left-out squares have coefficient 0
    return CannonEmulator(
        coefficients=jnp.asarray(coeff_full, dtype=jnp.float64),
        scatter=jnp.asarray(np.sqrt(s2), dtype=jnp.float64),
        pivot=jnp.asarray(pivot, dtype=jnp.float64),
        scale=jnp.asarray(scale, dtype=jnp.float64),
        bounds_=np.stack([lo, hi], axis=-1),
        wavelength_=np.asarray(grid.wavelength, dtype=np.float64),
        names=tuple(names),
        provenance=json.dumps(info),
    )


def _square_index(d: int, k: int) -> int:
    """Column of :math:`x_d^2` in :func:`label_vector`'s order (k labels)."""
    i, j = np.triu_indices(k)
    return 1 + k + int(np.flatnonzero((i == d) & (j == d))[0])


def _kept_terms(labels: np.ndarray, names) -> np.ndarray:
    """``(p,)`` bool: the label-vector terms fitted. The square of a label with fewer
    than 3 distinct training values is left out (with a warning): through two values
    :math:`x^2` is a linear function of x, the least squares then spread each pixel's
    slope over x and x² at random, and between the nodes the model bends away from the
    data (median flux 0.3-0.65 against 0.97 at the nodes on such a grid)."""
    k = labels.shape[1]
    keep = np.ones(1 + k + k * (k + 1) // 2, dtype=bool)
    for d, name in enumerate(names):
        values = np.unique(labels[:, d])
        if values.size < 3:
            keep[_square_index(d, k)] = False
            warnings.warn(
                f"train_cannon: {name} takes only {values.size} values "
                f"({', '.join(f'{v:g}' for v in values)}) in the training set, too few for "
                f"a quadratic term; the model is linear in {name} (its squared term is "
                "left out)",
                stacklevel=3,
            )
    return keep


@jax.jit
def _weighted_lstsq(design, flux, weight):
    """Per-pixel weighted least squares: ``(p, n_pix)`` minimising
    :math:`\\sum_n w_{n\\lambda} (f_{n\\lambda} - \\theta_\\lambda^\\top \\ell_n)^2`
    (pseudo-inverse of the normal matrix, so rank-deficient designs give the minimum-norm
    solution)."""
    normal = jnp.einsum("np,nq,nl->lpq", design, design, weight)
    rhs = jnp.einsum("np,nl,nl->lp", design, weight, flux)
    theta = jnp.einsum("lpq,lq->lp", jnp.linalg.pinv(normal, hermitian=True), rhs)
    return theta.T


def _max_likelihood_scatter(r2, var, n_bisect: int = 60):
    r"""Per pixel, the :math:`s^2 \ge 0` maximising
    :math:`-\tfrac12\sum_n [r_n^2/(v_n + s^2) + \ln(v_n + s^2)]`: zero when the derivative
    is non-positive there, else a root of the derivative found by bisection in
    :math:`\ln s^2` between 1e-30 and :math:`\max_n r_n^2` (where it is non-positive)."""

    def slope(s2):
        t = var + s2
        return np.sum(r2 / t**2 - 1.0 / t, axis=0)

    lo = np.full(r2.shape[1], np.log(1e-30))
    hi = np.log(np.maximum(r2.max(axis=0), 1e-30)) + 1e-9
    positive_at_zero = slope(np.zeros(r2.shape[1])) > 0
    for _ in range(n_bisect):
        mid = 0.5 * (lo + hi)
        up = slope(np.exp(mid)) > 0
        lo = np.where(up, mid, lo)
        hi = np.where(up, hi, mid)
    return np.where(positive_at_zero, np.exp(0.5 * (lo + hi)), 0.0)
