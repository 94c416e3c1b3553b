r"""The effects chain: a rest-frame model flux → the flux on observed pixels.

:class:`ExtrinsicModel` lays out the chain of :mod:`jaxspec.extrinsic` (internal velocity
grid, rotation, LSF, Doppler shift, pixel integration, continuum) once on the host for one
model grid and one set of observed pixels; calling it is jit/grad/vmap-safe in the flux
and every parameter. :func:`broaden` applies rotation and LSF on a spectrum's own grid;
:func:`apply_effects` observes an emulator's spectrum through the whole chain.

Units: wavelengths Å (float64), velocities km/s, R dimensionless.
"""

from __future__ import annotations

import math

import equinox as eqx
import interpax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jaxspec._checks import check_wavelength
from jaxspec.extrinsic.kernels import (
    _OMEGA_STEP,
    C_KMS,
    check_epsilon,
    check_resolution,
    check_rv_range,
    check_vsini,
    _gaussian_half_taps,
    _rotation_half_taps,
    gaussian_transfer,
    rotation_transfer,
    tabulated_kernel,
)
from jaxspec.extrinsic.pixels import _chebvander, pixel_edges

__all__ = ["ExtrinsicModel", "apply_effects", "broaden"]

#: Internal grids longer than this are refused (pass a coarser velocity_step).
_MAX_INTERNAL = 4_000_000


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


# ----------------------------------------------------------------------------- the chain


