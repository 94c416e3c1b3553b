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
    p.add_argument("--out", default="demo-out", help="output folder (demo-out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from jaxspec.demo import run_demo

    run_demo(args.size, args.out, seed=args.seed, progress=not args.no_progress)
    return 0
