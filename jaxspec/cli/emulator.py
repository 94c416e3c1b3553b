"""``jaxspec emulator info|plot|validate``: inspect emulator files, plot line manifolds,
validate an emulator by leaving grid columns out."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from jaxspec.cli._common import check_outputs, matplotlib_pyplot, save_figure


def register(sub) -> None:
    emu = sub.add_parser("emulator", help="inspect emulator files and plot line manifolds")
    esub = emu.add_subparsers(dest="emulator_command", metavar="ACTION", required=True)

    p = esub.add_parser("info", help="summarise an emulator file (any kind)")
    p.add_argument("path")
    p.set_defaults(func=_info)

    p = esub.add_parser(
        "plot",
        help="heat maps of one line's parameters over the grid (line emulators)",
        description="Heat maps of ln a, ln σ, ln γ and μ' − μ of one line over the first two "
        "parameters (Teff × log g) at fixed values of the others, as in the blase3D paper's "
        "figs. 3-4. Nodes where the line is absent are grey; unobserved (interpolated) "
        "nodes are marked x.",
    )
    p.add_argument("path")
    p.add_argument("--line", type=float, required=True, help="line centre μ, Å (nearest line)")
    p.add_argument("--feh", type=float, help="[Fe/H] slice (default: the value nearest 0)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="slice value of other parameters beyond the first two (repeatable)")
    p.add_argument("--out", required=True, help="PNG (or PDF) file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing figure")
    p.set_defaults(func=_plot)

    p = esub.add_parser(
        "validate",
        help="leave-columns-out validation against the grid (line and pixel emulators)",
        description="Remove every k-th column of the first axis (Teff) from the emulator's "
        "nodes, rebuild it from the rest with its own interpolation, and print its flux "
        "RMS at the removed nodes per column beside linear pixel interpolation of the same "
        "nodes (jaxspec.validate.validate_emulator). Optionally a figure: RMS per column "
        "and the residual spectrum of the worst node.",
    )
    p.add_argument("path", help="emulator file (kind line or pixel)")
    p.add_argument("grid", help="the grid HDF5 file it was built from")
    p.add_argument("--every", type=int, default=10,
                   help="remove every k-th column of the first axis (default 10)")
    p.add_argument("--offset", type=int, default=None,
                   help="first removed column (default every // 2)")
    p.add_argument("--out", help="figure (PNG or PDF)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing figure")
    p.set_defaults(func=_validate)


def _info(args: argparse.Namespace) -> int:
    from jaxspec.emulator import load_emulator

    emulator = load_emulator(args.path)
    size = Path(args.path).stat().st_size / 2**20
    wl = np.asarray(emulator.wavelength)
    print(f"{args.path} ({size:.1f} MiB): {type(emulator).__name__} (kind {emulator.kind!r})")
    print(f"  wavelength: {wl.size:,} px, {wl[0]:.3f}-{wl[-1]:.3f} Å")
    axes = getattr(emulator, "axes", None)
    for i, (name, (lo, hi)) in enumerate(zip(emulator.param_names, np.asarray(emulator.bounds))):
        extra = ""
        if isinstance(axes, dict) and name in axes:
            extra = f" ({np.asarray(axes[name]).size} nodes)"
        elif isinstance(axes, (tuple, list)) and i < len(axes):
            extra = f" ({np.asarray(axes[i]).size} nodes)"
        print(f"  {name}: {lo:g} .. {hi:g}{extra}")
    if emulator.kind == "line":
        present = emulator.present()
        observed = np.asarray(emulator.observed)
        per = present.sum(axis=0)[observed]
        print(f"  lines: {emulator.n_lines:,} unique; detected per node mean {per.mean():,.0f}, "
              f"min {per.min():,}, max {per.max():,}; {int(observed.sum())} observed nodes of "
              f"{observed.size}")
        print(f"  synthesis: {emulator.synthesis_plan.n_evaluations() / 1e6:.2f} M profile "
              f"evaluations per spectrum (tolerance {emulator.tolerance:g})")
        info = emulator.info
        if info:
            settings = info.get("clone_settings") or {}
            print(f"  built with matcher={info.get('matcher', '?')}"
                  + (", clone settings " + ", ".join(f"{k}={v}" for k, v in settings.items())
                     if settings else ""))
            if "refine" in info:
                r = info["refine"]
                print(f"  refined {r.get('epochs')} epochs: RMS at training nodes "
                      f"{r.get('rms_train_before', float('nan')):.2e} -> "
                      f"{r.get('rms_train_after', float('nan')):.2e}")
            if "restricted" in info:
                print(f"  restricted to {info['restricted'][0]:g}-{info['restricted'][1]:g} Å")
    return 0


def _slice_index(emulator, args) -> tuple:
    names = list(emulator.param_names)
    axes = emulator.axes
    fixed = {}
    if args.feh is not None:
        fixed["feh"] = args.feh
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--param {item!r}: write NAME=VALUE")
        fixed[name] = float(value)
    if len(names) < 2:
        raise ValueError("emulator plot needs at least two parameters (heat map axes)")
    index = [slice(None), slice(None)]
    for name in names[2:]:
        axis = axes[name]
        value = fixed.pop(name, axis[np.argmin(np.abs(axis))])
        hit = np.flatnonzero(np.isclose(axis, value, rtol=0, atol=1e-9 * max(1, abs(value))))
        if hit.size == 0:
            raise ValueError(
                f"{name}={value:g} is not a node; the {name} nodes are "
                + ", ".join(f"{v:g}" for v in axis)
            )
        index.append(int(hit[0]))
    if fixed:
        raise ValueError(
            f"unknown slice parameter(s) {sorted(fixed)}; the emulator has {names} and the "
            f"heat maps span {names[0]} × {names[1]}"
        )
    return tuple(index)


def _edges(x: np.ndarray) -> np.ndarray:
    if x.size == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = 0.5 * (x[1:] + x[:-1])
    return np.concatenate([[2 * x[0] - mid[0]], mid, [2 * x[-1] - mid[-1]]])


def _plot(args: argparse.Namespace) -> int:
    from jaxspec.emulator import load_emulator
    from jaxspec.lines import LineTable

    emulator = load_emulator(args.path)
    if emulator.kind != "line":
        raise ValueError(
            f"{args.path} is a {emulator.kind!r} emulator; heat maps of line parameters need "
            "a line emulator (jaxspec build)"
        )
    center = np.asarray(emulator.center)
    if center.size == 0:
        raise ValueError(f"{args.path} holds no line")
    j = int(np.argmin(np.abs(center - args.line)))
    if abs(center[j] - args.line) > 0.05:
        near = np.sort(center[np.argsort(np.abs(center - args.line))[:3]])
        raise ValueError(
            f"no line within 0.05 Å of {args.line:.2f} Å; nearest lines: "
            + ", ".join(f"{c:.2f}" for c in near)
        )
    index = _slice_index(emulator, args)
    check_outputs([args.out], args.overwrite)
    names = list(emulator.param_names)
    values = np.asarray(emulator.manifold.table[..., j, :], dtype=np.float64)[index]  # (n0, n1, 4)
    present = emulator.present()[j][index]
    observed = np.asarray(emulator.observed)[index]
    x, y = emulator.axes[names[0]], emulator.axes[names[1]]
    plt = matplotlib_pyplot()
    fig, axs = plt.subplots(2, 2, figsize=(11, 7), sharex=True, sharey=True)
    panels = [(LineTable.LN_AMPLITUDE, r"$\ln a$"),
              (LineTable.LN_SIGMA, r"$\ln \sigma$ [ln Å]"),
              (LineTable.LN_GAMMA, r"$\ln \gamma$ [ln Å]"),
              (LineTable.SHIFT, r"$\mu' - \mu$ [Å]")]
    shown = present | (~observed & LineTable.from_array(values).alive)
    for ax, (k, label) in zip(axs.ravel(), panels):
        data = np.where(shown, values[..., k], np.nan).T
        ax.set_facecolor("0.85")
        mesh = ax.pcolormesh(_edges(x), _edges(y), np.ma.masked_invalid(data),
                             cmap="viridis", shading="flat")
        if (~observed).any():
            ux, uy = np.nonzero(~observed)
            ax.plot(x[ux], y[uy], "x", color="k", ms=6, label="unobserved (interpolated)")
        fig.colorbar(mesh, ax=ax, label=label)
        ax.set_title(label)
    for ax in axs[1]:
        ax.set_xlabel(names[0])
    for ax in axs[:, 0]:
        ax.set_ylabel(names[1])
    sl = ", ".join(f"{n}={emulator.axes[n][i]:g}" for n, i in zip(names[2:], index[2:]))
    fig.suptitle(f"line μ = {center[j]:.2f} Å, present at {int(present.sum())} of "
                 f"{present.size} nodes" + (f" ({sl})" if sl else ""))
    out = save_figure(fig, args.out, overwrite=args.overwrite)
    plt.close(fig)
    print(f"wrote {out}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from jaxspec.emulator import load_emulator
    from jaxspec.grid import SpectralGrid
    from jaxspec.validate import validate_emulator

    if args.out:
        check_outputs([args.out], args.overwrite)
    emulator = load_emulator(args.path)
    grid = SpectralGrid.from_hdf5(args.grid)
    result = validate_emulator(emulator, grid, every=args.every, offset=args.offset)
    print(f"{args.path} ({emulator.kind}) against {args.grid}: {result.held.size} "
          f"{result.param} column(s) removed and interpolated")
    print(result.table())
    if args.out:
        plt = matplotlib_pyplot()
        fig, (a, b) = plt.subplots(2, 1, figsize=(10, 7))
        a.semilogy(result.held, result.rms, "o-", label=f"{emulator.kind} emulator")
        a.semilogy(result.held, result.rms_pixel, "s--", label="linear pixel interpolation")
        a.set_xlabel(result.param)
        a.set_ylabel("held-out flux RMS")
        a.legend()
        params, wl, res, res_pix = result.worst
        b.plot(wl, res_pix, lw=0.5, color="0.6", label="linear pixel interpolation")
        b.plot(wl, res, lw=0.5, label=f"{emulator.kind} emulator")
        b.set_xlabel("wavelength [Å]")
        b.set_ylabel("model − grid")
        b.set_title("worst removed node: " + ", ".join(
            f"{n}={v:g}" for n, v in zip(emulator.param_names, params)))
        b.legend()
        fig.tight_layout()
        out = save_figure(fig, args.out, overwrite=args.overwrite)
        plt.close(fig)
        print(f"wrote {out}")
    return 0
