r"""The line-manifold emulator (blase3D's "PHOENIX generator", differentiable end to end).

.. math::
    F(\lambda; \theta) = \prod_{j:\ \ln a_j(\theta) > -100}
        \left[1 - a_j(\theta)\, V\!\left(\lambda - \mu_j - \delta_j(\theta);
        \sigma_j(\theta), \gamma_j(\theta)\right)\right]

with :math:`(\delta_j, \ln a_j, \ln\sigma_j, \ln\gamma_j)(\theta)` the multilinear
:class:`~jaxspec.manifold.LineManifold` of line ``j`` (blase3D eq. 3; δ = μ' − μ),
:math:`\mu_j` its float64 reference centre and :math:`V` the pseudo-Voigt (eq. 2). Lines
whose interpolated ln a is below −100 are left out, as in the paper (Sect. 3.2): they get
a = 0 through ``jnp.where`` with constant safe widths, so their gradients are exactly zero,
never NaN. Synthesis uses the fast windowed :class:`~jaxspec.synthesis.SynthesisPlan`, whose
windows are planned once from each line's maxima of ln a, ln σ, ln γ and its centre span
over all grid nodes (multilinear interpolation never exceeds the node extremes, so the plan
holds everywhere inside the grid).

``emulator(params)`` with params ``(..., n_params)`` returns ``(..., n_pix)``; it jits,
vmaps and differentiates with respect to the parameters and to the node values
(:func:`jaxspec.refine.refine` optimises the latter).

Batches: leading axes of ``params`` are looped over with ``jax.lax.map`` on CPU (the
scatter-bound synthesis runs about twice as fast per spectrum that way as vmapped) and
vmapped on accelerators; ``jax.vmap(emulator)`` works everywhere.

Out of bounds: parameters outside the grid box raise at run time (``eqx.error_if``; the
message lists the bounds). Build with ``out_of_bounds="clamp"`` to clip them instead
(flat emulator and zero gradient outside the box).

File layout (HDF5, ``kind = "line"``, version 1) — see :meth:`LineEmulator.save`.
"""

from __future__ import annotations

import json
import math
from os import PathLike
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from jaxspec._checks import check_range, check_wavelength
from jaxspec.emulator import Emulator, register_emulator
from jaxspec.identify import Identification, complete_values
from jaxspec.io import emulator_file
from jaxspec.io.atomic import check_overwrite
from jaxspec.io.emulator_file import Contents
from jaxspec.lines import DEAD_LN_AMPLITUDE, LineList, LineTable
from jaxspec.manifold import LineManifold
from jaxspec.synthesis import SynthesisPlan, plan_synthesis

__all__ = ["LineEmulator", "plan_over_nodes", "write_emulator_file"]

VERSION = 1
KIND = "line"
_COLUMNS = LineTable.N_COLUMNS


def _line_maxima(table: np.ndarray, center: np.ndarray, margin: float = 0.0,
                 lines_first: bool = False):
    """Per-line upper bounds over all nodes where the line is alive (ln a > −100):
    ln a, ln σ, ln γ maxima (+ margin) and the lowest/highest centre μ + δ.

    ``table`` is grid-first ``(*grid, L, 4)``, or lines-first ``(L, *grid, 4)`` when
    ``lines_first`` (columns: :class:`~jaxspec.lines.LineTable`)."""
    table = np.asarray(table)
    if lines_first:
        table = np.moveaxis(table.reshape(table.shape[0], -1, _COLUMNS), 0, 1)  # a view
    flat = table.reshape(-1, *table.shape[-2:])  # (nodes, L, 4)
    n_lines = flat.shape[1]
    ln_a = np.full(n_lines, -np.inf)
    ln_s = np.full(n_lines, -np.inf)
    ln_g = np.full(n_lines, -np.inf)
    lo = np.full(n_lines, np.inf)
    hi = np.full(n_lines, -np.inf)
    for start in range(0, flat.shape[0], 64):  # bounded temporaries for big manifolds
        part = LineTable.from_array(flat[start:start + 64])
        alive = part.alive
        ln_a = np.maximum(ln_a, np.where(alive, part.ln_amplitude, -np.inf).max(0))
        ln_s = np.maximum(ln_s, np.where(alive, part.ln_sigma, -np.inf).max(0))
        ln_g = np.maximum(ln_g, np.where(alive, part.ln_gamma, -np.inf).max(0))
        hi = np.maximum(hi, np.where(alive, part.shift, -np.inf).max(0))
        lo = np.minimum(lo, np.where(alive, part.shift, np.inf).min(0))
    dead = ~np.isfinite(ln_a)
    c = np.asarray(center, dtype=np.float64)
    lo = np.where(dead, 0.0, lo) + c
    hi = np.where(dead, 0.0, hi) + c
    # Dead everywhere: amplitude 0, finite widths (the planner drops a = 0 lines).
    ln_s = np.where(dead, 0.0, ln_s) + margin
    ln_g = np.where(dead, 0.0, ln_g) + margin
    ln_a = np.where(dead, -np.inf, ln_a + margin)
    return ln_a, ln_s, ln_g, lo, hi


