r"""The main job, end to end on the embedded synthetic grid (``jaxspec demo``).

1. synthesise the grid (:func:`jaxspec.synthetic.synthetic_grid`);
2. clone every spectrum into pseudo-Voigt lines (:func:`jaxspec.clone.clone_grid`);
3. identify lines across the grid and build the line emulator (blase3D sect. 3);
4. draw test stars *between* grid nodes (never seen by the build), synthesise their
   spectra with the same physics (:func:`jaxspec.synthetic.synthetic_spectra`) and add
   Gaussian noise at S/N 100;
5. infer Teff, log g, [Fe/H] with Bayesian optimisation (the paper's method), gradient
   MAP with Laplace errors, and NUTS posteriors;
6. print and write (ECSV) a table of errors per method and Teff regime (< 7000 K and
   ≥ 7000 K, as the paper), with seconds per star, plus plots (PNG).

Every step is timed; the whole job at ``size="default"`` is meant to finish within
10 minutes on 2 CPU cores (measured: 9 min 15 s, README). Intermediate files (grid,
clone store, emulator) are kept in the output folder. An existing non-empty output folder
is refused unless ``overwrite=True`` (CLI ``--overwrite``); then every output is replaced
(atomically, each file intact until its replacement is complete), and the clone store is
resumed when its recorded grid checksum matches the grid being cloned, otherwise started
over.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DemoConfig", "run_demo", "test_stars"]


@dataclass(frozen=True)
class DemoConfig:
    """What the demo does at one size (test stars, inference budgets)."""

    n_stars: int  # test stars between grid nodes
    n_nuts: int  # of those, how many also get NUTS posteriors
    num_warmup: int
    num_samples: int
    num_chains: int
    n_random: int  # BO random evaluations (paper: 100)
    n_guided: int  # BO guided evaluations (paper: 20)
    snr: float = 100.0
    # Wavelength window (Å) the grid is cut to before cloning, or None for all of it.
    wavelength: tuple[float, float] | None = None
    # Line identification across the grid (jaxspec.identify): None reads the identities
    # of the continuation clones (clone_grid's default: identification by construction);
    # "track"/"id" match independent clones.
    matcher: str | None = None
    # Clone passes: 1 is the blase3D paper's (detect, optimise); 2 re-detects lines in the
    # residual and optimises again (the library's default), at twice the cost.
    clone_passes: int = 1
    # Relaxation passes after the continuation sweep (CloneSettings.relax_passes). The
    # demo keeps none so that it stays within 10 minutes on 2 cores (one pass over the
    # whole default grid costs ~9 min; README, *Relaxation*).
    clone_relax_passes: int = 0
    # Batches a round of the continuation sweep (CloneSettings.parallel_batches), all
    # fitted in this process. 1, not the library's 2 with two processes: on the default
    # demo's 4,105-px window two processes made the cloning slower (419 s against
    # 339-391 s; process start-up and each process's compiles outweigh short fits), and
    # the whole demo took 10 min 43 s.
    clone_parallel_batches: int = 1
    # fit_map starts from the better of the BO result and the best of n_search coarse
    # points, then Newton steps only (no Adam steps: from the BO start they changed no
    # error of the default demo beyond the 3rd digit and cost 0.9 s per star). Against
    # 64 points and two starts (the BO result and the search's best) on the default
    # demo: the same errors to the third digit, 0.39 instead of 0.96 s per star after
    # compilation, compilation 22 instead of 28 s.
    map_search: int = 16
    map_starts: int = 1
    map_steps: int = 0
    # Newton steps and Laplace errors from the Gauss–Newton Hessian (J^T W J): several
    # times cheaper than exact second derivatives through a line emulator.
    map_hessian: str = "gauss-newton"
    # NUTS trajectories of at most 2^depth - 1 leapfrog steps: bounds the cost of
    # posteriors that the clone-built emulator makes sharp and kinked (flagged, not hidden).
    nuts_tree_depth: int = 4
    # NUTS prior: Teff within the MAP ± this window (K; the blase3D paper's ±500 K
    # search window), log g and [Fe/H] over the whole grid. At S/N 100 the posteriors
    # are tens of K wide, so the window does not cut them (a sample near its edge is
    # flagged); it lets sample_nuts differentiate only the lines that matter there
    # (LineEmulator.local: ~2.4x cheaper gradients on the default demo). None: the
    # whole grid.
    nuts_window: float | None = 500.0


CONFIGS = {
    "tiny": DemoConfig(n_stars=2, n_nuts=1, num_warmup=100, num_samples=100, num_chains=2,
                       n_random=30, n_guided=5),
    # The default grid's Ca II 8498/8542 Å and Paschen 16/15 window (4,105 px): cloning
    # all 1,098 spectra over the whole 25,410 px takes ~20 min on 2 cores, over this window
    # with one pass ~5-6 min. Measured on 2 idle cores: 9 min 09 s in all (README).
    # NUTS 300 + 400 draws per chain: with 200 + 200 split R-hat scattered up to 1.02
    # over seeds (one of the two stars above 1.01 at the demo's seed); 300 + 400 gave
    # at most 1.009 over 3 seeds, 300 + 600 at most 1.004 at ~10 s more per star.
    "default": DemoConfig(n_stars=20, n_nuts=2, num_warmup=300, num_samples=400,
                          num_chains=2, n_random=100, n_guided=20,
                          wavelength=(8490.0, 8560.0)),
}


def test_stars(grid, n: int, seed: int = 0) -> np.ndarray:
    """``n`` parameter vectors strictly between grid nodes, spread over Teff.

    Teff is stratified over the grid's range (half below and half above 7000 K when the
    grid spans both regimes); every coordinate is placed mid-way between two neighbouring
    node values, jittered by ±20 % of the cell, so no test star sits on a node.

    Args:
        grid: the :class:`~jaxspec.grid.SpectralGrid` the emulator is built from.
        n: number of stars.
        seed: random seed.

    Returns:
        (n, n_params) parameters in ``grid.param_names`` order.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, len(grid.param_names)))
    for j, name in enumerate(grid.param_names):
        axis = grid.axes[name]
        n_cells = axis.size - 1
        if name == "teff":
            # Stratify cells over the range so both regimes are represented.
            cells = np.round(np.linspace(0, n_cells - 1, n)).astype(int)
        else:
            cells = rng.integers(0, n_cells, n)
        frac = 0.5 + rng.uniform(-0.2, 0.2, n)
        out[:, j] = axis[cells] + frac * (axis[cells + 1] - axis[cells])
    return out