class ExtrinsicModel(eqx.Module):
    r"""The extrinsic chain for one model grid and one set of observed pixels.

    Build it with :meth:`build` (host side: checks ranges and lays out the internal
    velocity grid), then call it, jit/grad/vmap-safe in the flux and every parameter:

    ``model(flux, rv, vsini, resolution, continuum)`` → ``(m,)`` observed flux, for
    ``flux`` ``(n_model,)`` on the model grid (see :mod:`jaxspec.extrinsic` for the steps).

    Fields:

    model_wavelength, wavelength
        ``(n_model,)`` and ``(m,)`` float64 Å: model grid and observed pixel centres.
    index, weight, inside
        linear interpolation of the model grid onto the internal grid ``(n,)`` (unused
        when ``start`` ≥ 0: the internal grid is then model pixels ``start … start + n −
        1``); outside the model (``inside`` False, only with ``pad="continuum"``) the
        flux is 1.
    edge_lo, edge_hi
        ``(m,)`` float64: each observed pixel's edges as fractional internal-grid indices
        at rv = 0.
    frequency
        ``(n_fft // 2 + 1,)`` FFT frequencies, cycles per km/s.
    rot_table
        ``(2, n_ω)``: the rotation transfer :math:`\hat G` and its derivative on
        :math:`\omega = 0, 0.05, …` up to :math:`2\pi\nu_{max} v\sin i_{max}`
        (:func:`rotation_transfer`), or None (no rotation).
    lsf_transfer
        transfer function of a tabulated LSF, or None.
    basis
        ``(m, K + 1)`` Chebyshev basis :math:`T_k(x_j)`, or None (no continuum).
    velocity_step, u0
        Δv (km/s) and the internal grid's first :math:`\ln\lambda`. ``n_internal``,
        ``n_fft``: internal and FFT lengths; ``n_gather``: internal nodes read per pixel.
        ``rot_taps``, ``lsf_taps``: half widths of the kernels in steps (0: effect off).
        ``epsilon``: limb darkening. ``rv_range``, ``vsini_max``, ``resolution_min``: the
        limits the layout was made for (values beyond them raise at run time).
    """

    model_wavelength: np.ndarray
    wavelength: np.ndarray
    index: Int[Array, " n"]
    weight: Float[Array, " n"]
    inside: Array
    edge_lo: Float[Array, " m"]
    edge_hi: Float[Array, " m"]
    frequency: Float[Array, " f"]
    rot_table: Float[Array, "2 w"] | None
    lsf_transfer: Array | None
    basis: Float[Array, "m k"] | None
    velocity_step: float = eqx.field(static=True)
    u0: float = eqx.field(static=True)
    start: int = eqx.field(static=True)
    n_internal: int = eqx.field(static=True)
    n_fft: int = eqx.field(static=True)
    n_gather: int = eqx.field(static=True)
    rot_taps: int = eqx.field(static=True)
    lsf_taps: int = eqx.field(static=True)
    gaussian_lsf: bool = eqx.field(static=True)
    epsilon: float = eqx.field(static=True)
    rv_range: tuple = eqx.field(static=True)
    vsini_max: float = eqx.field(static=True)
    resolution_min: float | None = eqx.field(static=True)
    padded: bool = eqx.field(static=True)

    @classmethod
    def build(
        cls,
        model_wavelength,
        wavelength,
        *,
        rv_range=(0.0, 0.0),
        vsini_max: float = 0.0,
        resolution_min: float | None = None,
        lsf=None,
        epsilon: float = 0.6,
        continuum_degree: int | None = None,
        velocity_step: float | None = None,
        pad: str = "error",
    ) -> ExtrinsicModel:
        r"""Lay out the chain (host side; concrete values only).

        Args:
            model_wavelength: ``(n_model,)`` Å, strictly increasing, any spacing: the
                grid of the fluxes the model will be called with (rest frame).
            wavelength: ``(m,)`` Å, strictly increasing: observed pixel centres.
            rv_range: ``(lo, hi)`` km/s: the radial velocities that will be asked for.
            vsini_max: largest v sin i, km/s (0: no rotation step).
            resolution_min: smallest R of a Gaussian LSF (None: no Gaussian LSF).
            lsf: ``(velocity km/s, profile)`` tabulated LSF instead of a Gaussian.
            epsilon: linear limb darkening of the rotation kernel, [0, 1].
            continuum_degree: K of the Chebyshev continuum (None: no continuum).
            velocity_step: internal step Δv, km/s (default: the median spacing of the
                model grid, where finer stretches are linearly interpolated; on a
                log-uniform model grid its own nodes are used).
            pad: ``"error"`` (default): the model must cover :func:`required_model_range`;
                ``"continuum"``: flux 1 is assumed beyond the model grid.

        Raises:
            ValueError: bad values (naming the argument), or an observed range that the
                model cannot cover at every RV in ``rv_range`` with the broadening margin
                (the message gives both ranges and the RV range that would fit).
        """
        from scipy.fft import next_fast_len

        mwl = check_wavelength(model_wavelength, label="model wavelength")
        owl = check_wavelength(wavelength, label="observed wavelength")
        if mwl.size < 2:
            raise ValueError("model wavelength has 1 pixel; the model needs >= 2 pixels")
        rv_lo, rv_hi = check_rv_range(rv_range)
        vsini_max = check_vsini(vsini_max, "vsini_max")
        epsilon = check_epsilon(epsilon)
        if resolution_min is not None:
            resolution_min = check_resolution(resolution_min, "resolution_min")
            if lsf is not None:
                raise ValueError("both a resolution and a tabulated lsf were given; pass one "
                                 "(resolution: Gaussian LSF of FWHM λ/R; lsf: your kernel)")
        if continuum_degree is not None:
            if isinstance(continuum_degree, bool) or not isinstance(
                    continuum_degree, (int, np.integer)):
                raise TypeError(f"continuum_degree={continuum_degree!r}; pass an int >= 0 "
                                "(the Chebyshev degree K: K + 1 coefficients) or None")
            if continuum_degree < 0:
                raise ValueError(f"continuum_degree={continuum_degree}; pass an int >= 0 or "
                                 "None for no continuum")
        if pad not in ("error", "continuum"):
            raise ValueError(f"pad={pad!r}; pass 'error' or 'continuum'")
        log_m = np.log(mwl)
        steps = np.diff(log_m)
        mean_step = (log_m[-1] - log_m[0]) / (mwl.size - 1)
        aligned = velocity_step is None and bool(np.all(
            np.abs(log_m - (log_m[0] + mean_step * np.arange(mwl.size))) <= 1e-6 * mean_step))
        if aligned:
            dv = mean_step * C_KMS
        elif velocity_step is None:
            dv = float(np.median(steps)) * C_KMS
        else:
            dv = float(velocity_step)
            if not (np.isfinite(dv) and dv > 0):
                raise ValueError(f"velocity_step={velocity_step!r}; pass a positive step in "
                                 "km/s, or None for the model grid's median spacing")
        h = dv / C_KMS
        lsf_w = None
        if lsf is not None:
            try:
                v_tab, p_tab = lsf
            except (TypeError, ValueError):
                raise ValueError("lsf must be a pair (velocity km/s, profile) of arrays") from None
            lsf_w = tabulated_kernel(v_tab, p_tab, dv)
            lsf_taps = (lsf_w.size - 1) // 2
        elif resolution_min is not None:
            lsf_taps = _gaussian_half_taps(resolution_min, dv)
        else:
            lsf_taps = 0
        rot_taps = _rotation_half_taps(vsini_max, dv) if vsini_max > 0 else 0
        taps = rot_taps + lsf_taps

        lo_e, hi_e = pixel_edges(owl)
        u_lo = math.log(lo_e[0]) - math.atanh(rv_hi / C_KMS) - (taps + 2) * h
        u_hi = math.log(hi_e[-1]) - math.atanh(rv_lo / C_KMS) + (taps + 2) * h
        covered = math.exp(u_lo) >= mwl[0] and math.exp(u_hi) <= mwl[-1]
        if pad == "error" and not covered:
            raise ValueError(_coverage_message(owl, mwl, (rv_lo, rv_hi), u_lo, u_hi, taps, h))
        start = -1
        if aligned:
            # the model's own nodes: no interpolation (and no smoothing by it)
            first = math.floor((u_lo - log_m[0]) / h + 1e-9)
            u0 = log_m[0] + first * h
            n = math.ceil((u_hi - u0) / h) + 1
            if covered:
                start = first
                n = min(n, mwl.size - start)
        else:
            u0 = u_lo
            n = math.ceil((u_hi - u0) / h) + 1
        if n > _MAX_INTERNAL:
            raise ValueError(
                f"the internal velocity grid would have {n} points (step {dv:.4g} km/s over "
                f"{math.exp(u0):.2f}–{math.exp(u_hi):.2f} Å); pass a coarser velocity_step")
        lam = np.exp(u0 + np.arange(n) * h)
        idx = np.clip(np.searchsorted(mwl, lam, side="right") - 1, 0, mwl.size - 2)
        w = np.clip((lam - mwl[idx]) / (mwl[idx + 1] - mwl[idx]), 0.0, 1.0)
        if aligned:  # nodes coincide up to rounding
            w = np.where(w < 1e-6, 0.0, np.where(w > 1 - 1e-6, 1.0, w))
        inside = (lam >= mwl[0] * (1 - 1e-12)) & (lam <= mwl[-1] * (1 + 1e-12))
        n_fft = int(next_fast_len(n + 2 * taps + 1, real=True))
        edge_lo = (np.log(lo_e) - u0) / h
        edge_hi = (np.log(hi_e) - u0) / h
        frequency = np.fft.rfftfreq(n_fft, dv)
        rot_table = None
        if rot_taps:
            omega = np.arange(0.0, 2 * np.pi * frequency[-1] * vsini_max + 3 * _OMEGA_STEP,
                              _OMEGA_STEP)
            rot_table = jnp.asarray(np.stack(rotation_transfer(omega, epsilon)))
        lsf_transfer = None
        if lsf_w is not None:
            k = lsf_taps
            circ = np.concatenate([lsf_w[k:], np.zeros(n_fft - lsf_w.size), lsf_w[:k]])
            lsf_transfer = jnp.asarray(np.fft.rfft(circ))
        basis = None
        if continuum_degree is not None:
            basis = jnp.asarray(_chebvander(owl, int(continuum_degree), (owl[0], owl[-1])))
        return cls(
            model_wavelength=mwl,
            wavelength=owl,
            index=jnp.asarray(idx, dtype=jnp.int32),
            weight=jnp.asarray(w, dtype=jnp.float64),
            inside=jnp.asarray(inside),
            edge_lo=jnp.asarray(edge_lo, dtype=jnp.float64),
            edge_hi=jnp.asarray(edge_hi, dtype=jnp.float64),
            frequency=jnp.asarray(frequency),
            rot_table=rot_table,
            lsf_transfer=lsf_transfer,
            basis=basis,
            velocity_step=float(dv),
            u0=float(u0),
            start=start,
            n_internal=n,
            n_fft=n_fft,
            n_gather=math.ceil(float(np.max(edge_hi - edge_lo))) + 2,
            rot_taps=rot_taps,
            lsf_taps=lsf_taps,
            gaussian_lsf=lsf_w is None and resolution_min is not None,
            epsilon=epsilon,
            rv_range=(rv_lo, rv_hi),
            vsini_max=vsini_max,
            resolution_min=resolution_min,
            padded=pad == "continuum",
        )

    # ------------------------------------------------------------------ properties

    @property
    def n_pix(self) -> int:
        """Number of observed pixels m."""
        return int(self.wavelength.size)

    @property
    def continuum_degree(self) -> int | None:
        """Chebyshev degree K of the continuum (K + 1 coefficients), or None (none)."""
        return None if self.basis is None else int(self.basis.shape[1]) - 1

    @property
    def rotation(self) -> bool:
        """Whether the chain has a rotation step (built with vsini_max > 0)."""
        return self.rot_taps > 0

    @property
    def lsf(self) -> bool:
        """Whether the chain has an LSF step (Gaussian or tabulated)."""
        return self.lsf_taps > 0

    # ------------------------------------------------------------------ steps

    def internal(self, flux: Float[Array, " n_model"]) -> Float[Array, " n"]:
        """Model flux ``(n_model,)`` → depth ``F − 1`` on the internal ln λ grid ``(n,)``."""
        flux = jnp.asarray(flux)
        if flux.shape != (self.model_wavelength.size,):
            raise ValueError(
                f"flux has shape {flux.shape}; pass ({self.model_wavelength.size},) values "
                "on the model wavelength grid this ExtrinsicModel was built for")
        if self.start >= 0:
            return flux[self.start: self.start + self.n_internal] - 1.0
        lo = jnp.take(flux, self.index)
        hi = jnp.take(flux, self.index + 1)
        f = lo + self.weight * (hi - lo)
        if self.padded:
            f = jnp.where(self.inside, f, 1.0)
        return f - 1.0

    def transfer(self, vsini=None, resolution=None):
        r"""Fourier transfer function of rotation ⊗ LSF, ``(n_fft // 2 + 1,)``, or None
        when neither effect is on: :math:`\hat G(2\pi\nu\,v\sin i)` (cubic Hermite
        interpolation of ``rot_table`` with its exact derivatives) times
        :func:`gaussian_transfer` (or the tabulated LSF's DFT)."""
        out = None
        if self.rotation:
            if vsini is None:
                raise ValueError("this ExtrinsicModel includes rotation; pass vsini (km/s)")
            vsini = _runtime_check(vsini, lambda v: (v < 0) | (v > self.vsini_max * (1 + 1e-9)),
                                   f"vsini is negative or above vsini_max={self.vsini_max:g} "
                                   "km/s that this ExtrinsicModel was built for")
            omega = 2.0 * jnp.pi * self.frequency * vsini
            knots = jnp.arange(self.rot_table.shape[1], dtype=jnp.float64) * _OMEGA_STEP
            out = interpax.interp1d(omega, knots, self.rot_table[0], method="cubic",
                                    fx=self.rot_table[1], even_spacing=True, extrap=True)
        elif vsini is not None:
            _require_zero(vsini, "vsini", "rotation (build it with vsini_max > 0)")
        lsf = None
        if self.gaussian_lsf:
            if resolution is None:
                raise ValueError("this ExtrinsicModel includes a Gaussian LSF; pass resolution")
            resolution = _runtime_check(
                resolution, lambda r: ~(r >= self.resolution_min * (1 - 1e-9)),
                f"resolution is below resolution_min={self.resolution_min:g} (or <= 0) that "
                "this ExtrinsicModel was built for")
            lsf = gaussian_transfer(resolution, self.frequency)
        elif self.lsf_transfer is not None:
            if resolution is not None:
                raise ValueError("this ExtrinsicModel uses a tabulated lsf; pass resolution=None")
            lsf = self.lsf_transfer
        elif resolution is not None:
            raise ValueError("this ExtrinsicModel has no LSF step (built with "
                             "resolution_min=None); pass resolution=None or rebuild it")
        if lsf is not None:
            out = lsf if out is None else out * lsf
        return out

    def broadened(self, flux, vsini=None, resolution=None) -> Float[Array, " n"]:
        """Depth ``F − 1`` on the internal grid after rotation and LSF ``(n,)``."""
        depth = self.internal(flux)
        tr = self.transfer(vsini, resolution)
        if tr is None:
            return depth
        spec = jnp.fft.rfft(depth, self.n_fft) * tr
        return jnp.fft.irfft(spec, self.n_fft)[: self.n_internal]

    def integrate(self, depth, rv=0.0) -> Float[Array, " m"]:
        r"""Internal depth ``(n,)`` → mean flux over each observed pixel at ``rv`` ``(m,)``.

        The pixel's edges move to the rest frame by :math:`-\operatorname{artanh}(v_r/c)`
        (in internal steps); the integral of the piecewise-linear depth between edges
        a and b is :math:`\sum_k g_k [H(b - k) - H(a - k)]`, H the integral of the unit
        hat function (0, :math:`(x+1)^2/2`, :math:`1 - (1-x)^2/2`, 1 on x < −1, [−1, 0),
        [0, 1), ≥ 1): exact, and continuously differentiable in rv.
        """
        rv = _runtime_check(
            rv, lambda v: (v < self.rv_range[0] - 1e-9) | (v > self.rv_range[1] + 1e-9),
            f"rv outside the range {self.rv_range} km/s this ExtrinsicModel was built for")
        shift = jnp.arctanh(jnp.asarray(rv, dtype=jnp.float64) / C_KMS) / (
            self.velocity_step / C_KMS)
        a = self.edge_lo - shift
        b = self.edge_hi - shift
        k = jnp.floor(a).astype(jnp.int32)[:, None] + jnp.arange(self.n_gather)[None, :]
        kf = k.astype(jnp.float64)
        w = _hat_integral(b[:, None] - kf) - _hat_integral(a[:, None] - kf)
        g = jnp.take(depth, jnp.clip(k, 0, self.n_internal - 1))
        return 1.0 + jnp.sum(w * g, axis=1) / (b - a)

    def interpolate(self, depth, wavelength) -> Float[Array, " k"]:
        """Internal depth ``(n,)`` linearly interpolated at rest wavelengths ``(k,)`` Å."""
        t = (np.log(np.asarray(wavelength, dtype=np.float64)) - self.u0) / (
            self.velocity_step / C_KMS)
        i = np.clip(np.floor(t).astype(np.int64), 0, self.n_internal - 2)
        f = jnp.asarray(t - i)
        return depth[i] + f * (depth[i + 1] - depth[i])

    def continuum(self, coefficients) -> Float[Array, " m"]:
        """Chebyshev continuum ``(m,)`` from ``(K + 1,)`` coefficients."""
        if self.basis is None:
            raise ValueError("this ExtrinsicModel has no continuum (continuum_degree=None)")
        c = jnp.asarray(coefficients, dtype=jnp.float64)
        if c.shape != (self.basis.shape[1],):
            raise ValueError(f"continuum has shape {c.shape}; pass {self.basis.shape[1]} "
                             f"coefficients c0 … c{self.basis.shape[1] - 1}")
        return self.basis @ c

    def __call__(self, flux, rv=0.0, vsini=None, resolution=None, continuum=None):
        """Model flux ``(n_model,)`` → observed flux ``(m,)`` (:mod:`jaxspec.extrinsic`, steps 1–6).

        Args:
            flux: ``(n_model,)`` normalised rest-frame flux on ``model_wavelength``.
            rv: km/s, within ``rv_range``.
            vsini: km/s in [0, vsini_max] when built with rotation, else None (or 0).
            resolution: R ≥ resolution_min with a Gaussian LSF, else None.
            continuum: ``(K + 1,)`` Chebyshev coefficients when built with a continuum
                (None there means no continuum: C = 1), else None.
        """
        out = self.integrate(self.broadened(flux, vsini, resolution), rv)
        if continuum is not None:
            out = out * self.continuum(continuum)
        return out


