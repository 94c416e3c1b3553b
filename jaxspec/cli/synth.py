"""``jaxspec synth``: one spectrum from any emulator file, written as an astropy table."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from jaxspec.cli._common import parse_range, wavelength_window


def register(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="synthesise a spectrum with an emulator",
        description="Evaluate an emulator file at one parameter point and write the spectrum "
        "as an astropy table (format from the suffix: .ecsv, .fits, .csv) with columns "
        "wavelength [Angstrom] and flux.",
    )
    p.add_argument("emulator", help="emulator file (.h5)")
    p.add_argument("--teff", type=float, help="K")
    p.add_argument("--logg", type=float, help="dex (cgs)")
    p.add_argument("--feh", type=float, help="dex")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="other emulator parameters (repeatable)")
    p.add_argument("--wavelength", type=parse_range, help="Å, LO:HI: write only this range")
    p.add_argument("--out", required=True, help="output table (.ecsv, .fits or .csv)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_synth)


def parameter_vector(emulator, args: argparse.Namespace) -> np.ndarray:
    """The emulator's parameter vector from --teff/--logg/--feh/--param, checked."""
    given = {}
    for name in ("teff", "logg", "feh"):
        if getattr(args, name, None) is not None:
            given[name] = getattr(args, name)
    for item in getattr(args, "param", []):
        name, sep, value = item.partition("=")
        try:
            given[name] = float(value)
        except ValueError:
            raise ValueError(f"--param {item!r}: write NAME=VALUE with a number") from None
        if not sep:
            raise ValueError(f"--param {item!r}: write NAME=VALUE")
    names = tuple(emulator.param_names)
    bounds = np.asarray(emulator.bounds)
    span = ", ".join(f"{n} in [{lo:g}, {hi:g}]" for n, (lo, hi) in zip(names, bounds))
    unknown = [n for n in given if n not in names]
    missing = [n for n in names if n not in given]
    if unknown or missing:
        raise ValueError(
            "the emulator takes " + span
            + (f"; missing {', '.join('--' + m if m in ('teff', 'logg', 'feh') else m for m in missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
        )
    theta = np.array([given[n] for n in names], dtype=np.float64)
    outside = [f"{n}={v:g}" for n, v, (lo, hi) in zip(names, theta, bounds)
               if not lo - 1e-9 * max(1, abs(lo)) <= v <= hi + 1e-9 * max(1, abs(hi))]
    if outside:
        raise ValueError(
            f"{', '.join(outside)} outside the emulator's bounds ({span}); the emulator only "
            "interpolates inside its grid"
        )
    return theta


def _synth(args: argparse.Namespace) -> int:
    from astropy import units as u
    from astropy.table import Table

    from jaxspec.emulator import load_emulator
    from jaxspec.io.atomic import table_format, write_table

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    fmt = table_format(out)  # an unknown suffix fails before the emulator is loaded
    emulator = load_emulator(args.emulator)
    theta = parameter_vector(emulator, args)
    if args.wavelength is not None and hasattr(emulator, "restrict"):
        # Line emulators evaluate only the lines that reach the range.
        emulator = emulator.restrict(args.wavelength)
    wl = np.asarray(emulator.wavelength)
    import equinox as eqx

    flux = np.asarray(eqx.filter_jit(lambda e, p: e(p))(emulator, theta), dtype=np.float64)
    wl, flux = wavelength_window(wl, flux, args.wavelength, args.emulator)
    table = Table()
    table["wavelength"] = wl * u.AA
    table["flux"] = flux
    table["flux"].description = "continuum-normalised flux"
    table.meta["emulator"] = str(args.emulator)
    table.meta["kind"] = getattr(emulator, "kind", "?")
    for n, v in zip(emulator.param_names, theta):
        table.meta[n] = float(v)
    write_table(table, out, overwrite=args.overwrite, format=fmt)  # atomic
    print(f"wrote {out}: {wl.size} px {wl[0]:.2f}-{wl[-1]:.2f} Å at "
          + ", ".join(f"{n}={v:g}" for n, v in zip(emulator.param_names, theta)))
    return 0
