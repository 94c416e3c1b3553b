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
spectra at random interior parameter points (between nodes, synthesised with
``jaxspec.synthetic.synthetic_spectra``), and of NUTS intervals over the first
``--nuts-calibration-stars`` of them. The emulator's own errors are measured on a
disjoint cross-validation set of ``--floor-stars`` random interior points fitted
noise-free, and folded in two ways: a Gaussian floor per Teff bin
(``jaxspec.infer.systematic_floor``) and the empirical distribution of all the
cross-validation errors, symmetrised (``jaxspec.infer.EmpiricalSystematics``, convolved
with the Laplace or NUTS posterior; one pool, because the 95 % tail needs ~100 errors,
more than a Teff bin holds).
Coverage is printed for the likelihood alone and for both. ``--calibration-source
emulator`` makes the calibration spectra with the emulator itself, which checks the
methods' own calibration without emulator error.

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
    EmpiricalSystematics,
    Spectrum,
    add_systematics,
    bayes_opt,
    fit_map,
    gaussian_coverage,
    results_table,
    sample_coverage,
    sample_nuts,
    systematic_floor,
)
from jaxspec.pixel_emulator import PixelEmulator
from _environment import environment  # benchmarks/_environment.py, beside this script

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
    from jaxspec.synthetic import synthetic_spectra

    return synthetic_spectra(pts, grid.wavelength)


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


def map_options(args) -> dict:
    """fit_map's settings for the accuracy passes (its own defaults unless given)."""
    given = {"n_search": args.map_search, "n_starts": args.map_starts, "steps": args.map_steps}
    return {"hessian": args.map_hessian, **{k: v for k, v in given.items() if v is not None}}


def run_method(method, emulator, data, pts, args, key):
    """Run one method on a list of spectra; returns (params, sigma, results, s/star)."""
    guess = pts[:, 0]
    kw = dict(guess=guess, window=args.window)
    # compile on one spectrum first so that the timing is of the inference itself
    t0 = time.perf_counter()
    if method == "bo":
        jax.block_until_ready(bayes_opt(emulator, data[:1], guess=guess[:1],
                                        window=args.window, key=key).params)
    elif method == "map":
        jax.block_until_ready(fit_map(emulator, data[:1], guess=guess[:1],
                                      window=args.window, key=key,
                                      **map_options(args)).params)
    else:
        sample_nuts(emulator, data[:1], guess=guess[:1], window=args.window,
                    key=key, num_warmup=args.nuts_warmup, num_samples=args.nuts_samples,
                    num_chains=args.nuts_chains, inference_data=False)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if method == "bo":
        res = bayes_opt(emulator, data, key=key, progress=args.progress, **kw)
        params, sigma = np.asarray(res.params), None
    elif method == "map":
        res = fit_map(emulator, data, key=key, progress=args.progress,
                      **map_options(args), **kw)
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
    p.add_argument("--calibration-stars", type=int, default=120,
                   help="calibration spectra at random interior points (S/N 50)")
    p.add_argument("--floor-stars", type=int, default=300,
                   help="other random interior points fitted noise-free to measure the "
                   "emulator's errors (cross-validation set)")
    p.add_argument("--nuts-calibration-stars", type=int, default=20,
                   help="of the calibration spectra, how many also get NUTS")
    p.add_argument("--snr", type=float, default=100.0)
    p.add_argument("--calibration-snr", type=float, default=50.0)
    p.add_argument("--calibration-source", choices=("grid", "emulator"), default="grid",
                   help="grid: the test spectra (emulator error included); emulator: "
                   "spectra made by the emulator itself at random interior parameters "
                   "(checks the method's own calibration, without emulator error)")
    p.add_argument("--no-systematics", dest="systematics", action="store_false",
                   help="grid calibration: skip measuring the emulator's errors on the "
                   "cross-validation set (--floor-stars)")
    p.add_argument("--window", "--teff-window", dest="window", type=float, default=500.0)
    p.add_argument("--map-hessian", choices=("exact", "gauss-newton"), default="exact",
                   help="fit_map's Hessian for the accuracy passes (gauss-newton: cheaper "
                   "through a line emulator)")
    p.add_argument("--map-search", type=int, help="fit_map's n_search (default 256)")
    p.add_argument("--map-starts", type=int, help="fit_map's n_starts (default 4)")
    p.add_argument("--map-steps", type=int,
                   help="fit_map's Adam steps (default 100); the demo's MAP: --map-search "
                   "16 --map-starts 1 --map-steps 0 --map-hessian gauss-newton")
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
        calibration(args, grid, emulator, names, methods, key, summary)
    if out:
        summary["environment"] = environment()
        (out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=1))
        print(f"\nwrote {out}/")


# Interior of the default grid's box for random calibration points (truths on a face of
# the box cannot be covered by equal-tailed intervals of box-bounded draws).
CAL_LOW = np.array([3050.0, 2.05, -0.45])
CAL_HIGH = np.array([10950.0, 5.95, -0.05])


