"""Synthesis benchmark: the real 9,028-line PHOENIX clone on 481,100 pixels.

Prints ms per spectrum (single, jitted, plan reused), batched throughput for 16 line
lists, the planning and compile times, a blase-style fixed 6000-pixel window for scale,
and the max error of the windowed flux against the untruncated product.

    python benchmarks/bench_synthesis.py [--repeats 20] [--no-exact]

Needs ../shared/data/phoenix_clone_T4700_g4.5_HPF.npz beside the project.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxspec import LineList
from jaxspec.profiles import pseudo_voigt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def timed(fn, *args, repeats):
    out = jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t0) / repeats, out


def fixed_window_flux(lines, wl, window=6000):
    """blase-style: every line evaluated on a fixed window of pixels (for scale)."""
    dl = 0.01
    start = jnp.clip(
        jnp.round((lines.center - wl[0]) / dl).astype(int) - window // 2, 0, wl.size - window
    )
    idx = start[:, None] + jnp.arange(window)
    x = wl[idx] - lines.center[:, None]
    v = pseudo_voigt(x, jnp.exp(lines.ln_sigma)[:, None], jnp.exp(lines.ln_gamma)[:, None])
    terms = jnp.log1p(-jnp.exp(lines.ln_amplitude)[:, None] * v)
    return jnp.exp(jnp.zeros(wl.size).at[idx].add(terms))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-exact", action="store_true", help="skip the ~1 min reference")
    args = parser.parse_args()

    path = DATA / "phoenix_clone_T4700_g4.5_HPF.npz"
    if not path.exists():
        raise SystemExit(f"missing {path}: this benchmark needs the shared real line list")
    lines = LineList.from_npz(path)
    wl = 8038.0 + 0.01 * np.arange(481_100)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"cpus visible: {os.cpu_count()}")
    print(f"case: {lines.n_lines} lines, {wl.size} pixels, {wl[0]:.2f}-{wl[-1]:.2f} Å")

    t0 = time.perf_counter()
    plan = lines.plan(wl)
    t_plan = time.perf_counter() - t0
    n_eval = plan.n_evaluations()
    print(f"plan: {t_plan * 1e3:.1f} ms; {len(plan.levels)} levels, {n_eval / 1e6:.2f} M "
          f"profile evaluations ({n_eval / lines.n_lines:.0f} per line)")

    single = eqx.filter_jit(lambda ll, p: ll.flux(wl, plan=p))
    t0 = time.perf_counter()
    jax.block_until_ready(single(lines, plan))
    print(f"compile + first call: {time.perf_counter() - t0:.2f} s")
    t_single, flux = timed(single, lines, plan, repeats=args.repeats)
    print(f"single spectrum: {t_single * 1e3:.2f} ms (target <= 20 ms on 2 CPU cores)")

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
    print(f"batched (16 line lists): {t_batch * 1e3:.1f} ms per batch, "
          f"{t_batch / 16 * 1e3:.2f} ms per spectrum, {16 / t_batch:.0f} spectra/s")

    wl_j = jnp.asarray(wl)
    fixed = jax.jit(lambda ll: fixed_window_flux(ll, wl_j))
    t_fixed, _ = timed(fixed, lines, repeats=2)
    print(f"for scale, fixed 6000-pixel windows (blase-style, jitted): {t_fixed * 1e3:.0f} ms")

    if not args.no_exact:
        t0 = time.perf_counter()
        exact = np.asarray(jax.jit(lambda ll: ll.flux_exact(wl_j))(lines))
        err = np.abs(np.asarray(flux, dtype=np.float64) - exact)
        print(f"untruncated product: {time.perf_counter() - t0:.1f} s")
        print(f"max |windowed - untruncated| = {err.max():.2e} at {wl[err.argmax()]:.2f} Å "
              f"(mean {err.mean():.1e}; target <= 1e-4)")


if __name__ == "__main__":
    main()
