r"""Leave-columns-out validation of an emulator against its grid.

:func:`validate_emulator` removes every ``every``-th column of the first grid axis
(Teff) from an emulator's nodes, rebuilds the emulator from the remaining nodes with its
own interpolation (linear or cubic), and measures it at the removed nodes against the
grid's spectra, beside linear pixel interpolation of the same remaining nodes (the
baseline every emulator must beat). This is how ``benchmarks/bench_emulator.py``
measures the line emulator (108 held-out nodes of the default grid: Teff columns 5, 15,
…, 55), made available for any grid and any emulator that can be rebuilt from node
values:

* ``kind="line"``: the manifold's node values without the removed columns
  (:class:`~jaxspec.manifold.LineManifold`, same ``method``); the removed nodes are then
  interpolated from their Teff neighbours. An emulator built from a continuation clone
  store saw the removed nodes' spectra through the sweep (its neighbours were
  warm-started from them), so this is slightly optimistic for it; for a strict test,
  clone the grid without those nodes, as the benchmark does.
* ``kind="pixel"``: the node spectra without the removed columns
  (:class:`~jaxspec.pixel_emulator.PixelEmulator`, same ``method``).

Other kinds (The Cannon, The Payne, networks) are fitted to all spectra at once, not
stored per node, and would need retraining: they are refused with a message.

RMS: :math:`\sqrt{\langle (F_\mathrm{emu} - F_\mathrm{grid})^2 \rangle}` over all
pixels of the removed nodes of one Teff column (every other parameter), and over all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from jaxspec.grid import SpectralGrid

__all__ = ["ValidationResult", "validate_emulator", "held_columns", "without_columns"]


@dataclass
class ValidationResult:
    """Held-out RMS of an emulator and of linear pixel interpolation, per removed column.

    Attributes:
        param: the name of the axis whose columns were removed (the first).
        held: ``(m,)`` the removed axis values (e.g. K).
        rms: ``(m,)`` flux RMS of the rebuilt emulator at each removed column.
        rms_pixel: ``(m,)`` the same for linear pixel interpolation.
        n_nodes: ``(m,)`` nodes of each column that the grid holds.
        total: RMS over every removed node; ``total_pixel`` the baseline's.
        worst: ``(params, wavelength, residual)`` of the node with the largest RMS.
    """

    param: str
    held: np.ndarray
    rms: np.ndarray
    rms_pixel: np.ndarray
    n_nodes: np.ndarray
    total: float
    total_pixel: float
    worst: tuple = field(repr=False, default=())

    def table(self) -> str:
        """A printable table, one row per removed column, then the total."""
        lines = [f"{self.param:>10s} {'nodes':>6s} {'emulator RMS':>13s} {'pixel RMS':>10s} "
                 f"{'ratio':>6s}"]
        for v, n, a, b in zip(self.held, self.n_nodes, self.rms, self.rms_pixel):
            lines.append(f"{v:10g} {n:6d} {a:13.2e} {b:10.2e} {a / b:6.2f}")
        lines.append(f"{'all':>10s} {int(self.n_nodes.sum()):6d} {self.total:13.2e} "
                     f"{self.total_pixel:10.2e} {self.total / self.total_pixel:6.2f}")
        return "\n".join(lines)


def held_columns(n: int, every: int = 10, offset: int | None = None) -> np.ndarray:
    """Indices of the removed columns of an axis of ``n`` nodes: ``offset``,
    ``offset + every``, … (default offset ``every // 2``), never the first or last node
    (an emulator cannot extrapolate).

    Raises:
        ValueError: ``every < 2`` or no column to remove.
    """
    if int(every) != every or every < 2:
        raise ValueError(f"every={every!r}; pass an integer >= 2 (every k-th column is removed)")
    every = int(every)
    offset = every // 2 if offset is None else int(offset)
    cols = np.arange(offset, n, every)
    cols = cols[(cols > 0) & (cols < n - 1)]
    if cols.size == 0:
        raise ValueError(
            f"no column to remove: an axis of {n} nodes with every={every}, offset={offset} "
            "leaves none inside its ends; lower every or change offset"
        )
    return cols


def without_columns(emulator, keep: np.ndarray, method: str | None = None):
    """A line or pixel emulator rebuilt from the node values of the first-axis columns
    ``keep`` (integer indices) alone, interpolated with ``method`` (default: its own).

    Raises:
        ValueError: another kind of emulator (module docstring).
    """
    import jax.numpy as jnp

    kind = getattr(emulator, "kind", None)
    if kind == "line":
        from jaxspec.line_emulator import LineEmulator
        from jaxspec.manifold import LineManifold

        m = emulator.manifold
        axes = m.axes_dict()
        axes[m.names[0]] = axes[m.names[0]][keep]
        manifold = LineManifold(axes, np.asarray(m.values)[:, keep],
                                out_of_bounds=m.out_of_bounds, method=method or m.method)
        return LineEmulator(manifold, np.asarray(emulator.center), emulator.wavelength,
                            observed=np.asarray(emulator.observed)[keep],
                            tolerance=emulator.tolerance, wing_cut=emulator.wing_cut)
    if kind == "pixel":
        from jaxspec.pixel_emulator import PixelEmulator

        axes = list(emulator.axes)
        axes[0] = axes[0][keep]
        return PixelEmulator(axes=tuple(axes), flux=jnp.asarray(emulator.flux)[keep],
                             wavelength_=emulator.wavelength,
                             filled=np.asarray(emulator.filled)[keep], names=emulator.names,
                             method=method or emulator.method)
    raise ValueError(
        f"validate_emulator: a {kind!r} emulator is fitted to the whole grid, not stored "
        "per node, so it cannot be rebuilt without some nodes here; validate a 'line' "
        "or 'pixel' emulator (or retrain this one on a grid without those nodes)"
    )


def _evaluate(emulator, params: np.ndarray, batch: int = 16) -> np.ndarray:
    import equinox as eqx
    import jax

    run = eqx.filter_jit(lambda em, p: jax.vmap(em)(p))
    out = []
    for start in range(0, params.shape[0], batch):
        sel = params[start:start + batch]
        pad = np.concatenate([sel, np.repeat(sel[:1], batch - sel.shape[0], 0)])
        out.append(np.asarray(run(emulator, pad))[: sel.shape[0]])
    return np.concatenate(out) if out else np.zeros((0, emulator.n_pix))


def validate_emulator(emulator, grid: SpectralGrid, every: int = 10,
                      offset: int | None = None, batch: int = 16) -> ValidationResult:
    """Leave-columns-out validation (module docstring).

    Args:
        emulator: a ``"line"`` or ``"pixel"`` emulator built on ``grid``'s lattice.
        grid: the :class:`~jaxspec.grid.SpectralGrid` (normalised) the emulator was built
            from: same parameter names, axes and wavelengths.
        every, offset: the removed columns of the first axis (:func:`held_columns`).
        batch: spectra per evaluation call.

    Returns:
        :class:`ValidationResult`.

    Raises:
        ValueError: the grid does not match the emulator (names the field and the fix),
            an emulator kind that cannot be rebuilt, or no column to remove.
    """
    from jaxspec.pixel_emulator import PixelEmulator

    names = tuple(emulator.param_names)
    if tuple(grid.param_names) != names:
        raise ValueError(f"the grid's parameters {tuple(grid.param_names)} differ from the "
                         f"emulator's {names}; validate with the grid it was built from")
    wl = np.asarray(emulator.wavelength)
    if wl.shape != grid.wavelength.shape or not np.allclose(wl, grid.wavelength, rtol=0,
                                                            atol=1e-6):
        raise ValueError(f"the grid's wavelengths ({grid.n_pix} px) differ from the "
                         f"emulator's ({wl.size} px); validate with the grid it was built "
                         "from (an emulator restricted to a range cannot be validated)")
    emu_axes = getattr(emulator, "axes", None)
    emu_axes = (dict(emu_axes) if isinstance(emu_axes, dict)
                else dict(zip(names, emu_axes)) if emu_axes is not None else {})
    for n in names:
        if n not in emu_axes or not np.allclose(np.asarray(emu_axes[n]), grid.axes[n]):
            raise ValueError(f"the grid's {n} axis differs from the emulator's; validate "
                             "with the grid it was built from")
    first = grid.axes[names[0]]
    cols = held_columns(first.size, every, offset)
    keep = np.setdiff1d(np.arange(first.size), cols)
    rebuilt = without_columns(emulator, keep)
    sub = SpectralGrid({**grid.axes, names[0]: first[keep]}, grid.wavelength,
                       grid.flux[keep], mask=grid.mask[keep], normalized=True)
    pixel = PixelEmulator.from_grid(sub, fill="interpolate")
    params, flat = grid.node_params()
    column = np.searchsorted(first, params[:, 0])
    held = np.isin(column, cols)
    truth = grid.flux.reshape(-1, grid.n_pix)[flat][held]
    p = params[held]
    res = _evaluate(rebuilt, p, batch) - truth
    res_pix = _evaluate(pixel, p, batch) - truth
    per_node = np.sqrt(np.mean(res**2, axis=1))
    rms, rms_pix, n_nodes = [], [], []
    for c in cols:
        sel = column[held] == c
        n_nodes.append(int(sel.sum()))
        rms.append(float(np.sqrt(np.mean(res[sel] ** 2))) if sel.any() else np.nan)
        rms_pix.append(float(np.sqrt(np.mean(res_pix[sel] ** 2))) if sel.any() else np.nan)
    w = int(np.argmax(per_node)) if per_node.size else 0
    return ValidationResult(
        param=names[0], held=first[cols], rms=np.asarray(rms), rms_pixel=np.asarray(rms_pix),
        n_nodes=np.asarray(n_nodes), total=float(np.sqrt(np.mean(res**2))),
        total_pixel=float(np.sqrt(np.mean(res_pix**2))),
        worst=(p[w], grid.wavelength, res[w], res_pix[w]) if per_node.size else (),
    )
