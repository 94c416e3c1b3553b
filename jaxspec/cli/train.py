"""``jaxspec train KIND GRID --out MODEL``: train an emulator of a given kind on a grid.

Kinds are the entries of :data:`TRAINERS`, ``{kind: trainer}``. A trainer is a function
``trainer(grid, holdout, args) -> Emulator``: ``grid`` is the
:class:`~jaxspec.grid.SpectralGrid` read from GRID (``--wavelength`` applied),
``holdout`` a list of ``{name: value}`` nodes to leave out (``--holdout``; possibly empty)
and ``args`` the parsed options. Options a user did not give are None, meaning "the
kind's default"; :func:`given` collects the given ones as keyword arguments. To add a kind,
add its trainer to :data:`TRAINERS` before the parser is built (and new options, if any, in
:func:`register`); the emulator it returns must be registered with
:func:`jaxspec.emulator.register_emulator` so that ``jaxspec infer`` can load the file.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxspec.cli._common import parse_range


def _widths(text: str) -> tuple[int, ...]:
    """``"100,100"`` → ``(100, 100)``; the argparse ``type`` of layer-width options."""
    try:
        out = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers (e.g. 100,100), got {text!r}"
        ) from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"layer widths must be positive, got {text!r}")
    return out


def given(args: argparse.Namespace, **names: str) -> dict:
    """``{keyword: getattr(args, option)}`` for the options ``names`` maps to keywords
    (``keyword=option``) that the user gave (not None)."""
    return {kw: getattr(args, opt) for kw, opt in names.items()
            if getattr(args, opt, None) is not None}


def _cannon(grid, holdout, args):
    from jaxspec.peers import train_cannon

    return train_cannon(grid, holdout or None)


def _payne(grid, holdout, args):
    from jaxspec.peers import train_payne

    return train_payne(
        grid, holdout or None, progress=not args.quiet,
        **given(args, hidden="hidden", learning_rate="learning_rate",
                batch_size="batch_size", max_epochs="epochs", patience="patience",
                val_fraction="val_fraction", seed="seed"),
    )


def _autoencoder(grid, holdout, args):
    from jaxspec.peers import train_autoencoder

    return train_autoencoder(
        grid, holdout or None, progress=not args.quiet,
        **given(args, encoder="hidden", latent="latent", dense="dense", dropout="dropout",
                learning_rate="learning_rate", dense_learning_rate="dense_learning_rate",
                batch_size="batch_size", max_epochs="epochs",
                finetune_epochs="finetune_epochs", patience="patience",
                val_fraction="val_fraction", seed="seed"),
    )


#: Trainers by kind: ``trainer(grid, holdout, args) -> Emulator`` (module docstring).
TRAINERS: dict[str, Callable] = {
    "cannon": _cannon,
    "payne": _payne,
    "autoencoder": _autoencoder,
}


def register(sub) -> None:
    top = sub.add_parser(
        "train",
        help="train an emulator (The Cannon, The Payne, autoencoder, ...) on a grid",
        description="Train an emulator of KIND on the spectra of GRID (jaxspec-grid HDF5) "
        "and write it to --out; `jaxspec infer` and `jaxspec emulator info` read the file. "
        "cannon: quadratic per-pixel model with intrinsic scatter (Ness et al. 2015); "
        "payne: multilayer perceptron labels → spectrum (Ting et al. 2019); autoencoder: "
        "decoder of a spectrum autoencoder stacked on a labels → latent network (Gebran "
        "et al.). Options not given take the defaults of jaxspec.peers.train_<kind>. "
        "regressor, flow: amortised inference networks trained on spectra simulated with "
        "an EMULATOR file (jaxspec train regressor --help).",
    )
    kinds = top.add_subparsers(dest="kind", metavar="KIND", required=True)
    p = argparse.ArgumentParser(add_help=False)  # options shared by the grid trainers
    p.add_argument("grid", help="grid file (.h5, jaxspec-grid format)")
    p.add_argument("--out", required=True, help="output emulator file (.h5)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--holdout", action="append", default=[], metavar="NAME=V,...",
                   help="leave this node out of training, e.g. teff=5000,logg=4.5,feh=0 "
                   "(repeatable); the error there is reported")
    p.add_argument("--wavelength", type=parse_range, help="Å, LO:HI: train on this range only")
    g = p.add_argument_group("networks (payne, autoencoder)")
    g.add_argument("--hidden", type=_widths, metavar="W,W,...",
                   help="hidden widths (payne; default 100,100) or encoder widths "
                   "(autoencoder; default 1024,512,256,64,32; the decoder mirrors them)")
    g.add_argument("--epochs", type=int, help="maximum epochs")
    g.add_argument("--batch-size", type=int, help="spectra per optimiser step")
    g.add_argument("--learning-rate", type=float, help="Adam step (default 1e-3)")
    g.add_argument("--patience", type=int, help="early-stopping patience, epochs")
    g.add_argument("--val-fraction", type=float, help="validation fraction of the nodes")
    g.add_argument("--seed", type=int, help="initialisation, split and shuffling seed")
    g = p.add_argument_group("autoencoder")
    g.add_argument("--latent", type=int, help="latent dimension (default 10)")
    g.add_argument("--dense", type=_widths, metavar="W,W,...",
                   help="labels → latent hidden widths (default 5000,2000,512,32)")
    g.add_argument("--dropout", type=float, help="dense-network dropout (default 0.3)")
    g.add_argument("--dense-learning-rate", type=float, help="Adamax step (default 1e-3)")
    g.add_argument("--finetune-epochs", type=int,
                   help="end-to-end generator epochs after the two stages (default 0)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars (default: bars over epochs with ETA, payne and "
                   "autoencoder)")
    p.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)  # the default
    for kind in sorted(TRAINERS):
        k = kinds.add_parser(kind, parents=[p], help=f"train {'an' if kind[0] in 'aeiou' else 'a'} {kind} emulator on a grid")
        k.set_defaults(func=_train)
    from jaxspec.cli._amortised import add_train_parsers

    add_train_parsers(kinds)


def parse_holdout(items, names) -> list[dict]:
    """``["teff=5000,logg=4.5,feh=0", ...]`` → ``[{name: value}, ...]``."""
    out = []
    for item in items:
        node = {}
        for part in item.split(","):
            name, sep, value = part.partition("=")
            name = name.strip()
            try:
                node[name] = float(value)
            except ValueError:
                sep = ""
            if not sep or not name:
                raise ValueError(
                    f"--holdout {item!r}: write NAME=VALUE pairs separated by commas, e.g. "
                    + ",".join(f"{n}=..." for n in names)
                )
        if set(node) != set(names):
            raise ValueError(
                f"--holdout {item!r} gives {sorted(node)}; give exactly one value for each "
                f"grid parameter {list(names)}"
            )
        out.append(node)
    return out


def _train(args: argparse.Namespace) -> int:
    from jaxspec.grid import SpectralGrid

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if not Path(args.grid).exists():
        raise FileNotFoundError(f"{args.grid}: no such grid file")
    grid = SpectralGrid.from_hdf5(args.grid, wavelength=args.wavelength)
    holdout = parse_holdout(args.holdout, grid.param_names)
    for node in holdout:
        grid.index(**node)  # a clear error for a value that is not a node
    t0 = time.perf_counter()
    emulator = TRAINERS[args.kind](grid, holdout, args)
    seconds = time.perf_counter() - t0
    emulator.save(out, overwrite=args.overwrite)
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MiB): {type(emulator).__name__} (kind "
          f"{emulator.kind!r}) trained in {seconds:.1f} s on {grid.n_nodes - len(holdout)} "
          f"node(s), {emulator.n_pix:,} px, "
          + ", ".join(f"{n} {lo:g}..{hi:g}" for n, (lo, hi) in
                      zip(emulator.param_names, emulator.bounds)))
    if holdout:
        _report_holdout(emulator, grid, holdout)
    return 0


def _report_holdout(emulator, grid, holdout) -> None:
    """Print the emulator's error at the held-out nodes beside a constant spectrum's."""
    import jax.numpy as jnp

    names = grid.param_names
    params = np.array([[node[n] for n in names] for node in holdout])
    truth = np.stack([grid.spectrum(**node) for node in holdout]).astype(np.float64)
    held = np.zeros(grid.mask.shape, dtype=bool)
    for node in holdout:
        held[grid.index(**node)] = True
    const = grid.flux[grid.mask & ~held].mean(axis=0, dtype=np.float64)
    model = np.asarray(emulator(jnp.asarray(params)), dtype=np.float64)
    mae, mx = np.mean(np.abs(model - truth)), np.max(np.abs(model - truth))
    print(f"held-out nodes ({len(holdout)}): MAE {mae:.2e}, max |error| {mx:.2e} (a "
          f"constant spectrum: MAE {np.mean(np.abs(const - truth)):.2e})")