def _hat_integral(x):
    """∫_{-∞}^x of the unit hat max(0, 1 − |s|) ds."""
    return jnp.where(x < -1.0, 0.0, jnp.where(
        x < 0.0, 0.5 * (x + 1.0) ** 2, jnp.where(x < 1.0, 1.0 - 0.5 * (1.0 - x) ** 2, 1.0)))


def _runtime_check(value, bad, message: str):
    """Raise a ValueError now for a concrete bad value, or fail at run time under jit."""
    value = jnp.asarray(value, dtype=jnp.float64)
    if not _is_traced(value):
        if bool(jnp.any(bad(value))) or not bool(jnp.all(jnp.isfinite(value))):
            raise ValueError(f"{message} (got {np.asarray(value)})")
        return value
    return eqx.error_if(value, jnp.any(bad(value) | ~jnp.isfinite(value)), message)


def _require_zero(value, name: str, what: str) -> None:
    if not _is_traced(value) and float(value) != 0.0:
        raise ValueError(f"{name}={float(value):g} but this ExtrinsicModel has no {what}")


def _coverage_message(owl, mwl, rv_range, u_lo, u_hi, taps, h) -> str:
    need_lo, need_hi = math.exp(u_lo), math.exp(u_hi)
    # the symmetric RV range that would fit, if any
    lo_e, hi_e = pixel_edges(owl)
    room_lo = math.log(lo_e[0]) - (taps + 2) * h - math.log(mwl[0])
    room_hi = math.log(mwl[-1]) - math.log(hi_e[-1]) - (taps + 2) * h
    room = min(room_lo, room_hi)
    fit = (f"an RV range within ±{C_KMS * math.tanh(room):.0f} km/s would fit"
           if room > 0 else "no RV range fits with this broadening")
    return (
        f"the observed pixels cover {owl[0]:.2f}–{owl[-1]:.2f} Å; at RVs "
        f"{rv_range[0]:g}…{rv_range[1]:g} km/s with a broadening margin of "
        f"{taps * h * C_KMS:.1f} km/s the model must cover {need_lo:.2f}–{need_hi:.2f} Å "
        f"but it covers {mwl[0]:.2f}–{mwl[-1]:.2f} Å ({fit}); crop the observed spectrum, "
        "narrow the RV range (or lower vsini_max / raise the minimum R), or use a model "
        "that covers more"
    )