def plan_over_nodes(table, center, wavelength, tolerance, margin=0.0, lines_first=False,
                    wing_cut=None, reuse=False) -> SynthesisPlan:
    r"""The synthesis windows that serve every point of a line manifold's grid (or of any
    subset of its nodes: pass only their values).

    Interpolation never exceeds the node extremes, so windows planned from each line's
    maxima over the nodes where it is alive (ln a > −100) serve every interpolated
    point: :func:`jaxspec.synthesis.plan_synthesis` for the line at its largest ln a,
    ln σ, ln γ (each + ``margin``) and its centre span, μ + the lowest and highest shift
    (Ida et al. 2000 profile widths; blase3D eq. 2 for the line model). Used by
    :class:`LineEmulator` (all nodes) and by :func:`jaxspec.refine.refine` (each batch's
    nodes, so a hot batch is not synthesised with a cool node's forest).

    Args:
        table: node values ``(*nodes, n_lines, 4)`` (columns of
            :class:`~jaxspec.lines.LineTable`: μ' − μ [Å], ln a, ln σ [ln Å], ln γ [ln Å]),
            or ``(n_lines, *nodes, 4)`` with ``lines_first``.
        center: ``(n_lines,)`` reference centres μ, Å, float64.
        wavelength: ``(n_pix,)`` strictly increasing, Å, float64.
        tolerance: truncation tolerance, ln flux per line.
        margin: added to the maxima of ln a, ln σ, ln γ (room for a fit to grow lines).
        lines_first: ``table`` has the lines axis first.
        wing_cut: the longest window, pixels (None: full wings to ``tolerance``); never
            planned longer than twice the spectrum plus 1024 px, as the clones were
            (:func:`jaxspec.synthesis.useful_wing_cut`, applied by ``plan_synthesis``).
        reuse: round the layout onto the compile-size ladder so that plans of different
            node subsets share compiled programs.

    Returns:
        The :class:`~jaxspec.synthesis.SynthesisPlan`.
    """
    ln_a, ln_s, ln_g, lo, hi = _line_maxima(table, center, margin, lines_first)
    return plan_synthesis(
        np.asarray(wavelength, dtype=np.float64), ln_a, ln_s, ln_g,
        0.5 * (lo + hi), center_span=(lo, hi), tolerance=tolerance, wing_cut=wing_cut,
        reuse=reuse,
    )


