"""``jaxspec build``: clone store(s) → line emulator (identify, interpolate, refine)."""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxspec.cli._common import parse_range

#: Joint-fit Adam epochs of ``jaxspec build --grid``, their step and the curvature weight
#: (measured on the default grid; README, *Fewer, smaller Adam steps after the solve*: after
#: the smoothing solve, 3 epochs at 0.005 leave the held-out error where 20 at 0.02 do, in
#: a quarter of the time; Adam's first steps at 0.02 move every value by ~0.02 and raise
#: the misfit before they lower it).
DEFAULT_EPOCHS = 3
DEFAULT_LEARNING_RATE = 5e-3
DEFAULT_SMOOTHNESS = 1e-3
#: Weight of the smoothing solve before the joint fit's epochs (README, *The smoothing
#: solve*: held-out cubic 1.11e-3 -> 1.04e-3 on the default grid, ln γ as smooth as the
#: truth).
DEFAULT_PRESMOOTH = 3e-3


def register(sub) -> None:
    p = sub.add_parser(
        "build",
        help="build a line-manifold emulator from clone stores",
        description="Group the lines of every clone across the grid (cross-model "
        "identification), interpolate their parameters multilinearly (line manifolds) and "
        "write a line emulator (HDF5). With --grid, the node values are then fitted jointly "
        "through the emulator on the grid's spectra (the joint smooth fit, "
        "jaxspec.refine.refine; resumable: a killed build rerun with the same command "
        "continues from its checkpoint beside --out). Several stores "
        "(disjoint node sets of one grid, same clone settings) are combined.",
    )
    p.add_argument("stores", nargs="+", help="clone store(s) (.h5, jaxspec-clones format)")
    p.add_argument("--out", required=True, help="output emulator file (.h5)")
    p.add_argument("--matcher", choices=("identity", "id", "track"), default=None,
                   help="identity: the line identities of a continuation store (its "
                   "default); id: equal 0.01 Å identifiers (blase3D, the default for "
                   "independent stores); track: follow drifting centres across "
                   "neighbouring nodes")
    p.add_argument("--track-tolerance", type=float, default=0.03,
                   help="Å, largest centre change linked by --matcher track (0.03)")
    p.add_argument("--expect-settings", action="append", default=[], metavar="NAME=VALUE",
                   help="fail unless the stores were cloned with this setting, e.g. "
                   "prominence=0.005 (repeatable)")
    p.add_argument("--wavelength", type=parse_range,
                   help="Å, LO:HI: keep only this range (and the lines that reach it)")
    p.add_argument("--grid", help="grid HDF5 the clones came from (needed to refine; "
                   "checked against the stores' record of their grid's spectra)")
    p.add_argument("--refine-epochs", type=int, default=None,
                   help=f"epochs of the joint fit on --grid (default {DEFAULT_EPOCHS} with "
                   "--grid; 0: none)")
    p.add_argument("--smoothness", type=float, nargs="+", default=[DEFAULT_SMOOTHNESS],
                   metavar="W",
                   help="weight of the curvature penalty of the joint fit (default "
                   f"{DEFAULT_SMOOTHNESS:g}; 0: plain end-to-end refinement), or four "
                   "weights, one per column: μ' − μ, ln a, ln σ, ln γ")
    p.add_argument("--presmooth", type=float, nargs="+", default=None, metavar="W",
                   help="weight of a smoothing solve before the joint fit's epochs (the "
                   "curvature penalty minimised at once against each node's local quadratic "
                   f"misfit; default {DEFAULT_PRESMOOTH:g} with --grid, 0: none), or four, "
                   "one per column")
    p.add_argument("--batch-size", type=int, default=8, help="nodes per refinement step")
    p.add_argument("--learning-rate", type=float, default=DEFAULT_LEARNING_RATE,
                   help=f"Adam step of the joint fit (ln units; default "
                   f"{DEFAULT_LEARNING_RATE:g})")
    p.add_argument("--holdout", type=float, default=0.0,
                   help="fraction of nodes held out of refinement to report generalisation")
    p.add_argument("--tolerance", type=float, default=1e-6,
                   help="synthesis truncation tolerance (ln flux per line)")
    p.add_argument("--wing-cut", type=int, default=None,
                   help="pixels each line is evaluated over (default: the clones' wing_cut; "
                   "0: full wings)")
    p.add_argument("--interpolation", choices=("linear", "cubic"), default="cubic",
                   help="manifold interpolation: cubic Hermite along axes of >= 4 nodes "
                   "(default) or linear (blase3D)")
    p.add_argument("--clamp", action="store_true",
                   help="clip parameters outside the grid instead of raising")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (kept intact until the new file is whole)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_build)


