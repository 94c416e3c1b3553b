"""Inference accuracy, speed and calibration: the blase3D paper's sect. 4.2 test.

Test set (paper): 21 Teff (3000–11000 K, step 400) × 5 log g (2–6, step 1) × 2 [Fe/H]
(−0.5, 0) = 210 spectra of the embedded ``default`` synthetic grid, searched with Teff
limited to ± 500 K around the truth. ``--test-points nodes`` (default) uses the grid
spectra at those nodes; the default emulator, a :class:`~jaxspec.pixel_emulator.
PixelEmulator` of the grid, then holds those nodes out (filled by linear interpolation
along Teff), so it has not seen them. ``--test-points between`` synthesises spectra
half-way between nodes instead (Teff + 50 K below 7000 K and + 100 K above, log g +
0.25, [Fe/H] −0.25; the last value of each axis steps down instead of up) with
``jaxspec.synthetic.synthetic_line_list``.

Passes: noise-free and S/N 100 (Gaussian noise σ = 1/100 of the normalised flux), for BO
(100 random + 20 guided), MAP and NUTS (NUTS on ``--nuts-stars`` spectra). Printed per
method and pass: mean |error|, median error and std of the error per parameter for
Teff < 7000 K and ≥ 7000 K, seconds per star (after compilation). Then calibration at
S/N 50: coverage of the 68 % / 95 % Laplace intervals (MAP) over ``--calibration-stars``
spectra, and of NUTS intervals over ``--nuts-calibration-stars``; with
``--calibration-source emulator`` the spectra are made by the emulator itself at random
interior parameters, which separates the method's calibration from emulator error.
With grid spectra (the default), every other calibration spectrum is fitted noise-free
to measure the emulator's systematic floor (``jaxspec.infer.systematic_floor``) and the
coverage of the remaining half is printed with and without it. Use
``--test-points between`` for calibration: node truths sit on faces of the box
([Fe/H] = −0.5 or 0), where equal-tailed intervals of box-bounded draws cannot cover.

    python benchmarks/bench_inference.py                       # pixel emulator, all
    python benchmarks/bench_inference.py --emulator line.h5    # any emulator file
    python benchmarks/bench_inference.py --n-stars 20 --methods map,bo   # quick look

Grid synthesis takes minutes: ``--grid default.h5`` reads a saved grid (``jaxspec grid
synth --size default --out default.h5``) and ``--save-grid`` writes one.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import jax
import numpy as np

import jaxspec  # noqa: F401  (x64)
from jaxspec.emulator import load_emulator
from jaxspec.grid import SpectralGrid
from jaxspec.infer import (
    Spectrum,
    bayes_opt,
    fit_map,
    gaussian_coverage,
    results_table,
    add_systematics,
    sample_coverage,
    sample_nuts,
    systematic_floor,
)
from jaxspec.pixel_emulator import PixelEmulator

TEFF = np.arange(3000.0, 11001.0, 400.0)
LOGG = np.arange(2.0, 6.01, 1.0)
FEH = np.array([-0.5, 0.0])
# Teff bins of the systematic floor (the emulator's error differs by regime).
FLOOR_EDGES = np.array([3000.0, 4000.0, 5000.0, 6000.0, 7000.0, 8500.0, 11000.0])


def test_points(kind: str) -> np.ndarray:
    mesh = np.meshgrid(TEFF, LOGG, FEH, indexing="ij")
    pts = np.stack([m.ravel() for m in mesh], -1)
    if kind == "between":
        t = pts[:, 0]
        pts[:, 0] = np.where(t >= 11000, t - 100, np.where(t >= 7000, t + 100, t + 50))
        pts[:, 1] = np.where(pts[:, 1] >= 6, 5.75, pts[:, 1] + 0.25)
        pts[:, 2] = np.where(pts[:, 2] >= 0, -0.25, pts[:, 2] + 0.25)
    return pts


def data_flux(grid: SpectralGrid, pts: np.ndarray, kind: str) -> np.ndarray:
    if kind == "nodes":
        return np.stack([grid.spectrum(teff=t, logg=g, feh=f) for t, g, f in pts])
    from jaxspec.lines import LineList
    from jaxspec.synthetic import synthetic_line_list

    # Untruncated synthesis (LineList.flux_exact) with the line lists padded to a common
    # length (inert lines, a = 0), so one compiled function serves every test point;
    # the windowed `flux` would plan and compile anew for each line list.
    lists = [synthetic_line_list(t, g, f) for t, g, f in pts]
    size = 256 * -(-max(ll.n_lines for ll in lists) // 256)
    wl = jax.numpy.asarray(grid.wavelength)
    exact = jax.jit(lambda ll: ll.flux_exact(wl))

    def padded(ll):
        extra = size - ll.n_lines
        fill = lambda v, x: np.concatenate([np.asarray(v), np.full(extra, x)])  # noqa: E731
        return LineList(fill(ll.center, float(grid.wavelength[0])),
                        fill(ll.ln_amplitude, -1000.0), fill(ll.ln_sigma, 0.0),
                        fill(ll.ln_gamma, 0.0))

    return np.stack([np.asarray(exact(padded(ll))) for ll in lists])


def spectra(wavelength, flux, snr, rng, names="star"):
    out = []
    for i, f in enumerate(flux):
        if snr is None:
            out.append(Spectrum(wavelength, f, name=f"{names}{i}"))
        else:
            sig = np.full_like(f, 1.0 / snr)
            out.append(Spectrum(wavelength, f + sig * rng.normal(size=f.size), sig,
                                name=f"{names}{i}"))
    return out


def summarise(label, truth, est, seconds, names):
    err = est - truth
    print(f"\n{label}: {len(truth)} spectra, {seconds:.3g} s per star")
    header = "  regime     n    " + "  ".join(
        f"{n + ' mean|e|':>14s} {'median':>9s} {'std':>9s}" for n in names)
    print(header)
    stats = {}
    for regime, sel in (("<7000K", truth[:, 0] < 7000), (">=7000K", truth[:, 0] >= 7000)):
        if not sel.any():
            continue
        e = err[sel]
        row = [f"  {regime:8s} {int(sel.sum()):4d}  "]
        stats[regime] = {}
        for j, n in enumerate(names):
            ej = e[:, j][np.isfinite(e[:, j])]
            mae, med, std = np.mean(np.abs(ej)), np.median(ej), np.std(ej)
            stats[regime][n] = {"mean_abs": float(mae), "median": float(med), "std": float(std)}
            row.append(f"{mae:14.4g} {med:9.3g} {std:9.3g}")
        print("  ".join(row))
    return stats


def run_method(method, emulator, data, pts, args, key):
    """Run one method on a list of spectra; returns (params, sigma, results, s/star)."""
    guess = pts[:, 0]
    kw = dict(teff_guess=guess, teff_window=args.teff_window)
    # compile on one spectrum first so that the timing is of the inference itself
    t0 = time.perf_counter()
    if method == "bo":
        jax.block_until_ready(bayes_opt(emulator, data[:1], teff_guess=guess[:1],
                                        teff_window=args.teff_window, key=key).params)
    elif method == "map":
        jax.block_until_ready(fit_map(emulator, data[:1], teff_guess=guess[:1],
                                      teff_window=args.teff_window, key=key).params)
    else:
        sample_nuts(emulator, data[:1], teff_guess=guess[:1], teff_window=args.teff_window,
                    key=key, num_warmup=args.nuts_warmup, num_samples=args.nuts_samples,
                    num_chains=args.nuts_chains, inference_data=False)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if method == "bo":
        res = bayes_opt(emulator, data, key=key, progress=args.progress, **kw)
        params, sigma = np.asarray(res.params), None
    elif method == "map":
        res = fit_map(emulator, data, key=key, progress=args.progress, **kw)
        params, sigma = np.asarray(res.params), np.asarray(res.sigma)
    else:
        res = sample_nuts(emulator, data, key=key, num_warmup=args.nuts_warmup,
                          num_samples=args.nuts_samples, num_chains=args.nuts_chains,
                          inference_data=False, progress=args.progress, **kw)
        params = np.stack([r.params for r in res])
        sigma = np.stack([r.sigma for r in res])
    per_star = (time.perf_counter() - t0) / len(data)
    print(f"  [{method}: first call incl. compilation {compile_s:.1f} s]")
    return params, sigma, res, per_star


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--emulator", help="emulator file (default: pixel emulator of the grid)")
    p.add_argument("--grid", help="saved default grid (HDF5); default: synthesise it")
    p.add_argument("--save-grid", help="write the synthesised grid here")
    p.add_argument("--test-points", choices=("nodes", "between"), default="nodes")
    p.add_argument("--methods", default="bo,map,nuts")
    p.add_argument("--n-stars", type=int, default=210, help="test spectra (evenly spread)")
    p.add_argument("--nuts-stars", type=int, default=20)
    p.add_argument("--calibration-stars", type=int, default=210,
                   help="grid calibration spectra (half set the systematic floor)")
    p.add_argument("--nuts-calibration-stars", type=int, default=20)
    p.add_argument("--snr", type=float, default=100.0)
    p.add_argument("--calibration-snr", type=float, default=50.0)
    p.add_argument("--calibration-source", choices=("grid", "emulator"), default="grid",
                   help="grid: the test spectra (emulator error included); emulator: "
                   "spectra made by the emulator itself at random interior parameters "
                   "(checks the method's own calibration, without emulator error)")
    p.add_argument("--no-systematics", dest="systematics", action="store_false",
                   help="grid calibration: skip the systematic floor (by default half of "
                   "the calibration spectra measure it noise-free, the other half test it)")
    p.add_argument("--teff-window", type=float, default=500.0)
    p.add_argument("--nuts-warmup", type=int, default=300)
    p.add_argument("--nuts-samples", type=int, default=300)
    p.add_argument("--nuts-chains", type=int, default=4)
    p.add_argument("--passes", default="noise-free,snr",
                   help="noise-free,snr (or none: calibration only)")
    p.add_argument("--out", help="folder for the result tables (ECSV) and a JSON summary")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)

    t0 = time.perf_counter()
    if args.grid:
        grid = SpectralGrid.from_hdf5(args.grid)
    else:
        from jaxspec.synthetic import synthetic_grid

        grid = synthetic_grid("default", progress=args.progress)
        if args.save_grid:
            grid.to_hdf5(args.save_grid, overwrite=True)
    print(f"grid: {grid!r} ({time.perf_counter() - t0:.0f} s)")

    pts_all = test_points(args.test_points)
    pick = np.unique(np.linspace(0, len(pts_all) - 1, min(args.n_stars, len(pts_all)))
                     .round().astype(int))
    pts = pts_all[pick]
    if args.emulator:
        emulator = load_emulator(args.emulator)
        print(f"emulator: {args.emulator} ({type(emulator).__name__})")
    else:
        holdout = pts_all if args.test_points == "nodes" else None
        emulator = PixelEmulator.from_grid(grid, holdout=holdout)
        print(f"emulator: PixelEmulator of the grid, {int(emulator.filled.sum())} nodes held "
              "out (filled along Teff)")
    clean = data_flux(grid, pts, args.test_points)
    names = emulator.param_names
    rng = np.random.default_rng(args.seed)
    key = jax.random.PRNGKey(args.seed)
    methods = [m for m in args.methods.split(",") if m]
    summary = {"args": vars(args), "results": {}}
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)

    for pass_name in [q for q in args.passes.split(",") if q and q != "none"]:
        snr = None if pass_name == "noise-free" else args.snr
        data = spectra(grid.wavelength, clean, snr, rng)
        for method in methods:
            sel = np.arange(len(pts))
            if method == "nuts":
                sel = np.unique(np.linspace(0, len(pts) - 1, min(args.nuts_stars, len(pts)))
                                .round().astype(int))
            d = [data[i] for i in sel]
            params, sigma, res, per_star = run_method(method, emulator, d, pts[sel], args, key)
            label = f"{method.upper()} {pass_name}" + (f" (S/N {snr:g})" if snr else "")
            stats = summarise(label, pts[sel], params, per_star, names)
            conv = res.converged if method != "nuts" else np.array([r.converged for r in res])
            print(f"  converged: {int(np.sum(conv))}/{len(sel)}")
            summary["results"][label] = {"stats": stats, "seconds_per_star": per_star,
                                         "n": int(len(sel)), "converged": int(np.sum(conv))}
            if out:
                table = results_table(res, names, files=[s.name for s in d], method=method)
                for j, n in enumerate(names):
                    table[f"true_{n}"] = pts[sel, j]
                table.write(out / f"{method}_{pass_name}.ecsv", overwrite=True)

    # calibration at S/N 50
    if args.calibration_stars > 0 and ("map" in methods or "nuts" in methods):
        rng = np.random.default_rng(args.seed + 1)
        cal_pick = np.unique(np.linspace(0, len(pts_all) - 1,
                                         min(args.calibration_stars, len(pts_all)))
                             .round().astype(int))
        cal_pts = pts_all[cal_pick]
        floor = None
        if args.calibration_source == "grid":
            cal_flux = data_flux(grid, cal_pts, args.test_points)
            if args.systematics:
                # Cross-validation: the floor comes from noise-free fits of every other
                # spectrum; coverage is then measured on the rest only.
                fit_set, cal_set = np.arange(len(cal_pts))[0::2], np.arange(len(cal_pts))[1::2]
                t0 = time.perf_counter()
                res = fit_map(emulator, spectra(grid.wavelength, cal_flux[fit_set], None, rng),
                              teff_guess=cal_pts[fit_set, 0], teff_window=args.teff_window,
                              key=key)
                floor = systematic_floor(cal_pts[fit_set], np.asarray(res.params),
                                         edges=FLOOR_EDGES)
                print(f"\nsystematic floor from {len(fit_set)} noise-free MAP fits of other "
                      f"held-out spectra ({time.perf_counter() - t0:.0f} s), per Teff bin:")
                for lo, hi, row in zip(FLOOR_EDGES[:-1], FLOOR_EDGES[1:], floor):
                    print(f"  {lo:5.0f}-{hi:5.0f} K: "
                          + ", ".join(f"{n} {v:.3g}" for n, v in zip(names, row)))
                summary["systematic_floor"] = {"edges": FLOOR_EDGES.tolist(),
                                               "floor": floor.tolist()}
                cal_pts, cal_flux = cal_pts[cal_set], cal_flux[cal_set]
        else:  # random interior points, spectra from the emulator itself
            lo = np.array([3200.0, 2.2, -0.45])
            hi = np.array([10800.0, 5.8, -0.05])
            cal_pts = lo + (hi - lo) * rng.uniform(size=cal_pts.shape)
            cal_flux = np.asarray(emulator(jax.numpy.asarray(cal_pts)))
        cal_wl = grid.wavelength if args.calibration_source == "grid" else emulator.wavelength
        cal_data = spectra(cal_wl, cal_flux, args.calibration_snr, rng)
        guess = cal_pts[:, 0]
        print(f"\ncalibration at S/N {args.calibration_snr:g}, {args.calibration_source} "
              "spectra (coverage of central intervals; ideal 0.68 / 0.95)")
        if "map" in methods:
            t0 = time.perf_counter()
            res = fit_map(emulator, cal_data, teff_guess=guess, teff_window=args.teff_window,
                          key=key)
            seconds = time.perf_counter() - t0
            cov = gaussian_coverage(cal_pts, np.asarray(res.params), np.asarray(res.sigma))
            _print_coverage("MAP Laplace", cov, names, seconds)
            summary["calibration_map"] = _jsonable(cov)
            if floor is not None:
                cov = gaussian_coverage(cal_pts, np.asarray(res.params), add_systematics(
                    floor, sigma=np.asarray(res.sigma), edges=FLOOR_EDGES,
                    at=np.asarray(res.params)[:, 0]))
                _print_coverage("MAP Laplace + systematic floor", cov, names, seconds)
                summary["calibration_map_systematics"] = _jsonable(cov)
        if "nuts" in methods and args.nuts_calibration_stars > 0:
            sub = np.unique(np.linspace(0, len(cal_pts) - 1,
                                        min(args.nuts_calibration_stars, len(cal_pts)))
                            .round().astype(int))
            t0 = time.perf_counter()
            res = sample_nuts(emulator, [cal_data[i] for i in sub], teff_guess=guess[sub],
                              teff_window=args.teff_window, key=key,
                              num_warmup=args.nuts_warmup, num_samples=args.nuts_samples,
                              num_chains=args.nuts_chains, inference_data=False,
                              progress=args.progress)
            seconds = time.perf_counter() - t0
            draws = [np.stack([r.samples[n] for n in names], -1).reshape(-1, len(names))
                     for r in res]
            cov = sample_coverage(cal_pts[sub], draws)
            _print_coverage("NUTS", cov, names, seconds)
            summary["calibration_nuts"] = _jsonable(cov)
            if floor is not None:
                cov = sample_coverage(cal_pts[sub], add_systematics(
                    floor, draws=draws, edges=FLOOR_EDGES,
                    at=np.array([r.params[0] for r in res])))
                _print_coverage("NUTS + systematic floor", cov, names, seconds)
                summary["calibration_nuts_systematics"] = _jsonable(cov)
    if out:
        (out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=1))
        print(f"\nwrote {out}/")


def _print_coverage(label, cov, names, seconds):
    n = int(np.min(cov["n"]))
    print(f"  {label} ({n} spectra, {seconds:.0f} s):")
    for level, c in cov["coverage"].items():
        print(f"    {level:.0%}: " + ", ".join(f"{nm} {v:.2f}" for nm, v in zip(names, c))
              + f"   (± {cov['stderr'][level]:.2f})")


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


if __name__ == "__main__":
    main()