@register_emulator(KIND)
class LineEmulator(Emulator):
    r"""Spectra from interpolated line parameters (module docstring for the equation).

    Args:
        manifold: :class:`~jaxspec.manifold.LineManifold` with 4 outputs per line:
            (μ' − μ [Å], ln a, ln σ, ln γ), ln a = −1000 where a line is absent.
        center: ``(n_lines,)`` reference centres μ, Å (kept float64).
        wavelength: ``(n_pix,)`` strictly increasing, Å, float64.
        observed: ``(*grid_shape)`` bool, nodes whose values come from a clone (others
            are interpolated from their neighbours; see :mod:`jaxspec.identify`).
            Default: all.
        tolerance: synthesis truncation tolerance (ln flux per line) of the plan.
        plan_margin: added to every line's maxima of ln a, ln σ, ln γ when planning
            windows (room for refinement to grow lines).
        wing_cut: evaluate each line within about this many pixels around its centre
            and not beyond (blase's wing cut; None: full wings to ``tolerance``). Clones
            fitted with a wing cut are reproduced faithfully with the same one, and it
            bounds the cost of the very broad lines that clones of cool stars contain.
        provenance: JSON-able dict stored in the file (matcher, settings, refinement).
        synthesis_plan: a :class:`~jaxspec.synthesis.SynthesisPlan` made for exactly
            these values and wavelengths (skips planning; used by :meth:`load`).

    Build one from clones with :meth:`from_identification`.
    """

    manifold: LineManifold
    center: Float[Array, " n_lines"]
    synthesis_plan: SynthesisPlan
    observed: Bool[Array, "*grid"]
    grid_wavelength: Float[Array, " n_pix"]
    tolerance: float = eqx.field(static=True)
    wing_cut: int | None = eqx.field(static=True)
    provenance: str = eqx.field(static=True)

    def __init__(
        self,
        manifold: LineManifold,
        center: ArrayLike,
        wavelength: ArrayLike,
        *,
        observed: ArrayLike | None = None,
        tolerance: float = 1e-6,
        plan_margin: float = 0.0,
        provenance: dict | str | None = None,
        synthesis_plan: SynthesisPlan | None = None,
        wing_cut: int | None = None,
    ):
        if manifold.n_out != LineTable.N_COLUMNS:
            raise ValueError(
                f"LineEmulator: the manifold has {manifold.n_out} outputs per line; it "
                "needs 4 (μ' − μ, ln a, ln σ, ln γ)"
            )
        center = np.asarray(center, dtype=np.float64)
        if center.shape != (manifold.n_lines,):
            raise ValueError(
                f"LineEmulator: center has shape {center.shape} but the manifold holds "
                f"{manifold.n_lines} lines"
            )
        wl = check_wavelength(wavelength, label="LineEmulator: wavelength", min_pixels=2)
        if observed is None:
            observed = np.ones(manifold.grid_shape, dtype=bool)
        observed = np.asarray(observed, dtype=bool)
        if observed.shape != manifold.grid_shape:
            raise ValueError(
                f"LineEmulator: observed has shape {observed.shape}, the grid "
                f"{manifold.grid_shape}"
            )
        if wing_cut is not None and int(wing_cut) < 16:
            raise ValueError(f"LineEmulator: wing_cut={wing_cut!r} pixels; pass >= 16 or None")
        self.manifold = manifold
        self.center = jnp.asarray(center)
        if synthesis_plan is None:
            synthesis_plan = plan_over_nodes(np.asarray(manifold.table), center, wl,
                                              tolerance, plan_margin, wing_cut=wing_cut)
        elif synthesis_plan.n_pix != wl.size:
            raise ValueError(
                f"LineEmulator: synthesis_plan planned for {synthesis_plan.n_pix} px, "
                f"wavelength has {wl.size}"
            )
        self.synthesis_plan = synthesis_plan
        self.observed = jnp.asarray(observed)
        self.grid_wavelength = jnp.asarray(wl)
        self.tolerance = float(tolerance)
        self.wing_cut = None if wing_cut is None else int(wing_cut)
        self.provenance = provenance if isinstance(provenance, str) else json.dumps(
            provenance or {}, default=_json_default
        )

    # ------------------------------------------------------------------ interface

    @property
    def param_names(self) -> tuple[str, ...]:
        return self.manifold.param_names

    @property
    def bounds(self) -> np.ndarray:
        return self.manifold.bounds

    @property
    def wavelength(self) -> np.ndarray:
        return np.asarray(self.grid_wavelength)

    @property
    def axes(self) -> dict[str, np.ndarray]:
        """Grid axes ``{name: float64 array}`` of the manifold."""
        return self.manifold.axes_dict()

    @property
    def n_lines(self) -> int:
        return self.manifold.n_lines

    @property
    def info(self) -> dict:
        """Provenance recorded at build time (matcher, clone settings, refinement)."""
        return json.loads(self.provenance or "{}")

    def present(self) -> np.ndarray:
        """``(n_lines, *grid_shape)`` bool: detections (ln a > −100) at observed nodes."""
        table = LineTable.from_array(np.asarray(self.manifold.table))
        return np.moveaxis(table.alive, -1, 0) & np.asarray(self.observed)

    def __call__(self, params: ArrayLike) -> Float[Array, "... n_pix"]:
        """Normalised flux at ``params`` ``(..., n_params)`` → ``(..., n_pix)``."""
        params = self._check_params(params, self.manifold.out_of_bounds)  # box policy
        return _flux(self, params)

    def synthesize(self, line_params: ArrayLike) -> Float[Array, "... n_pix"]:
        """Flux from line parameters ``(..., n_lines, 4)`` (μ' − μ, ln a, ln σ, ln γ), e.g.
        the manifold's output or one node's values; dead lines as in ``__call__``."""
        line_params = jnp.asarray(line_params)
        lead = line_params.shape[:-2]
        if not lead:
            return self._synthesize(line_params)
        flat = line_params.reshape(-1, *line_params.shape[-2:])
        if jax.default_backend() == "cpu":
            # The windowed synthesis is scatter-bound: on CPU a loop over the batch is
            # about twice as fast per spectrum as vmap (batched scatters); accelerators
            # get the vmapped batch.
            flux = jax.lax.map(self._synthesize, flat)
        else:
            flux = jax.vmap(self._synthesize)(flat)
        return flux.reshape(*lead, flux.shape[-1])

    def _line_list(self, p) -> LineList:
        # blase3D Sect. 3.2: interpolated ln a < -100 -> the line is left out (with
        # harmless inputs: LineTable.to_line_list).
        return LineTable.from_array(p).to_line_list(self.center)

    def _synthesize(self, p):
        lines = self._line_list(p)
        return self.synthesis_plan(lines.center, lines.ln_amplitude, lines.ln_sigma,
                                   lines.ln_gamma)

    def line_list(self, params: ArrayLike) -> LineList:
        """The interpolated :class:`~jaxspec.lines.LineList` at one point ``(n_params,)``
        (dead lines carry ln a = −1000): blase3D's reconstructed state dictionary."""
        params = jnp.asarray(params)
        if params.ndim != 1:
            raise ValueError(f"line_list: pass one parameter vector (n_params,), got {params.shape}")
        return self._line_list(self.manifold(params))

    # ------------------------------------------------------------------ variants

    def replan(self, *, tolerance: float | None = None, plan_margin: float = 0.0) -> LineEmulator:
        """The same emulator with synthesis windows planned from the current values."""
        tol = self.tolerance if tolerance is None else float(tolerance)
        return LineEmulator(
            self.manifold, np.asarray(self.center), self.wavelength,
            observed=np.asarray(self.observed), tolerance=tol, plan_margin=plan_margin,
            provenance=self.provenance, wing_cut=self.wing_cut,
        )

    def with_provenance(self, provenance: dict) -> LineEmulator:
        """The same emulator with ``provenance`` merged into its record (no replanning)."""
        import copy

        info = self.info
        info.update(provenance)
        new = copy.copy(self)
        object.__setattr__(new, "provenance", json.dumps(info, default=_json_default))
        return new

    def with_table(self, table: ArrayLike, *, observed: ArrayLike | None = None,
                   provenance: dict | None = None, plan_margin: float = 0.0) -> LineEmulator:
        """A new emulator with other node values ``(*grid_shape, n_lines, 4)`` (replanned)."""
        manifold = eqx.tree_at(lambda m: m.table, self.manifold, jnp.asarray(table))
        info = self.info
        info.update(provenance or {})
        return LineEmulator(
            manifold, np.asarray(self.center), self.wavelength,
            observed=np.asarray(self.observed) if observed is None else observed,
            tolerance=self.tolerance, plan_margin=plan_margin, provenance=info,
            wing_cut=self.wing_cut,
        )

    def restrict(self, wavelength: tuple[float, float]) -> LineEmulator:
        """An emulator for the pixels in ``wavelength = (lo, hi)`` (Å, inclusive) that
        keeps only the lines whose windows reach them (blase3D Sect. 5.2, "strict
        wavelength range").

        Raises:
            ValueError: the range is malformed or holds no pixel of this emulator.
        """
        try:
            lo, hi = check_range("wavelength", wavelength)
        except ValueError as e:
            raise ValueError(f"restrict: {e} (Å)") from None
        wl = self.wavelength
        keep = (wl >= lo) & (wl <= hi)
        if np.count_nonzero(keep) < 2:
            raise ValueError(
                f"restrict(({lo:.2f}, {hi:.2f})): the emulator covers {wl[0]:.2f}–{wl[-1]:.2f} "
                f"Å and {np.count_nonzero(keep)} of its pixels lie in the range; pass a "
                "range that overlaps it by at least 2 pixels"
            )
        table = np.asarray(self.manifold.table)
        plan = plan_over_nodes(table, np.asarray(self.center), wl[keep], self.tolerance,
                                wing_cut=self.wing_cut)
        lines = plan.planned_lines()
        manifold = self.manifold.take_lines(lines)
        info = self.info
        info["restricted"] = [lo, hi]
        return LineEmulator(
            manifold, np.asarray(self.center)[lines], wl[keep],
            observed=np.asarray(self.observed), tolerance=self.tolerance, provenance=info,
            wing_cut=self.wing_cut,
        )

    def local(self, box, *, depth: float = 1e-5) -> LineEmulator:
        r"""The emulator near a box of parameters: the grid nodes whose interpolation
        stencils reach the box, and only the lines that reach ``depth`` there.

        Inside ``box`` it is the same model as this one (the same node values and
        interpolation stencils, lines shallower than ``depth`` at every kept node left
        out); outside the box, up to its own bounds (one or two nodes beyond the box),
        cells at the edges of the smaller grid interpolate with edge stencils. Near any
        one star few of a grid's lines matter (a line of hot stars is absent in cool
        ones), so inference confined to a window (e.g. the ±500 K Teff window of the
        blase3D paper, :func:`~jaxspec.infer.sample_nuts` with ``window``) evaluates and
        differentiates several times faster.

        A line's depth at a node is its peak :math:`a\,V(0)` (pseudo-Voigt of Ida et
        al. 2000: :math:`V(0) = 2\eta/(\pi f) + (1 - \eta)\,2\sqrt{\ln 2/\pi}/f`,
        FWHM f, Lorentz fraction η); a line is kept when that depth is at least
        ``depth`` at some node of the smaller grid (the interpolated one cannot exceed
        its stencil's nodes by more than the cubic overshoot).

        Args:
            box: ``{name: (low, high)}`` for some parameters (the others keep their whole
                range), or a ``(k, 2)`` array of ``[low, high]`` in ``param_names``
                order; each range within the emulator's bounds.
            depth: smallest peak depth (fraction of the continuum) of a kept line;
                0 keeps every line alive at a kept node.

        Returns:
            A :class:`LineEmulator` on the smaller grid (its ``bounds`` contain ``box``);
            provenance records ``local = {"box": ..., "depth": ..., "lines": ...}``.

        Raises:
            ValueError: an unknown parameter, a malformed range, one outside the
                emulator's bounds, or no line as deep as ``depth`` near the box.
        """
        names = self.param_names
        bounds = np.array(self.bounds, dtype=np.float64)
        if isinstance(box, dict):
            unknown = [n for n in box if n not in names]
            if unknown:
                raise ValueError(f"local: unknown parameters {unknown}; the emulator has "
                                 f"{names}")
            ranges = [box.get(n, tuple(bounds[j])) for j, n in enumerate(names)]
        else:
            arr = np.asarray(box, dtype=np.float64)
            if arr.shape != (len(names), 2):
                raise ValueError(f"local: box has shape {arr.shape}; pass ({len(names)}, 2) "
                                 f"[low, high] rows for {names}, or a dict")
            ranges = list(arr)
        if not float(depth) >= 0.0:
            raise ValueError(f"local: depth={depth!r}; pass a peak depth >= 0, e.g. 1e-5")
        slices = []
        for j, (name, axis) in enumerate(zip(names, self.manifold.axes)):
            lo, hi = check_range(f"local: {name}", ranges[j])
            x = np.asarray(axis)
            tol = 1e-9 * max(1.0, abs(x[0]), abs(x[-1]))
            if lo < x[0] - tol or hi > x[-1] + tol:
                raise ValueError(f"local: {name} range ({lo:g}, {hi:g}) leaves the "
                                 f"emulator's [{x[0]:g}, {x[-1]:g}]; pass a range inside it")
            # nodes of every cubic stencil of the cells that meet [lo, hi] ...
            i0 = max(int(np.searchsorted(x, lo, side="right")) - 2, 0)
            i1 = min(int(np.searchsorted(x, hi, side="left")) + 1, x.size - 1)
            # ... and at least 4 where the axis has them (so cubic stays cubic)
            while i1 - i0 < 3 and (i0 > 0 or i1 < x.size - 1):
                i0, i1 = (i0 - 1, i1) if i0 > 0 else (i0, i1 + 1)
            slices.append(slice(i0, i1 + 1))
        table = np.asarray(self.manifold.table)[tuple(slices)]
        from jaxspec.clone.detection import _peak_value

        ln_a = table[..., LineTable.LN_AMPLITUDE].astype(np.float64)
        alive = ln_a > DEAD_LN_AMPLITUDE
        peak = np.exp(np.where(alive, ln_a, -50.0)) * _peak_value(
            table[..., LineTable.LN_SIGMA].astype(np.float64),
            table[..., LineTable.LN_GAMMA].astype(np.float64))
        peak = np.where(alive, peak, 0.0).reshape(-1, table.shape[-2]).max(axis=0)
        keep = np.flatnonzero((peak >= float(depth)) & alive.reshape(-1, table.shape[-2]).any(0))
        if keep.size == 0:
            raise ValueError(f"local: no line reaches depth {depth:g} near the box "
                             f"{[list(r) for r in ranges]}; pass a smaller depth")
        axes = {n: np.asarray(ax)[sl] for n, ax, sl in zip(names, self.manifold.axes, slices)}
        manifold = LineManifold(axes, table=table[..., keep, :],
                                out_of_bounds=self.manifold.out_of_bounds,
                                method=self.manifold.method,
                                amplitude_column=self.manifold.amplitude_column)
        info = self.info
        info["local"] = {"box": [[float(v) for v in r] for r in ranges],
                         "depth": float(depth), "lines": [int(keep.size), self.n_lines]}
        return LineEmulator(
            manifold, np.asarray(self.center)[keep], self.wavelength,
            observed=np.asarray(self.observed)[tuple(slices)], tolerance=self.tolerance,
            provenance=info, wing_cut=self.wing_cut,
        )

    # ------------------------------------------------------------------ building

    @classmethod
    def from_identification(
        cls,
        ident: Identification,
        wavelength: ArrayLike | None = None,
        *,
        tolerance: float = 1e-6,
        out_of_bounds: str = "error",
        provenance: dict | None = None,
        wing_cut: int | None | str = "clones",
        interpolation: str = "cubic",
    ) -> LineEmulator:
        """Emulator from identified clones (:func:`jaxspec.identify.identify_store`).

        Args:
            ident: the identification (dense values, completed).
            wavelength: pixels to synthesise, Å (default: the clone store's grid from
                ``ident.meta["wavelength"]``).
            tolerance: synthesis truncation tolerance.
            out_of_bounds: "error" or "clamp" (see :class:`~jaxspec.manifold.LineManifold`).
            interpolation: the manifold's ``method``: ``"cubic"`` (default: cubic
                Hermite along axes of >= 4 nodes, see :mod:`jaxspec.manifold`; on the
                default grid's 108 held-out nodes 9.5e-4 flux RMS from the exact line
                lists and 2.25e-3 from continuation clones, against 1.84e-3 and 3.12e-3
                linear) or ``"linear"`` (blase3D).
            provenance: extra entries for the file's provenance record.
            wing_cut: pixels (see the class), None for full wings, or "clones" (default):
                the ``wing_cut`` the clones were fitted with (``ident.meta["settings"]``),
                else None.
        """
        if wavelength is None:
            if "wavelength" not in ident.meta:
                raise ValueError(
                    "from_identification: pass wavelength= (the identification does not "
                    "record the clones' wavelength grid)"
                )
            wavelength = ident.meta["wavelength"]
        info = {
            "matcher": ident.matcher,
            "unique_lines": ident.n_lines,
            "lines_per_node_mean": float(ident.lines_per_node[ident.observed].mean()),
            "duplicates": ident.duplicates,
            "refused": ident.refused,
            "clone_settings": ident.meta.get("settings", {}),
            "sources": ident.meta.get("sources", []),
        }
        info.update(provenance or {})
        if wing_cut == "clones":
            wing_cut = (ident.meta.get("settings") or {}).get("wing_cut")
        manifold = LineManifold(ident.axes, ident.values, out_of_bounds=out_of_bounds,
                                method=interpolation)
        return cls(manifold, ident.center, wavelength, observed=ident.observed,
                   tolerance=tolerance, provenance=info, wing_cut=wing_cut)

    # ------------------------------------------------------------------ files

    def save(self, path: str | PathLike, *, overwrite: bool = False,
             compression: str | None = "gzip") -> Path:
        """Write the emulator to HDF5 (layout version 1).

        Layout::

            /                  attrs format="jaxspec-emulator", kind="line", version=1,
                               param_names, tolerance, wing_cut (pixels, -1: none),
                               out_of_bounds, interpolation ("linear"/"cubic";
                               absent: linear), n_lines, provenance (JSON)
            /wavelength        (n_pix,) float64, Å
            /axes/<name>       (n_i,) float64, one per parameter (order: param_names)
            /observed          (*grid_shape) bool, nodes that had a clone
            /lines/center      (n_lines,) float64, μ, Å
            /lines/present     (n_lines, ceil(n_nodes / 8)) uint8: np.packbits of the
                               (n_lines, n_nodes) detection mask, nodes in C order
            /lines/values      (n_present, 4) float32 (μ' − μ [Å], ln a, ln σ, ln γ) of
                               the detections, line-major then node C order; chunked,
                               gzip + shuffle

        Absent entries (ln a = −1000 and nearest-detection fills) and unobserved nodes are
        not stored: :meth:`load` rebuilds them with
        :func:`jaxspec.identify.complete_values`, the same rule that made them. Values
        are rounded to float32 (offsets μ' − μ are stored relative to μ, so float32 keeps
        them to ~1e-9 Å).

        Args:
            path: output file (.h5).
            overwrite: replace an existing file.
            compression: h5py compression of the large datasets (None to switch off).

        Returns:
            the path.
        """
        check_overwrite(path, overwrite)
        return emulator_file.write(path, self.to_contents(compression=compression),
                                   overwrite=overwrite)

    def to_contents(self, compression: str | None = "gzip") -> Contents:
        """The file's contents (layout in :meth:`save`)."""
        table = np.asarray(self.manifold.table)
        present = self.present()
        values = np.moveaxis(table, -2, 0)[present].astype(np.float32)  # (n_present, 4)
        return line_contents(
            wavelength=self.wavelength,
            axes=self.axes,
            center=np.asarray(self.center),
            observed=np.asarray(self.observed),
            present=present.reshape(present.shape[0], -1),
            values=values,
            tolerance=self.tolerance,
            wing_cut=self.wing_cut,
            out_of_bounds=self.manifold.out_of_bounds,
            interpolation=self.manifold.method,
            provenance=self.provenance,
            compression=compression,
        )

    @classmethod
    def from_contents(cls, contents: Contents, path) -> LineEmulator:
        """The emulator from the contents of a file written by :meth:`save` (validating
        them; errors name the file). Read with :meth:`load` or
        :func:`~jaxspec.emulator.load_emulator`."""
        version = -1 if contents.version is None else contents.version
        if version != VERSION:
            raise ValueError(
                f"{path}: line emulator layout version {version}; this jaxspec reads "
                f"version {VERSION}; rebuild the file with `jaxspec build`"
            )
        f = contents.arrays
        for name in ("wavelength", "observed", "lines/center", "lines/present",
                     "lines/values"):
            if name not in f:
                raise ValueError(f"{path}: missing /{name}; the file is incomplete")
        names = [str(n) for n in contents.attrs["param_names"]]
        axes = contents.group("axes")
        if not names or any(n not in axes for n in names):
            raise ValueError(f"{path}: missing /axes; the file is incomplete")
        axes = {n: axes[n] for n in names}
        wl = f["wavelength"]
        observed = f["observed"].astype(bool)
        center = f["lines/center"]
        shape = tuple(a.size for a in axes.values())
        n_nodes = math.prod(shape)
        present = np.unpackbits(f["lines/present"], axis=1, count=n_nodes).astype(bool)
        stored = f["lines/values"]
        if stored.shape != (int(present.sum()), 4):
            raise ValueError(
                f"{path}: /lines/values has shape {stored.shape} but /lines/present marks "
                f"{int(present.sum())} detections; the file is corrupt"
            )
        values = np.zeros((center.size, n_nodes, 4), dtype=np.float32)
        values[present] = stored  # detections in line-major, node C order
        a = contents.attrs
        tolerance = float(a.get("tolerance", 1e-6))
        wing_cut = int(a.get("wing_cut", -1))
        wing_cut = None if wing_cut < 0 else wing_cut
        out_of_bounds = str(a.get("out_of_bounds", "error"))
        interpolation = str(a.get("interpolation", "linear"))
        provenance = str(a.get("provenance", "{}"))
        values = values.reshape(center.size, *shape, 4)
        present = present.reshape(center.size, *shape)
        complete_values(values, present, observed, axes)
        plan = plan_over_nodes(values, center, wl, tolerance, lines_first=True,
                                wing_cut=wing_cut)
        manifold = LineManifold(axes, values, out_of_bounds=out_of_bounds,
                                method=interpolation)
        return cls(manifold, center, wl, observed=observed, tolerance=tolerance,
                   provenance=provenance, synthesis_plan=plan, wing_cut=wing_cut)


