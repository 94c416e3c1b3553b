"""``jaxspec clone GRID | info | plot``: clone grid spectra into line lists, inspect, plot."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from jaxspec.clone.settings import METHODS, CloneSettings
from jaxspec.cli._common import (
    add_dask_options,
    check_outputs,
    matplotlib_pyplot,
    parse_assignments,
    parse_range,
    save_figure,
)

_ACTIONS = ("info", "plot")

_DESCRIPTION = """\
Clone every spectrum of a continuum-normalised grid into a pseudo-Voigt line list (the
blase method, blase3D paper Sect. 2.3), or inspect a clone store.

  jaxspec clone GRID.h5 --out CLONES.h5 [options]   clone (resumable: rerun to continue)
  jaxspec clone info CLONES.h5                       nodes done, lines per node, residuals
  jaxspec clone plot CLONES.h5 --teff T --logg G --feh Z --out FIG.png [--grid GRID.h5]
                                                     spectrum, clone and residual at one
                                                     node, and FIG_lines.png: lines per
                                                     node over the first two axes

One writer per store: `clone` holds CLONES.h5.lock while it runs, and a second `clone` of
the same store fails at once saying which process holds it (a lock left by a killed run
is taken over with a warning). `info` and `plot` read without locking and never disturb
a running clone. Resuming checks the store's record of its grid's spectra (SHA-256) and
refuses a different grid.