# ----------------------------------------------------------------------------- functions


def broaden(wavelength, flux, vsini: float = 0.0, resolution: float | None = None, *,
            epsilon: float = 0.6, lsf=None, velocity_step: float | None = None):
    r"""Rotational and instrumental broadening of a spectrum, on its own grid.

    Steps 1–3 of :mod:`jaxspec.extrinsic`, then linear interpolation back to ``wavelength``
    (point values, not pixel means; use :func:`apply_effects` or :class:`ExtrinsicModel` for
    observed pixels). Beyond the ends of the grid the flux is taken as 1, so the first and
    last :math:`v\sin i + 6\sigma_v` of the result see a continuum there. Equivalent
    widths :math:`\int (1 - F)\,d\lambda` are preserved. Concrete ``vsini`` and
    ``resolution`` (the kernel support is sized from them); for traced values use an
    :class:`ExtrinsicModel`.

    Args:
        wavelength: ``(n,)`` Å, strictly increasing, any spacing.
        flux: ``(n,)`` normalised flux.
        vsini: km/s ≥ 0 (0: no rotation).
        resolution: R > 0, or None (no LSF).
        epsilon: limb darkening, [0, 1].
        lsf: ``(velocity km/s, profile)`` tabulated LSF instead of ``resolution``.
        velocity_step: internal step, km/s (default: the grid's median spacing).

    Returns:
        ``(n,)`` broadened flux on ``wavelength``.
    """
    if _is_traced(vsini) or _is_traced(resolution):
        raise ValueError("broaden needs concrete vsini and resolution (they size the kernel); "
                         "inside jit/grad use ExtrinsicModel.build(...)(flux, ...)")
    vsini = check_vsini(vsini)
    if resolution is not None:
        resolution = check_resolution(resolution)
    wl = check_wavelength(wavelength, label="wavelength")
    em = ExtrinsicModel.build(wl, wl, vsini_max=vsini, resolution_min=resolution, lsf=lsf,
                              epsilon=epsilon, velocity_step=velocity_step, pad="continuum")
    depth = _broadened(em, jnp.asarray(flux), vsini if em.rotation else None,
                       resolution if em.gaussian_lsf else None)
    return 1.0 + em.interpolate(depth, wl)


