"""``jaxspec grid synth|phoenix|info|plot``: make, import, inspect and plot spectral grids."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from jaxspec.cli._common import (
    check_outputs,
    matplotlib_pyplot,
    parse_range,
    save_figure,
    wavelength_window,
)


def register(sub) -> None:
    grid = sub.add_parser("grid", help="make, import, inspect and plot spectral grids")
    gsub = grid.add_subparsers(dest="grid_command", metavar="ACTION", required=True)

    p = gsub.add_parser("synth", help="write the embedded synthetic grid to HDF5")
    p.add_argument("--size", choices=("tiny", "default", "full"), default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output HDF5 file (jaxspec-grid format)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (kept intact until the new file is whole)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_synth)

    p = gsub.add_parser(
        "phoenix",
        help="import PHOENIX-ACES-AGSS-COND-2011 HiRes FITS files into a grid",
        description="Import a directory of PHOENIX HiRes files (Z-0.0/lte05800-4.50-0.0."
        "PHOENIX-ACES-AGSS-COND-2011-HiRes.fits, ...) into a jaxspec-grid HDF5 file, then "
        "divide by the blackbody and normalise the continuum (blase3D eq. 1) unless "
        "--raw. Ranges are LO:HI, inclusive; write negative ones as --feh=-0.5:0.",
    )
    p.add_argument("directory")
    p.add_argument("--teff", type=parse_range, help="K, e.g. 2300:12000")
    p.add_argument("--logg", type=parse_range, help="dex, e.g. 2:6")
    p.add_argument("--feh", type=parse_range, help="dex, e.g. -0.5:0")
    p.add_argument("--wavelength", type=parse_range, help="Å, e.g. 8038:12849")
    p.add_argument("--wavelength-file", help="WAVE_PHOENIX-ACES-AGSS-COND-2011.fits")
    p.add_argument("--raw", action="store_true", help="skip blackbody division and continuum")
    p.add_argument("--order", type=int, default=5, help="continuum polynomial order (5)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (kept intact until the new files are whole)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_phoenix)

    p = gsub.add_parser("info", help="summarise a grid file")
    p.add_argument("path")
    p.set_defaults(func=_info)

    p = gsub.add_parser("plot", help="plot the spectrum at one node")
    p.add_argument("path")
    p.add_argument("--teff", type=float)
    p.add_argument("--logg", type=float)
    p.add_argument("--feh", type=float)
    p.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="other parameters of grids not in teff/logg/feh (repeatable)",
    )
    p.add_argument("--wavelength", type=parse_range, help="Å range to show")
    p.add_argument("--out", required=True, help="PNG (or PDF) file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing figure")
    p.set_defaults(func=_plot)


def _synth(args: argparse.Namespace) -> int:
    from jaxspec.synthetic import synthetic_grid

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    grid = synthetic_grid(args.size, seed=args.seed, progress=not args.quiet)
    grid.to_hdf5(out, overwrite=args.overwrite)
    print(f"wrote {out}: {_summary(grid)}")
    return 0


def _phoenix(args: argparse.Namespace) -> int:
    from jaxspec.io.phoenix import read_phoenix_grid
    from jaxspec.preprocess import preprocess_grid

    out = Path(args.out)
    raw_out = out if args.raw else out.with_name(out.stem + ".raw.h5")
    check_outputs({raw_out, out}, args.overwrite)  # before the import, not after it
    grid, missing = read_phoenix_grid(
        args.directory, teff=args.teff, logg=args.logg, feh=args.feh,
        wavelength=args.wavelength, out=raw_out, wavelength_file=args.wavelength_file,
        overwrite=args.overwrite, return_missing=True, progress=not args.quiet,
    )
    if missing:
        print(f"{len(missing)} node(s) missing, masked: " + ", ".join(missing[:5])
              + (" ..." if len(missing) > 5 else ""))
    if not args.raw:
        grid = preprocess_grid(grid, teff_axis="teff", order=args.order,
                               progress=not args.quiet)
        grid.to_hdf5(out, overwrite=args.overwrite)
        print(f"raw spectra kept in {raw_out}")
    print(f"wrote {out}: {_summary(grid)}")
    return 0


def _summary(grid) -> str:
    axes = ", ".join(
        f"{n} {v[0]:g}..{v[-1]:g} ({v.size})" for n, v in grid.axes.items()
    )
    wl = grid.wavelength
    resolution = np.median(wl[1:] / np.diff(wl))
    return (
        f"{grid.n_nodes} spectra over {axes}; {grid.n_pix} px, {wl[0]:.2f}-{wl[-1]:.2f} Å "
        f"(sampling λ/Δλ ≈ {resolution:,.0f}); normalized={grid.normalized}"
    )


def _info(args: argparse.Namespace) -> int:
    from jaxspec.grid import SpectralGrid

    grid = SpectralGrid.from_hdf5(args.path)
    size = Path(args.path).stat().st_size / 2**20
    print(f"{args.path} ({size:.1f} MiB)")
    print(_summary(grid))
    for name, values in grid.axes.items():
        steps = np.unique(np.round(np.diff(values), 6)) if values.size > 1 else []
        print(f"  {name}: {values.size} values, {values[0]:g} .. {values[-1]:g}, "
              f"steps {', '.join(f'{s:g}' for s in steps) or '-'}")
    missing = int(grid.mask.size - grid.mask.sum())
    print(f"  nodes: {grid.mask.size} in the rectilinear product, {missing} missing")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from jaxspec.grid import SpectralGrid

    check_outputs([args.out], args.overwrite)
    grid = SpectralGrid.from_hdf5(args.path)
    params = {}
    for name in ("teff", "logg", "feh"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    for item in args.param:
        name, _, value = item.partition("=")
        params[name] = float(value)
    flux = grid.spectrum(**params)
    wl = grid.wavelength
    wl, flux = wavelength_window(wl, flux, args.wavelength, args.path)
    plt = matplotlib_pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.5))
    ax.plot(wl, flux, lw=0.6, color="k")
    ax.set_xlabel("wavelength [Å]")
    ax.set_ylabel("normalised flux" if grid.normalized else "flux")
    ax.set_title(f"{Path(args.path).name}: " + ", ".join(f"{k}={v:g}" for k, v in params.items()))
    out = save_figure(fig, args.out, overwrite=args.overwrite)
    plt.close(fig)
    print(f"wrote {out}")
    return 0
