"""Synthesis benchmark: the one engine (jaxspec.synthesis), its evaluation and derivatives.

Parts (``--parts``, comma-separated; default all):

clone
    The real 9,028-line PHOENIX clone on 481,100 pixels (8038-12849 Å at 0.01 Å):
    planning and compile time, ms per spectrum (single, jitted, plan reused), batched
    throughput for 16 line lists, value + gradient with respect to all 4 x 9,028 line
    parameters, one JVP, XLA ``cost_analysis()`` bytes of each, and the max error of the
    windowed flux against the untruncated product (``--no-exact`` skips it).
emulator
    ``LineEmulator`` of the default embedded grid's exact line lists (the "oracle", 25,405
    px; built as in bench_emulator.py, 108 nodes held out) and a blase3D-scale one (the
    real T4700 clone on the 73 x 9 x 2 PHOENIX lattice, 481,100 px): evaluation,
    ``jax.grad`` with respect to the 3 stellar parameters, ``jax.jacfwd`` (3 directions),
    the ratios to an evaluation and the cost-analysis bytes.
map
    ``fit_map`` (Gauss–Newton Hessian) through the oracle default emulator at held-out
    nodes, S/N 100 (``--map-stars``): seconds per star and the errors, with
    ``FAST_MAP`` settings (no Adam phase, 2 starts from 64 search points) and, with
    ``--map-reference``, fit_map's defaults on the same stars.

    python benchmarks/bench_synthesis.py [--parts clone,emulator,map] [--repeats 10]
        [--out /tmp/jaxspec_bench] [--json report.json] [--map-reference]

Needs ../shared/data/phoenix_clone_T4700_g4.5_HPF.npz beside the project for clone and
the blase3D-scale emulator. Timings on a shared 2-core CPU are noisy (the load average is
printed with every number).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxspec import LineList
from _environment import environment  # benchmarks/_environment.py, beside this script

# fit_map settings of the MAP benchmark: Gauss–Newton steps straight from the two best of
# 64 search points (no Adam phase), which land where the defaults do (--map-reference).
FAST_MAP = {"steps": 0, "n_starts": 2, "n_search": 64}
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def log(*args):
    print(*args, flush=True)


def load():
    return "load %.1f" % os.getloadavg()[0]


def timed(fn, *args, repeats):
    out = jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t0) / repeats, out


def cost_bytes(fn, *args) -> float:
    """XLA's estimate of the bytes a compiled function moves."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["bytes accessed"])