@eqx.filter_jit
def _broadened(em, flux, vsini, resolution):
    return em.broadened(flux, vsini, resolution)


@eqx.filter_jit
def _apply(em, flux, rv, vsini, resolution, continuum):
    if flux.ndim == 1:
        return em(flux, rv, vsini, resolution, continuum)
    return jax.vmap(lambda f: em(f, rv, vsini, resolution, continuum))(flux)


def apply_effects(emulator, params, *, rv=0.0, vsini=0.0, resolution=None, continuum=None,
                  wavelength=None, epsilon: float = 0.6, lsf=None, rv_range=None,
                  vsini_max=None, resolution_min=None, velocity_step=None):
    r"""The observed spectrum of an emulator: stellar parameters + extrinsic effects.

    :math:`F_{obs}(\lambda_j) = C(\lambda_j)\ \overline{\big[(F_\theta \otimes G_{rot}
    \otimes \mathrm{LSF})\big](\lambda / D(v_r))}_{\,\text{pixel } j}` (:mod:`jaxspec.extrinsic`).

    Args:
        emulator: any :class:`~jaxspec.emulator.Emulator`.
        params: ``(n_params,)`` or ``(..., n_params)`` stellar parameters.
        rv: radial velocity, km/s.
        vsini: km/s ≥ 0.
        resolution: R > 0, or None (no LSF).
        continuum: ``(K + 1,)`` Chebyshev coefficients, or None (C = 1).
        wavelength: ``(m,)`` observed pixel centres, Å; None: the emulator's own grid,
            with flux 1 assumed beyond its ends (otherwise the emulator must cover the
            pixels at ``rv`` plus the broadening margin).
        epsilon: limb darkening, [0, 1].
        lsf: ``(velocity km/s, profile)`` tabulated LSF instead of ``resolution``.
        rv_range, vsini_max, resolution_min: the layout's limits; needed only when
            ``rv`` / ``vsini`` / ``resolution`` are traced (inside jit or grad), default
            the values themselves.
        velocity_step: internal step, km/s.

    Returns:
        ``(..., m)`` observed flux.

    Raises:
        ValueError: vsini < 0, R <= 0, a model that does not cover the observed range,
            or traced extrinsic values without their limits.
    """
    def limit(value, given, name, check):
        if given is not None:
            return given
        if _is_traced(value):
            raise ValueError(f"{name.split('_')[0]} is traced (inside jit/grad); pass {name}= "
                             "so that the layout can be made, or use an ObservedEmulator")
        return check(value) if value is not None else None

    rv_lim = limit(rv, rv_range, "rv_range", lambda v: (float(v), float(v)))
    vs_lim = limit(vsini, vsini_max, "vsini_max", check_vsini)
    r_lim = limit(resolution, resolution_min, "resolution_min", check_resolution)
    if continuum is not None:
        degree = int(np.shape(continuum)[0]) - 1
    else:
        degree = None
    model_wl = np.asarray(emulator.wavelength, dtype=np.float64)
    em = ExtrinsicModel.build(
        model_wl, model_wl if wavelength is None else wavelength, rv_range=rv_lim,
        vsini_max=vs_lim or 0.0, resolution_min=r_lim, lsf=lsf, epsilon=epsilon,
        continuum_degree=degree, velocity_step=velocity_step,
        pad="continuum" if wavelength is None else "error")
    params = jnp.asarray(params)
    flux = emulator(params)
    args = (rv, vsini if em.rotation else None, resolution if em.gaussian_lsf else None,
            None if continuum is None else jnp.asarray(continuum, dtype=jnp.float64))
    # concrete values beyond the layout fail here (inside jit they fail at run time)
    if not _is_traced(rv) and not em.rv_range[0] - 1e-9 <= float(rv) <= em.rv_range[1] + 1e-9:
        raise ValueError(f"rv={float(rv):g} km/s is outside rv_range={em.rv_range}")
    if em.rotation and not _is_traced(vsini) and check_vsini(vsini) > em.vsini_max * (1 + 1e-9):
        raise ValueError(f"vsini={float(vsini):g} km/s is above vsini_max={em.vsini_max:g}")
    if (em.gaussian_lsf and not _is_traced(resolution)
            and check_resolution(resolution) < em.resolution_min * (1 - 1e-9)):
        raise ValueError(f"resolution={float(resolution):g} is below resolution_min="
                         f"{em.resolution_min:g}")
    lead = flux.shape[:-1]
    out = _apply(em, flux.reshape((-1,) + flux.shape[-1:]) if lead else flux, *args)
    return out.reshape(lead + (em.n_pix,))


# ----------------------------------------------------------------------------- emulators