def _log(msg: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", flush=True)


def _prepare_clone_store(path: Path, grid) -> None:
    """Keep ``path`` when it holds clones of ``grid`` (checksum match: it is resumed),
    otherwise delete it, under its writer lock so a running clone is never removed."""
    import warnings

    from jaxspec.io.clone_store import CloneStore
    from jaxspec.io.grid_hdf5 import grid_checksum
    from jaxspec.io.locking import WriterLock

    if not path.exists():
        return
    with WriterLock(path, what="clone store"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                same = CloneStore(path).grid_checksum == grid_checksum(grid)
        except ValueError:
            same = False
        if same:
            print(f"resuming {path} (made from this grid)")
            return
        print(f"replacing {path} (made from another grid, or unreadable)")
        path.unlink()


def run_demo(size: str = "default", out: str | Path = "demo-out", *, seed: int = 0,
             progress: bool = True, overwrite: bool = False):
    """Run the whole pipeline on the embedded grid and write results to ``out``.

    Args:
        size: ``"tiny"`` (seconds; used by the tests) or ``"default"`` (the demo).
        out: output folder (created): ``grid.h5``, ``clones.h5``, ``emulator.h5``,
            ``results.ecsv`` (one row per star and method), ``summary.ecsv`` (errors per
            method and regime), ``fit.png``, ``errors.png``, ``corner.png``.
        seed: seed of the test stars and their noise.
        progress: progress bars on long steps.
        overwrite: run in a non-empty ``out``, replacing its outputs (the clone store is
            resumed when made from the same grid). Without it a non-empty ``out`` is
            refused before any work.

    Returns:
        ``(results, summary)`` astropy Tables.

    Raises:
        FileExistsError: ``out`` is a file, or a non-empty folder and ``overwrite`` is
            False.
    """
    import jax
    from astropy.table import Table, vstack

    from jaxspec.clone import clone_grid
    from jaxspec.identify import identify_store
    from jaxspec.infer import bayes_opt, fit_map, results_table, sample_nuts
    from jaxspec.io.atomic import write_table
    from jaxspec.io.clone_store import CloneStore
    from jaxspec.line_emulator import LineEmulator
    from jaxspec.synthetic import synthetic_grid, synthetic_spectra

    if size not in CONFIGS:
        raise ValueError(f"size: expected one of {sorted(CONFIGS)}, got {size!r}")
    cfg = CONFIGS[size]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; the demo writes a folder: choose "
                              "another --out")
    if out.is_dir() and not overwrite and any(out.iterdir()):
        found = sorted(p.name for p in out.iterdir())
        raise FileExistsError(
            f"{out} is not empty ({', '.join(found[:4])}{', ...' if len(found) > 4 else ''}"
            "): it holds an earlier run; pass --overwrite (overwrite=True) to replace it "
            "(the clone store is resumed when made from the same grid), or choose another "
            "--out"
        )
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings = {}

    def step(name, t_start):
        timings[name] = time.perf_counter() - t_start

    t = time.perf_counter()
    grid = synthetic_grid(size, progress=progress)
    if cfg.wavelength is not None:
        grid = grid.subset(wavelength=cfg.wavelength)
    _prepare_clone_store(out / "clones.h5", grid)
    grid.to_hdf5(out / "grid.h5", overwrite=True)
    step("synthesise grid", t)
    _log(f"grid: {grid.n_nodes} spectra x {grid.n_pix} px "
         f"({grid.wavelength[0]:.1f}-{grid.wavelength[-1]:.1f} Å)", t0)

    t = time.perf_counter()
    store = clone_grid(grid, out=out / "clones.h5", progress=progress,
                       grid_file=out / "grid.h5", passes=cfg.clone_passes,
                       relax_passes=cfg.clone_relax_passes,
                       parallel_batches=cfg.clone_parallel_batches)
    if not isinstance(store, CloneStore):
        store = CloneStore.open(store)
    step("clone grid", t)
    rms = np.array([node.residual_rms for node in store.iter_nodes()])
    _log(f"cloned {rms.size} spectra: median residual RMS {np.median(rms):.2e}", t0)

    t = time.perf_counter()
    ident = identify_store([store], matcher=cfg.matcher)
    emulator = LineEmulator.from_identification(ident)
    emulator.save(out / "emulator.h5", overwrite=True)
    step("build emulator", t)
    _log(f"emulator: {emulator.n_lines} lines; " + ident.summary().splitlines()[0], t0)

    truth = test_stars(grid, cfg.n_stars, seed=seed)
    rng = np.random.default_rng(seed + 1)
    clean = synthetic_spectra(truth, grid.wavelength, size=size)
    sigma = np.full_like(clean, 1.0 / cfg.snr)
    noisy = clean + rng.normal(0.0, 1.0, clean.shape) * sigma
    labels = [f"star{i:02d}" for i in range(cfg.n_stars)]
    _log(f"{cfg.n_stars} test stars between nodes, S/N {cfg.snr:g}", t0)

    tables = []
    t = time.perf_counter()
    bo = bayes_opt(emulator, noisy, sigma, n_random=cfg.n_random, n_guided=cfg.n_guided,
                   progress=progress)
    step("bayes_opt", t)
    tables.append(results_table(bo, emulator.param_names, files=labels, method="bo",
                                seconds=timings["bayes_opt"] / cfg.n_stars))
    _log(f"BO done ({timings['bayes_opt'] / cfg.n_stars:.2f} s per star)", t0)

    t = time.perf_counter()
    mp = fit_map(emulator, noisy, sigma, init=bo.params, n_search=cfg.map_search,
                 n_starts=cfg.map_starts, steps=cfg.map_steps, hessian=cfg.map_hessian,
                 progress=progress)
    step("fit_map", t)
    tables.append(results_table(mp, emulator.param_names, files=labels, method="map",
                                seconds=timings["fit_map"] / cfg.n_stars))
    _log(f"MAP done ({timings['fit_map'] / cfg.n_stars:.2f} s per star)", t0)

    nuts_rows, posterior = [], None
    # NUTS for n_nuts stars spread evenly over the Teff-sorted test stars, ends excluded
    nuts_idx = np.round(np.linspace(0, cfg.n_stars - 1, cfg.n_nuts + 2)[1:-1]).astype(int)
    t = time.perf_counter()
    if cfg.n_nuts:
        # chains start around the MAP of each star (one compiled sampler for all)
        nuts_rows = sample_nuts(emulator, noisy[nuts_idx], sigma[nuts_idx],
                                init=np.asarray(mp.params)[nuts_idx],
                                guess=(None if cfg.nuts_window is None
                                       else np.asarray(mp.params)[nuts_idx, 0]),
                                window=cfg.nuts_window,
                                num_warmup=cfg.num_warmup, num_samples=cfg.num_samples,
                                num_chains=cfg.num_chains, max_tree_depth=cfg.nuts_tree_depth,
                                key=jax.random.PRNGKey(seed), progress=progress)
        posterior = (labels[nuts_idx[0]], nuts_rows[0])
    step("sample_nuts", t)
    if nuts_rows:
        tables.append(results_table(nuts_rows, emulator.param_names,
                                    files=[labels[i] for i in nuts_idx], method="nuts",
                                    seconds=timings["sample_nuts"] / cfg.n_nuts))
        _log(f"NUTS done ({timings['sample_nuts'] / cfg.n_nuts:.1f} s per star)", t0)

    results = vstack(tables, metadata_conflicts="silent")
    truth_of = dict(zip(labels, truth))
    for j, name in enumerate(emulator.param_names):
        results[f"{name}_true"] = [truth_of[f][j] for f in results["file"]]
        results[f"{name}_error"] = results[name] - results[f"{name}_true"]
    write_table(results, out / "results.ecsv", overwrite=True)

    summary = _summary(results, emulator.param_names)
    write_table(summary, out / "summary.ecsv", overwrite=True)
    timing_table = Table({"step": list(timings), "seconds": [round(v, 2) for v in timings.values()]})
    write_table(timing_table, out / "timings.ecsv", overwrite=True)

    _plots(out, emulator, grid, noisy, sigma, labels, results, posterior)
    print()
    print("Mean |error| (median, std) per method and regime; seconds per star:")
    summary.pprint(max_lines=-1, max_width=-1)
    print()
    timing_table.pprint(max_lines=-1)
    _log(f"total; wrote {out}/results.ecsv, summary.ecsv, timings.ecsv and plots", t0)
    return results, summary


def _summary(results, param_names):
    """Mean/median/std of |error| per method and Teff regime, and seconds per star."""
    from astropy.table import Table

    rows = []
    teff_true = np.asarray(results["teff_true"]) if "teff_true" in results.colnames else None
    for method in dict.fromkeys(results["method"]):
        sel_m = np.asarray(results["method"]) == method
        regimes = [("all", np.ones_like(sel_m))]
        if teff_true is not None:
            regimes = [("Teff < 7000 K", teff_true < 7000), ("Teff >= 7000 K", teff_true >= 7000)]
        for regime, sel_r in regimes:
            sel = sel_m & sel_r
            if not sel.any():
                continue
            row = {"method": method, "regime": regime, "n": int(sel.sum())}
            for name in param_names:
                err = np.abs(np.asarray(results[f"{name}_error"])[sel])
                row[f"{name}_mean"] = float(np.mean(err))
                row[f"{name}_median"] = float(np.median(err))
                row[f"{name}_std"] = float(np.std(err))
            row["seconds"] = float(np.mean(np.asarray(results["seconds"])[sel]))
            row["converged"] = int(np.sum(np.asarray(results["converged"])[sel]))
            rows.append(row)
    table = Table(rows=rows)
    for col in table.colnames:
        if table[col].dtype.kind == "f":
            table[col].format = ".3g"
    return table


def _plots(out, emulator, grid, flux, sigma, labels, results, posterior) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxspec.io.atomic import save_figure

    names = emulator.param_names
    # Fit of the first star by MAP: data, model, residual.
    row = [r for r in results if r["method"] == "map" and r["file"] == labels[0]][0]
    params = np.array([row[n] for n in names])
    model = np.asarray(emulator(params))
    wl = grid.wavelength
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(11, 5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax0.plot(wl, flux[0], lw=0.5, color="k", label="test star (S/N 100)")
    ax0.plot(wl, model, lw=0.7, color="C1", label="emulator at MAP")
    ax0.legend(loc="lower left")
    ax0.set_ylabel("normalised flux")
    truth = ", ".join(f"{n}={row[n + '_true']:.4g}" for n in names)
    fit = ", ".join(f"{n}={row[n]:.4g}±{row[n + '_err']:.2g}" for n in names)
    ax0.set_title(f"{labels[0]}: true {truth}\nMAP {fit}", fontsize=9)
    ax1.plot(wl, flux[0] - model, lw=0.5, color="k")
    ax1.set_ylabel("residual")
    ax1.set_xlabel("wavelength [Å]")
    save_figure(fig, out / "fit.png", overwrite=True, dpi=120, bbox_inches="tight")
    plt.close(fig)

    # Errors against true Teff per method.
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2))
    for ax, name in zip(np.atleast_1d(axes), names):
        for k, method in enumerate(dict.fromkeys(results["method"])):
            sel = np.asarray(results["method"]) == method
            ax.scatter(np.asarray(results["teff_true"])[sel],
                       np.asarray(results[f"{name}_error"])[sel], s=14, label=method,
                       color=f"C{k}")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlabel("true Teff [K]")
        ax.set_title(f"{name} error")
    np.atleast_1d(axes)[0].legend()
    fig.tight_layout()
    save_figure(fig, out / "errors.png", overwrite=True, dpi=120)
    plt.close(fig)

    if posterior is not None:
        star, posterior = posterior
        samples = np.stack([np.ravel(posterior.samples[n]) for n in names], axis=1)
        fig, axes = plt.subplots(len(names), len(names), figsize=(7, 7))
        for i in range(len(names)):
            for j in range(len(names)):
                ax = axes[i, j]
                if j > i:
                    ax.axis("off")
                elif i == j:
                    ax.hist(samples[:, i], bins=30, color="k", histtype="step")
                else:
                    ax.plot(samples[:, j], samples[:, i], ",", color="k", alpha=0.4)
                if i == len(names) - 1:
                    ax.set_xlabel(names[j])
                if j == 0 and i > 0:
                    ax.set_ylabel(names[i])
        fig.suptitle(f"{star}: NUTS posterior ({posterior.message})", fontsize=8)
        save_figure(fig, out / "corner.png", overwrite=True, dpi=110, bbox_inches="tight")
        plt.close(fig)
