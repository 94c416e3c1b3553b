"""``jaxspec demo``: the main job, end to end on the embedded synthetic grid."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on the embedded grid (the main job)",
        description="Synthesise the embedded grid, clone it into lines, build the line "
        "emulator, then infer test stars between grid nodes (S/N 100) with Bayesian "
        "optimisation, MAP and NUTS; print errors per method and Teff regime with "
        "timings and write tables (ECSV) and plots (PNG) to --out.",
    )
    p.add_argument("--size", choices=("tiny", "default"), default="default",
                   help="default: the demo (minutes); tiny: seconds, for tests")
    p.add_argument("--out", default="demo-out",
                   help="output folder (demo-out); must be new or empty unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier run in --out (its clone store is "
                   "resumed when made from the same grid)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                   help="no progress bars (--no-progress: the old name)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from jaxspec.demo import run_demo

    run_demo(args.size, args.out, seed=args.seed, progress=not args.quiet,
             overwrite=args.overwrite)
    return 0
