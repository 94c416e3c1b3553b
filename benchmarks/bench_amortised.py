"""Amortised inference benchmark: throughput, calibration, bias/σ against S/N, vs fit_map.

Set-up. The default embedded grid (61 Teff × 9 log g × 2 [Fe/H], 25,410 px, 8440–8880 Å;
cached as ``<out>/grid_default.h5`` like ``bench_emulator.py``; ``--grid tiny``: the tiny
grid, 4 × 2 × 2 nodes, 1,990 px, for a 2-core budget) → its
:class:`~jaxspec.pixel_emulator.PixelEmulator` → a :class:`~jaxspec.amortised.Simulator`
averaging ``--bin`` (24) emulator pixels per network pixel (1,058 px at 0.42 Å, R ≈
20,000, the cINN paper's 4MOST-HR resolution class) with S/N drawn log-uniformly in
10–1000. Both networks are trained on ``--n-train`` streamed spectra (early stopping on
``n_train / 10`` validation spectra; ``--n-train 0``, ``--epochs 0``, ``--patience 0``:
the library defaults), recalibrated on held-out simulations (the library default) and
saved to ``<out>/amortised_{flow,regressor}.h5`` (``--reuse`` loads them instead, e.g.
models written by ``jaxspec train regressor|flow`` on the same emulator and ``--bin``).

Parts (``--parts``, comma-separated; default all):

speed
    Spectra per second, batched (``--batch`` spectra per compiled call), after
    compilation: the flow with 4,096 draws per spectrum (issue target ≥ 20 /s on 2 CPU
    cores; the cINN paper: 1000 spectra in 21.5 min on one CPU core = 0.78 /s, 10 s on a
    GPU = 100 /s) and the regressor with 20 noise draws.
calibration
    ``--n-cal`` (500) held-out simulated spectra (prior draws, S/N from the training
    distribution): coverage of the flow's 68 % / 95 % equal-tailed intervals (target 68 ±
    5 % / 95 ± 3 %), rank histograms (``<out>/amortised_ranks_{flow,regressor}.png``),
    and the coverage of the regressor's recalibrated ±σ.
table
    Bias (mean residual) and σ (standard deviation of the residuals) of the flow's MAP
    and the regressor per parameter at S/N 10, 20, 50, 100, 250, 1000, ``--n-test``
    spectra each (like table 4 of the cINN paper).
map
    :func:`jaxspec.infer.fit_map` (whole box, known σ, the simulator's forward model so
    that data and model share pixels) on the first ``--n-map`` spectra of the table at
    S/N 50 and 250: bias, σ, Laplace 68 % coverage and seconds per spectrum, next to the
    amortised models on the same spectra.
coverage
    Expected-coverage curves (:func:`jaxspec.amortised.coverage_curve`: the fraction of
    truths inside the central credible interval of level α, α = 0.05 … 0.95, per
    parameter) on ``--n-cov`` fresh held-out simulated spectra (prior draws, S/N from
    the training distribution, known σ = 1/(S/N)): regressor (recalibrated Gaussian σ),
    flow (ranks among its recalibrated draws), MAP-Laplace (:func:`jaxspec.infer.fit_map`
    on the first ``--n-cov-map`` spectra) and NUTS (:func:`jaxspec.infer.sample_nuts`,
    2 chains × ``--nuts-samples`` draws, on the first ``--n-nuts``), with the largest
    deviation max_α |C(α) − α| per parameter (goal ≤ 0.05) and the mean standardised
    error (estimate − truth)/σ (flow: median; NUTS: median and standard deviation of the
    draws). Binomial noise alone gives deviations of ~ 2 √(0.25 / n) for n spectra.

    python benchmarks/bench_amortised.py [--out /tmp/jaxspec_bench] [--n-train 20000]

Writes ``<out>/amortised_results.json``. Timings on a shared 2-core CPU are noisy. GPU
numbers: run the same script on a machine with a GPU (JAX picks it up).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np

import jaxspec  # noqa: F401  (float64)
from jaxspec.amortised import (
    Simulator,
    load_amortised,
    rank_statistics,
    simulation_based_calibration,
    train_flow,
    train_regressor,
)
from jaxspec.pixel_emulator import PixelEmulator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_emulator import default_grid

from jaxspec.amortised import coverage_curve, coverage_deviation, gaussian_ranks
from jaxspec.amortised.calibration import LEVELS
from _environment import environment  # benchmarks/_environment.py, beside this script

SNR_LEVELS = (10.0, 20.0, 50.0, 100.0, 250.0, 1000.0)


def log(*args):
    print(*args, flush=True)


def models(sim, args, out: Path):
    paths = {kind: out / f"amortised_{kind}.h5" for kind in args.models.split(",")}
    trained = {}
    for kind, path in paths.items():
        if args.reuse and path.exists():
            trained[kind] = load_amortised(path)
            log(f"{kind}: loaded {path}")
            continue
        t0 = time.perf_counter()
        kw = {k: v for k, v in (("n_train", args.n_train), ("max_epochs", args.epochs),
                                ("patience", args.patience)) if v}
        if kind == "flow":
            model = train_flow(sim, key=args.seed, progress=args.progress, **kw)
        else:
            model = train_regressor(sim, lr=args.regressor_lr, key=args.seed,
                                    progress=args.progress, **kw)
        h = json.loads(model.history)
        log(f"{kind}: trained in {time.perf_counter() - t0:.0f} s, {h['epochs']} epochs "
            f"(best {h['best_epoch']}), val loss {h['initial_val_loss']:.4g} -> "
            f"{min(h['val_loss']):.4g}; config {model.config}")
        model.save(path, overwrite=True)
        trained[kind] = model
    return trained


def speed(trained, sim, args):
    out = {"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform}
    _, snr, flux = (np.asarray(a) for a in sim.draw(args.seed + 5, args.n_speed))
    for kind, model in trained.items():
        kw = {"n_samples": 4096} if kind == "flow" else {"n_draws": 20}
        model.predict(flux[: args.batch], snr=snr[: args.batch], batch_size=args.batch, **kw)
        t0 = time.perf_counter()
        model.predict(flux, snr=snr, batch_size=args.batch, **kw)
        dt = time.perf_counter() - t0
        out[kind] = {"spectra_per_s": args.n_speed / dt, "batch": args.batch,
                     "n_spectra": args.n_speed, **kw}
        log(f"speed {kind}: {args.n_speed / dt:.1f} spectra/s ({kw}, batch {args.batch}, "
            f"{out['platform']})")
    return out


def calibration(trained, sim, args, out: Path):
    res = {}
    for kind, model in trained.items():
        t0 = time.perf_counter()
        cal = simulation_based_calibration(
            model, sim, n=args.n_cal, key=args.seed + 77, batch_size=args.batch,
            plot=out / f"amortised_ranks_{kind}.png")
        r = cal["result"]
        res[kind] = {
            "n": int(args.n_cal),
            "coverage_68": dict(zip(sim.names, map(float, cal["coverage"][0.68]))),
            "coverage_95": dict(zip(sim.names, map(float, cal["coverage"][0.95]))),
            "stderr_68": cal["stderr"][0.68], "stderr_95": cal["stderr"][0.95],
            "rejected_fraction_median": float(np.median(r.rejected_fraction)),
            "rejected_fraction_mean": float(np.mean(r.rejected_fraction)),
            "plot": str(cal["plot"]),
        }
        log(f"calibration {kind} ({args.n_cal} held-out spectra, {time.perf_counter() - t0:.0f}"
            " s):")
        for lvl in (0.68, 0.95):
            log(f"  {100 * lvl:.0f} % intervals: " + ", ".join(
                f"{n} {100 * c:.1f} %" for n, c in zip(sim.names, cal["coverage"][lvl]))
                + f" (± {100 * cal['stderr'][lvl]:.1f} % binomial)")
        if kind == "flow":
            log(f"  rejected fraction: median {res[kind]['rejected_fraction_median']:.3f}, "
                f"mean {res[kind]['rejected_fraction_mean']:.3f}")
    return res


def test_set(sim, args):
    sets = {}
    for i, s in enumerate(SNR_LEVELS):
        theta, _, flux = (np.asarray(a) for a in sim.draw(args.seed + 1000 + i, args.n_test,
                                                          snr=s))
        sets[s] = (theta, flux)
    return sets


def bias_sigma(truth, est):
    err = np.asarray(est) - truth
    ok = np.all(np.isfinite(err), axis=1)
    return err[ok].mean(0), err[ok].std(0), int(ok.sum())


def table(trained, sim, sets, args):
    res = {}
    for kind, model in trained.items():
        res[kind] = {}
        kw = {"n_samples": 4096} if kind == "flow" else {}
        for s, (theta, flux) in sets.items():
            r = model.predict(flux, snr=s, batch_size=args.batch, **kw)
            b, sd, n = bias_sigma(theta, r.params)
            res[kind][s] = {"bias": b.tolist(), "sigma": sd.tolist(), "n": n,
                            "coverage_68": np.mean(np.abs(r.params - theta) <= r.sigma,
                                                   axis=0).tolist()}
    names = sim.names
    log("\nbias / σ of the estimates (flow: MAP) per parameter against S/N, "
        f"{args.n_test} spectra per S/N")
    log("| S/N | " + " | ".join(f"{k} {n} bias | {k} {n} σ" for k in res for n in names)
        + " |")
    log("|---" * (1 + 2 * len(names) * len(res)) + "|")
    for s in sets:
        cells = []
        for k in res:
            for j in range(len(names)):
                cells += [f"{res[k][s]['bias'][j]:.3g}", f"{res[k][s]['sigma'][j]:.3g}"]
        log(f"| {s:g} | " + " | ".join(cells) + " |")
    return res


def compare_map(trained, sim, sets, args):
    from jaxspec.infer import fit_map

    forward = sim.forward_model()
    res = {}
    for s in (50.0, 250.0):
        theta, flux = sets[s]
        theta, flux = theta[: args.n_map], flux[: args.n_map]
        sigma = np.full_like(flux, 1.0 / s, dtype=np.float64)
        fit_map(forward, flux[:1], sigma[:1], key=args.seed)  # compile
        t0 = time.perf_counter()
        m = fit_map(forward, flux, sigma, key=args.seed, progress=args.progress)
        sec = (time.perf_counter() - t0) / len(flux)
        row = {}
        b, sd, n = bias_sigma(theta, np.asarray(m.params))
        cov = np.mean(np.abs(np.asarray(m.params) - theta) <= np.asarray(m.sigma), axis=0)
        row["fit_map"] = {"bias": b.tolist(), "sigma": sd.tolist(), "n": n,
                          "seconds_per_spectrum": sec, "coverage_68": cov.tolist(),
                          "converged": float(np.mean(m.converged))}
        for kind, model in trained.items():
            kw = {"n_samples": 4096} if kind == "flow" else {}
            t0 = time.perf_counter()
            r = model.predict(flux, snr=s, batch_size=args.batch, **kw)
            sec_k = (time.perf_counter() - t0) / len(flux)
            b, sd, n = bias_sigma(theta, r.params)
            cov = np.mean(np.abs(r.params - theta) <= r.sigma, axis=0)
            row[kind] = {"bias": b.tolist(), "sigma": sd.tolist(), "n": n,
                         "seconds_per_spectrum": sec_k, "coverage_68": cov.tolist()}
        res[s] = row
        log(f"\nS/N {s:g}, {len(flux)} spectra: bias / σ per parameter, s/spectrum, "
            "68 % coverage (±σ)")
        for k, v in row.items():
            log(f"  {k:10s} " + "  ".join(
                f"{n} {v['bias'][j]:+.3g}/{v['sigma'][j]:.3g}" for j, n in enumerate(sim.names))
                + f"  {v['seconds_per_spectrum']:.3g} s  cov68 "
                + ",".join(f"{c:.2f}" for c in v["coverage_68"]))
    return res


def coverage(trained, sim, args):
    """Expected-coverage curves of every method on one held-out set (module docstring)."""
    from jaxspec.infer import fit_map, sample_nuts

    theta, snr, flux = (np.asarray(a) for a in sim.draw(args.seed + 4242, args.n_cov))
    sigma = np.ones_like(flux, dtype=np.float64) / snr[:, None]
    ranks, seconds, counts, zbias = {}, {}, {}, {}
    for kind, model in trained.items():
        t0 = time.perf_counter()
        kw = {"n_samples": 4096} if kind == "flow" else {}
        r = model.predict(flux, snr=snr, key=args.seed + 3, batch_size=args.batch,
                          return_samples=kind == "flow", **kw)
        ranks[kind] = (rank_statistics(theta, r.samples) if kind == "flow"
                       else gaussian_ranks(theta, r.params, r.sigma))
        est = r.median if kind == "flow" else r.params
        zbias[kind] = np.nanmean((np.asarray(est) - theta) / np.asarray(r.sigma), axis=0)
        seconds[kind], counts[kind] = time.perf_counter() - t0, args.n_cov
    forward = sim.forward_model()
    m = args.n_cov_map
    if m:
        t0 = time.perf_counter()
        fit = fit_map(forward, flux[:m], sigma[:m], key=args.seed, progress=args.progress)
        ranks["map-laplace"] = gaussian_ranks(theta[:m], np.asarray(fit.params),
                                              np.asarray(fit.sigma))
        zbias["map-laplace"] = np.nanmean((np.asarray(fit.params) - theta[:m])
                                          / np.asarray(fit.sigma), axis=0)
        seconds["map-laplace"], counts["map-laplace"] = time.perf_counter() - t0, m
    m = args.n_nuts
    if m:
        t0 = time.perf_counter()
        res = sample_nuts(forward, flux[:m], sigma[:m], num_warmup=args.nuts_warmup,
                          num_samples=args.nuts_samples, num_chains=2, key=args.seed,
                          inference_data=False, progress=args.progress)
        draws = np.stack([np.stack([np.ravel(r.samples[n]) for n in sim.names], axis=-1)
                          for r in res])
        ranks["nuts"] = rank_statistics(theta[:m], draws)
        zbias["nuts"] = np.mean((np.median(draws, axis=1) - theta[:m])
                                / np.std(draws, axis=1), axis=0)
        seconds["nuts"], counts["nuts"] = time.perf_counter() - t0, m
    out = {}
    log(f"\nexpected coverage C(α) on held-out simulated spectra (S/N log-uniform "
        f"{sim.snr_range[0]:g}–{sim.snr_range[1]:g}); max |C(α) − α| over α = 0.05 … 0.95")
    log("| method | spectra | " + " | ".join(f"{n} max dev" for n in sim.names)
        + " | " + " | ".join(f"C(0.68) {n}" for n in sim.names)
        + " | " + " | ".join(f"C(0.95) {n}" for n in sim.names)
        + " | " + " | ".join(f"bias/σ {n}" for n in sim.names) + " | s |")
    log("|---" * (3 + 4 * len(sim.names)) + "|")
    for method, rk in ranks.items():
        curve = coverage_curve(rk)
        at = coverage_curve(rk, [0.68, 0.95])
        dev = coverage_deviation(rk)
        out[method] = {"n": counts[method], "levels": LEVELS.tolist(),
                       "curve": curve.tolist(), "max_deviation": dev.tolist(),
                       "coverage_68": at[0].tolist(), "coverage_95": at[1].tolist(),
                       "seconds": seconds[method], "bias_over_sigma": zbias[method].tolist(),
                       "binomial_noise": 2 * float(np.sqrt(0.25 / counts[method]))}
        log(f"| {method} | {counts[method]} | " + " | ".join(f"{d:.3f}" for d in dev)
            + " | " + " | ".join(f"{c:.3f}" for c in at[0])
            + " | " + " | ".join(f"{c:.3f}" for c in at[1])
            + " | " + " | ".join(f"{b:+.3f}" for b in zbias[method])
            + f" | {seconds[method]:.0f} |")
    log("\ncurves C(α) − α per method and parameter at α = "
        + ", ".join(f"{a:g}" for a in LEVELS[1::2]))
    for method, v in out.items():
        c = np.asarray(v["curve"])[1::2] - LEVELS[1::2, None]
        for j, n in enumerate(sim.names):
            log(f"  {method:12s} {n:5s} " + " ".join(f"{x:+.3f}" for x in c[:, j]))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/jaxspec_bench")
    p.add_argument("--parts", default="speed,calibration,table,map,coverage")
    p.add_argument("--grid", choices=("default", "tiny"), default="default",
                   help="embedded grid the pixel emulator is built from")
    p.add_argument("--models", default="flow,regressor", help="flow, regressor or both")
    p.add_argument("--bin", type=int, default=24)
    p.add_argument("--n-train", type=int, default=20000, help="0: the library default")
    p.add_argument("--epochs", type=int, default=30, help="max epochs (0: library default)")
    p.add_argument("--patience", type=int, default=4, help="0: the library default")
    p.add_argument("--regressor-lr", type=float, default=1e-3,
                   help="Adamax learning rate (paper 1e-4; 1e-3 converges in the epochs a "
                   "2-core budget allows)")
    p.add_argument("--reuse", action="store_true", help="load trained models from --out")
    p.add_argument("--batch", type=int, default=32, help="spectra per compiled call")
    p.add_argument("--n-speed", type=int, default=256)
    p.add_argument("--n-cal", type=int, default=500)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--n-map", type=int, default=40)
    p.add_argument("--n-cov", type=int, default=500, help="coverage: held-out spectra")
    p.add_argument("--n-cov-map", type=int, default=100,
                   help="coverage: spectra fitted by fit_map (0: skip)")
    p.add_argument("--n-nuts", type=int, default=10,
                   help="coverage: spectra sampled by NUTS (0: skip)")
    p.add_argument("--nuts-warmup", type=int, default=200)
    p.add_argument("--nuts-samples", type=int, default=200, help="per chain (2 chains)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))

    t_all = time.perf_counter()
    if args.grid == "tiny":
        from jaxspec.synthetic import synthetic_grid

        grid = synthetic_grid("tiny", progress=False)
    else:
        grid = default_grid(out)
    sim = Simulator.from_emulator(PixelEmulator.from_grid(grid), bin=args.bin)
    log(f"simulator: {sim.n_pix} px ({sim.wavelength[0]:.2f}–{sim.wavelength[-1]:.2f} Å, "
        f"bin {args.bin}), box {dict(zip(sim.names, sim.box))}, S/N {sim.snr_range}; "
        f"JAX on {jax.devices()[0].platform}")
    results = {"n_pix": sim.n_pix, "bin": args.bin, "n_train": args.n_train}
    trained = models(sim, args, out)
    results["history"] = {k: json.loads(m.history) for k, m in trained.items()}
    results["config"] = {k: json.loads(m.config) for k, m in trained.items()}
    if "speed" in parts:
        results["speed"] = speed(trained, sim, args)
    if "calibration" in parts:
        results["calibration"] = calibration(trained, sim, args, out)
    sets = test_set(sim, args) if parts & {"table", "map"} else None
    if "table" in parts:
        results["table"] = table(trained, sim, sets, args)
    if "map" in parts:
        results["map"] = compare_map(trained, sim, sets, args)
    if "coverage" in parts:
        results["coverage"] = coverage(trained, sim, args)
    results["seconds"] = time.perf_counter() - t_all
    results["environment"] = environment()
    path = out / "amortised_results.json"
    path.write_text(json.dumps(results, indent=1, default=float))
    log(f"\nwrote {path} ({results['seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
