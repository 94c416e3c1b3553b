r"""Cloning a whole grid into a clone store: :func:`clone_grid`.

Two methods (``CloneSettings.method``):

``"continuation"`` (the default)
    The grid is swept from a start node (default: the middle of every axis). The start
    node is cloned cold (:func:`jaxspec.clone.clone`'s method); every other node is
    *warm-started* from its parent, the neighbour one step towards the start along
    ``chain_axis`` (default -1, the last axis; 0: Teff rows as chains) while it differs
    from the start there, else along the last axis on which it differs (so every row
    along ``chain_axis`` is one parent chain, outwards in both directions from the
    start's column across the other axes; a missing node is stepped over). A
    node's lines are its parent's lines, each with its **identity** (an index into the
    store's catalogue of reference centres μ₀), refitted by Adam for ``warm_epochs``
    steps at ``warm_learning_rate``, its Gauss/Lorentz mix held near the parent's by a
    feeble anchor (``warm_width_anchor``; ``_Sweep._sensitivity``). Then:

    * **births**: the residual :math:`1 - \bar S / F` is searched for lines as in the
      cold clone's second pass. A candidate next to a faded line of the node revives
      that identity; one next to an identity of the catalogue that the node does not
      carry (born in another branch of the sweep) takes that identity; otherwise it is a
      new identity. After a second warm pass, births whose peak depth fell below ten
      times the floor are dropped (they did not lower the loss enough);
    * **deaths**: a line's amplitude is bounded below by the *floor*, a peak depth of
      ``floor_depth``; a line that fades keeps its identity at the floor instead of
      vanishing (no −1000 cliff between nodes);
    * **back-fill** (after the sweep): a line present at a node's grid neighbour (the
      nearest cloned node along an axis: holes and held-out nodes are stepped over) but
      missing at the node (born in another branch, or after the node was cloned) is
      added to the node with the amplitude that the node's residual supports (linear
      least squares of :math:`\ln(\bar S/F) \approx -aV`, at least the floor), its
      centre and widths taken from the neighbour;
    * **relaxation** (``relax_passes``, after the back-fill; two passes by default):
      every node refitted from the values its grid neighbours interpolate to, the refit
      kept when it fits nearly as well (``_Sweep._relax``), so that nodes that are
      cousins in the sweep tree converge on one decomposition of a blend.

    * **a second root** (``top_root=1``): the nodes above the start on the first axis
      are swept downwards from the top of the first axis in the start's row (cloned
      cold), and where the two trees meet the lines both describe are given one
      identity (``_Sweep._stitch``, before the back-fill). A hydrogen line is then
      cloned where it is strongest and only weakens along its chain. Experimental,
      not working yet (``clone_grid`` warns): the trees describe 10–20 % of the live
      lines at the seam differently, and an emulator built from such a store is wrong
      between the seam's columns (README, *Two roots, tried*).

    Ready nodes (whose parent is cloned) are fitted ``batch_size`` at a time as one
    problem, ``parallel_batches`` batches a round (side by side in local processes with
    ``workers=N``; :mod:`jaxspec.clone._processes`). The store records every line's
    identity, so identification is by construction
    (:func:`jaxspec.identify.identify_store` with ``matcher="identity"``, its default
    for such stores).
``"independent"``
    Every node is cloned on its own (blase3D); lines are identified afterwards by the
    ``id`` or ``track`` matchers.

On the default grid the continuation sweep clones all 990 nodes in ~17–21 min on 2 cores
(999–1,287 s; independent: 1,266 s) and its line emulator is 9× more accurate at held-out
nodes (2.7e-3 against 2.4e-2 flux RMS, linear manifolds; 2.2e-3 with ``chain_axis=0``;
README); the back-fill and the two default relaxation passes add ~23 min and take the
held-out error with cubic manifolds from 1.71e-3 to 9.9e-4. With ``workers=2`` the
whole clone took 2,282 s against 2,674 s in one process.

Either way the store is written after every batch (the file closed between batches), so
a killed run loses at most the batches in progress (a round's) and resumes where it
stopped.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path

import numpy as np

from jaxspec.clone.detection import (
    _MIN_WIDTH,
    _batch_spectra,
    _broad_fwhm,
    _centers,
    _families,
    _fwhm_eta,
    _initial,
    _Lines,
    _merge_families,
    _merge_change,
    _misfits,
    _peak_value,
    _profile,
)
from jaxspec.clone._processes import FitPool
from jaxspec.clone.fit import _clone_batch, _report, _results
from jaxspec.clone.settings import CloneSettings, resolve_settings
from jaxspec.lines import LineList
from jaxspec.profiles import FWHM_PER_SIGMA
from jaxspec.synthesis import ABSENT_LN_AMPLITUDE, plan_synthesis

__all__ = ["clone_grid", "sweep_parents", "top_root_node"]

_WARM_WIDTH_MARGIN = 0.5  # ln room of a warm-started line's FWHM above its parent's
_WARM_AMPLITUDE_MARGIN = 2.5  # ln room of a warm-started line's amplitude above its parent's
_TRACK_MAX_STEP = 1.0  # largest ln change a track anchor's secant predicts
# A warm-started line's FWHM is at most this many band widths (wider, it is a constant
# factor over the band, not a line; its box would otherwise grow by e^0.5 per step along
# a chain: FWHMs of 10^6 Å were seen at the cool end of the default grid).
_WARM_MAX_FWHM_BAND = 1.0
_MATCH_PIXELS = 2.0  # a birth within this many pixels (or 0.2 FWHM) of a line is that line
_MATCH_FWHM = 0.2
_STITCH_FWHM = 2.0  # top_root: lines matched across the trees' seam differ < 2x in FWHM
_BACKFILL_REACH = 4.0  # back-fill least squares over the centre ± this many FWHM
# A family is merged in the sweep only where the merged line changes the model by at
# most this many times the node's residual RMS (RMS over the line's reach).
_MERGE_CHANGE = 2.0
# A relaxed refit replaces a node's clone when its residual RMS is at most this many
# times the node's (a decomposition its neighbours share is worth a slightly worse fit).
_RELAX_TOLERANCE = 1.1
# A line whose peak depth is at most this many times the floor depth is *dormant*; a
# node's refits hold a dormant line at least _HOLD_PIXELS median pixels wide (FWHM) at
# its values instead of fitting it (_Sweep._fit).
_DORMANT = 2.0
_HOLD_PIXELS = 100.0


def clone_grid(
    grid,
    out,
    settings: CloneSettings | Mapping | None = None,
    *,
    batch_size: int = 8,
    resume: bool = True,
    overwrite_settings: bool = False,
    progress: bool = True,
    max_nodes: int | None = None,
    callback: Callable[[int, int], None] | None = None,
    grid_file: str | PathLike | None = None,
    start: Mapping[str, float] | None = None,
    **options,
):
    r"""Clone every existing node of a grid into a clone store, batched and resumable.

    ``method="continuation"`` (the default) sweeps the grid warm-starting every node from
    a cloned neighbour, so each line keeps one identity across the grid; ``"independent"``
    clones every node on its own (the blase3D paper). See the module docstring.

    After each batch its nodes are written to ``out`` and the file is closed, each node
    group marked ``complete`` only after all its data; a killed run loses at most the
    batch in progress. Run again with the same settings, it skips the finished nodes
    (and redoes incomplete groups, with a warning).

    Args:
        grid: a :class:`~jaxspec.grid.SpectralGrid` with ``normalized=True``, or the path
            of a jaxspec-grid HDF5 file (recorded as the store's ``grid_file``).
        out: the clone store (``.h5``); see :mod:`jaxspec.io.clone_store` for the layout.
        settings: a :class:`~jaxspec.clone.CloneSettings` (default: its defaults).
        batch_size: spectra per optimisation problem (batches are padded with repeats to
            this size, so that one program shape is compiled).
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
        start: continuation: ``{name: value}`` of the start node (the nearest existing
            node is used; default: the middle of every axis). A resumed store continues
            from the start it records; a ``start`` naming another node is an error.
        **options: any :class:`~jaxspec.clone.CloneSettings` field, overriding
            ``settings`` (e.g. ``epochs=60, method="independent"``); and ``workers=N``:
            continuation fits each round's ``parallel_batches`` batches side by side in
            N local processes (:mod:`jaxspec.clone._processes`; the same store as one
            process; the default grid 1.17× faster on 2 cores with N = 2; default None:
            this process),
            independent cloning spreads the batches over a local Dask cluster of N
            processes; ``scheduler=ADDRESS``: independent cloning on a running Dask
            cluster (:mod:`jaxspec.clone._distributed`). This process is the only
            writer either way. The processes are spawned: a script that passes
            ``workers`` must guard its top level with ``if __name__ == "__main__":``.

    Returns:
        The :class:`~jaxspec.io.clone_store.CloneStore` at ``out``.

    Raises:
        TypeError: ``grid`` is neither a SpectralGrid nor a path, or an unknown setting.
        ValueError: a grid that is not normalised (or a node whose flux is not), a bad
            setting, or on resume a foreign/corrupt store, a store of another grid,
            different settings without ``overwrite_settings``, or a ``start`` other than
            the store's.
        FileExistsError: ``out`` exists and ``resume`` is False.
    """
    workers, scheduler = options.pop("workers", None), options.pop("scheduler", None)
    settings = resolve_settings(settings, options, "clone_grid")
    continuation = settings.method == "continuation"
    if scheduler is not None or (workers is not None and not continuation):
        # independent nodes spread over Dask workers (continuation is refused there)
        from jaxspec.clone._distributed import clone_grid_distributed

        return clone_grid_distributed(
            grid, out, settings, workers=workers, scheduler=scheduler, batch_size=batch_size,
            resume=resume, overwrite_settings=overwrite_settings, progress=progress,
            max_nodes=max_nodes, callback=callback, grid_file=grid_file, start=start)
    FitPool.check(workers)  # a bad ``workers`` is refused before any work
    if continuation and settings.top_root:
        warnings.warn(
            "top_root=1 is experimental and does not work yet: the two trees describe "
            "~10-20 % of the live lines at their meeting columns differently, so an "
            "emulator built from the store is wrong between those columns (on the default "
            "grid 8.7e-2 flux RMS at 6050 K, against 4.3e-4 with one tree; README, *Two "
            "roots, tried*); use top_root=0 (the default) for stores you build on",
            UserWarning, stacklevel=2)
    from tqdm.auto import tqdm

    from jaxspec.grid import SpectralGrid
    from jaxspec.io.clone_store import CloneStoreWriter
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
    seed = _start_node(grid, start) if continuation else None
    if continuation:  # a bad chain_axis is refused before the store is touched
        _step_order(len(grid.shape), settings.chain_axis)
    writer = CloneStoreWriter(
        out, grid.axes, grid.wavelength, settings.as_dict(), resume=resume,
        overwrite_settings=overwrite_settings,
        grid_file=None if grid_file is None else str(grid_file),
        grid_checksum=grid_checksum(grid), identities=continuation,
        start=seed,
    )
    if continuation:
        try:
            seed = _resumed_start(writer, seed, start, grid, out)
        except ValueError:
            writer.close()
            raise
    params, flat = grid.node_params()
    indices = [tuple(int(i) for i in idx) for idx in zip(*np.unravel_index(flat, grid.shape))]
    n_total = len(indices)
    n_done = sum(bool(writer.done[idx]) for idx in indices)
    bar = tqdm(total=n_total, initial=n_done, disable=not progress, unit="node",
               desc=f"cloning {Path(out).name}", dynamic_ncols=True)
    try:
        job = (_Sweep if continuation else _Independent)(
            grid, writer, settings, int(batch_size), params, flat, indices, seed)
        job.pool = FitPool(grid.wavelength, settings, workers)  # (independent: unused)
        with job.pool:
            job.run(max_nodes, bar, callback)
    finally:
        bar.close()
        writer.close()
    from jaxspec.io.clone_store import CloneStore

    return CloneStore(out)


def _start_node(grid, start) -> tuple[int, ...]:
    """Index of the existing node nearest to ``start`` (default: the middle of each
    axis), in units of axis steps."""
    names = grid.param_names
    target = []
    for k, name in enumerate(names):
        axis = grid.axes[name]
        if start is not None and name in start:
            target.append(float(np.interp(float(start[name]), axis, np.arange(axis.size))))
        else:
            target.append((axis.size - 1) / 2.0)
    if start is not None:
        unknown = sorted(set(start) - set(names))
        if unknown:
            raise ValueError(f"start names {unknown}, not grid parameters {names}; pass "
                             "start={name: value} with the grid's parameter names")
    exists = np.argwhere(grid.mask)
    if exists.size == 0:
        raise ValueError("the grid has no node with a spectrum; nothing to clone")
    # nearest, ties to the higher index (hotter, higher gravity: fewer blends)
    d = np.sum((exists - np.asarray(target)) ** 2, axis=1) - 1e-9 * exists.sum(axis=1)
    return tuple(int(i) for i in exists[int(np.argmin(d))])


def _resumed_start(writer, seed, start, grid, out) -> tuple[int, ...]:
    """The start node of a resumed sweep: the store's recorded one (a sweep continued from
    another node would grow a second tree into the first). ``start`` given and naming
    another node is a ValueError; a new store (or one recording no start) keeps ``seed``."""
    store = getattr(writer, "_store", None)
    recorded = None if store is None else store.start
    if recorded is None or tuple(recorded) == tuple(seed):
        return seed
    if start is None:
        return tuple(int(i) for i in recorded)
    names = grid.param_names

    def where(idx):
        return ", ".join(f"{n}={grid.axes[n][i]:g}" for n, i in zip(names, idx))

    raise ValueError(
        f"{out} was swept from the node {where(recorded)}, and start={dict(start)} is the "
        f"node {where(seed)}; resume without start (the store's), or clone into a new "
        "file to sweep from another node"
    )


def sweep_parents(shape: tuple[int, ...], exists: np.ndarray,
                  start: tuple[int, ...], chain_axis: int = -1,
                  top_root: bool = False) -> dict[tuple, tuple | None]:
    """The continuation tree: ``{node: parent}`` over the existing nodes.

    A node's path towards ``start`` steps along ``chain_axis`` while the node differs
    from ``start`` there, then along the last other axis on which it differs, and so
    on; its parent is the first existing node on that path (None for ``start``). Every
    row along ``chain_axis`` is therefore one parent chain outwards from the start's
    column (with ``chain_axis=-1`` only the start's row along the first axis is).

    Args:
        shape: the grid shape.
        exists: bool array of that shape, True where a node has a spectrum.
        start: index of the start node (must exist).
        chain_axis: the axis stepped first (``CloneSettings.chain_axis``).
        top_root: a second tree (``CloneSettings.top_root``): the nodes above ``start``
            on the first axis walk, by the same rule, to :func:`top_root_node` instead
            of to ``start``.

    Returns:
        dict from node index to parent index (None for the root or roots).
    """
    order = _step_order(len(shape), chain_axis)
    top = top_root_node(exists, start) if top_root else None
    parents = {}
    for idx in map(tuple, np.argwhere(exists)):
        idx = tuple(int(i) for i in idx)
        root = top if top is not None and idx[0] > start[0] else start
        node, parent = idx, None
        while node != root:
            d = next(k for k in order if node[k] != root[k])
            step = 1 if root[d] > node[d] else -1
            node = tuple(n + step if k == d else n for k, n in enumerate(node))
            if exists[node]:
                parent = node
                break
        parents[idx] = parent
    return parents


def top_root_node(exists: np.ndarray, start: tuple[int, ...]) -> tuple[int, ...] | None:
    """The second root of a ``top_root`` sweep: the last existing node along the first
    axis in the start's row (the hottest star of a Teff-first grid), or None when that is
    the start itself."""
    column = np.flatnonzero(exists[(slice(None),) + tuple(start[1:])])
    top = (int(column[-1]),) + tuple(int(i) for i in start[1:])
    return None if top == tuple(start) else top


def _step_order(n: int, chain_axis: int) -> list[int]:
    """Axes in the order a path to the start steps along them: ``chain_axis``, then the
    others from the last to the first. A ValueError names a ``chain_axis`` outside."""
    if not -n <= chain_axis < n:
        raise ValueError(f"chain_axis={chain_axis} is not an axis of a {n}-axis grid; pass "
                         f"an index in [{-n}, {n - 1}] (CloneSettings.chain_axis)")
    first = chain_axis % n
    return [first] + [k for k in reversed(range(n)) if k != first]


class _Independent:
    """Every node cloned on its own (blase3D)."""

    def __init__(self, grid, writer, settings, batch_size, params, flat, indices, seed):
        self.grid, self.writer, self.settings = grid, writer, settings
        self.batch_size, self.params, self.flat, self.indices = batch_size, params, flat, indices

    def run(self, max_nodes, bar, callback):
        from jaxspec.io.clone_store import NodeClone

        grid, settings, writer = self.grid, self.settings, self.writer
        todo = [j for j, idx in enumerate(self.indices) if not writer.done[idx]]
        if max_nodes is not None:
            todo = todo[: max(int(max_nodes), 0)]
        n_total = len(self.indices)
        n_done = n_total - sum(not writer.done[idx] for idx in self.indices)
        wl = grid.wavelength
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            rows = chunk + [chunk[-1]] * (self.batch_size - len(chunk))  # one shape per run
            flux, good, n_bad = _batch_spectra(grid, [self.indices[j] for j in rows])
            batch, history, model = _clone_batch(wl, flux, good, settings, blends=False)
            results = _results(wl, flux, good, batch, history, model, settings, n_bad)
            nodes = [
                NodeClone(
                    index=self.indices[j], params=self.params[j],
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
            _report(bar, nodes, len(chunk))
            if callback is not None:
                callback(n_done, n_total)


def _floor_ln_a(ln_s, ln_g, depth):
    """ln a giving peak depth ``depth`` for the widths (a V(0) = depth)."""
    return math.log(depth) - np.log(_peak_value(ln_s, ln_g))


def _fwhm(ln_s, ln_g):
    return _fwhm_eta(ln_s, ln_g)[0]


class _Sweep:
    """Continuation cloning (module docstring). State: the catalogue of identities'
    reference centres and, per cloned node, its fitted lines (with identities)."""

    def __init__(self, grid, writer, settings, batch_size, params, flat, indices, seed):
        self.grid, self.writer, self.settings = grid, writer, settings
        self.batch_size, self.params, self.indices = batch_size, params, indices
        self.param_of = {idx: params[j] for j, idx in enumerate(indices)}
        self.wl = grid.wavelength
        self.spacing = np.gradient(self.wl)
        self.seed = seed
        self.pool = FitPool(self.wl, settings)  # clone_grid(workers=N): N processes
        top_root = bool(settings.top_root)
        self.parents = sweep_parents(grid.shape, grid.mask, seed, settings.chain_axis,
                                     top_root=top_root)
        self.top = top_root_node(grid.mask, seed) if top_root else None
        self.catalogue = list(np.asarray(writer.identities, dtype=np.float64))
        self.state: dict[tuple, _Lines] = {}
        self.rms: dict[tuple, float] = {}
        self.models: dict[tuple, np.ndarray] = {}
        for node in writer.read_done():
            self.state[tuple(node.index)] = self._from_store(node)
            self.rms[tuple(node.index)] = float(node.residual_rms)

    # ------------------------------------------------------------------ state

    def _from_store(self, node) -> _Lines:
        s = self.settings
        ident = np.asarray(node.identity, dtype=np.int64)
        mu0 = np.asarray(self.catalogue, dtype=np.float64)[ident]
        ratio = np.clip((np.asarray(node.center) - mu0) / s.max_shift, -0.999999, 0.999999)
        a, ls, lg = (np.asarray(v, dtype=np.float64) for v in
                     (node.ln_amplitude, node.ln_sigma, node.ln_gamma))
        return _lines(mu0, np.arctanh(ratio), a, ls, lg, ident)

    def _node_clone(self, idx, x: _Lines, rms: float):
        from jaxspec.io.clone_store import NodeClone

        center = _centers(x, self.settings.max_shift)
        return NodeClone(
            index=idx, params=self.param_of[idx], line_id=np.round(x.mu0, 2), center=center,
            ln_amplitude=x.ln_a, ln_sigma=x.ln_s, ln_gamma=x.ln_g, residual_rms=rms,
            identity=x.ident,
        )

    def _warm_start(self, parent: _Lines) -> _Lines:
        """The parent's lines as the starting point and box of a child."""
        s = self.settings
        cap = math.log(_WARM_MAX_FWHM_BAND * (self.wl[-1] - self.wl[0]))
        ln_f = np.log(_fwhm(parent.ln_s, parent.ln_g))
        over = np.maximum(ln_f - cap, 0.0)  # σ, γ scaled down together, peak depth kept
        ln_s, ln_g = parent.ln_s - over, parent.ln_g - over
        floor = _floor_ln_a(ln_s, ln_g, s.floor_depth)
        ln_a = np.maximum(parent.ln_a - over, floor)
        hi_f = np.minimum(ln_f - over + min(s.width_margin, _WARM_WIDTH_MARGIN), cap)
        x = _lines(parent.mu0, parent.u, ln_a, ln_s, ln_g, parent.ident)
        x.lo_a, x.hi_a = floor, ln_a + max(s.amplitude_margin, _WARM_AMPLITUDE_MARGIN)
        x.hi_f = hi_f
        x.hi_s, x.hi_g = hi_f - math.log(FWHM_PER_SIGMA), hi_f - math.log(2.0)
        return x

    # ------------------------------------------------------------------ sweep

    def run(self, max_nodes, bar, callback):
        todo = {idx for idx in self.indices if idx not in self.state}
        budget = math.inf if max_nodes is None else max(int(max_nodes), 0)
        n_total = len(self.indices)
        cloned = 0
        for root in (self.seed, self.top):
            if root in todo and cloned < budget:
                self._cold(root)
                todo.discard(root)
                cloned += 1
                _report(bar, [], 1)
                if callback is not None:
                    callback(n_total - len(todo), n_total)
        bs = self.batch_size
        while todo and cloned < budget:
            ready = sorted((idx for idx in todo if self.parents[idx] in self.state),
                           key=lambda idx: (self._depth(idx), idx))
            if not ready:  # pragma: no cover - every parent chain reaches the seed
                raise RuntimeError("continuation sweep: no node is ready")
            # one round: up to parallel_batches batches, fitted side by side
            take = ready[: int(min(bs * self.settings.parallel_batches, budget - cloned))]
            chunks = [take[b:b + bs] for b in range(0, len(take), bs)]
            for chunk, nodes in zip(chunks, self._round([self._warm(c) for c in chunks])):
                self.writer.write(nodes, identities=np.asarray(self.catalogue))
                todo.difference_update(chunk)
                cloned += len(chunk)
                _report(bar, nodes, len(chunk))
                if callback is not None:
                    callback(n_total - len(todo), n_total)
        if not todo and (cloned or not self.writer.backfilled):
            self._stitch()
            self._backfill()
            self.writer.mark_backfilled()
        if not todo and self.settings.relax_passes > 0 and cloned < budget:
            self._relax(bar, budget - cloned)

    def _round(self, steps: list) -> list:
        """Run the generators ``steps`` (:meth:`_warm`) in lockstep: each runs to its
        next fit request in list order, the requests are fitted together by
        ``self.pool`` (side by side when it has processes), and each gets its result
        back, again in list order. Returns each generator's return value."""
        out = [None] * len(steps)
        pending = {}

        def advance(i, value):
            try:
                pending[i] = steps[i].send(value)
            except StopIteration as stop:
                out[i] = stop.value

        for i in range(len(steps)):
            advance(i, None)
        while pending:
            keys = sorted(pending)
            results = self._fit([pending.pop(i) for i in keys])
            for i, result in zip(keys, results):
                advance(i, result)
        return out

    def _fit(self, requests: list) -> list:
        r"""``self.pool.fit(requests)``, where a request whose options hold
        ``"hold": True`` has every node's broad *dormant* lines held: lines whose peak
        depth is at most ``_DORMANT`` times ``floor_depth`` and whose FWHM is at least
        ``_HOLD_PIXELS`` median pixels are left out of the fit and keep their values;
        the other lines are fitted to the flux divided by the held lines' product
        (numpy, each over its centre ± ``_BACKFILL_REACH`` FWHM), and the model returned
        is the fitted one times that product. A request's lines are updated in place and
        returned whole, in their order.

        Why: a line that died keeps its identity and its last widths, and the dead lines
        of the default grid's cool and hot ends include pseudo-continuum lines hundreds
        of Å wide, whose windows span the band: 36–49 % of a warm fit's profile
        evaluations there (8 nodes at 3000, 3100, 4000 and 11000 K). Their product is
        not negligible (about a hundred broad lines 1e-4 deep lower a cool node's band by
        ~1 %), hence the division.

        Only the refits hold (births, relaxation), not a node's first warm fit: Adam
        lifts a line off its floor wherever the gradient points up (holding in the first
        fit left 8 nodes at 11000 K at 5.5e-4 RMS against 4.3e-4). Narrow dormant lines
        stay free: holding them too made the coolest nodes split the TiO forest
        differently (held-out cubic RMS 1.20e-3 against 9.9e-4 on the default grid).
        Holding the broad ones took the default grid's clone from 1,913 to 1,628 s at
        the same accuracy (README, *Holding dormant lines*). A held line comes back as a
        birth (:meth:`_births` revives a faded line next to a candidate) or when
        relaxation's targets lift it off the floor."""
        floor = _DORMANT * self.settings.floor_depth
        broad = _HOLD_PIXELS * float(np.median(np.diff(self.wl)))
        sent, splits = [], []
        for flux, good, batch, options in requests:
            options = dict(options)
            live = None
            if options.pop("hold", False):
                live = [(_peak_depth(x) > floor)
                        | (_fwhm(x.ln_s, x.ln_g) < broad) for x in batch]
                if all(m.all() for m in live):
                    live = None
            if live is None:  # nothing held: the request as it is
                sent.append((flux, good, batch, options))
                splits.append(None)
                continue
            # the held lines' product: the other lines are fitted to flux / product
            product = np.stack([_apply_lines(self.wl, np.ones(self.wl.size), x.select(~m),
                                             self.settings.max_shift)
                                for x, m in zip(batch, live)])
            anchor = options.get("anchor")
            if anchor is not None:
                options["anchor"] = [{k: np.asarray(v)[m] for k, v in a.items()}
                                     for a, m in zip(anchor, live)]
            sent.append(((flux / product).astype(flux.dtype), good,
                         [x.select(m) for x, m in zip(batch, live)], options))
            splits.append((batch, live, product))
        out = []
        for split, result in zip(splits, self.pool.fit(sent)):
            if split is None:
                out.append(result)
                continue
            batch, live, product = split
            fitted, history, model, n_slots = result
            for x, m, y in zip(batch, live, fitted):
                for name in ("u", "ln_a", "ln_s", "ln_g"):
                    getattr(x, name)[m] = getattr(y, name)
            out.append((batch, history, np.asarray(model, dtype=np.float64) * product,
                        n_slots))
        return out

    def _depth(self, idx) -> int:
        n = 0
        while self.parents[idx] is not None:
            idx = self.parents[idx]
            n += 1
        return n

    def _cold(self, idx):
        """Clone a root of the sweep (the start node, or ``top_root``'s second root) from
        scratch; its lines are new identities of the catalogue."""
        flux, good, n_bad = _batch_spectra(self.grid, [idx])
        extra = None if self.settings.prime_broad <= 0 else [self._primer(idx)]
        batch, _, model = _clone_batch(self.wl, flux, good, self.settings, extra=extra,
                                       blends=False)
        x = batch[0]
        x = x.select(np.argsort(x.mu0, kind="stable"))
        x.ident = np.arange(len(self.catalogue), len(self.catalogue) + x.n, dtype=np.int64)
        self.catalogue.extend(x.mu0.tolist())
        self._keep(idx, x, model[0], flux[0], good[0])
        self.writer.write([self._node_clone(idx, x, self.rms[idx])],
                          identities=np.asarray(self.catalogue))

    def _primer(self, idx) -> _Lines | None:
        """Broad lines (``prime_broad``) of a cold clone of the node at the top of the
        first axis in the start's row, as initial lines of the start's clone: centred
        where they were fitted, with their widths, amplitudes and boxes (None when the
        start is that node)."""
        column = self.grid.mask[(slice(None),) + tuple(idx[1:])]
        top = (int(np.flatnonzero(column)[-1]),) + tuple(idx[1:])
        if top == tuple(idx):
            return None
        flux, good, _ = _batch_spectra(self.grid, [top])
        x = _clone_batch(self.wl, flux, good, self.settings, blends=False)[0][0]
        broad = _fwhm(x.ln_s, x.ln_g) >= self.settings.prime_broad * _broad_fwhm(self.wl)
        x = x.select(broad)
        x.mu0, x.u = _centers(x, self.settings.max_shift), np.zeros(x.n)
        x.a0, x.s0, x.g0 = x.ln_a.copy(), x.ln_s.copy(), x.ln_g.copy()
        return x

    def _keep(self, idx, x, model, flux, good):
        self.rms[idx] = _residual_rms(model, flux, good)
        self.state[idx] = x
        self.models[idx] = model.astype(np.float32)

    def _warm(self, chunk):
        """Warm-start, fit, birth and refit a batch of ready nodes. A generator for
        :meth:`_round`: yields each fit's request ``(flux, good, batch, options)`` of
        :func:`~jaxspec.clone.fit._fit`, receives ``(batch, history, model, n_slots)``,
        and returns the batch's nodes to write."""
        s, wl = self.settings, self.wl
        # pad to one batch shape for the whole sweep: XLA compiles dominate small batches
        rows = chunk + [chunk[-1]] * (self.batch_size - len(chunk))
        flux, good, _ = _batch_spectra(self.grid, rows)
        batch = [self._warm_start(self.state[self.parents[idx]]) for idx in rows]
        kw = {"epochs": s.warm_epochs, "learning_rate": s.warm_learning_rate}
        anchor = None
        if s.warm_width_anchor > 0 or s.warm_track_anchor > 0:
            anchor = [self._anchors(x, idx) for x, idx in zip(batch, rows)]
        batch, _, model, n_slots = yield (flux, good, batch,
                                          {"headroom": 0.1, "anchor": anchor, **kw})
        first_rms = [_residual_rms(model[b], flux[b], good[b]) for b in range(len(rows))]
        born = []
        for b in range(len(chunk)):
            batch[b], new = self._births(batch[b], flux[b], model[b], good[b])
            born.append(new)
            if anchor is not None:  # births are new: nothing to anchor them to
                anchor[b] = {k: np.r_[v, np.zeros(batch[b].n - v.size)]
                             for k, v in anchor[b].items()}
        unmerged = None
        if s.warm_merge > 0:
            unmerged = ([x.copy() for x in batch], list(born),
                        None if anchor is None else list(anchor))
            merged = [0] * len(batch)
            for b in range(len(chunk)):
                batch[b], born[b], a_b, merged[b] = self._merge(
                    batch[b], born[b], None if anchor is None else anchor[b],
                    first_rms[b])
                if anchor is not None:
                    anchor[b] = a_b
            if not any(merged):
                unmerged = None
        refit = {"at_least": n_slots, "anchor": anchor, "epochs": s.birth_steps,
                 "learning_rate": s.warm_learning_rate, "hold": True}
        if unmerged is not None or any(n.any() for n in born):
            batch, _, model, _ = yield (flux, good, batch, refit)
        if unmerged is not None:
            # A node keeps its merges only where the refit fits at least as well as its
            # first warm fit did; elsewhere it is refitted from its lines before them.
            worse = [b for b in range(len(chunk)) if merged[b] and _residual_rms(
                model[b], flux[b], good[b]) > first_rms[b]]
            if worse:
                lines, born_before, anchor_before = unmerged
                again, _, model_again, _ = yield (flux, good, lines,
                                                  {**refit, "anchor": anchor_before})
                model = np.array(model)
                for b in worse:
                    batch[b], model[b], born[b] = again[b], model_again[b], born_before[b]
        nodes = []
        for b, idx in enumerate(chunk):
            x = batch[b]
            depth = _peak_depth(x)
            weak = born[b] & (depth < 10.0 * s.floor_depth)
            if weak.any():  # births that did not lower the loss enough
                gone = x.select(weak)
                x = x.select(~weak)
                model_b = _apply_lines(wl, model[b], gone, s.max_shift, remove=True)
            else:
                model_b = model[b]
            x = x.select(np.argsort(x.ident, kind="stable"))
            self._keep(idx, x, model_b, flux[b], good[b])
            nodes.append(self._node_clone(idx, x, self.rms[idx]))
        return nodes

    def _anchors(self, x: _Lines, idx) -> dict:
        """The anchors of a warm-started node's lines ``x`` (:func:`_train`): shape
        anchor weights ``w`` and track anchor weights ``w_t``, each line's sensitivity
        (:meth:`_sensitivity`) times ``warm_width_anchor`` and ``warm_track_anchor``,
        and the track's targets (:meth:`_track_targets`)."""
        s = self.settings
        sens = self._sensitivity(x)
        # off (the default): weight 0, so no targets to predict
        a_t, s_t, g_t = (self._track_targets(x, idx) if s.warm_track_anchor > 0
                         else (x.a0, x.s0, x.g0))
        return {"w": s.warm_width_anchor * sens, "w_t": s.warm_track_anchor * sens,
                "ln_a": a_t, "ln_s": s_t, "ln_g": g_t}

    def _track_targets(self, x: _Lines, idx):
        r"""Where each warm-started line's ln a, ln σ, ln γ are expected at node ``idx``:
        its parent's values (``x`` holds them) continued along the secant through the
        grandparent, :math:`v_t = v_p + r (v_p - v_{gp})` with :math:`r` the ratio of
        the two steps, when parent and grandparent lie on the same grid line as the
        node on the same side (the predictor of predictor–corrector continuation,
        Allgower & Georg 1990, *Numerical Continuation Methods*, sect. 2.2), each
        change at most ``_TRACK_MAX_STEP`` in ln; else the parent's values. Lines the
        grandparent lacks keep their parent's values."""
        targets = [np.array(x.a0), np.array(x.s0), np.array(x.g0)]
        par = self.parents.get(idx)
        gp = None if par is None else self.parents.get(par)
        if gp is None or gp not in self.state:
            return targets
        d1 = np.asarray(self.param_of[idx], float) - np.asarray(self.param_of[par], float)
        d0 = np.asarray(self.param_of[par], float) - np.asarray(self.param_of[gp], float)
        axis = np.flatnonzero(d1)
        if axis.size != 1 or np.flatnonzero(d0).tolist() != axis.tolist():
            return targets
        ratio = d1[axis[0]] / d0[axis[0]]
        if ratio <= 0:
            return targets
        g = self.state[gp]
        k = _positions(g.ident, x.ident)
        ok = k >= 0
        for t, before in zip(targets, (g.ln_a, g.ln_s, g.ln_g)):
            t[ok] += np.clip(ratio * (t[ok] - before[k[ok]]), -_TRACK_MAX_STEP,
                             _TRACK_MAX_STEP)
        return targets

    def _sensitivity(self, x: _Lines) -> np.ndarray:
        r"""The anchors' weights per unit λ of a warm-started node's lines (:func:`_train`):
        :math:`d_j^2\, f_j / \Delta\lambda_j`, d the peak depth and f the FWHM of the
        parent's line, Δλ the pixel spacing at its centre: about the squared-residual
        cost of a unit change of ln σ − ln γ (or of ln a), so that the anchors' λ
        (``warm_width_anchor``, ``warm_track_anchor``) are dimensionless.

        Adam scales each parameter's step by its own gradient's RMS, so the Gauss/Lorentz
        mix of a line the data hardly constrain (a weak or blended line, a γ far below a
        pixel) wanders by up to the learning rate per step; the anchor gives it a steady
        pull back to the parent's mix. The default λ = 1e-5 is negligible where the data
        constrain the mix (on two Teff rows of the default grid: median residual RMS
        3.62e-4 against 3.63e-4) and nearly halves the roughness of ln γ along Teff; λ ≥ 1e-3
        starts to hold the mix against the data (RMS 5.3e-4)."""
        depth = _peak_depth(x)
        pixels = _fwhm(x.ln_s, x.ln_g) / np.interp(x.mu0, self.wl, self.spacing)
        return depth ** 2 * pixels

    def _births(self, x: _Lines, flux, model, good):
        """Lines the warm fit could not explain, found in the residual: revived,
        taken from the catalogue, or new. Returns (lines, mask of the births)."""
        s = self.settings
        cand = _initial(self.wl, 1.0 - flux / np.maximum(model, 1e-6), good, s, taken=x.mu0)
        new = np.zeros(x.n, dtype=bool)
        if cand.n == 0:
            return x, new
        center = _centers(x, s.max_shift)
        depth = _peak_depth(x)
        catalogue = np.asarray(self.catalogue)
        have = np.zeros(catalogue.size, dtype=bool)
        have[x.ident] = True
        order = np.argsort(catalogue)
        live = x.select(depth >= s.prominence)
        misfit = _misfits(cand, live, s.max_shift, min_fwhm=_broad_fwhm(self.wl))
        fresh = []
        for k in range(cand.n):
            mu = cand.mu0[k]
            tol = max(_MATCH_PIXELS * float(np.interp(mu, self.wl, self.spacing)),
                      _MATCH_FWHM * math.exp(cand.hi_f[k] - s.width_margin))
            faded = np.flatnonzero((np.abs(center - mu) < tol) & (depth < s.prominence))
            if faded.size:  # revive the nearest faded line with the candidate's values
                i = faded[np.argmin(np.abs(center[faded] - mu))]
                for name in ("ln_a", "ln_s", "ln_g", "hi_a", "hi_s", "hi_g", "hi_f"):
                    getattr(x, name)[i] = getattr(cand, name)[k]
                x.a0[i], x.s0[i], x.g0[i] = cand.ln_a[k], cand.ln_s[k], cand.ln_g[k]
                depth[i] = s.prominence
                continue
            if misfit[k] or np.any(np.abs(center - mu) < tol):
                continue  # inside a live line of its width: its misfit, not a birth
            lo, hi = np.searchsorted(catalogue[order], [mu - tol, mu + tol])
            near = [j for j in order[lo:hi] if not have[j]]
            if near:
                j = min(near, key=lambda j: abs(catalogue[j] - mu))
                have[j] = True
            else:
                j = len(self.catalogue)
                self.catalogue.append(float(mu))
            fresh.append((k, j))
        if not fresh:
            return x, new
        take = cand.select(np.array([k for k, _ in fresh]))
        take.ident = np.array([j for _, j in fresh], dtype=np.int64)
        mu0 = np.asarray(self.catalogue)[take.ident]
        take.u = np.arctanh(np.clip((take.mu0 - mu0) / s.max_shift, -0.99, 0.99))
        take.mu0 = mu0
        take.lo_a = np.maximum(take.lo_a, _floor_ln_a(take.ln_s, take.ln_g, s.floor_depth))
        return x.concat(take), np.r_[new, np.ones(take.n, dtype=bool)]

    def _merge(self, x: _Lines, born: np.ndarray, anchor: dict | None, rms: float):
        """Families of a warm-fitted node's lines that describe one feature (centres
        within half the broader FWHM, FWHMs within a factor 1/``warm_merge``;
        :func:`~jaxspec.clone.detection._families`) merged into their strongest line,
        which keeps its identity (its centre stays within ``max_shift`` of the
        identity's reference) and loses its anchors (a fresh shape). An absorbed line
        that the node carried before keeps its identity at the floor (a death); an
        absorbed birth is dropped. Lines at the floor take no part. Returns (lines,
        births mask, anchor, number of families)."""
        s = self.settings
        depth = _peak_depth(x)
        groups, _ = _families(x, s.max_shift, s.warm_merge,
                              members=depth >= 10.0 * s.floor_depth)
        if not groups:
            return x, born, anchor, 0
        y = _merge_families(x, groups, s)
        made = [g for g in groups if self._merge_change(x, y, g) <= _MERGE_CHANGE * rms]
        if not made:
            return x, born, anchor, 0
        if len(made) < len(groups):  # each family's merge depends on its own lines only
            y = _merge_families(x, made, s)
        groups = made
        absorbed = np.zeros(x.n, dtype=bool)
        for _, family in groups:
            absorbed[family] = True
        main = np.array([i for i, _ in groups], dtype=np.int64)
        y.u[main] = np.arctanh(np.clip((y.mu0[main] - x.mu0[main]) / s.max_shift,
                                       -0.99, 0.99))
        y.mu0[main] = x.mu0[main]
        floor = _floor_ln_a(y.ln_s, y.ln_g, s.floor_depth)
        y.lo_a[main] = floor[main]
        fade = absorbed & ~born
        y.ln_a[fade] = y.a0[fade] = y.lo_a[fade] = floor[fade]
        keep = ~(absorbed & born)
        if anchor is not None:
            anchor = {k: np.array(v, dtype=np.float64) for k, v in anchor.items()}
            anchor["w"][main] = anchor["w_t"][main] = 0.0
            anchor = {k: v[keep] for k, v in anchor.items()}
        return y.select(keep), born[keep], anchor, len(groups)

    def _merge_change(self, x: _Lines, y: _Lines, group) -> float:
        """RMS change of the model over the merged line's centre ± _CHANGE_REACH FWHM
        when the family ``group = (i, members)`` of ``x`` is replaced by line i of the
        merged lines ``y``, placed where the sweep puts it (its centre within
        ``max_shift`` of line i's reference)."""
        i = group[0]
        s = self.settings
        at = x.mu0[i] + float(np.clip(y.mu0[i] - x.mu0[i], -0.99 * s.max_shift,
                                      0.99 * s.max_shift))
        return _merge_change(self.wl, x, y, group, at, s.max_shift)

    # ------------------------------------------------------------------ relaxation

    def _nearest(self, idx, d, step):
        """The nearest cloned node from ``idx`` along axis ``d`` in direction ``step``
        (±1), stepping over nodes that are missing or left out; None at the edge."""
        j = idx[d] + step
        while 0 <= j < self.grid.shape[d]:
            n = idx[:d] + (j,) + idx[d + 1:]
            if n in self.state:
                return n
            j += step
        return None

    def _axis_neighbours(self, idx, d):
        """The nearest cloned nodes below and above ``idx`` along axis ``d`` (stepping
        over missing nodes), or None."""
        pair = [self._nearest(idx, d, -1), self._nearest(idx, d, 1)]
        return None if None in pair else pair

    def _cloned_neighbours(self, idx):
        """The nearest cloned node on either side of ``idx`` along every axis (missing
        or left-out nodes stepped over, so a hole in the grid does not cut a line's
        back-fill between the nodes around it)."""
        found = (self._nearest(idx, d, step) for d in range(len(idx)) for step in (-1, 1))
        return [n for n in found if n is not None]

    def _relax_targets(self, idx):
        r"""Per line of node ``idx``: the value of ln a, ln σ, ln γ that linear
        interpolation between its two cloned neighbours along each axis predicts,
        averaged over the axes on which both carry the line (where the curvature of the
        line's track through ``idx`` is zero); a line without a prediction keeps its
        value. Returns (3, n_lines): ln a, ln σ, ln γ."""
        x = self.state[idx]
        total = np.zeros((3, x.n))
        count = np.zeros(x.n)
        here = np.asarray(self.param_of[idx], float)
        for d in range(len(idx)):
            pair = self._axis_neighbours(idx, d)
            if pair is None:
                continue
            lo, hi = (self.state[n] for n in pair)
            t = ((here[d] - self.param_of[pair[0]][d])
                 / (self.param_of[pair[1]][d] - self.param_of[pair[0]][d]))
            k_lo = _positions(lo.ident, x.ident)
            k_hi = _positions(hi.ident, x.ident)
            ok = (k_lo >= 0) & (k_hi >= 0)
            for r, (a, b) in enumerate(((lo.ln_a, hi.ln_a), (lo.ln_s, hi.ln_s),
                                        (lo.ln_g, hi.ln_g))):
                total[r, ok] += (1.0 - t) * a[k_lo[ok]] + t * b[k_hi[ok]]
            count += ok
        ok = count > 0
        target = np.stack([x.ln_a, x.ln_s, x.ln_g])
        target[:, ok] = total[:, ok] / count[ok]
        return target

    def _relax(self, bar, budget):
        """``relax_passes`` relaxation passes over every cloned node (``CloneSettings``;
        in batches of ``batch_size``, in sweep order, ``parallel_batches`` batches a
        round: Jacobi within a round, Gauss–Seidel between rounds): each node is refitted
        for ``relax_epochs`` steps from :meth:`_relax_targets` (centres kept), its box
        and shape anchor those of a warm start from these values, and the refit is kept
        when its residual RMS is at most ``_RELAX_TOLERANCE`` times the node's. Each
        batch is written and counted in the store (``relaxed``), so a killed run
        resumes at the next batch. Returns the number of nodes refitted."""
        from tqdm.auto import tqdm

        s = self.settings
        order = sorted(self.state, key=lambda idx: (self._depth(idx), idx))
        batches = [order[b:b + self.batch_size] for b in range(0, len(order), self.batch_size)]
        total = s.relax_passes * len(batches)
        done = min(self.writer.relaxed, total)
        kw = {"epochs": s.relax_steps, "learning_rate": s.warm_learning_rate}
        n_fitted = 0

        def nodes_before(k):  # nodes relaxed by the first k batches
            whole, part = divmod(k, len(batches))
            return whole * len(order) + sum(len(b) for b in batches[:part])

        rbar = tqdm(total=nodes_before(total), initial=nodes_before(done),
                    disable=bar.disable, unit="node", dynamic_ncols=True,
                    desc=f"relaxing ({s.relax_passes} pass"
                    f"{'es' if s.relax_passes > 1 else ''})")
        n_batches, per_round = len(batches), s.parallel_batches
        try:
            k = done
            while k < total and n_fitted < budget:
                # one round: the batches up to the next multiple of parallel_batches in
                # this pass (rounds aligned within a pass, so a resumed run forms them
                # as an unbroken one does), within the node budget
                first = k - k % n_batches
                end = min(first + ((k - first) // per_round + 1) * per_round,
                          first + n_batches, total)
                ks, planned = [], 0
                for j in range(k, end):
                    if ks and n_fitted + planned >= budget:
                        break
                    ks.append(j)
                    planned += len(batches[j % n_batches])
                # Jacobi within the round: every refit starts from the values before it
                requests = [self._relax_request(batches[j % n_batches], kw) for j in ks]
                for j, request, (batch, _, model, _) in zip(ks, requests,
                                                            self._fit(requests)):
                    chunk = batches[j % n_batches]
                    flux, good = request[0], request[1]
                    nodes = []
                    for b, idx in enumerate(chunk):
                        rms = _residual_rms(model[b], flux[b], good[b])
                        if rms <= _RELAX_TOLERANCE * self.rms[idx]:
                            self._keep(idx, batch[b], model[b], flux[b], good[b])
                            nodes.append(self._node_clone(idx, batch[b], self.rms[idx]))
                    if nodes:
                        self.writer.write(nodes, identities=np.asarray(self.catalogue))
                    self.writer.mark_relaxed(j + 1)
                    n_fitted += len(chunk)
                    rbar.update(len(chunk))
                    if nodes:
                        rbar.set_postfix(
                            rms=f"{np.median([x.residual_rms for x in nodes]):.2g}",
                            kept=f"{len(nodes)}/{len(chunk)}")
                k = ks[-1] + 1
        finally:
            rbar.close()
        return n_fitted

    def _relax_request(self, chunk, kw):
        """The fit request (:class:`~jaxspec.clone._processes.FitPool`) of one
        relaxation batch: each node warm-started from :meth:`_relax_targets` (centres
        kept), its shape anchored to those values."""
        s = self.settings
        rows = chunk + [chunk[-1]] * (self.batch_size - len(chunk))
        flux, good, _ = _batch_spectra(self.grid, rows)
        batch, anchor = [], []
        for idx in rows:
            y = self.state[idx].copy()
            y.ln_a, y.ln_s, y.ln_g = self._relax_targets(idx)
            x = self._warm_start(y)
            batch.append(x)
            anchor.append({"w": s.warm_width_anchor * self._sensitivity(x),
                           "w_t": np.zeros(x.n), "ln_a": x.a0, "ln_s": x.s0,
                           "ln_g": x.g0})
        return (flux, good, batch, {"headroom": 0.1, **kw, "hold": True,
                                    "anchor": anchor if s.warm_width_anchor > 0 else None})

    # ------------------------------------------------------------------ stitching

    def _stitch(self) -> int:
        r"""Join the identities of a ``top_root`` sweep's two trees where they meet.

        Seam pairs: every cloned node of the start's tree and its nearest cloned node
        above it on the first axis, where that one is of the top's tree. In each pair the
        live lines (peak depth at least ``prominence``) are matched as a birth is matched
        to a line: centres within ``_MATCH_PIXELS`` pixels or ``_MATCH_FWHM`` of the
        FWHM, here also FWHMs within a factor ``_STITCH_FWHM``, each the other's best
        partner by centre, width and depth (:func:`_seam_matches`).
        A matched pair of different identities (b above, a below) is a vote, weighted by
        the smaller peak depth, for renaming b to a. Each b takes its best-voted a, each
        a at most one b (the best-voted), and a rename is made where no node carries
        both identities and every centre of b lies within ``max_shift`` of a's
        reference centre (so no line above the prominence moves; a dormant line's
        centre is clipped into the box). Changed nodes are rewritten. Idempotent (a
        second call finds the renamed lines already shared), so a sweep killed between
        this and the back-fill resumes safely. Returns the number of identities
        renamed (0 without ``top_root``)."""
        if self.top is None:
            return 0
        s = self.settings
        catalogue = np.asarray(self.catalogue, dtype=np.float64)
        votes: dict[tuple[int, int], float] = {}
        # (sweep_parents: a node is of the top's tree iff it lies above the start on
        # the first axis)
        for idx in sorted(self.state):
            if idx[0] > self.seed[0]:
                continue
            q = self._nearest(idx, 0, 1)
            if q is None or q[0] <= self.seed[0]:
                continue
            for b, a, w in _seam_matches(self.state[q], self.state[idx], self.wl,
                                         self.spacing, s):
                votes[(b, a)] = votes.get((b, a), 0.0) + w
        best_a: dict[int, tuple[float, int]] = {}
        for (b, a), w in votes.items():
            if b not in best_a or w > best_a[b][0]:
                best_a[b] = (w, a)
        best_b: dict[int, tuple[float, int]] = {}
        for b, (w, a) in best_a.items():
            if a not in best_b or w > best_b[a][0]:
                best_b[a] = (w, b)
        rename = {b: a for a, (_, b) in best_b.items()}
        if not rename:
            return 0
        carriers: dict[int, list] = {}
        wanted = set(rename) | set(rename.values())
        for idx, x in self.state.items():
            for j in set(x.ident.tolist()) & wanted:
                carriers.setdefault(j, []).append(idx)
        for b, a in list(rename.items()):
            both = set(carriers.get(b, [])) & set(carriers.get(a, []))
            far = False
            for x in (self.state[n] for n in carriers.get(b, [])):
                y = x.select(x.ident == b)
                live = _peak_depth(y) >= s.prominence
                far |= bool(np.any(live & (np.abs(_centers(y, s.max_shift) - catalogue[a])
                                           >= 0.99 * s.max_shift)))
            if both or far:
                del rename[b]
        changed = []
        for idx in sorted({n for b in rename for n in carriers.get(b, [])}):
            x = self.state[idx].copy()
            moved = np.isin(x.ident, list(rename))
            center = _centers(x, s.max_shift)
            x.ident[moved] = [rename[int(j)] for j in x.ident[moved]]
            x.mu0[moved] = catalogue[x.ident[moved]]
            # (a dormant line whose centre lies outside a's box moves to its edge)
            x.u[moved] = np.arctanh(np.clip((center[moved] - x.mu0[moved]) / s.max_shift,
                                            -0.99, 0.99))
            x = x.select(np.argsort(x.ident, kind="stable"))
            self.state[idx] = x
            changed.append(self._node_clone(idx, x, self.rms[idx]))
            if len(changed) >= 64:
                self.writer.write(changed, identities=catalogue)
                changed = []
        if changed:
            self.writer.write(changed, identities=catalogue)
        return len(rename)

    # ------------------------------------------------------------------ back-fill

    def _model(self, idx) -> np.ndarray:
        """Model flux of a cloned node: kept from its fit (float32), or synthesised for
        nodes read back from the store on resume (all of them at once, through one
        synthesis plan: :func:`_profile_products`)."""
        if idx not in self.models:
            missing = [n for n in sorted(self.state) if n not in self.models]
            for n, model in zip(missing, _profile_products(
                    self.wl, [self.state[n] for n in missing], self.settings.max_shift,
                    len(self.catalogue))):
                self.models[n] = model.astype(np.float32)
        return self.models[idx].astype(np.float64)

    def _backfill(self):
        """Add to every node the lines its grid neighbours carry and it lacks, at the
        amplitude its residual supports (at least the floor); rewrite changed nodes.
        The neighbours are the nearest cloned nodes along each axis
        (:meth:`_cloned_neighbours`): a hole in the grid (a missing or held-out node) is
        stepped over, so the nodes either side of it share their births."""
        s, wl = self.settings, self.wl
        changed = []
        for idx in sorted(self.state):
            x = self.state[idx]
            have = set(x.ident.tolist())
            donors = {}
            for n in self._cloned_neighbours(idx):
                y = self.state[n]
                depth = _peak_depth(y)
                for i in np.flatnonzero(depth >= s.prominence):
                    j = int(y.ident[i])
                    if j not in have and (j not in donors or y.ln_a[i] > donors[j][1].ln_a[0]):
                        donors[j] = (n, y.select(np.array([i])))
            if not donors:
                continue
            flux, good, _ = _batch_spectra(self.grid, [idx])
            model = self._model(idx)
            log_res = np.log(np.maximum(flux[0], 1e-6)) - np.log(np.maximum(model, 1e-6))
            add = []
            for j in sorted(donors):
                y = donors[j][1]
                center = float(_centers(y, s.max_shift)[0])
                f = float(_fwhm(y.ln_s, y.ln_g)[0])
                lo, hi = np.searchsorted(wl, [center - _BACKFILL_REACH * f,
                                              center + _BACKFILL_REACH * f])
                prof = _profile(wl[lo:hi], center, y.ln_s[0], y.ln_g[0]) * good[0][lo:hi]
                den = float(np.sum(prof * prof))
                a = -float(np.sum(log_res[lo:hi] * prof)) / den if den > 0 else 0.0
                floor = float(_floor_ln_a(y.ln_s, y.ln_g, s.floor_depth)[0])
                ln_a = max(math.log(a), floor) if a > 0 else floor
                log_res[lo:hi] += math.exp(ln_a) * prof
                z = y.copy()
                z.ln_a = np.array([ln_a])
                add.append(z)
            added = _concat(add)
            model = _apply_lines(wl, model, added, s.max_shift)
            x = x.concat(added)
            x = x.select(np.argsort(x.ident, kind="stable"))
            self.state[idx] = x
            self.models[idx] = model.astype(np.float32)
            self.rms[idx] = _residual_rms(model, flux[0], good[0])
            changed.append(self._node_clone(idx, x, self.rms[idx]))
            if len(changed) >= 64:
                self.writer.write(changed, identities=np.asarray(self.catalogue))
                changed = []
        if changed:
            self.writer.write(changed, identities=np.asarray(self.catalogue))


def _seam_matches(upper: _Lines, lower: _Lines, wl, spacing, settings):
    """Pairs of live lines (peak depth >= prominence) of two neighbouring nodes that
    describe one line (:meth:`_Sweep._stitch`): yields (identity above, identity below,
    the smaller peak depth) for each pair of different identities that are each other's
    best partner. Partners: centres within the birth match tolerance (``_MATCH_PIXELS``
    pixels or ``_MATCH_FWHM`` of the broader FWHM) and FWHMs within a factor
    ``_STITCH_FWHM``; the best minimises |Δμ| / tolerance + |Δ ln FWHM| / ln
    ``_STITCH_FWHM`` + |Δ ln depth| / ln 4 (a broad line and a narrow one on its core
    share a centre, so the centre alone does not pair them)."""
    s = settings

    def live(x):
        depth = _peak_depth(x)
        keep = depth >= s.prominence
        c = _centers(x, s.max_shift)[keep]
        order = np.argsort(c)
        return (c[order], np.log(_fwhm(x.ln_s, x.ln_g))[keep][order],
                np.log(depth[keep])[order], x.ident[keep][order])

    up, lo = live(upper), live(lower)
    if up[0].size == 0 or lo[0].size == 0:
        return
    reach = _MATCH_FWHM * math.exp(max(up[1].max(), lo[1].max()))
    pixel = _MATCH_PIXELS * float(np.max(spacing))

    def best(a, b):  # for every line of a, its best partner in b (or -1)
        out = np.full(a[0].size, -1, dtype=np.int64)
        lo_k = np.searchsorted(b[0], a[0] - max(reach, pixel))
        hi_k = np.searchsorted(b[0], a[0] + max(reach, pixel))
        for i in range(a[0].size):
            k = np.arange(lo_k[i], hi_k[i])
            if k.size == 0:
                continue
            tol = np.maximum(_MATCH_PIXELS * np.interp(a[0][i], wl, spacing),
                             _MATCH_FWHM * np.exp(np.maximum(a[1][i], b[1][k])))
            dc = np.abs(b[0][k] - a[0][i])
            df = np.abs(b[1][k] - a[1][i])
            ok = (dc < tol) & (df <= math.log(_STITCH_FWHM))
            if ok.any():
                cost = dc / tol + df / math.log(_STITCH_FWHM) + np.abs(b[2][k] - a[2][i]) / math.log(4.0)
                out[i] = k[ok][np.argmin(cost[ok])]
        return out

    down, back = best(up, lo), best(lo, up)
    for i, k in enumerate(down):
        if k >= 0 and back[k] == i and up[3][i] != lo[3][k]:
            yield int(up[3][i]), int(lo[3][k]), float(math.exp(min(up[2][i], lo[2][k])))


def _peak_depth(x: _Lines) -> np.ndarray:
    """(n,) peak depth a V(0) of each line of ``x`` (normalised flux)."""
    return np.exp(x.ln_a) * _peak_value(x.ln_s, x.ln_g)


def _lines(mu0, u, ln_a, ln_s, ln_g, ident) -> _Lines:
    """_Lines at given values with the widest box (warm starts narrow it)."""
    n = mu0.size
    ln_f = np.log(_fwhm(ln_s, ln_g))
    floor = np.full(n, math.log(_MIN_WIDTH))
    return _Lines(
        mu0=np.array(mu0, dtype=np.float64), u=np.array(u, dtype=np.float64),
        ln_a=np.array(ln_a, dtype=np.float64), ln_s=np.array(ln_s, dtype=np.float64),
        ln_g=np.array(ln_g, dtype=np.float64), a0=np.array(ln_a), s0=np.array(ln_s),
        g0=np.array(ln_g), lo_a=np.full(n, ABSENT_LN_AMPLITUDE / 2), hi_a=np.array(ln_a) + 1.0,
        lo_s=floor, hi_s=ln_f + 1.0 - math.log(FWHM_PER_SIGMA), lo_g=floor.copy(),
        hi_g=ln_f + 1.0 - math.log(2.0), hi_f=ln_f + 1.0, peak=np.zeros(n, np.int64),
        ident=np.array(ident, dtype=np.int64),
    )


def _residual_rms(model, flux, good) -> float:
    """RMS of model − flux over the valid pixels (``good`` 1 or 0)."""
    r = (model - flux) * good
    return math.sqrt(float(np.sum(r * r) / max(np.sum(good), 1.0)))


def _positions(ident: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index in ``ident`` of every identity of ``wanted`` (-1 where absent)."""
    where = {int(i): k for k, i in enumerate(ident)}
    return np.array([where.get(int(i), -1) for i in wanted], dtype=np.int64)


def _concat(parts: list[_Lines]) -> _Lines:
    out = parts[0]
    for p in parts[1:]:
        out = out.concat(p)
    return out


def _apply_lines(wl, model, x: _Lines, max_shift, remove=False) -> np.ndarray:
    """``model`` times (or, ``remove``, divided by) Π_j (1 − a_j V_j(λ)) of lines ``x``,
    each over its centre ± _BACKFILL_REACH FWHM (numpy; for a few weak lines)."""
    out = np.array(model, dtype=np.float64)
    center = _centers(x, max_shift)
    f = _fwhm(x.ln_s, x.ln_g)
    for j in range(x.n):
        lo, hi = np.searchsorted(wl, [center[j] - _BACKFILL_REACH * f[j],
                                      center[j] + _BACKFILL_REACH * f[j]])
        factor = 1.0 - math.exp(x.ln_a[j]) * _profile(wl[lo:hi], center[j], x.ln_s[j],
                                                      x.ln_g[j])
        factor = np.maximum(factor, 1e-6)
        out[lo:hi] = out[lo:hi] / factor if remove else out[lo:hi] * factor
    return out


def _profile_products(wl, lines: list[_Lines], max_shift, n_identities: int):
    """Π_j (1 − a_j V_j(λ)) on ``wl`` of every line set in ``lines`` (the nodes of a
    resumed sweep), yielded in order as ``(n_pix,)`` float64 arrays.

    Every set is laid out over the store's ``n_identities`` identities (absent ones at
    ln a = −1000) and synthesised through one plan made for the per-identity maxima over
    all sets (:func:`jaxspec.synthesis.plan_synthesis`), so one program is compiled for
    all of them: planned per node, the back-fill of a resumed 990-node sweep compiled
    once per node and took 82 minutes."""
    n = max(int(n_identities), 1)
    ln_a = np.full(n, -np.inf)
    ln_s = np.full(n, -np.inf)
    ln_g = np.full(n, -np.inf)
    lo, hi = np.full(n, np.inf), np.full(n, -np.inf)
    for x in lines:
        c = _centers(x, max_shift)
        np.maximum.at(ln_a, x.ident, x.ln_a)
        np.maximum.at(ln_s, x.ident, x.ln_s)
        np.maximum.at(ln_g, x.ident, x.ln_g)
        np.minimum.at(lo, x.ident, c)
        np.maximum.at(hi, x.ident, c)
    unused = ~np.isfinite(ln_a)
    mid = float(np.mean(wl))
    lo, hi = np.where(unused, mid, lo), np.where(unused, mid, hi)
    ln_s, ln_g = np.where(unused, 0.0, ln_s), np.where(unused, 0.0, ln_g)
    plan = plan_synthesis(np.asarray(wl, dtype=np.float64), ln_a, ln_s, ln_g, 0.5 * (lo + hi),
                          center_span=(lo, hi), tolerance=1e-6)
    for x in lines:
        a = np.full(n, ABSENT_LN_AMPLITUDE)
        s_, g = np.zeros(n), np.zeros(n)
        c = 0.5 * (lo + hi)
        # a node carries an identity at most once; should one repeat, add its terms
        first = np.unique(x.ident, return_index=True)[1]
        rest = np.setdiff1d(np.arange(x.n), first)
        a[x.ident[first]], s_[x.ident[first]] = x.ln_a[first], x.ln_s[first]
        g[x.ident[first]], c[x.ident[first]] = x.ln_g[first], _centers(x, max_shift)[first]
        out = np.asarray(LineList(c, a, s_, g).flux(wl, plan=plan), dtype=np.float64)
        if rest.size:
            out = _apply_lines(wl, out, x.select(rest), max_shift)
        yield out