def _parse_settings(items) -> dict:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--expect-settings {item!r}: write NAME=VALUE, e.g. prominence=0.005")
        try:
            out[name] = float(value)
        except ValueError:
            out[name] = value
    return out


def _open_stores(paths):
    try:
        from jaxspec.io.clone_store import CloneStore
    except ImportError as err:  # the clone stage is missing from this install
        raise ValueError(f"cannot read clone stores: {err}") from None
    stores = []
    for path in paths:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such clone store")
        stores.append(CloneStore.open(path))
    return stores


class _Counted:
    """A clone store whose ``iter_nodes`` advances a shared tqdm bar (reading the clones
    is the long part of identification); every other attribute is the store's."""

    def __init__(self, store, bar):
        self._store, self._bar = store, bar

    def __getattr__(self, name):
        return getattr(self._store, name)

    def iter_nodes(self):
        for node in self._store.iter_nodes():
            self._bar.update(1)
            yield node


def _check_grid(stores, grid: str) -> None:
    """Refuse a --grid whose spectra differ from those the stores were cloned from."""
    if not Path(grid).exists():
        raise FileNotFoundError(f"--grid {grid}: no such grid file")
    for store in stores:
        check = getattr(store, "check_grid", None)  # every CloneStore has it
        if check is not None:
            check(grid)


def _build(args: argparse.Namespace) -> int:
    from jaxspec.identify import identify_store
    from jaxspec.line_emulator import LineEmulator

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if args.refine_epochs is None:
        args.refine_epochs = DEFAULT_EPOCHS if args.grid else 0
    if args.refine_epochs and not args.grid:
        raise ValueError("--refine-epochs needs --grid (the grid the clones were made from)")
    if args.presmooth is None:
        args.presmooth = [DEFAULT_PRESMOOTH if args.grid else 0.0]
    if len(args.presmooth) not in (1, 4):
        raise ValueError(f"--presmooth got {len(args.presmooth)} values; pass one weight, "
                         "or four, one per column: μ' − μ, ln a, ln σ, ln γ")
    presmooth = args.presmooth[0] if len(args.presmooth) == 1 else args.presmooth
    if any(w > 0 for w in args.presmooth) and not args.grid:
        raise ValueError("--presmooth needs --grid (the grid the clones were made from)")
    if len(args.smoothness) not in (1, 4):
        raise ValueError(f"--smoothness got {len(args.smoothness)} values; pass one weight, "
                         "or four, one per column: μ' − μ, ln a, ln σ, ln γ (e.g. "
                         "--smoothness 1e-3 1e-3 0.1 0.1)")
    expect = _parse_settings(args.expect_settings)
    stores = _open_stores(args.stores)
    if args.grid:
        _check_grid(stores, args.grid)
    from tqdm.auto import tqdm

    counts = [getattr(s, "n_done", None) for s in stores]  # None: a store-like object
    bar = tqdm(total=None if None in counts else sum(counts), desc="reading clones",
               unit="node", disable=args.quiet, dynamic_ncols=True)
    try:
        ident = identify_store([_Counted(s, bar) for s in stores], matcher=args.matcher,
                               tolerance=args.track_tolerance,
                               expect_settings=expect or None)
    finally:
        bar.close()
        for s in stores:
            close = getattr(s, "close", None)
            if callable(close):
                close()
    print(ident.summary())
    wing_cut = "clones" if args.wing_cut is None else (args.wing_cut or None)
    emulator = LineEmulator.from_identification(
        ident, tolerance=args.tolerance, out_of_bounds="clamp" if args.clamp else "error",
        wing_cut=wing_cut, interpolation=args.interpolation,
    )
    if args.wavelength is not None:
        emulator = emulator.restrict(args.wavelength)
    fit = bool(args.refine_epochs) or any(w > 0 for w in args.presmooth)
    if fit:
        from jaxspec.grid import SpectralGrid
        from jaxspec.refine import refine

        grid = SpectralGrid.from_hdf5(args.grid)
        checkpoint = out.with_name(out.name + ".refine-checkpoint.h5")
        if checkpoint.exists() and not args.quiet:
            print(f"resuming the joint fit from {checkpoint}")
        emulator, history = refine(
            emulator, grid, epochs=args.refine_epochs, batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            smoothness=args.smoothness[0] if len(args.smoothness) == 1 else args.smoothness,
            holdout=args.holdout or None, progress=not args.quiet, checkpoint=checkpoint,
            presmooth=presmooth,
        )
        print(history.summary())
    emulator.save(out, overwrite=args.overwrite)
    if fit:
        checkpoint.unlink(missing_ok=True)  # the emulator holds everything it held
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MiB): {emulator.n_lines:,} lines, {emulator.n_pix:,} px, "
          + ", ".join(f"{n} {lo:g}..{hi:g}" for n, (lo, hi) in
                      zip(emulator.param_names, emulator.bounds)))
    return 0
