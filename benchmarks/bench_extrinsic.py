"""Extrinsic parameters: joint recovery on embedded-grid spectra, and the WASP-69 fit.

Part 1 (default). Inject radial velocity (uniform in ±100 km/s), v sin i (0–50 km/s),
resolving power R (20,000–120,000) and a degree-2 Chebyshev continuum into spectra of
the embedded synthetic grid, observe them on HPF-like non-uniform pixels (λ/Δλ ≈ 250,000
to 270,000) at S/N 100, and recover everything jointly with the stellar parameters:
χ² scan over RV (:func:`jaxspec.infer.initial_guess`), rv box narrowed to the best ±
20 km/s, then :func:`jaxspec.infer.fit_map` from that start. Printed per parameter: mean
|error|, median error, standard deviation of the error, median Laplace σ, the fraction of
errors within 1σ and 2σ, and seconds per star (after compilation, which is printed
separately).

``--truth emulator`` (default) makes each star with the emulator itself (a
:class:`~jaxspec.pixel_emulator.PixelEmulator` of the grid) at random interior stellar
parameters, which isolates the extrinsic machinery; ``--truth held-out`` uses interior
grid node spectra, each fitted by an emulator without that node (filled along Teff),
which adds emulator error (large on the tiny grid's 1000 K steps: use ``--grid``).

Part 2 (``--wasp69``). The real HPF spectrum of WASP-69 (``../shared/data``) fitted as in
the original blase paper with a template: the PHOENIX T4700 g4.5 clone synthesised on a
0.3 km/s grid, observed through RV, v sin i, R and a degree-3 continuum. Prints χ²/ν and
every parameter with its Laplace σ, formal (from the pipeline uncertainties) and scaled by
sqrt(χ²/ν) (the noise scale profiled, which absorbs template mismatch), and writes a plot
of data, model and residual.

    python benchmarks/bench_extrinsic.py                    # tiny grid, 20 stars
    python benchmarks/bench_extrinsic.py --n-stars 50 --truth held-out
    python benchmarks/bench_extrinsic.py --grid default.h5  # a saved larger grid
    python benchmarks/bench_extrinsic.py --wasp69 --out-dir bench-out
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import jaxspec
from jaxspec.extrinsic import C_KMS, required_model_range
from jaxspec.grid import SpectralGrid
from jaxspec.infer import Spectrum, fit_map, initial_guess
from jaxspec.observed_emulator import ObservedEmulator
from jaxspec.pixel_emulator import PixelEmulator
from jaxspec.template import Template
from _environment import environment  # benchmarks/_environment.py, beside this script

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RANGES = {"rv_range": (-100.0, 100.0), "vsini_range": (0.0, 50.0),
          "resolution_range": (20_000.0, 120_000.0)}
CONTINUUM = 2


def observed_pixels(model_wl: np.ndarray) -> np.ndarray:
    """HPF-like pixels inside the model range less the margin the priors need: the step
    grows from λ/270,000 to λ/250,000 (a quadratic dispersion, non-uniform)."""
    lo, hi = float(model_wl[0]), float(model_wl[-1])
    step = float(np.median(np.diff(np.log(model_wl)))) * C_KMS
    margin = 1e-4
    while True:  # the smallest margin (in steps of 2 %) at which the widest priors fit
        a, b = lo * (1 + margin), hi * (1 - margin)
        need = required_model_range(np.linspace(a, b, 2000), rv_range=RANGES["rv_range"],
                                    vsini_max=RANGES["vsini_range"][1],
                                    resolution_min=RANGES["resolution_range"][0],
                                    velocity_step=step)
        if need[0] > lo + 0.05 and need[1] < hi - 0.05:  # room for the pixel edges
            break
        margin *= 1.02
    step0, step1 = a / 270_000.0, b / 250_000.0
    n = int((b - a) / (0.5 * (step0 + step1)))
    j = np.arange(n)
    wl = a + step0 * j + 0.5 * (step1 - step0) / n * j**2
    return wl[wl <= b]


def load_grid(args) -> SpectralGrid:
    if args.grid:
        return SpectralGrid.from_hdf5(args.grid)
    return jaxspec.synthetic_grid(args.size, progress=True)


def draw_truth(rng, oe: ObservedEmulator, stellar: np.ndarray) -> np.ndarray:
    ext = {"rv": rng.uniform(-100.0, 100.0), "vsini": rng.uniform(0.0, 50.0),
           "resolution": rng.uniform(20_000.0, 120_000.0), "c0": rng.uniform(0.97, 1.03),
           "c1": rng.uniform(-0.02, 0.02), "c2": rng.uniform(-0.01, 0.01)}
    return np.concatenate([stellar, [ext[n] for n in oe.extrinsic_names]])


def run_injection(args) -> dict:
    grid = load_grid(args)
    names = grid.param_names
    rng = np.random.default_rng(args.seed)
    if args.truth == "held-out":
        axes = [grid.axes[n] for n in names]
        interior = [(t, *rest) for t in axes[0][1:-1] for rest in
                    np.stack(np.meshgrid(*axes[1:], indexing="ij"), -1).reshape(-1, len(axes) - 1)]
        nodes = np.array(interior, dtype=np.float64)
        rng.shuffle(nodes)
        emulator = PixelEmulator.from_grid(grid, holdout=nodes[:1])
    else:
        emulator = PixelEmulator.from_grid(grid)
    obs = observed_pixels(emulator.wavelength)
    oe = ObservedEmulator.build(emulator, obs, fit="rv,vsini,resolution",
                                continuum=CONTINUUM, **RANGES)
    print(f"grid {grid}\nobserved: {obs.size} px, {obs[0]:.2f}–{obs[-1]:.2f} Å "
          f"(λ/Δλ {obs[1] / (obs[1] - obs[0]):.0f}–{obs[-1] / (obs[-1] - obs[-2]):.0f}); "
          f"internal grid {oe.model.n_internal} points at {oe.model.velocity_step:.3f} km/s; "
          f"parameters {oe.param_names}; S/N {args.snr:g}; truth from {args.truth}")
    if args.truth == "held-out":
        truth_template = Template.from_arrays(grid.wavelength, grid.flux[grid.index(
            **dict(zip(names, nodes[0])))])
        truth_oe = ObservedEmulator.build(truth_template, obs, fit="rv,vsini,resolution",
                                          continuum=CONTINUUM, **RANGES)
    b = emulator.bounds
    rows, seconds = [], []
    for i in range(args.n_stars):
        if args.truth == "held-out":
            node = nodes[i % len(nodes)]
            # the emulator without this star's node (filled along Teff): same structure,
            # so the compiled fit is reused
            oe = _with_base(oe, PixelEmulator.from_grid(grid, holdout=node[None]))
            flux_node = grid.flux[grid.index(**dict(zip(names, node)))]
            truth_oe = _with_flux(truth_oe, flux_node)
            theta = draw_truth(rng, oe, node)
            clean = np.asarray(truth_oe(jnp.asarray(theta[len(names):])))
        else:
            stellar = b[:, 0] + (b[:, 1] - b[:, 0]) * rng.uniform(0.05, 0.95, len(names))
            theta = draw_truth(rng, oe, stellar)
            clean = np.asarray(oe(jnp.asarray(theta)))
        sigma = np.full(obs.size, theta[oe.param_names.index("c0")] / args.snr)
        flux = clean + sigma * rng.normal(size=obs.size)
        t0 = time.perf_counter()
        guess = initial_guess(oe, flux, sigma)
        narrow = oe.with_bounds(rv=(max(-100.0, guess.best_rv - 20.0),
                                    min(100.0, guess.best_rv + 20.0)))
        res = fit_map(narrow, Spectrum(obs, flux, sigma), init=guess.params)
        params = np.asarray(res.params)
        seconds.append(time.perf_counter() - t0)
        rows.append({"truth": theta, "fit": params, "sigma": np.asarray(res.sigma),
                     "status": int(res.status), "converged": bool(res.converged)})
        if args.verbose:
            print(f"star {i:3d} {seconds[-1]:6.2f} s status {int(res.status):3d} " + "  ".join(
                f"{n}={v:.4g}({v - t:+.3g})" for n, v, t in zip(oe.param_names, params, theta)))
    return summarise(oe.param_names, rows, seconds)


def _with_base(oe: ObservedEmulator, base) -> ObservedEmulator:
    import equinox as eqx

    return eqx.tree_at(lambda e: e.base, oe, base)


def _with_flux(oe: ObservedEmulator, flux) -> ObservedEmulator:
    import equinox as eqx

    return eqx.tree_at(lambda e: e.base.flux, oe, jnp.asarray(flux, dtype=jnp.float64))


def summarise(names, rows, seconds) -> dict:
    truth = np.array([r["truth"] for r in rows])
    fit = np.array([r["fit"] for r in rows])
    sig = np.array([r["sigma"] for r in rows])
    err = fit - truth
    pull = err / sig
    print(f"\n{len(rows)} stars; converged {sum(r['converged'] for r in rows)}; "
          f"compilation + first star {seconds[0]:.1f} s; after that "
          f"{np.mean(seconds[1:]) if len(seconds) > 1 else float('nan'):.2f} s per star")
    print(f"{'parameter':>11} {'mean|err|':>11} {'median err':>11} {'std err':>11} "
          f"{'median σ':>11} {'|pull|<1':>9} {'|pull|<2':>9}")
    out = {"n_stars": len(rows), "seconds_first": seconds[0],
           "seconds_per_star": float(np.mean(seconds[1:])) if len(seconds) > 1 else None,
           "converged": int(sum(r["converged"] for r in rows)), "parameters": {}}
    for j, n in enumerate(names):
        e, s, p = err[:, j], sig[:, j], pull[:, j]
        ok = np.isfinite(p)
        stats = {"mean_abs_err": float(np.mean(np.abs(e))), "median_err": float(np.median(e)),
                 "std_err": float(np.std(e)), "median_sigma": float(np.nanmedian(s)),
                 "within_1sigma": float(np.mean(np.abs(p[ok]) < 1)) if ok.any() else None,
                 "within_2sigma": float(np.mean(np.abs(p[ok]) < 2)) if ok.any() else None}
        out["parameters"][n] = stats
        print(f"{n:>11} {stats['mean_abs_err']:11.4g} {stats['median_err']:11.4g} "
              f"{stats['std_err']:11.4g} {stats['median_sigma']:11.4g} "
              f"{stats['within_1sigma'] or float('nan'):9.2f} "
              f"{stats['within_2sigma'] or float('nan'):9.2f}")
    j = list(names).index("vsini")
    for lo, hi in ((0, 5), (5, 15), (15, 50.01)):
        sel = (truth[:, j] >= lo) & (truth[:, j] < hi)
        if sel.any():
            print(f"  vsini in [{lo}, {hi:.0f}) km/s: {sel.sum()} stars, mean |err| "
                  f"{np.mean(np.abs(err[sel, j])):.3g} km/s")
    j, k = list(names).index("resolution"), list(names).index("vsini")
    for lo, hi in ((0, 10), (10, 50.01)):
        sel = (truth[:, k] >= lo) & (truth[:, k] < hi)
        if sel.any():
            print(f"  resolution, vsini in [{lo}, {hi:.0f}) km/s: {sel.sum()} stars, median "
                  f"|err| / R = {np.median(np.abs(err[sel, j]) / truth[sel, j]):.3g}")
    return out


# ----------------------------------------------------------------------------- WASP-69


def run_wasp69(args) -> dict:
    from jaxspec.io.spectrum import read_spectrum
    from jaxspec.lines import LineList

    spec_path = DATA / "WASP_69_hpf_stack.fits"
    clone_path = DATA / "phoenix_clone_T4700_g4.5_HPF.npz"
    if not spec_path.exists() or not clone_path.exists():
        raise SystemExit(f"--wasp69 needs {spec_path} and {clone_path}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 26 NaN pixels are masked
        spec = read_spectrum(spec_path)
    r_range = tuple(args.wasp69_resolution_range)
    vs_range = (0.0, 30.0)
    rv_range = (-150.0, 150.0)
    need = required_model_range(spec.wavelength, rv_range=rv_range, vsini_max=vs_range[1],
                                resolution_min=r_range[0], velocity_step=0.3)
    t0 = time.perf_counter()
    template = Template.from_line_list(LineList.from_npz(clone_path),
                                       (need[0] - 1.0, need[1] + 1.0), 0.3,
                                       label=clone_path.name)
    t_template = time.perf_counter() - t0
    results = {}
    configs = [("R free", {"fit": "rv,vsini,resolution", "resolution_range": r_range})]
    if args.wasp69_fixed_r:
        configs.append((f"R fixed {args.wasp69_fixed_r:g}",
                        {"fit": "rv,vsini", "resolution": args.wasp69_fixed_r}))
    for label, kw in configs:
        oe = ObservedEmulator.build(template, spec.wavelength, continuum=3, rv_range=rv_range,
                                    vsini_range=vs_range, **kw)
        t0 = time.perf_counter()
        guess = initial_guess(oe, spec.flux, spec.uncertainty, spec.mask)
        narrow = oe.with_bounds(rv=(guess.best_rv - 20.0, guess.best_rv + 20.0))
        res = fit_map(narrow, spec, init=guess.params, fit_noise=True)
        params = np.asarray(res.params)
        secs = time.perf_counter() - t0
        model = np.asarray(narrow(jnp.asarray(params)))
        use = spec.mask
        chi2 = float(np.sum(((model - spec.flux) / spec.uncertainty)[use] ** 2))
        nu = int(use.sum()) - narrow.n_params
        scale = float(res.noise_scale)
        sig_scaled, on_face = conditional_laplace(narrow, spec, params)
        sig_formal = sig_scaled / scale
        print(f"\nWASP-69 ({label}): {int(use.sum())} px, template {template.n_pix} px "
              f"({t_template:.1f} s), fit {secs:.1f} s (with compilation), status "
              f"{int(res.status)} ({'converged' if bool(res.converged) else 'NOT converged'})")
        print(f"  RV scan best {guess.best_rv:.3f} km/s; chi2/nu = {chi2:.1f}/{nu} = "
              f"{chi2 / nu:.1f}; noise scale sqrt(chi2/N) = {scale:.2f}")
        row = {"chi2": chi2, "nu": nu, "chi2_nu": chi2 / nu, "status": int(res.status),
               "rv_scan": guess.best_rv, "params": {}}
        for n, v, sf, ss, face in zip(narrow.param_names, params, sig_formal, sig_scaled,
                                      on_face):
            note = "  on a face of its box (held fixed for the others' errors)" if face else ""
            print(f"  {n:>10} = {v:12.6g}  ± {sf:.3g} (formal)  ± {ss:.3g} (scaled){note}")
            row["params"][n] = {"value": float(v), "sigma_formal": float(sf),
                                "sigma_scaled": float(ss), "on_face": bool(face)}
        if args.wasp69_nuts:
            from jaxspec.infer import sample_nuts

            t0 = time.perf_counter()
            post = sample_nuts(narrow, spec, init=params, fit_noise=True,
                               num_warmup=args.wasp69_nuts, num_samples=args.wasp69_nuts,
                               num_chains=2, inference_data=False, key=args.seed)
            print(f"  NUTS ({2 * args.wasp69_nuts} draws, noise scale sampled, "
                  f"{time.perf_counter() - t0:.0f} s): {post.message}")
            row["nuts"] = {}
            for n in narrow.param_names:
                x = post.samples[n].reshape(-1)
                q = np.percentile(x, [2.5, 16, 50, 84, 97.5])
                print(f"  {n:>10}: mean {x.mean():.6g} ± {x.std():.3g}; 68% [{q[1]:.6g}, "
                      f"{q[3]:.6g}]; 95% [{q[0]:.6g}, {q[4]:.6g}]")
                row["nuts"][n] = {"mean": float(x.mean()), "std": float(x.std()),
                                  "q2.5": float(q[0]), "q50": float(q[2]),
                                  "q97.5": float(q[4])}
        results[label] = row
        out = Path(args.out_dir) / f"wasp69_{label.split()[1].lower()}_fit.png"
        plot_wasp69(spec, model, label, row, out)
        print(f"  wrote {out}")
    return results


def conditional_laplace(emulator, spec, params):
    """Laplace σ of the parameters inside their box, with those on a face held fixed.

    ``fit_map``'s Laplace step inverts the full Hessian, which is not positive definite
    when the optimum lies beyond a face (here R, pushed to its upper limit by template
    mismatch). Conditional on the face values, the free parameters' covariance is the
    inverse Hessian of the (noise-profiled) negative log posterior over them alone.
    Returns (σ with NaN on faces, on_face mask).
    """
    import jax

    from jaxspec.infer import neg_log_posterior
    from jaxspec.infer import observe as match_pixels

    obs = match_pixels(spec, emulator)
    b = emulator.bounds
    u = (params - b[:, 0]) / (b[:, 1] - b[:, 0])
    on_face = (u < 1e-3) | (u > 1 - 1e-3)
    free = np.flatnonzero(~on_face)
    theta0 = jnp.asarray(params)

    def f(x):
        return neg_log_posterior(emulator, obs, theta0.at[free].set(x), fit_noise=True)

    h = np.asarray(jax.hessian(f)(theta0[free]))
    sigma = np.full(params.size, np.nan)
    sigma[free] = np.sqrt(np.diag(np.linalg.inv(h)))
    return sigma, on_face


def plot_wasp69(spec, model, label, row, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use = spec.mask
    wl = spec.wavelength
    p = row["params"]
    if "nuts" in row:  # posterior mean ± std where NUTS ran (v sin i is not Gaussian near 0)
        p = {n: {"value": q["mean"], "sigma_scaled": q["std"]} for n, q in row["nuts"].items()}
    fig, axes = plt.subplots(3, 1, figsize=(12, 8), gridspec_kw={"height_ratios": [3, 2, 1.3]})
    for ax, (lo, hi) in zip(axes[:2], [(wl[0], wl[-1]), (8700.0, 8725.0)]):
        s = use & (wl >= lo) & (wl <= hi)
        ax.plot(wl[s], spec.flux[s], color="k", lw=0.6, label="HPF data")
        ax.plot(wl[s], model[s], color="C3", lw=0.6, label="T4700 g4.5 clone, observed")
        ax.set_ylabel("flux")
    axes[0].legend(loc="lower right", fontsize=8)
    axes[0].set_title(
        f"WASP-69 ({label}{', NUTS' if 'nuts' in row else ', MAP'}): RV = "
        f"{p['rv']['value']:.3f} ± {p['rv']['sigma_scaled']:.3f} "
        f"km/s, v sin i = {p['vsini']['value']:.2f} ± {p['vsini']['sigma_scaled']:.2f} km/s"
        + (f", R = {p['resolution']['value']:.4g}" if "resolution" in p else "")
        + f", χ²/ν = {row['chi2_nu']:.0f}", fontsize=10)
    axes[2].plot(wl[use], (spec.flux - model)[use], color="k", lw=0.5)
    axes[2].axhline(0, color="C3", lw=0.6)
    axes[2].set_ylabel("data − model")
    axes[2].set_xlabel("wavelength [Å]")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-stars", type=int, default=20)
    p.add_argument("--size", default="tiny", help="embedded grid size (default tiny)")
    p.add_argument("--grid", help="a saved grid (.h5) instead of synthesising one")
    p.add_argument("--truth", choices=("emulator", "held-out"), default="emulator")
    p.add_argument("--snr", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="one line per star")
    p.add_argument("--wasp69", action="store_true", help="run the WASP-69 fit instead")
    p.add_argument("--wasp69-resolution-range", type=float, nargs=2,
                   default=(20_000.0, 120_000.0), metavar=("LO", "HI"))
    p.add_argument("--wasp69-fixed-r", type=float, default=55_000.0,
                   help="also fit with R fixed at this value (HPF's nominal 55,000; 0: skip)")
    p.add_argument("--wasp69-nuts", type=int, default=0, metavar="N",
                   help="also sample the posterior with NUTS: N warmup + N draws, 2 chains")
    p.add_argument("--out-dir", default="bench-out")
    p.add_argument("--json", help="write the numbers to this JSON file")
    args = p.parse_args(argv)
    result = run_wasp69(args) if args.wasp69 else run_injection(args)
    if args.json:
        result["environment"] = environment()
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