def clone_part(args, report):
    path = DATA / "phoenix_clone_T4700_g4.5_HPF.npz"
    if not path.exists():
        log(f"clone: skipped, {path} is absent")
        return
    lines = LineList.from_npz(path)
    wl = 8038.0 + 0.01 * np.arange(481_100)
    log(f"clone: {lines.n_lines} lines, {wl.size} pixels, {wl[0]:.2f}-{wl[-1]:.2f} Å")
    t0 = time.perf_counter()
    plan = lines.plan(wl)
    t_plan = time.perf_counter() - t0
    n_eval = plan.n_evaluations()
    log(f"  plan {t_plan * 1e3:.0f} ms; {len(plan.levels)} levels, {n_eval / 1e6:.2f} M "
        f"profile evaluations ({n_eval / lines.n_lines:.0f} per line)")

    def flux(ll, p):
        return ll.flux(wl, plan=p)

    single = jax.jit(flux)
    t0 = time.perf_counter()
    jax.block_until_ready(single(lines, plan))
    log(f"  compile + first call {time.perf_counter() - t0:.2f} s")
    t_eval, model = timed(single, lines, plan, repeats=args.repeats)
    target = model * 0.99

    def loss(ll, p):
        return jnp.sum((flux(ll, p) - target) ** 2)

    value_grad = jax.jit(jax.value_and_grad(loss))
    t_grad, _ = timed(value_grad, lines, plan, repeats=args.repeats)
    tangent = jax.tree_util.tree_map(lambda v: jnp.full_like(v, 0.01), lines)

    def jvp(ll, p, t):
        return jax.jvp(lambda x: flux(x, p), (ll,), (t,))

    t_jvp, _ = timed(jax.jit(jvp), lines, plan, tangent, repeats=args.repeats)
    b_eval = cost_bytes(flux, lines, plan)
    b_grad = cost_bytes(jax.value_and_grad(loss), lines, plan)
    log(f"  evaluation {t_eval * 1e3:.1f} ms (target <= 15); value + gradient (all line "
        f"parameters) {t_grad * 1e3:.1f} ms = {t_grad / t_eval:.2f}x (target <= 2x); one JVP "
        f"{t_jvp * 1e3:.1f} ms = {t_jvp / t_eval:.2f}x; bytes gradient/evaluation "
        f"{b_grad / b_eval:.2f}x [{load()}]")
    rng = np.random.default_rng(0)
    batch = LineList(
        lines.center[None] + rng.normal(0, 0.002, (16, 1)),
        lines.ln_amplitude[None] + rng.normal(0, 0.1, (16, lines.n_lines)),
        lines.ln_sigma[None] + rng.normal(0, 0.05, (16, lines.n_lines)),
        lines.ln_gamma[None] + rng.normal(0, 0.05, (16, lines.n_lines)),
    )
    bplan = batch.plan(wl)
    batched = eqx.filter_jit(lambda b, p: eqx.filter_vmap(lambda ll: ll.flux(wl, plan=p))(b))
    t_batch, _ = timed(batched, batch, bplan, repeats=max(2, args.repeats // 4))
    log(f"  batched (16 line lists) {t_batch / 16 * 1e3:.2f} ms per spectrum, "
        f"{16 / t_batch:.0f} spectra/s")
    entry = {"eval_ms": t_eval * 1e3, "value_grad_ms": t_grad * 1e3, "jvp_ms": t_jvp * 1e3,
             "grad_ratio": t_grad / t_eval, "jvp_ratio": t_jvp / t_eval,
             "bytes_ratio": b_grad / b_eval, "batched16_ms": t_batch / 16 * 1e3,
             "n_evaluations": n_eval, "load": os.getloadavg()[0]}
    if not args.no_exact:
        exact = np.asarray(jax.jit(lambda ll: ll.flux_exact(jnp.asarray(wl)))(lines))
        err = np.abs(np.asarray(model, dtype=np.float64) - exact)
        log(f"  max |windowed - untruncated| = {err.max():.2e} at {wl[err.argmax()]:.2f} Å")
        entry["max_error"] = float(err.max())
    report["clone"] = entry


def emulator_speed(emulator, label, args, report):
    theta = jnp.asarray(np.mean(emulator.bounds, axis=1) + np.array([37.0, 0.07, -0.03]))

    def evaluate(e, p):
        return e(p)

    def loss(p, e):
        return jnp.sum(e(p) ** 2)

    def jac(p, e):
        return jax.jacfwd(lambda q: e(q))(p)

    ev = eqx.filter_jit(evaluate)
    grad = eqx.filter_jit(jax.grad(loss))
    jfwd = eqx.filter_jit(jac)
    t_eval, _ = timed(ev, emulator, theta, repeats=args.repeats)
    t_grad, _ = timed(grad, theta, emulator, repeats=args.repeats)
    t_jac, _ = timed(jfwd, theta, emulator, repeats=args.repeats)
    params, static = eqx.partition(emulator, eqx.is_array)

    def bytes_of(fn):
        return cost_bytes(lambda p, a: fn(p, eqx.combine(a, static)), theta, params)

    b_eval = bytes_of(lambda p, e: e(p))
    b_grad = bytes_of(jax.grad(loss))
    log(f"{label}: {emulator.n_lines:,} lines, {emulator.n_pix:,} px: evaluation "
        f"{t_eval * 1e3:.1f} ms; grad wrt params {t_grad * 1e3:.1f} ms = "
        f"{t_grad / t_eval:.2f}x (target <= 2x); jacfwd (3) {t_jac * 1e3:.1f} ms = "
        f"{t_jac / t_eval:.2f}x (target <= 3x); bytes grad/eval {b_grad / b_eval:.2f}x "
        f"(target <= 3x) [{load()}]")
    report[label] = {"eval_ms": t_eval * 1e3, "grad_ms": t_grad * 1e3,
                     "jacfwd_ms": t_jac * 1e3, "grad_ratio": t_grad / t_eval,
                     "jacfwd_ratio": t_jac / t_eval, "bytes_ratio": b_grad / b_eval,
                     "load": os.getloadavg()[0]}


def oracle_emulator(out: Path):
    from bench_emulator import default_grid, held_mask, oracle_identification

    from jaxspec.line_emulator import LineEmulator

    grid = default_grid(out)
    held = held_mask(grid)
    return grid, held, LineEmulator.from_identification(oracle_identification(grid, held),
                                                        grid.wavelength,
                                                        interpolation="linear")


def emulator_part(args, report, cache):
    grid, held, oracle = cache.setdefault("oracle", oracle_emulator(args.out))
    emulator_speed(oracle, "default_oracle", args, report)
    if (DATA / "phoenix_clone_T4700_g4.5_HPF.npz").exists():
        from bench_emulator import blase3d_scale_emulator

        emulator_speed(blase3d_scale_emulator(), "blase3d_scale", args, report)


def map_part(args, report, cache):
    from jaxspec.infer import fit_map

    grid, held, oracle = cache.setdefault("oracle", oracle_emulator(args.out))
    params, flat = grid.node_params()
    inside = held.reshape(-1)[flat]
    rows = np.flatnonzero(inside)
    rng = np.random.default_rng(3)
    rows = rng.choice(rows, size=min(args.map_stars, rows.size), replace=False)
    flux = grid.flux.reshape(-1, grid.n_pix)[flat[rows]]
    sigma = 0.01
    noisy = flux + rng.normal(0, sigma, flux.shape)
    runs = [("fast", dict(FAST_MAP))]
    if args.map_reference:
        runs.append(("reference", {}))
    report["map_oracle"] = {"n": int(len(rows))}
    for label, kw in runs:
        t0 = time.perf_counter()
        fit_map(oracle, noisy[0], np.full(grid.n_pix, sigma), hessian="gauss-newton", **kw)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = fit_map(oracle, noisy, np.full(noisy.shape, sigma), hessian="gauss-newton",
                      **kw)
        dt = (time.perf_counter() - t0) / len(rows)
        err = np.abs(np.asarray(res.params) - params[rows])
        log(f"MAP ({label}: hessian='gauss-newton'{''.join(f', {k}={v}' for k, v in kw.items())})"
            f" through the oracle default emulator, {len(rows)} held-out nodes at S/N 100: "
            f"{dt:.2f} s per star (target <= 1 s; compile + first star {t_first:.0f} s); "
            f"mean |error| Teff {err[:, 0].mean():.1f} K, log g {err[:, 1].mean():.4f}, "
            f"[Fe/H] {err[:, 2].mean():.4f}; converged {np.mean(res.converged):.0%} [{load()}]")
        report["map_oracle"][label] = {"s_per_star": dt, "first_call_s": t_first,
                                       "mean_abs_error": err.mean(0).tolist(),
                                       "settings": kw}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="clone,emulator,map")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-exact", action="store_true", help="skip the ~1 min reference")
    parser.add_argument("--map-stars", type=int, default=12)
    parser.add_argument("--map-reference", action="store_true",
                        help="also fit with fit_map's defaults (Adam, 256 search points, 4 "
                             "starts) on the same stars, for the accuracy comparison")
    parser.add_argument("--out", type=Path, default=Path("/tmp/jaxspec_bench"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"cpus visible: {os.cpu_count()}")
    report, cache = {}, {}
    parts = args.parts.split(",")
    if "clone" in parts:
        clone_part(args, report)
    if "emulator" in parts:
        emulator_part(args, report, cache)
    if "map" in parts:
        map_part(args, report, cache)
    if args.json:
        report["environment"] = environment()
        args.json.write_text(json.dumps(report, indent=2))
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
