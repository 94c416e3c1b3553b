"""Emulator and batched-MAP throughput on one accelerator (GPU), or on the CPU for
comparison.

Loads a saved emulator (``--emulator``, any kind :func:`jaxspec.emulator.load_emulator`
reads; default: ``<out>/emulator_default_identity.h5``, the default grid's line emulator
that ``bench_emulator.py`` saves) and reports, on jax's default device:

* evaluation: ms per spectrum for one call and for vmapped batches (``--batches``);
* value + gradient of a χ² with respect to the parameters, one spectrum, ms;
* batched MAP (:func:`jaxspec.infer.fit_map`, Gauss-Newton Hessian, the fast settings of
  ``bench_synthesis.py``: ``steps=0, n_starts=2, n_search=64``) over ``--stars`` spectra
  drawn from the emulator itself at S/N 100, for each ``--map-batches`` size: stars per
  second, spectra per device-hour (against the ~1.5 million per GPU-hour of a CNN
  regressor, the fastest survey pipelines) and the median |ΔTeff|, |Δlog g|, |Δ[Fe/H]|.

Compile time is excluded (a first call at each shape), and reported.

    python benchmarks/bench_gpu.py [--emulator PATH] [--stars 512] [--json report.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import jaxspec  # noqa: F401  (float64)
from _environment import environment  # benchmarks/_environment.py, beside this script

CNN_SPECTRA_PER_GPU_HOUR = 1.5e6
FAST_MAP = {"steps": 0, "n_starts": 2, "n_search": 64}


def log(msg):
    print(msg, flush=True)


def timed(fn, *args, repeats=5):
    """(first call s, best of ``repeats`` s) of ``fn(*args)``, blocking on the result."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return first, best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/jaxspec_bench"))
    p.add_argument("--emulator", type=Path, default=None)
    p.add_argument("--batches", default="1,64,256,1024")
    p.add_argument("--stars", type=int, default=512)
    p.add_argument("--map-batches", default="8,64,256")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    from jaxspec.emulator import load_emulator
    from jaxspec.infer import fit_map

    path = args.emulator or args.out / "emulator_default_identity.h5"
    emulator = load_emulator(path)
    dev = jax.devices()[0]
    report = {"device": str(dev), "device_kind": dev.device_kind,
              "backend": jax.default_backend(), "jax": jax.__version__,
              "emulator": str(path), "n_pix": int(emulator.n_pix)}
    log(f"device {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
        f"emulator {path.name}: {emulator.n_pix:,} px")
    b = np.asarray(emulator.bounds, dtype=np.float64)
    rng = np.random.default_rng(args.seed)

    def draw(n):
        return b[:, 0] + (b[:, 1] - b[:, 0]) * (0.1 + 0.8 * rng.uniform(size=(n, b.shape[0])))

    evaluate = eqx.filter_jit(lambda em, theta: jax.vmap(em)(theta))
    report["eval"] = {}
    for n in (int(x) for x in args.batches.split(",")):
        theta = jnp.asarray(draw(n))
        first, best = timed(evaluate, emulator, theta)
        report["eval"][n] = {"ms_per_spectrum": 1e3 * best / n, "first_call_s": first}
        log(f"eval batch {n:5d}: {1e3 * best / n:8.4f} ms/spectrum ({1e3 * best:.2f} ms per "
            f"call; first call {first:.1f} s)")

    theta0 = jnp.asarray(draw(1)[0])
    target = emulator(theta0 * 1.001)

    def chi2(theta, em):
        return jnp.sum((em(theta) - target) ** 2)

    first, best = timed(eqx.filter_jit(jax.value_and_grad(chi2)), theta0, emulator)
    ev_first, ev_best = timed(eqx.filter_jit(lambda em, t: em(t)), emulator, theta0)
    report["value_and_grad_ms"] = 1e3 * best
    report["eval_single_ms"] = 1e3 * ev_best
    log(f"value + gradient: {1e3 * best:.3f} ms ({best / ev_best:.2f}x one evaluation, "
        f"{1e3 * ev_best:.3f} ms)")

    truth = draw(args.stars)
    snr = 100.0
    flux = np.concatenate([np.asarray(evaluate(emulator, jnp.asarray(truth[i:i + 256])))
                           for i in range(0, args.stars, 256)])
    flux = flux + rng.normal(0.0, 1.0 / snr, flux.shape)
    sigma = np.full(flux.shape, 1.0 / snr)
    report["map"] = {}
    for batch in (int(x) for x in args.map_batches.split(",")):
        kw = dict(FAST_MAP, hessian="gauss-newton", batch_size=batch)
        t0 = time.perf_counter()
        jax.block_until_ready(fit_map(emulator, flux[:batch], sigma[:batch], **kw).params)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = fit_map(emulator, flux, sigma, **kw)
        jax.block_until_ready(res.params)
        wall = time.perf_counter() - t0
        err = np.median(np.abs(np.asarray(res.params) - truth), axis=0)
        per_hour = args.stars / wall * 3600.0
        report["map"][batch] = {"stars_per_s": args.stars / wall, "wall_s": wall,
                                "first_batch_s": first, "per_device_hour": per_hour,
                                "median_abs_error": err.tolist(),
                                "converged": float(np.mean(np.asarray(res.converged)))}
        log(f"MAP batch {batch:4d}: {args.stars / wall:8.1f} stars/s = {per_hour:,.0f} per "
            f"device-hour ({per_hour / CNN_SPECTRA_PER_GPU_HOUR:.2f}x a CNN regressor's "
            f"1.5 million per GPU-hour); median |error| "
            + ", ".join(f"{e:.3g}" for e in err)
            + f"; converged {np.mean(np.asarray(res.converged)):.0%}; first batch {first:.1f} s")
    report["environment"] = environment()
    out = args.json or args.out / "bench_gpu.json"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1, default=float))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
