"""The clone's fitting model: a batch of spectra on the one synthesis engine.

Private to :mod:`jaxspec.clone`. A batch of spectra that share a wavelength grid is laid
end to end (:func:`jaxspec.synthesis.stack_wavelengths`) and synthesised as one long
spectrum by :func:`jaxspec.synthesis.plan_synthesis`, so the clones are fitted by the
same windows, wing cut and hand-written derivatives as every other line-list spectrum in
jaxspec (:meth:`jaxspec.lines.LineList.flux`, the line emulator, ``refine``):

* the windows are planned once per optimisation pass, for the edges of the optimisation
  box (the largest amplitude and FWHM a line may take, its centre anywhere within
  ``±max_shift``), so the whole Adam loop is one compiled program;
* the windows are fixed and cut into 64-pixel chunks (``fixed_windows=True``): one
  bucket per level, whose chunk counts, like the flat parameter arrays, are padded up a
  ladder of sizes and taken from an earlier plan on the same stacked grid where this
  one fits, so later passes, batches and grid nodes reuse compiled programs (XLA
  compiles take seconds);
* Adam is elementwise, so minimising the sum of per-spectrum losses over the stacked
  batch optimises every spectrum independently.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.clone.detection import _Lines
from jaxspec.clone.settings import CloneSettings
from jaxspec.synthesis import (
    ABSENT_LN_AMPLITUDE,
    SynthesisPlan,
    _ladder,
    _round_up,
    plan_synthesis,
    stack_wavelengths,
    useful_wing_cut,
)

# Flat parameter array sizes (program reuse): padding slots are inert and cheap (they
# hold no window), so the ladder doubles; each distinct size is one more compile.
_SLOT_LADDER = _ladder(2.0, start=8)
# The Lorentzian wings reach coarse_factor × tolerance on the top level (x^-2 tails of
# neighbouring lines add up; 1.0 as the clones have always been fitted).
_COARSE_FACTOR = 1.0
# Filler pixels between stacked spectra: the wing cut plus this margin (a line centred
# outside the band still reaches no neighbouring spectrum).
_GAP_MARGIN = 1024
# Fixed windows reach this many half widths (plus the centre span) beyond the line centre
# before the Lorentz interpolation takes over (the engine's default, 4, is for windows
# that follow the centre; 2 as the clones have always been fitted).
_CORE_HALVES = 2.0
_CHUNK = 4  # cells (64 pixels) per window chunk: one kernel per level, whatever the widths


class _Problem(eqx.Module):
    """A batch of ``n_spec`` spectra of ``n_pix`` pixels laid end to end (copy ``b``
    starts at pixel ``b stride``), and the synthesis plan of its lines; ``offset`` is
    each parameter slot's pre-optimisation centre μ0 in the stacked wavelengths (μ0 +
    b Δ, float64 Å)."""

    plan: SynthesisPlan
    offset: jax.Array  # (n_slots,) float64
    n_spec: int = eqx.field(static=True)
    n_pix: int = eqx.field(static=True)
    stride: int = eqx.field(static=True)


def _log_flux(problem: _Problem, params, max_shift):
    """ln F of every spectrum of the batch, (n_spec, n_pix); params = (u, ln_a, ln_s,
    ln_g) flat over the slots, centre μ' = μ0 + max_shift tanh(u) (blase3D's bounded
    shift)."""
    u, ln_a, ln_s, ln_g = params
    center = problem.offset + max_shift * jnp.tanh(u)
    flat = problem.plan.log_flux(center, ln_a, ln_s, ln_g)
    gap = problem.stride - problem.n_pix
    flat = jnp.concatenate([flat, jnp.zeros(gap, flat.dtype)])
    return flat.reshape(problem.n_spec, problem.stride)[:, : problem.n_pix]


def _plan(wl, batch: list[_Lines], settings: CloneSettings, *, headroom: float = 0.0,
          at_least: int = 0):
    """The fitting problem of a batch and the slot map (spectrum, line) of every entry
    of the flat parameter arrays (line −1: padding slot, absent).

    The slot count is enlarged by ``headroom`` (a fraction), rounded up a ladder and
    raised to ``at_least``; the plan's bucket counts get the same headroom, so that a
    later pass with a few more lines can reuse the compiled program."""
    n_spec, n_pix = len(batch), wl.size
    spec = np.concatenate([np.full(x.n, b) for b, x in enumerate(batch)]).astype(np.int64)
    line = np.concatenate([np.arange(x.n) for x in batch]).astype(np.int64)
    n_lines = spec.size
    n_slots = max(int(_round_up(math.ceil((1.0 + headroom) * n_lines) + 1, _SLOT_LADDER)),
                  int(at_least))
    slots = (np.r_[spec, np.zeros(n_slots - n_lines, np.int64)],
             np.r_[line, np.full(n_slots - n_lines, -1, np.int64)])
    wing_cut = useful_wing_cut(settings.wing_cut, n_pix)
    gap = wing_cut + _GAP_MARGIN
    stacked, delta = stack_wavelengths(wl, n_spec, gap)
    mu0 = _gather_slots(batch, slots, "mu0", wl[0])
    offset = mu0 + slots[0] * delta
    # Windows for the box's edges: the largest amplitude and FWHM (passed as a pure
    # Lorentzian, f_L = 2γ; any_shape bounds every Gauss/Lorentz mix of that FWHM), the
    # centre anywhere within ±max_shift.
    hi_a = _gather_slots(batch, slots, "hi_a", ABSENT_LN_AMPLITUDE)
    hi_g = _gather_slots(batch, slots, "hi_f", 0.0) - math.log(2.0)
    plan = plan_synthesis(
        stacked, hi_a, np.full(n_slots, -30.0), hi_g, offset,
        center_span=(offset - settings.max_shift, offset + settings.max_shift),
        tolerance=settings.tolerance, coarse_factor=_COARSE_FACTOR, wing_cut=wing_cut,
        reuse=True, headroom=headroom, core_halves=_CORE_HALVES, fixed_windows=True,
        chunk=_CHUNK, any_shape=True,
    )
    problem = _Problem(plan, jnp.asarray(offset, jnp.float64), n_spec, n_pix, n_pix + gap)
    return problem, slots


def _gather_slots(batch: list[_Lines], slots, name: str, fill: float) -> np.ndarray:
    """(n_slots,) values of field ``name`` in slot order (``fill`` in padding slots)."""
    return _gather_values([getattr(x, name) for x in batch], slots, fill)


def _gather_values(values: list[np.ndarray], slots, fill: float) -> np.ndarray:
    """(n_slots,) per-line ``values`` (one (n_lines,) array per spectrum) in slot order
    (``fill`` in padding slots)."""
    slot_spec, slot_line = slots
    v = np.full(slot_line.size, fill, np.float64)
    for b, x in enumerate(values):
        sel = (slot_spec == b) & (slot_line >= 0)
        v[sel] = np.asarray(x)[slot_line[sel]]
    return v


def _scatter_slots(batch: list[_Lines], slots, name: str, values) -> None:
    """Write slot values back into field ``name`` of every spectrum's lines."""
    slot_spec, slot_line = slots
    values = np.asarray(values, dtype=np.float64)
    for b, x in enumerate(batch):
        sel = (slot_spec == b) & (slot_line >= 0)
        getattr(x, name)[slot_line[sel]] = values[sel]
