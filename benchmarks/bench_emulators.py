"""Emulator comparison: line emulator, pixel interpolation, The Cannon, The Payne and the
autoencoder generator on one test.

Grid: the ``default`` embedded grid (61 Teff x 9 log g x 2 [Fe/H], 25,410 px), with the
108 nodes at Teff 3500, 4500, 5500, 6500, 8000 and 10000 K held out of every emulator
(``bench_emulator.held_mask``; their Teff neighbours stay). The line emulator is the one
``bench_emulator.py`` built from clones of the same grid without those nodes
(``--line-emulator``, default ``<out>/emulator_default_track.h5``; skipped if absent).

Per emulator, one row:

* train: seconds to build or train it (not measured for the line emulator, which comes
  from clone fitting, identification and refinement; see ``bench_emulator.py``);
* MAE and max |error| of the emulated spectra at the 108 held-out nodes (normalised flux);
  a constant spectrum (the mean training spectrum) is the floor every emulator must beat;
* ms per spectrum: one call (jit, params ``(3,)``) and batches of 64; ms per gradient of
  the summed squared flux with respect to the parameters (what inference pays per step);
* MAP recovery at S/N 100: ``--map-stars`` held-out nodes (evenly spread over them),
  Gaussian noise σ = 0.01 with that σ given, :func:`jaxspec.infer.fit_map` with Teff
  searched within ± 500 K of the truth (the blase3D protocol of
  ``bench_inference.py``); mean |error| of Teff, log g and [Fe/H], median seconds per
  star and the number of converged fits (``--map-kinds``; not the line emulator by
  default: its gradient costs seconds on 2 CPU cores).

Training settings (``--payne-*``, ``--ae-*``) default to a few minutes each on 2 CPU
cores; the autoencoder's two widest encoder layers (1024, 512 in the paper, for 4,000 px)
are narrowed to 256 for 25,410 px (``--ae-encoder``). Trained models are cached in
``<out>/peer_<kind>.h5`` and reused (their recorded training time is reported) unless
``--retrain``.

    python benchmarks/bench_emulators.py [--out /tmp/jaxspec_bench] [--kinds cannon,payne]

Timings on a shared 2-core CPU are noisy (±20 % between runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

import jaxspec  # noqa: F401  (x64)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_emulator import default_grid, held_mask, log

from jaxspec.emulator import load_emulator
from jaxspec.infer import fit_map
from jaxspec.peers import train_autoencoder, train_cannon, train_payne
from jaxspec.pixel_emulator import PixelEmulator
from _environment import environment  # benchmarks/_environment.py, beside this script

KINDS = ("line", "pixel", "cannon", "payne", "autoencoder")
LABELS = {
    "constant": "constant spectrum (floor)",
    "line": "line emulator (from clones)",
    "pixel": "pixel interpolation",
    "cannon": "The Cannon",
    "payne": "The Payne",
    "autoencoder": "autoencoder generator",
}
SNR = 100.0
evaluate = eqx.filter_jit(lambda e, p: e(p))
gradient = eqx.filter_jit(lambda e, p: jax.grad(lambda q: jax.numpy.sum(e(q) ** 2))(p))


def spectra(emulator, params, batch=64):
    """Emulator flux at ``params`` (n, k), in fixed-size batches (one compilation)."""
    out = []
    for start in range(0, params.shape[0], batch):
        sel = params[start:start + batch]
        pad = np.concatenate([sel, np.repeat(sel[:1], batch - sel.shape[0], 0)])
        out.append(np.asarray(evaluate(emulator, pad), dtype=np.float64)[: sel.shape[0]])
    return np.concatenate(out)


def ms_per_spectrum(emulator, params, repeats):
    single = params[0]
    batch = params[np.arange(64) % params.shape[0]]
    out = {}
    for name, p, n in (("single", single, 1), ("batch64", batch, 64)):
        jax.block_until_ready(evaluate(emulator, p))
        t0 = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(evaluate(emulator, p))
        out[name] = (time.perf_counter() - t0) / repeats / n * 1e3
    jax.block_until_ready(gradient(emulator, single))
    t0 = time.perf_counter()
    for _ in range(max(1, repeats // 5)):
        jax.block_until_ready(gradient(emulator, single))
    out["grad"] = (time.perf_counter() - t0) / max(1, repeats // 5) * 1e3
    return out


def build(kind, grid, held_params, held, out: Path, args):
    """(emulator, training seconds or None)."""
    if kind == "line":
        path = Path(args.line_emulator or out / "emulator_default_track.h5")
        if not path.exists():
            log(f"line: skipped ({path} not found; run bench_emulator.py first)")
            return None, None
        return load_emulator(path), None
    if kind == "pixel":
        t0 = time.perf_counter()
        em = PixelEmulator.from_grid(grid, holdout=held_params)
        return em, time.perf_counter() - t0
    path = out / f"peer_{kind}.h5"
    if path.exists() and not args.retrain:
        em = load_emulator(path)
        log(f"{kind}: reusing {path} (pass --retrain to train again)")
        return em, em.info.get("seconds")
    t0 = time.perf_counter()
    if kind == "cannon":
        em = train_cannon(grid, held)
    elif kind == "payne":
        em = train_payne(grid, held, hidden=args.payne_hidden, batch_size=args.batch_size,
                         max_epochs=args.payne_epochs, patience=args.patience,
                         seed=args.seed, progress=args.progress)
    else:
        em = train_autoencoder(grid, held, encoder=args.ae_encoder, latent=args.ae_latent,
                               dense=args.ae_dense, batch_size=args.batch_size,
                               max_epochs=args.ae_epochs, patience=args.ae_patience,
                               finetune_epochs=args.ae_finetune, seed=args.seed,
                               progress=args.progress)
    seconds = time.perf_counter() - t0
    em.save(path, overwrite=True)
    return em, seconds


def map_recovery(emulator, params, flux, seed):
    rng = np.random.default_rng(seed)
    sigma = 1.0 / SNR
    errs, secs, conv = [], [], []
    for theta, f in zip(params, flux):
        data = f + sigma * rng.normal(size=f.size)
        t0 = time.perf_counter()
        res = fit_map(emulator, data, np.full(f.size, sigma), guess=theta[0],
                      window=500.0)
        p = np.asarray(res.params)
        secs.append(time.perf_counter() - t0)
        errs.append(np.abs(p - theta))
        conv.append(bool(res.converged))
    errs = np.array(errs)
    return {
        "mean_abs_error": errs.mean(axis=0).tolist(),
        "median_abs_error": np.median(errs, axis=0).tolist(),
        # the first fit includes JIT compilation
        "seconds_per_star": float(np.median(secs)),
        "converged": int(np.sum(conv)),
        "n": len(conv),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/jaxspec_bench", help="cache and output folder")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--line-emulator", help="line emulator file (default: "
                   "<out>/emulator_default_track.h5)")
    p.add_argument("--map-stars", type=int, default=12,
                   help="held-out nodes fitted by MAP per emulator (0: no MAP)")
    p.add_argument("--map-kinds", default="pixel,cannon,payne,autoencoder",
                   help="emulators that get the MAP test (the line emulator's gradient is "
                   "too slow on a CPU for ~10³ evaluations per star)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--patience", type=int, default=100, help="Payne early stopping")
    p.add_argument("--payne-hidden", type=lambda s: tuple(int(v) for v in s.split(",")),
                   default=(100, 100))
    p.add_argument("--payne-epochs", type=int, default=300)
    p.add_argument("--ae-encoder", type=lambda s: tuple(int(v) for v in s.split(",")),
                   default=(256, 256, 256, 64, 32))
    p.add_argument("--ae-latent", type=int, default=10)
    p.add_argument("--ae-dense", type=lambda s: tuple(int(v) for v in s.split(",")),
                   default=(5000, 2000, 512, 32))
    p.add_argument("--ae-epochs", type=int, default=60)
    p.add_argument("--ae-patience", type=int, default=15)
    p.add_argument("--ae-finetune", type=int, default=0,
                   help="end-to-end generator epochs after the paper's two stages (0: paper)")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        p.error(f"unknown kinds {sorted(unknown)}; choose from {KINDS}")
    map_kinds = set(args.map_kinds.split(","))

    log(f"device: {jax.default_backend()}, cpus visible: {len(jax.devices())} device(s); "
        "timings on shared CPUs are noisy")
    grid = default_grid(out)
    held = held_mask(grid)
    params, flat = grid.node_params()
    all_flux = grid.flux.reshape(-1, grid.n_pix)[flat]
    is_held = held.reshape(-1)[flat]
    test_params, test_flux = params[is_held], all_flux[is_held].astype(np.float64)
    pick = np.unique(np.round(np.linspace(0, len(test_params) - 1, args.map_stars)).astype(int)) \
        if args.map_stars else np.array([], dtype=int)
    log(f"grid: {grid}; {int(is_held.sum())} held-out nodes, {pick.size} MAP stars")

    const = all_flux[~is_held].mean(axis=0, dtype=np.float64)
    rows = {"constant": {"mae": float(np.mean(np.abs(const - test_flux))),
                         "max": float(np.max(np.abs(const - test_flux)))}}
    for kind in kinds:
        em, seconds = build(kind, grid, test_params, held, out, args)
        if em is None:
            continue
        model = spectra(em, test_params)
        diff = model - test_flux
        row = {"train_seconds": seconds, "mae": float(np.mean(np.abs(diff))),
               "max": float(np.max(np.abs(diff))),
               "rms": float(np.sqrt(np.mean(diff**2)))}
        row.update(ms_per_spectrum(em, test_params, args.repeats))
        if kind in map_kinds and pick.size:
            row["map"] = map_recovery(em, test_params[pick], test_flux[pick], args.seed)
        if hasattr(em, "info") and kind not in ("line",):
            info = em.info
            row["info"] = {k: v for k, v in info.items()
                           if not isinstance(v, (list, dict)) or k in ("hidden", "encoder",
                                                                        "dense")}
            for stage in ("autoencoder", "dense_network", "finetune"):
                if isinstance(info.get(stage), dict):
                    row["info"][stage] = {k: v for k, v in info[stage].items()
                                          if not isinstance(v, list)}
        rows[kind] = row
        log(f"{kind}: {json.dumps({k: v for k, v in row.items() if k != 'info'})}")

    if "cannon" in kinds:  # diagnostic: one quadratic over a narrower Teff range
        sub = grid.subset(teff=(4000.0, 7000.0))
        sub_held = held_mask(grid)[(grid.axes["teff"] >= 4000) & (grid.axes["teff"] <= 7000)]
        em = train_cannon(sub, sub_held)
        sp, sf = sub.node_params()
        sh = sub_held.reshape(-1)[sf]
        d = spectra(em, sp[sh]) - sub.flux.reshape(-1, sub.n_pix)[sf[sh]]
        rows["cannon_4000_7000"] = {"mae": float(np.mean(np.abs(d))),
                                    "max": float(np.max(np.abs(d))), "n_test": int(sh.sum())}

    rows["environment"] = environment()
    (out / "bench_emulators.json").write_text(json.dumps(rows, indent=1))
    print()
    print(table(rows))
    print(f"\nreport: {out / 'bench_emulators.json'}")


def table(rows) -> str:
    head = ("| emulator | train | MAE | max err | ms single | ms/spec (64) | ms grad | "
            f"MAP S/N {SNR:g}: mean err Teff [K] | err log g | err [Fe/H] | s/star (conv.) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for kind in ("constant", *KINDS):
        if kind not in rows:
            continue
        r = rows[kind]
        train = "—" if r.get("train_seconds") is None else f"{r['train_seconds']:.1f} s"
        if kind == "constant":
            train = ""
        cells = [LABELS[kind], train, f"{r['mae']:.2e}", f"{r['max']:.2e}"]
        cells += [f"{r[k]:.3g}" if k in r else "" for k in ("single", "batch64", "grad")]
        if "map" in r:
            m = r["map"]
            e = m["mean_abs_error"]
            cells += [f"{e[0]:.0f}", f"{e[1]:.3f}", f"{e[2]:.3f}",
                      f"{m['seconds_per_star']:.2g} ({m['converged']}/{m['n']})"]
        else:
            cells += [""] * 4
        lines.append("| " + " | ".join(cells) + " |")
    if "cannon_4000_7000" in rows:
        r = rows["cannon_4000_7000"]
        lines.append(f"\nThe Cannon trained and tested on 4000–7000 K only ({r['n_test']} "
                     f"held-out nodes): MAE {r['mae']:.2e}, max {r['max']:.2e}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
