"""Helpers shared by the sub-command modules (argument parsing, figure output)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_range(text: str) -> tuple[float, float]:
    """``"lo:hi"`` → ``(lo, hi)`` floats; the argparse ``type`` of every range option."""
    parts = text.split(":")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LO:HI (e.g. 4000:6000), got {text!r}")
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers LO:HI, got {text!r}") from None
    if lo > hi:
        raise argparse.ArgumentTypeError(f"range {text!r} has LO > HI; write it as {hi:g}:{lo:g}")
    return lo, hi


def node_params(args: argparse.Namespace, names) -> dict[str, float]:
    """The ``--teff/--logg/--feh``-style values for ``names`` that the user gave."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def save_figure(fig, out: str | Path) -> Path:
    """Write a matplotlib figure (PNG/PDF by suffix), creating the folder; returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130, bbox_inches="tight")
    return out


def matplotlib_pyplot():
    """pyplot with the non-interactive Agg backend (the CLI never opens windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_results(table, out: Path, method: str, flagged: str) -> None:
    """Write an ``infer`` results table (ECSV) and list its unconverged rows on stderr.

    Args:
        table: astropy Table with ``file``, ``converged`` and ``message`` columns.
        out: the ECSV path (its folder is created).
        method: the method name, for the summary line.
        flagged: what an unconverged row is called in the warning, e.g.
            ``"fit(s) did not converge"``.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    table.write(out, format="ascii.ecsv", overwrite=True)
    report_results(table, out, method, flagged)


def report_results(table, out: Path, method: str, flagged: str) -> None:
    """Print ``wrote OUT: N spectra`` and list a results table's unconverged rows on
    stderr (arguments as :func:`write_results`; the table is already written)."""
    print(f"wrote {out}: {len(table)} spectra, method {method}")
    bad = [f"{row['file']} ({row['message']})" for row in table if not row["converged"]]
    if bad:
        print(f"jaxspec infer: warning: {len(bad)} of {len(table)} {flagged}: "
              + "; ".join(bad), file=sys.stderr)