def write_emulator_file(path: str | PathLike, *, overwrite: bool = False, **fields) -> Path:
    """Write the sparse line-emulator layout of :meth:`LineEmulator.save` from arrays
    (``fields``: the keywords of :func:`line_contents`).

    Lets big manifolds be written without holding the dense ``(n_lines, *grid, 4)``
    array. Atomic; FileExistsError (before any work) if ``path`` exists and ``overwrite``
    is False.
    """
    path = check_overwrite(path, overwrite)
    return emulator_file.write(path, line_contents(**fields), overwrite=overwrite)


def line_contents(
    *,
    wavelength: np.ndarray,
    axes: dict[str, np.ndarray],
    center: np.ndarray,
    observed: np.ndarray,
    present: np.ndarray,
    values: np.ndarray,
    tolerance: float = 1e-6,
    wing_cut: int | None = None,
    out_of_bounds: str = "error",
    provenance: str = "{}",
    compression: str | None = "gzip",
    interpolation: str = "linear",
) -> Contents:
    """The file contents of :meth:`LineEmulator.save`.

    Args:
        wavelength: ``(n_pix,)`` Å.
        axes: ``{name: (n_i,)}`` grid axes, in parameter order.
        center: ``(n_lines,)`` μ, Å.
        observed: ``(*grid_shape)`` bool, nodes that had a clone.
        present: ``(n_lines, n_nodes)`` bool detection mask (nodes in C order).
        values: ``(n_present, 4)`` the detections (μ' − μ, ln a, ln σ, ln γ) in
            line-major order.
        tolerance, wing_cut, out_of_bounds, provenance, interpolation: the emulator's
            settings (attributes of the file).
        compression: h5py compression of the large datasets (None to switch off).
    """
    present = np.asarray(present, dtype=bool)
    if values.shape != (int(present.sum()), 4):
        raise ValueError(
            f"values has shape {values.shape} but present marks {int(present.sum())} entries"
        )
    opts = {} if compression is None else {"compression": compression, "shuffle": True}
    bits = np.packbits(present, axis=1)
    n = values.shape[0]
    arrays = {"wavelength": np.asarray(wavelength, dtype=np.float64)}
    arrays.update({f"axes/{name}": np.asarray(a, dtype=np.float64)
                   for name, a in axes.items()})
    arrays.update({
        "observed": np.asarray(observed, dtype=bool),
        "lines/center": np.asarray(center, dtype=np.float64),
        "lines/present": bits,
        "lines/values": np.asarray(values, dtype=np.float32),
    })
    options = {}
    if bits.size:
        options["lines/present"] = {
            "chunks": (min(bits.shape[0], 4096) or 1, max(bits.shape[1], 1)), **opts}
    if n:
        options["lines/values"] = {"chunks": (min(n, 1 << 16), 4), **opts}
    attrs = {
        "param_names": list(axes),
        "tolerance": float(tolerance),
        "wing_cut": -1 if wing_cut is None else int(wing_cut),
        "out_of_bounds": out_of_bounds,
        "interpolation": interpolation,
        "n_lines": int(center.size),
        "provenance": provenance,
    }
    return Contents(kind=KIND, version=VERSION, attrs=attrs, arrays=arrays,
                    options=options)


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


@eqx.filter_jit
def _flux(emulator: LineEmulator, params):
    """``emulator``'s flux at checked ``params``: one compiled program when called
    eagerly (not ~1,500 operations dispatched and compiled one by one); inside another
    trace (MAP, NUTS, BO) it is inlined like any jitted function."""
    return emulator.synthesize(emulator.manifold(params))