The first positional is an action when it is "info" or "plot", otherwise the grid file.
Defaults are the blase3D paper's (prominence 0.005, 100 epochs, Adam learning rate 0.05)
except the wing cut: 30000 px (the paper's 6000 px cut the Paschen wings at ±30 Å on the
default grid, and the emulator could not reproduce the steps the cut leaves).
"""


def register(sub) -> None:
    p = sub.add_parser(
        "clone",
        help="clone grid spectra into line lists (blase); info/plot a clone store",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="GRID|info|plot",
                   help="grid file to clone, or the action info/plot")
    p.add_argument("store", nargs="?", metavar="CLONES",
                   help="clone store (for info and plot)")
    g = p.add_argument_group("cloning (GRID)")
    g.add_argument("--out", help="clone store to write (GRID), or figure file (plot)")
    g.add_argument("--prominence", type=float, default=0.005,
                   help="minimum line depth (prominence) in normalised flux (0.005)")
    g.add_argument("--wing-cut", type=int, default=CloneSettings.wing_cut,
                   help="longest window, in pixels, a line is evaluated over "
                   f"({CloneSettings.wing_cut}; the blase3D paper's: 6000)")
    g.add_argument("--epochs", type=int, default=100, help="Adam steps per pass (100)")
    g.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (0.05)")
    g.add_argument("--passes", type=int, choices=(1, 2), default=2,
                   help="2: re-detect lines in the residual and refit (default); 1: the "
                   "paper's single pass")
    g.add_argument("--method", choices=METHODS, default=CloneSettings.method,
                   help="continuation: warm-start every node from a cloned neighbour, "
                   "lines keep one identity across the grid; independent: every node "
                   f"on its own, the blase3D paper's (default: {CloneSettings.method})")
    g.add_argument("--warm-epochs", type=int, default=CloneSettings.warm_epochs,
                   help="continuation: Adam steps per warm pass "
                   f"({CloneSettings.warm_epochs})")
    g.add_argument("--warm-width-anchor", type=float,
                   default=CloneSettings.warm_width_anchor,
                   help="continuation: weight of the anchor of each line's Gauss/Lorentz "
                   "mix (ln σ − ln γ) to its parent's (dimensionless; default "
                   f"{CloneSettings.warm_width_anchor:g}; 0: off)")
    g.add_argument("--chain-axis", type=int, default=CloneSettings.chain_axis,
                   help="continuation: the grid axis whose rows are parent chains (default "
                   f"{CloneSettings.chain_axis}: the last axis, the rule of stores made before "
                   "this option; 0: every Teff row a parent chain)")
    g.add_argument("--warm-track-anchor", type=float, default=CloneSettings.warm_track_anchor,
                   help="continuation: weight of the anchor of each line's ln a, ln σ, "
                   "ln γ to the values its track predicts (dimensionless; default "
                   f"{CloneSettings.warm_track_anchor:g}: off; e.g. 1e-3)")
    g.add_argument("--prime-broad", type=float, default=CloneSettings.prime_broad,
                   help="continuation: initialise the start node's clone with the lines "
                   "at least this many × 25 px wide of a cold clone of the node at the top "
                   "of the first axis (the hottest star); default "
                   f"{CloneSettings.prime_broad:g}; 0: off")
    g.add_argument("--relax-passes", type=int, default=CloneSettings.relax_passes,
                   help="continuation: relaxation passes after the sweep, each node refitted "
                   "from the values its grid neighbours interpolate to (default "
                   f"{CloneSettings.relax_passes}; 0: off)")
    g.add_argument("--relax-epochs", type=int, default=CloneSettings.relax_epochs,
                   help="continuation: Adam steps of each relaxation refit (default "
                   f"{CloneSettings.relax_epochs}; 0: --warm-epochs)")
    g.add_argument("--birth-epochs", type=int, default=CloneSettings.birth_epochs,
                   help="continuation: Adam steps of a node's refit after its births "
                   f"(default {CloneSettings.birth_epochs}; 0: --warm-epochs)")
    g.add_argument("--warm-merge", type=float, default=CloneSettings.warm_merge,
                   help="continuation: merge families of lines describing one feature "
                   "(FWHMs within this ratio) after a node's births, kept where the "
                   f"refit fits as well (default {CloneSettings.warm_merge:g}; 0: off)")
    g.add_argument("--top-root", type=int, choices=(0, 1), default=CloneSettings.top_root,
                   help="continuation: 1 sweeps the nodes above the start on the first axis "
                   "from a second root, the top of the first axis (the hottest star), "
                   "and joins the identities where the two trees meet; experimental, "
                   "not working yet: the emulator is wrong between the meeting columns "
                   f"(default {CloneSettings.top_root}: one tree)")
    g.add_argument("--start", action="append", default=[], metavar="NAME=VALUE",
                   help="continuation: a coordinate of the start node, cloned cold "
                   "(repeatable, e.g. --start teff=5500; the nearest existing node; "
                   "default: the middle of every axis; a resumed store keeps its own)")
    g.add_argument("--batch-size", type=int, default=8, help="spectra per batch (8)")
    g.add_argument("--max-nodes", type=int, help="stop after this many new nodes")
    g.add_argument("--overwrite-settings", action="store_true",
                   help="continue a store cloned with different settings")
    g.add_argument("--no-resume", action="store_true",
                   help="refuse to continue an existing store")
    g.add_argument("--parallel-batches", type=int, default=CloneSettings.parallel_batches,
                   help="continuation: batches fitted as one round, side by side with "
                   "--workers (default "
                   f"{CloneSettings.parallel_batches}; the store does not depend on "
                   "--workers; 1: one batch at a time, as stores made before this option)")
    add_dask_options(
        g, "continuation: fit each round's batches in N local processes (default: as many "
        "as --parallel-batches and the CPUs allow; 1: this process); --method "
        "independent: clone the batches on a local Dask cluster of N worker processes "
        "(default: this process). This process writes the store either way",
        "--method independent: clone on an existing Dask cluster (e.g. tcp://host:8786)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--overwrite", action="store_true",
                   help="plot: replace existing figures (the store itself is resumed, "
                   "never overwritten)")
    q = p.add_argument_group("plot")
    q.add_argument("--teff", type=float)
    q.add_argument("--logg", type=float)
    q.add_argument("--feh", type=float)
    q.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="other parameters of grids not in teff/logg/feh (repeatable)")
    q.add_argument("--grid", help="grid file with the spectra (default: the store's "
                   "grid_file attribute)")
    q.add_argument("--wavelength", type=parse_range, help="Å range to show, LO:HI")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.target in _ACTIONS:
        if args.store is None:
            raise ValueError(f"`jaxspec clone {args.target}` needs a clone store: "
                             f"jaxspec clone {args.target} CLONES.h5")
        return _info(args) if args.target == "info" else _plot(args)
    if args.store is not None:
        raise ValueError(
            f"unexpected argument {args.store!r}: clone with `jaxspec clone GRID.h5 --out "
            "CLONES.h5`, or use the actions info/plot"
        )
    return _clone(args)


def _clone(args: argparse.Namespace) -> int:
    from jaxspec.clone import clone_grid

    if not args.out:
        raise ValueError("`jaxspec clone GRID.h5` needs --out CLONES.h5")
    from jaxspec.io.locking import WriterLock

    grid_path = Path(args.target)
    if not grid_path.exists():
        raise FileNotFoundError(f"{grid_path}: no such grid file")
    scale = {}
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers {args.workers}: pass the number of worker "
                         "processes, >= 1")
    if args.scheduler is not None and args.method != "independent":
        raise ValueError(f"--scheduler with --method {args.method}: continuation cloning "
                         "warm-starts every node from a cloned neighbour, so only its fits "
                         "spread, over local processes (--workers N); pass --method "
                         "independent to clone on a Dask cluster")
    if args.workers is not None or args.scheduler is not None:
        scale = {"workers": args.workers, "scheduler": args.scheduler}
    elif args.method == "continuation":
        from jaxspec.clone._processes import default_processes

        scale = {"workers": default_processes(args.parallel_batches)}
    start = parse_assignments(args.start, "--start", "teff=5500")
    if start and args.method != "continuation":
        raise ValueError(f"--start with --method {args.method}: only the continuation sweep "
                         "has a start node; drop --start or pass --method continuation")
    with WriterLock(args.out, what="clone store"):
        pass  # a store in use fails here, before a large grid is read (clone_grid locks)
    store = clone_grid(
        grid_path, args.out, prominence=args.prominence, wing_cut=args.wing_cut,
        epochs=args.epochs, learning_rate=args.lr, passes=args.passes,
        method=args.method, warm_epochs=args.warm_epochs,
        warm_width_anchor=args.warm_width_anchor,
        chain_axis=args.chain_axis, warm_track_anchor=args.warm_track_anchor,
        prime_broad=args.prime_broad, relax_passes=args.relax_passes,
        relax_epochs=args.relax_epochs, birth_epochs=args.birth_epochs,
        warm_merge=args.warm_merge, top_root=args.top_root,
        parallel_batches=args.parallel_batches, batch_size=args.batch_size,
        resume=not args.no_resume,
        overwrite_settings=args.overwrite_settings, progress=not args.quiet,
        max_nodes=args.max_nodes, start=start or None, **scale,
    )
    print(f"wrote {args.out}: {store.n_done}/{int(store.mask.size)} nodes cloned"
          + _line_summary(store))
    return 0


def _line_summary(store) -> str:
    if store.n_done == 0:
        return ""
    n = store.n_lines[store.mask]
    rms = store.residual_rms[store.mask]
    return (f"; lines per node {n.min()}/{int(np.median(n))}/{n.max()} (min/median/max); "
            f"residual RMS median {np.median(rms):.2g}")


def _info(args: argparse.Namespace) -> int:
    from jaxspec.io.clone_store import CloneStore

    from jaxspec.io.locking import lock_holder, lock_path

    store = CloneStore(args.store)
    size = Path(args.store).stat().st_size / 2**20
    total = int(store.mask.size)
    print(f"{args.store} ({size:.1f} MiB): jaxspec clone store")
    axes = ", ".join(f"{n} {a[0]:g}..{a[-1]:g} ({a.size})" for n, a in store.axes.items())
    wl = store.wavelength
    print(f"  grid: {axes}; {wl.size} px, {wl[0]:.2f}-{wl[-1]:.2f} Å"
          + (f"; from {store.grid_file}" if store.grid_file else ""))
    print("  settings: " + ", ".join(f"{k}={v}" if isinstance(v, str) else f"{k}={v:g}"
                                     for k, v in store.settings.items()))
    if store.identities is not None:
        print(f"  line identities: {store.identities.size:,} (continuation sweep from node "
              f"{store.start})")
        passes = int(store.settings.get("relax_passes", 0))
        print(f"  back-fill: {'done' if store.backfilled else 'not yet'}; relaxation: "
              f"{store.relaxed} batch(es) done" + (f" of {passes} pass(es)" if passes
                                                    else " (relax_passes=0: none)"))
    print("  grid checksum: " + (f"SHA-256 {store.grid_checksum}" if store.grid_checksum
                                 else "none recorded (older store: cannot be checked)"))
    holder = lock_holder(args.store)
    if holder:
        print(f"  being written by PID {holder.get('pid')} on host {holder.get('host')} "
              f"since {holder.get('started')} (lock {lock_path(args.store)})")
    print(f"  nodes: {store.n_done}/{total} cloned"
          + (f", {len(store.incomplete)} incomplete (redo with resume)"
             if store.incomplete else ""))
    if store.n_done:
        n = store.n_lines[store.mask]
        rms = store.residual_rms[store.mask]
        print(f"  lines per node: min {n.min()}, median {np.median(n):g}, max {n.max()}; "
              f"total {n.sum()}")
        p90 = np.percentile(rms, 90)
        print(f"  residual RMS: min {rms.min():.3g}, median {np.median(rms):.3g}, "
              f"90th percentile {p90:.3g}, max {rms.max():.3g}")
        worst = np.unravel_index(np.nanargmax(np.where(store.mask, store.residual_rms,
                                                       -np.inf)), store.shape)
        print("  worst node: " + ", ".join(
            f"{k}={v:g}" for k, v in zip(store.param_names, store.node_params(worst))))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from jaxspec.grid import SpectralGrid
    from jaxspec.io.clone_store import CloneStore

    if not args.out:
        raise ValueError("`jaxspec clone plot` needs --out FIG.png")
    lines_path = Path(args.out).with_name(Path(args.out).stem + "_lines"
                                          + Path(args.out).suffix)
    store = CloneStore(args.store)
    params = {n: getattr(args, n) for n in ("teff", "logg", "feh")
              if getattr(args, n) is not None}
    params.update(parse_assignments(args.param, "--param", "alpha=0.2"))
    index = store.index(**params)
    node = store.read_node(index)
    check_outputs([args.out, lines_path], args.overwrite)  # inputs first, then outputs
    grid_file = args.grid or store.grid_file
    if not grid_file:
        raise ValueError(f"{args.store} records no grid file; pass --grid GRID.h5")
    if not Path(grid_file).exists():
        raise FileNotFoundError(f"grid file {grid_file} not found; pass --grid GRID.h5")
    wl = store.wavelength
    lo, hi = args.wavelength if args.wavelength is not None else (wl[0], wl[-1])
    keep = (wl >= lo) & (wl <= hi)
    if not keep.any():
        raise ValueError(f"--wavelength {lo:g}:{hi:g} selects no pixel of {args.store} "
                         f"({wl[0]:.2f}-{wl[-1]:.2f} Å)")
    grid = SpectralGrid.from_hdf5(grid_file, wavelength=(float(wl[keep][0]),
                                                         float(wl[keep][-1])), **{
        n: (v, v) for n, v in zip(store.param_names, node.params)})
    flux = grid.flux.reshape(-1)
    wl = grid.wavelength
    model = np.asarray(store.lines(index).flux(wl))
    label = ", ".join(f"{k}={v:g}" for k, v in zip(store.param_names, node.params))

    plt = matplotlib_pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(11, 7), sharex=True,
                             gridspec_kw={"height_ratios": [2, 2, 1]})
    axes[0].plot(wl, flux, lw=0.6, color="k")
    axes[0].set_ylabel("grid spectrum")
    axes[0].set_title(f"{Path(args.store).name}: {label}; {node.n_lines} lines, "
                      f"residual RMS {node.residual_rms:.2g}")
    axes[1].plot(wl, model, lw=0.6, color="C3")
    inside = (node.center >= wl[0]) & (node.center <= wl[-1])
    axes[1].plot(node.center[inside], np.full(inside.sum(), 1.02), "|", color="C0", ms=5)
    axes[1].set_ylabel("clone (line list)")
    axes[2].plot(wl, flux - model, lw=0.6, color="C2")
    axes[2].axhline(0.0, color="0.5", lw=0.5)
    axes[2].set_ylabel("spectrum − clone")
    axes[2].set_xlabel("wavelength [Å]")
    out = save_figure(fig, args.out, overwrite=args.overwrite)
    plt.close(fig)
    lines_out = save_figure(_lines_map(plt, store), lines_path, overwrite=args.overwrite)
    print(f"wrote {out} and {lines_out}")
    return 0


def _lines_map(plt, store):
    """Lines per node over the first two axes, one panel per value of the third (blase3D
    fig. 2); further axes at their first value."""
    n = np.where(store.mask, store.n_lines, np.nan).astype(float)
    names = store.param_names
    axes = list(store.axes.values())
    if n.ndim == 1:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(axes[0], n, "o-")
        ax.set_xlabel(names[0])
        ax.set_ylabel("lines per node")
        return fig
    n = n.reshape(n.shape[:3] + (-1,))[..., 0] if n.ndim > 3 else n
    panels = n.shape[2] if n.ndim == 3 else 1
    fig, grid_axes = plt.subplots(1, panels, figsize=(4.5 * panels + 1, 4), squeeze=False)
    vmax = np.nanmax(n) if np.isfinite(n).any() else 1.0
    for k in range(panels):
        ax = grid_axes[0, k]
        data = n[:, :, k] if n.ndim == 3 else n
        image = ax.pcolormesh(_edges(axes[0]), _edges(axes[1]), data.T, vmin=0, vmax=vmax,
                              cmap="viridis", shading="flat")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        if n.ndim == 3:
            ax.set_title(f"{names[2]} = {axes[2][k]:g}")
    fig.colorbar(image, ax=grid_axes[0].tolist(), label="lines per node")
    return fig


def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges around node values (for pcolormesh)."""
    v = np.asarray(values, dtype=float)
    if v.size == 1:
        return np.array([v[0] - 0.5, v[0] + 0.5])
    mid = 0.5 * (v[1:] + v[:-1])
    return np.r_[v[0] - (mid[0] - v[0]), mid, v[-1] + (v[-1] - mid[-1])]
