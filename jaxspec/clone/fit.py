"""Fitting clones: Adam on the squared residual, and :func:`clone` of one spectrum
(blase3D Sect. 2.3, steps 4-5). See :mod:`jaxspec.clone` for the method."""

from __future__ import annotations

import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from jaxspec.clone.detection import (
    _broad_fwhm,
    _centers,
    _check_input,
    _initial,
    _merge_redundant,
    _misfits,
    _rebox,
)
from jaxspec.clone.model import (
    _gather_slots,
    _gather_values,
    _log_flux,
    _plan,
    _scatter_slots,
)
from jaxspec.clone.settings import CloneSettings, resolve_settings
from jaxspec.lines import LineList
from jaxspec.profiles import pseudo_voigt_fwhm
from jaxspec.synthesis import ABSENT_LN_AMPLITUDE

__all__ = ["CloneResult", "clone"]

_REFINE_HEADROOM = 0.12  # room for the refinement pass's lines in the first problem
_MERGE_TOLERANCE = 0.02  # a merge may raise a spectrum's residual RMS by at most 2 %


class CloneResult(eqx.Module):
    """The clone of one spectrum.

    Attributes:
        lines: fitted :class:`~jaxspec.lines.LineList` (centres μ' in Å), sorted by
            ``line_id``.
        initial_lines: the line list before optimisation (centres μ), same order.
        line_id: (n,) float64, pre-optimisation centre rounded to 0.01 Å (blase3D 3.1).
        loss_history: (passes × epochs,) mean squared residual before each Adam step,
            plus ``epochs`` more when lines were merged after the last pass and refitted.
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
           epochs: int, owner, anchor=None):
    r"""Adam on the sum of squared residuals over valid pixels (``weight`` 1 or 0).

    Adam is invariant to the scale of the loss except through its ε (1e-8): the mean
    squared residual of a 481,100-pixel spectrum has per-line gradients near 1e-10, where
    ε would throttle every step, so the sum is minimised (equivalent otherwise). The
    history records the mean squared residual per spectrum.

    params = (u, ln_a, ln_s, ln_g); ln a, ln σ, ln γ are clipped into [lower, upper]
    (triples) after every step. Returns, per spectrum, the final params or, where those
    fit worse than the starting ones, the starting ones (a guard: on the default grid
    a few warm starts at the cool end ended with a broad line overshooting into a 1-2 %
    offset of the whole band, 10x their parent's residual); the per-spectrum loss history
    (epochs, n_spec); and the model flux (n_spec, P) of the returned params. ``owner``
    (n_slots,) is the spectrum of every slot.

    ``anchor = (ln_s0, ln_g0, w, w_t, ln_a_t, ln_s_t, ln_g_t)`` (slot arrays) adds the
    shape anchor
    :math:`\sum_j w_j [(\ln\sigma_j - \ln\gamma_j) - (\ln\sigma_{0j} - \ln\gamma_{0j})]^2`
    to the loss: each line's Gauss/Lorentz mix is held near its parent's, its FWHM is
    free (continuation: the parent's widths; ``_Sweep._sensitivity``); and the track
    anchor :math:`\sum_j w^t_j [(\ln a_j - \ln a^t_j)^2 + (\ln\sigma_j -
    \ln\sigma^t_j)^2 + (\ln\gamma_j - \ln\gamma^t_j)^2]` towards the values the
    line's track predicts (``_Sweep._track_targets``)."""
    optimizer = optax.adam(learning_rate)

    n_valid = jnp.maximum(jnp.sum(weight, axis=1), 1.0)

    def loss(p):
        r = jnp.exp(_log_flux(problem, p, max_shift)) - flux
        per_spec = jnp.sum(r * r * weight, axis=1)
        total = jnp.sum(per_spec)
        if anchor is not None:
            s0, g0, w, w_t, a_t, s_t, g_t = anchor
            total = total + jnp.sum(w * ((p[2] - s0) - (p[3] - g0)) ** 2)
            total = total + jnp.sum(
                w_t * ((p[1] - a_t) ** 2 + (p[2] - s_t) ** 2 + (p[3] - g_t) ** 2))
        return total, per_spec / n_valid

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
    # history[0] is the loss of the starting params: keep them unless the end is better
    better = (loss(p)[1] < history[0])[jnp.clip(jnp.asarray(owner), 0, flux.shape[0] - 1)]
    p = tuple(jnp.where(better, x, x0) for x, x0 in zip(p, params))
    return p, history, jnp.exp(_log_flux(problem, p, max_shift))


def _fit(wl, flux, good, batch, settings, *, deblend=False, headroom=0.0, at_least=0,
         epochs=None, learning_rate=None, anchor=None):
    """One optimisation pass over ``batch`` (lines updated in place); ``epochs`` and
    ``learning_rate`` default to the settings' (cold) values. ``anchor``: per spectrum, a
    dict of (n_lines,) arrays: ``w`` the weights of the shape anchor to each line's
    ``s0``/``g0``, ``w_t`` those of the track anchor to the targets ``ln_a``, ``ln_s``,
    ``ln_g`` (:func:`_train`).

    Returns (history (B, epochs), model (B, n_pix), the slot count, for ``at_least`` of
    a later pass that should reuse this one's compiled program)."""
    n_spec, n_pix = flux.shape
    max_shift = jnp.asarray(settings.max_shift)
    problem, slots = _plan(wl, batch, settings, headroom=headroom, at_least=at_least)

    def slot_values(name, fill):
        return jnp.asarray(_gather_slots(batch, slots, name, fill))

    params = (slot_values("u", 0.0), slot_values("ln_a", ABSENT_LN_AMPLITUDE),
              slot_values("ln_s", -5.0), slot_values("ln_g", -5.0))
    if deblend:
        spec = slots[0]
        peak = _gather_slots(batch, slots, "peak", 0).astype(np.int64)
        peak_index = jnp.asarray((spec * n_pix + peak).astype(np.int32))
        tau_obs = jnp.asarray(-np.log(np.clip(flux[spec, peak], 1e-3, 1.0)))
        ln_a = _deblend(problem, params, peak_index, tau_obs, max_shift, settings.deblend)
        params = (params[0], ln_a, *params[2:])
        _scatter_slots(batch, slots, "a0", ln_a)
    lower = tuple(slot_values(k, v) for k, v in
                  (("lo_a", ABSENT_LN_AMPLITUDE), ("lo_s", -5.0), ("lo_g", -5.0)))
    upper = tuple(slot_values(k, v) for k, v in
                  (("hi_a", ABSENT_LN_AMPLITUDE), ("hi_s", -5.0), ("hi_g", -5.0),
                   ("hi_f", 0.0)))
    params, history, model = _train(
        problem, params, lower, upper, jnp.asarray(flux, jnp.float32),
        jnp.asarray(good, jnp.float32), max_shift,
        jnp.asarray(learning_rate or settings.learning_rate), epochs or settings.epochs,
        slots[0], None if anchor is None else _anchor_slots(batch, slots, anchor),
    )
    for name, value in zip(("u", "ln_a", "ln_s", "ln_g"), params):
        _scatter_slots(batch, slots, name, value)
    return np.asarray(history).T, np.asarray(model, dtype=np.float64), slots[0].size


def _anchor_slots(batch, slots, anchor):
    """Slot arrays (ln σ0, ln γ0, w, w_t, ln a_t, ln σ_t, ln γ_t) of the anchors
    (:func:`_train`): each line's ``s0``, ``g0`` and the arrays of ``anchor`` (a list of
    dicts of (n_lines,) arrays, one per spectrum); padding slots get weight 0."""
    def values(key):
        return jnp.asarray(_gather_values([a[key] for a in anchor], slots, 0.0))

    return (jnp.asarray(_gather_slots(batch, slots, "s0", 0.0)),
            jnp.asarray(_gather_slots(batch, slots, "g0", 0.0)),
            *(values(k) for k in ("w", "w_t", "ln_a", "ln_s", "ln_g")))


def _clone_batch(wl, flux, good, settings: CloneSettings, extra=None, blends=True):
    """Clone a batch of validated spectra (B, n_pix) sharing one wavelength grid;
    ``extra``: None or, per spectrum, None or lines added to its detected ones as
    initial lines (the continuation sweep's primer, ``CloneSettings.prime_broad``).

    ``blends``: True (:func:`clone`) keeps a blend's lines apart: a family is merged
    only where one line reproduces it (:func:`_merge_redundant`), lines at the edge of
    their box get a fresh one (:func:`_rebox`), and only broad lines
    (:func:`_broad_fwhm` of the spectrum's lines) turn residual features into misfits.
    False (a grid's cold clones: the continuation sweep's start node and primer, and
    independent cloning) merges every family, as all clones did before: each line of
    the start node is an identity carried over the whole grid, and one identity per
    feature interpolates better. On the default grid the start node had 618 lines
    against 574, and the held-out cubic line emulator of the store reached 1.13e-3
    (1.02e-3 without the concentric rule) against 9.85e-4 (README, *Blends in a cold
    clone*).

    Returns (lines per spectrum, loss history (B, passes × epochs, + epochs after a
    merge; a spectrum that kept its lines from before the merge shows its pre-merge
    loss over those epochs), model (B, n_pix)).
    """
    n_spec = flux.shape[0]
    batch = [_initial(wl, 1.0 - flux[b], good[b], settings) for b in range(n_spec)]
    if extra is not None:
        batch = [x.concat(e) if e is not None and e.n else x for x, e in zip(batch, extra)]
    if all(x.n == 0 for x in batch):
        empty = np.zeros((n_spec, settings.epochs * settings.passes))
        return batch, empty, np.ones_like(flux)
    # With a refinement pass, leave room for its added lines in the first pass's
    # problem, so that both passes run the same compiled program.
    headroom = _REFINE_HEADROOM if settings.passes > 1 else 0.0
    history, model, n_slots = _fit(wl, flux, good, batch, settings,
                                   deblend=settings.deblend > 0, headroom=headroom)
    histories = [history]
    for _ in range(1, settings.passes):
        # Lines the first detection missed (mostly blends) show in the residual; all
        # lines are then refitted from their current values. Families of lines that
        # describe one feature are merged first, lines that ended at the edge of their
        # box get a fresh one, and residual features inside a broad fitted line of
        # comparable width are its shape's misfit, not lines. On the real T4700 clone
        # (residual RMS 7.0e-4 with every family merged and misfits inside lines of
        # 25 px or more): merges checked 3.3e-4, + broad = 30 median FWHM 3.1e-4,
        # + fresh boxes 2.2e-4, + concentric families merged 2.3e-4.
        merged = [_merge_redundant(x, settings, wl, checked=blends)[0] for x in batch]
        if blends:
            merged = [_rebox(x, settings) for x in merged]
        batch = []
        for b, x in enumerate(merged):
            cand = _initial(wl, 1.0 - flux[b] / np.maximum(model[b], 1e-6), good[b],
                            settings, taken=x.mu0)
            broad = _broad_fwhm(wl, x if blends else None)
            misfit = _misfits(cand, x, settings.max_shift, min_fwhm=broad)
            batch.append(x.concat(cand.select(~misfit)))
        history, model, n_slots = _fit(wl, flux, good, batch, settings, at_least=n_slots)
        histories.append(history)
        # Lines added in this pass may have grown into a family with a fitted line:
        # merge once more and refit (same compiled program). A spectrum keeps the merge
        # only where the refit fits about as well as before it (RMS within
        # _MERGE_TOLERANCE); elsewhere it keeps its lines from before the merge (on the
        # real T4700 clone the merge and refit raised the RMS from 7.0e-4 to 9.0e-4).
        merged = [_merge_redundant(x, settings, wl, checked=blends) for x in batch]
        if any(n for _, n in merged):
            before = [x.copy() for x in batch]
            model_before, last = model, history[:, -1]
            batch = [x for x, _ in merged]
            history, model, n_slots = _fit(wl, flux, good, batch, settings, at_least=n_slots)
            worse = np.sqrt(history[:, -1]) > (1.0 + _MERGE_TOLERANCE) * np.sqrt(last)
            if worse.any():
                model = np.where(worse[:, None], model_before, model)
                history = np.where(worse[:, None], last[:, None], history)
                batch = [before[b] if worse[b] else x for b, x in enumerate(batch)]
            histories.append(history)
    return batch, np.concatenate(histories, axis=-1), model


def _results(wl, flux, good, batch, history, model, settings, n_bad) -> list[CloneResult]:
    """CloneResults (lines sorted by identifier) from the batched core's output."""
    out = []
    for b, x in enumerate(batch):
        order = np.argsort(x.mu0, kind="stable")
        center = _centers(x, settings.max_shift)
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
    settings: CloneSettings | None = None,
    *,
    mask=None,
    **options,
) -> CloneResult:
    r"""Clone one continuum-normalised spectrum into a pseudo-Voigt line list.

    Fits :math:`F(\lambda) = \prod_j [1 - a_j V(\lambda - \mu'_j; \sigma_j, \gamma_j)]`
    (blase3D eq. 2) to ``flux`` by Adam on the squared residual; see :mod:`jaxspec.clone`
    for detection, initialisation and the bounds.

    Args:
        wavelength: (n_pix,) Å, strictly increasing (float64).
        flux: (n_pix,) continuum-normalised flux; NaN pixels are left out of the loss.
        settings: a :class:`CloneSettings` (default: the blase3D paper's settings).
        mask: optional (n_pix,) bool, True where the flux is valid.
        **options: any :class:`CloneSettings` field, overriding ``settings`` (e.g.
            ``prominence=0.01, epochs=200``). ``method`` and the ``warm_*`` settings
            only matter for :func:`clone_grid`.

    Returns:
        :class:`CloneResult`. A spectrum with no line above ``prominence`` gives an empty
        line list (0 lines, model flux 1) and a warning.

    Raises:
        ValueError: wavelengths not strictly increasing, flux not normalised (continuum
            far from 1), shapes that do not match, all pixels NaN, or a bad setting.
        TypeError: an unknown setting name.
    """
    settings = resolve_settings(settings, options, "clone")
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


def _report(bar, nodes, n):
    """Advance the progress bar ``bar`` by ``n`` nodes, showing the median residual rms
    and line count of the clones ``nodes`` just made (shared by the sweeps)."""
    bar.update(n)
    if nodes:
        bar.set_postfix(rms=f"{np.median([x.residual_rms for x in nodes]):.2g}",
                        lines=int(np.median([x.n_lines for x in nodes])))
