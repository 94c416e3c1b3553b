"""The ``jaxspec`` command line.

Each sub-command lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser(s) and sets ``func`` (called with the parsed
arguments; returns an exit code or None). ``main`` assembles them in the order below.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys

# Sub-command modules, in the order they appear in ``jaxspec --help``.
_COMMANDS = ("demo", "grid", "clone", "build", "synth", "emulator", "train", "infer")


class _Parser(argparse.ArgumentParser):
    """ArgumentParser that reads ``-0.5:0`` (a negative range) as a value, not an option."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d[\d.:eE+-]*$")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every available sub-command registered)."""
    parser = _Parser(
        prog="jaxspec",
        description="Differentiable stellar spectroscopy in JAX: grids, line clones, "
        "line-manifold emulators and stellar-parameter inference.",
    )
    from jaxspec import __version__

    parser.add_argument("--version", action="version", version=f"jaxspec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        module = f"jaxspec.cli.{name}"
        if importlib.util.find_spec(module) is None:
            continue  # that part of the pipeline is not in this version
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxspec`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as err:
        # Library errors are written for people: show the message, not a traceback.
        print(f"jaxspec {args.command}: error: {err}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
