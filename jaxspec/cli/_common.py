"""Helpers shared by the sub-command modules (argument parsing, figure output)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_dask_options(group, workers_help: str, scheduler_help: str) -> None:
    """``--workers N`` / ``--scheduler ADDRESS`` (mutually exclusive) on an argparse
    group: a local Dask cluster of N processes, or an existing one."""
    scale = group.add_mutually_exclusive_group()
    scale.add_argument("--workers", type=int, metavar="N", help=workers_help)
    scale.add_argument("--scheduler", metavar="ADDRESS", help=scheduler_help)


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


def parse_assignments(items, option: str, example: str) -> dict[str, float]:
    """``NAME=NUMBER`` items of a repeatable option as a dict; a malformed item is a
    ValueError naming the option and an example."""
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"{option} {item!r}: pass NAME=NUMBER with a grid parameter's "
                             f"name, e.g. {option} {example}") from None
    return out


def node_params(args: argparse.Namespace, names) -> dict[str, float]:
    """The ``--teff/--logg/--feh``-style values for ``names`` that the user gave."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def wavelength_window(wl, flux, window, source) -> tuple:
    """``(wl, flux)`` cut to the ``--wavelength LO:HI`` window (Å, inclusive), or both
    unchanged when ``window`` is None. ValueError naming ``source`` (the file) and its
    range when the window selects no pixel."""
    if window is None:
        return wl, flux
    keep = (wl >= window[0]) & (wl <= window[1])
    if not keep.any():
        raise ValueError(
            f"--wavelength {window[0]:g}:{window[1]:g} selects no pixel of {source} "
            f"({wl[0]:.2f}-{wl[-1]:.2f} Å); pass a range inside it"
        )
    return wl[keep], flux[keep]


def save_figure(fig, out: str | Path, *, overwrite: bool = True) -> Path:
    """Write a matplotlib figure (PNG/PDF by suffix), creating the folder; returns the path.

    Atomic (:func:`jaxspec.io.atomic.save_figure`): drawn to a partial file and renamed,
    so an existing figure is never left half-written. Commands with ``--overwrite`` pass
    it here (FileExistsError when the figure exists and it is False); the default True
    is for figures that belong to an output whose overwrite was already checked.
    """
    from jaxspec.io.atomic import save_figure as _save

    return _save(fig, out, overwrite=overwrite, dpi=130, bbox_inches="tight")


def check_outputs(paths, overwrite: bool) -> None:
    """FileExistsError naming the first of ``paths`` that exists, unless ``overwrite``:
    call before the work so nothing is computed only to be refused."""
    from jaxspec.io.atomic import check_overwrite

    for path in paths:
        check_overwrite(path, overwrite)


def plot_stem(out: str | Path, spectrum: str | Path, spectra) -> str:
    """Figure-name stem for one of several input spectra: ``<out without suffix>_<label>``.

    ``label`` is the spectrum's file stem when that is unique among ``spectra``;
    otherwise it is prefixed with as many parent folders as make it unique
    (``a/star.ecsv`` and ``b/star.ecsv`` give ``a_star`` and ``b_star``), so plots of
    different spectra never share a file name.

    Args:
        out: the results table path (its folder and stem start the name).
        spectrum: this spectrum's path, one of ``spectra``.
        spectra: every input path of the run.
    """
    paths = [Path(p) for p in spectra]
    me = Path(spectrum)
    if me not in paths:
        paths.append(me)
    full = [p.resolve() for p in paths]

    def label(p: Path, depth: int) -> str:
        parts = [q for q in p.parent.parts[-depth:] if q not in ("/", "")] if depth else []
        return "_".join([*parts, p.stem]).replace(" ", "_")

    depth = 0
    deepest = max(len(p.parts) for p in full)
    while depth < deepest:
        labels = [label(p, depth) for p in full]
        if len(set(labels)) == len(set(full)):
            break
        depth += 1
    return f"{Path(out).with_suffix('')}_{label(full[paths.index(me)], depth)}"


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
        out: the ECSV path (its folder is created; written atomically).
        method: the method name, for the summary line.
        flagged: what an unconverged row is called in the warning, e.g.
            ``"fit(s) did not converge"``.
    """
    from jaxspec.io.atomic import write_table

    # atomic: the previous table survives until the new one is complete
    write_table(table, out, overwrite=True, format="ascii.ecsv")
    report_results(table, out, method, flagged)


def report_results(table, out: Path, method: str, flagged: str) -> None:
    """Print ``wrote OUT: N spectra`` and list a results table's unconverged rows on
    stderr (arguments as :func:`write_results`; the table is already written)."""
    print(f"wrote {out}: {len(table)} spectra, method {method}")
    bad = [f"{row['file']} ({row['message']})" for row in table if not row["converged"]]
    if bad:
        print(f"jaxspec infer: warning: {len(bad)} of {len(table)} {flagged}: "
              + "; ".join(bad), file=sys.stderr)