def calibration(args, grid, emulator, names, methods, key, summary):
    """Coverage of Laplace and NUTS intervals at S/N ``--calibration-snr`` (module doc).

    With ``--out``, the per-spectrum arrays go to ``calibration.npz`` (truths, estimates,
    Laplace errors, NUTS draws, cross-validation fits).
    """
    rng = np.random.default_rng(args.seed + 1)
    k = len(names)
    emp = floor = None
    arrays = {}
    if args.calibration_source == "grid":
        # Two disjoint sets of random interior points: the cross-validation set measures
        # the emulator's errors noise-free; the test set's coverage is then measured.
        cv_pts = CAL_LOW + (CAL_HIGH - CAL_LOW) * rng.uniform(size=(args.floor_stars, k))
        cal_pts = CAL_LOW + (CAL_HIGH - CAL_LOW) * rng.uniform(size=(args.calibration_stars, k))
        if args.systematics:
            t0 = time.perf_counter()
            cv_flux = data_flux(grid, cv_pts, "between")
            res = fit_map(emulator, spectra(grid.wavelength, cv_flux, None, rng),
                          guess=cv_pts[:, 0], window=args.window, key=key)
            est = np.asarray(res.params)
            arrays.update(cv_truth=cv_pts, cv_estimate=est)
            floor = systematic_floor(cv_pts, est, edges=FLOOR_EDGES)
            # one pool: a 95 % tail needs ~100 errors, more than a Teff bin holds here
            emp = EmpiricalSystematics.from_fits(cv_pts, est)
            print(f"\nemulator errors from {len(cv_pts)} noise-free MAP fits of random "
                  f"interior points ({time.perf_counter() - t0:.0f} s); Gaussian floor "
                  "(robust RMS) per Teff bin:")
            for lo, hi, row in zip(FLOOR_EDGES[:-1], FLOOR_EDGES[1:], floor):
                print(f"  {lo:5.0f}-{hi:5.0f} K: "
                      + ", ".join(f"{n} {v:.3g}" for n, v in zip(names, row)))
            q = np.quantile(np.abs(emp.offsets), [0.68, 0.95], axis=0)
            print("  |error| 68th / 95th percentiles: " + ", ".join(
                f"{n} {a:.3g} / {b:.3g}" for n, a, b in zip(names, *q)))
            summary["systematic_floor"] = {"edges": FLOOR_EDGES.tolist(),
                                           "floor": floor.tolist(),
                                           "abs_error_quantiles_68_95": q.tolist()}
        cal_flux = data_flux(grid, cal_pts, "between")
        cal_wl = grid.wavelength
    else:  # random interior points, spectra from the emulator itself
        cal_pts = CAL_LOW + (CAL_HIGH - CAL_LOW) * rng.uniform(size=(args.calibration_stars, k))
        cal_flux = np.asarray(emulator(jax.numpy.asarray(cal_pts)))
        cal_wl = emulator.wavelength
    cal_data = spectra(cal_wl, cal_flux, args.calibration_snr, rng)
    guess = cal_pts[:, 0]
    print(f"\ncalibration at S/N {args.calibration_snr:g}, {args.calibration_source} "
          "spectra at random interior points (coverage of central intervals; ideal "
          "0.68 / 0.95)")

    def report(label, key_name, cov, seconds):
        _print_coverage(label, cov, names, seconds)
        summary[key_name] = _jsonable(cov)

    if "map" in methods:
        t0 = time.perf_counter()
        res = fit_map(emulator, cal_data, guess=guess, window=args.window,
                      key=key)
        seconds = time.perf_counter() - t0
        mean, sigma = np.asarray(res.params), np.asarray(res.sigma)
        arrays.update(truth=cal_pts, map_params=mean, map_sigma=sigma)
        report("MAP Laplace", "calibration_map", gaussian_coverage(cal_pts, mean, sigma),
               seconds)
        if floor is not None:
            report("MAP Laplace + Gaussian floor", "calibration_map_floor",
                   gaussian_coverage(cal_pts, mean, add_systematics(
                       floor, sigma=sigma, edges=FLOOR_EDGES, at=mean[:, 0])), seconds)
            report("MAP Laplace + empirical emulator errors", "calibration_map_empirical",
                   sample_coverage(cal_pts, emp.convolve(mean=mean, sigma=sigma,
                                                         seed=args.seed)), seconds)
    if "nuts" in methods and args.nuts_calibration_stars > 0:
        sub = np.arange(min(args.nuts_calibration_stars, len(cal_pts)))
        t0 = time.perf_counter()
        res = sample_nuts(emulator, [cal_data[i] for i in sub], guess=guess[sub],
                          window=args.window, key=key,
                          num_warmup=args.nuts_warmup, num_samples=args.nuts_samples,
                          num_chains=args.nuts_chains, inference_data=False,
                          progress=args.progress)
        seconds = time.perf_counter() - t0
        draws = [np.stack([r.samples[n] for n in names], -1).reshape(-1, k) for r in res]
        arrays.update(nuts_draws=np.stack(draws), nuts_converged=np.array(
            [bool(r.converged) for r in res]))
        print(f"  NUTS converged: {sum(bool(r.converged) for r in res)}/{len(res)}")
        report("NUTS", "calibration_nuts", sample_coverage(cal_pts[sub], draws), seconds)
        if floor is not None:
            report("NUTS + Gaussian floor", "calibration_nuts_floor",
                   sample_coverage(cal_pts[sub], add_systematics(
                       floor, draws=draws, edges=FLOOR_EDGES,
                       at=np.array([r.params[0] for r in res]))), seconds)
            report("NUTS + empirical emulator errors", "calibration_nuts_empirical",
                   sample_coverage(cal_pts[sub], emp.convolve(draws=draws, seed=args.seed)),
                   seconds)
    if args.out:
        np.savez(Path(args.out) / "calibration.npz", **arrays)


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
