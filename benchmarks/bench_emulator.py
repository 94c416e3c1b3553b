"""Line-emulator benchmark: accuracy at held-out nodes, speed, storage.

Parts (``--parts``, comma-separated; default all):

accuracy
    The default embedded grid (61 Teff x 9 log g x 2 [Fe/H], 25,405 px). 108 nodes are
    held out (Teff indices 5, 15, ..., 55 at every log g and [Fe/H]; their Teff
    neighbours stay) and excluded from cloning and building. Emulators are built from

    * ``oracle``: the generating line lists of the synthetic model (perfect clones,
      identifier = rest wavelength at 0.01 Å): the interpolation error alone;
    * ``clones``: :func:`jaxspec.clone.clone_grid` of the grid without the held-out nodes
      (cached in ``--out`` per ``--clone-method``: continuation, the default, identified
      by construction; or independent, with matchers ``id`` (blase3D) and ``track``),
      then refined end to end (``--clone-refine-epochs``). The clone store's gates are
      printed too: identities against the largest node's line count, significant lines
      (depth > 0.01) per node against the truth per Teff, median residual RMS,
      strength-weighted roughness along Teff against the truth, the one-sided
      line-strength fraction and the clone's wall time.

    Reported: unique lines, lines per node, RMS and max |error| of emulator spectra
    against the true spectra at training and held-out nodes, and the baseline: pixel-space
    multilinear interpolation of the neighbouring grid spectra
    (:class:`jaxspec.pixel_emulator.PixelEmulator` with the same nodes held out).
lowres (not in the default parts)
    The identity gate on a second grid: the default grid convolved with a Gaussian LSF
    of R = ``--resolution`` (22,500) and resampled at 3 px per resolution element,
    cloned with ``--clone-method``; identities against the largest node's line count,
    median residual RMS and the line emulator's held-out RMS.
speed
    ms per spectrum, single call and batches of 64 (jit, plan reused), for the default
    emulator and for a blase3D-scale one: the real 9,028-line PHOENIX T4700 clone given
    smooth synthetic Teff/log g/[Fe/H] dependence on the 73 x 9 x 2 PHOENIX node lattice,
    481,100 px (8038-12849 Å at 0.01 Å).
storage
    File size of the default emulator, and of a blase3D-sized manifold (128,723 lines x
    1314 nodes, 9,167 lines per node on average, presence drawn as Teff x log g blocks)
    written with the same sparse layout.

    python benchmarks/bench_emulator.py [--out /tmp/jaxspec_bench] [--parts speed,storage]

Timings on a shared 2-core CPU are noisy (±20 % between runs).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import jaxspec  # noqa: F401  (float64)
from jaxspec.cli.build import (DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE, DEFAULT_PRESMOOTH,
                               DEFAULT_SMOOTHNESS)
from jaxspec.grid import SpectralGrid
from jaxspec.identify import identify_lines, identify_store
from jaxspec.line_emulator import LineEmulator, write_emulator_file
from jaxspec.lines import LineList, LineTable
from jaxspec.manifold import LineManifold
from _environment import environment  # benchmarks/_environment.py, beside this script

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HELD_TEFF = (5, 15, 25, 35, 45, 55)
evaluate = eqx.filter_jit(lambda e, p: e(p))


def log(*args):
    print(*args, flush=True)


def timed(fn, *args, repeats=5):
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t0) / repeats


# ------------------------------------------------------------------------- data


def default_grid(out: Path) -> SpectralGrid:
    path = out / "grid_default.h5"
    if not path.exists():
        from jaxspec.synthetic import synthetic_grid

        t0 = time.perf_counter()
        synthetic_grid("default").to_hdf5(path)
        log(f"default grid generated in {time.perf_counter() - t0:.0f} s -> {path}")
    return SpectralGrid.from_hdf5(path)


def held_mask(grid: SpectralGrid) -> np.ndarray:
    held = np.zeros(grid.shape, dtype=bool)
    held[list(HELD_TEFF)] = True
    return held


def emulator_spectra(emulator, params, batch=16):
    out = []
    for start in range(0, params.shape[0], batch):
        sel = params[start:start + batch]
        pad = np.concatenate([sel, np.repeat(sel[:1], batch - sel.shape[0], 0)])
        out.append(np.asarray(evaluate(emulator, pad))[: sel.shape[0]])
    return np.concatenate(out)


def errors(model, truth):
    diff = np.asarray(model, dtype=np.float64) - truth
    rms = np.sqrt(np.mean(diff**2, axis=-1))
    return float(np.sqrt(np.mean(rms**2))), float(np.max(np.abs(diff)))


# ------------------------------------------------------------------------- accuracy


def oracle_nodes(grid: SpectralGrid, held: np.ndarray):
    """Perfect clones: the synthetic model's own line lists at every non-held node, with
    identifiers = rest wavelength at 0.01 Å (``index`` holds each line's true number)."""
    from types import SimpleNamespace

    from jaxspec.synthetic import _MIN_DEPTH, _line_data, _node_lines

    data = _line_data("default", 0)
    params, flat = grid.node_params()
    keep = ~held.reshape(-1)[flat]
    p = _node_lines(data, params[keep, 0], params[keep, 1], params[keep, 2])
    rest = np.asarray(data["wavelength"])
    nodes = []
    for row, f in enumerate(flat[keep]):
        ok = p["depth"][row] >= _MIN_DEPTH
        nodes.append(SimpleNamespace(
            index=int(f), line_id=np.round(rest[ok], 2), center=p["center"][row, ok],
            ln_amplitude=np.log(p["ew"][row, ok]), ln_sigma=np.log(p["sigma_eff"][row, ok]),
            ln_gamma=np.log(p["gamma_eff"][row, ok]), number=np.flatnonzero(ok)))
    return nodes, rest


def oracle_identification(grid: SpectralGrid, held: np.ndarray):
    """Identification by the true line numbers (no matching error): interpolation alone."""
    from jaxspec.identify import Identification, complete_values

    nodes, rest = oracle_nodes(grid, held)
    shape = grid.shape
    values = np.zeros((rest.size, math.prod(shape), 4), dtype=np.float32)
    present = np.zeros((rest.size, math.prod(shape)), dtype=bool)
    for n in nodes:
        present[n.number, n.index] = True
        values[n.number, n.index] = np.stack(
            [n.center - rest[n.number], n.ln_amplitude, n.ln_sigma, n.ln_gamma], -1)
    used = present.any(axis=1)
    values = values[used].reshape(-1, *shape, 4)
    present = present[used].reshape(-1, *shape)
    observed = ~held
    complete_values(values, present, observed, grid.axes)
    return Identification(axes=grid.axes, line_id=np.round(rest[used], 2), center=rest[used],
                          values=values, present=present, observed=observed, matcher="exact")


CLONE_METHOD = "continuation"  # set by --clone-method
CLONE_SETTINGS: dict = {}  # set by --clone-setting NAME=VALUE (CloneSettings fields)
CLONE_START: dict = {}  # set by --clone-start NAME=VALUE (clone_grid's start node)
CLONE_WORKERS: int | None = None  # set by --clone-workers N (jaxspec clone --workers N)
# set by --smoothness: the joint fit of the clone-built emulator (jaxspec build --grid's)
SMOOTHNESS = DEFAULT_SMOOTHNESS


def clone_store(out: Path, report: dict | None = None) -> Path:
    """Clone the default grid cached in ``out`` without the held-out nodes (the store
    cached per method, resumed) with ``jaxspec clone``'s defaults, in a child process;
    returns the store path."""
    path = out / f"clones_default_{CLONE_METHOD}.h5"
    t0 = time.perf_counter()
    # In a child process: its compiled programs (hundreds of batch shapes) would stay in
    # this process's caches through the joint fit, and the two together exhausted a
    # 24 GB machine ("LLVM compilation error: Cannot allocate memory").
    child = multiprocessing.get_context("spawn").Process(
        target=_clone_child, args=(str(out), str(path), CLONE_METHOD, dict(CLONE_SETTINGS),
                                   dict(CLONE_START), CLONE_WORKERS))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"cloning {path} failed in its process (exit code "
                           f"{child.exitcode}); run again to resume it")
    seconds = time.perf_counter() - t0
    log(f"clone store {path} ready ({seconds:.0f} s this run, method {CLONE_METHOD}, "
        f"workers {CLONE_WORKERS})")
    if report is not None:
        report.setdefault("clone_wall_s", {})[CLONE_METHOD] = seconds
        report["clone_workers"] = CLONE_WORKERS
    return path


def _clone_child(out: str, path: str, method: str, settings: dict, start: dict,
                 workers: int | None = None):
    """:func:`clone_store`'s cloning, run in its own process (resumes a store);
    ``workers``: continuation fits in that many local processes (``jaxspec clone
    --workers``)."""
    from jaxspec.clone import clone_grid

    grid = default_grid(Path(out))
    held = held_mask(grid)
    flux = np.where(held[..., None], np.nan, grid.flux)
    masked = SpectralGrid(grid.axes, grid.wavelength, flux, mask=grid.mask & ~held,
                          normalized=True)
    clone_grid(masked, out=path, method=method, start=start or None, workers=workers,
               **settings)


def _depth(values):
    """Peak depth a V(0) of node values (..., 4) = (shift, ln a, ln σ, ln γ)."""
    from jaxspec.clone.detection import _peak_value

    v = LineTable.from_array(np.asarray(values, dtype=np.float64))
    return np.exp(np.clip(v.ln_amplitude, -700, 50)) * _peak_value(v.ln_sigma, v.ln_gamma)


def emulator_lines(emulator):
    """An emulator's node values as :func:`roughness` reads an identification: ``values``
    ``(n_lines, *grid, 4)``, ``present``, ``observed``."""
    from types import SimpleNamespace

    table = np.asarray(emulator.manifold.table)
    return SimpleNamespace(values=np.moveaxis(table, -2, 0),
                           present=np.asarray(emulator.present()),
                           observed=np.asarray(emulator.observed))


def roughness(ident) -> list[float]:
    """Strength-weighted mean |second difference| of ln a, ln σ, ln γ along the first
    axis, over triples of consecutive observed nodes where the line is present at all
    three (weight: the smallest of the three depths)."""
    v, present = np.asarray(ident.values), np.asarray(ident.present)
    obs = np.asarray(ident.observed)
    ok = present[:, :-2] & present[:, 1:-1] & present[:, 2:] & obs[:-2] & obs[1:-1] & obs[2:]
    depth = _depth(v)
    w = np.minimum(np.minimum(depth[:, :-2], depth[:, 1:-1]), depth[:, 2:]) * ok
    out = []
    for k in (1, 2, 3):
        d2 = np.abs(v[:, :-2, ..., k] - 2 * v[:, 1:-1, ..., k] + v[:, 2:, ..., k])
        out.append(float(np.sum(w * np.where(ok, d2, 0.0)) / max(np.sum(w), 1e-30)))
    return out


def store_metrics(grid, held, store_path, ident, oracle, report):
    """The clone-store gates of the issue "Grid-coherent clones" (printed, in report)."""
    from jaxspec.io.clone_store import CloneStore

    store = CloneStore(store_path)
    depth = _depth(np.asarray(ident.values)) * np.asarray(ident.present)
    sig = (depth > 0.01).sum(axis=0)  # significant lines per node
    truth_sig = ((_depth(np.asarray(oracle.values)) * np.asarray(oracle.present)) > 0.01
                 ).sum(axis=0)
    obs = np.asarray(ident.observed)
    teff = grid.axes["teff"]
    ratio_by_teff = []
    for i in range(teff.size):
        if obs[i].any():
            ratio_by_teff.append(float(sig[i][obs[i]].mean() / max(truth_sig[i][obs[i]].mean(),
                                                                   1)))
    present = np.asarray(ident.present)
    one_sided = 0.0
    total = float(depth.sum())
    for step in (1, -1):
        nb = np.roll(present, step, axis=1)
        nb_obs = np.roll(obs, step, axis=0)
        edge = 0 if step == 1 else -1
        nb_obs[edge] = False
        one_sided += float(np.sum(depth * (~nb & nb_obs)))
    rough, rough_truth = roughness(ident), roughness(oracle)
    row = {
        "method": store.settings.get("method"),
        "start": None if store.start is None else [int(i) for i in store.start],
        "identities": ident.n_lines,
        "largest_node_lines": int(store.n_lines[store.mask].max()),
        "largest_node_significant": int(sig[obs].max()),
        "identities_over_largest_node": ident.n_lines / int(store.n_lines[store.mask].max()),
        "identities_over_largest_significant": ident.n_lines / int(sig[obs].max()),
        "significant_over_truth_max_teff": max(ratio_by_teff),
        "significant_over_truth_by_teff": ratio_by_teff,
        "median_residual_rms": float(np.median(store.residual_rms[store.mask])),
        "roughness": rough, "roughness_truth": rough_truth,
        "roughness_over_truth": [a / b for a, b in zip(rough, rough_truth)],
        "one_sided_strength_fraction": one_sided / max(2 * total, 1e-30),
    }
    log(f"clone store ({row['method']}): {row['identities']:,} identities = "
        f"{row['identities_over_largest_node']:.2f}x the largest node's "
        f"{row['largest_node_lines']:,} lines ({row['identities_over_largest_significant']:.2f}x "
        f"its {row['largest_node_significant']:,} significant); significant/truth per Teff "
        f"max {row['significant_over_truth_max_teff']:.2f}; median residual RMS "
        f"{row['median_residual_rms']:.2e}; roughness ln a/σ/γ "
        + "/".join(f"{r:.3f}" for r in rough) + " (truth "
        + "/".join(f"{r:.3f}" for r in rough_truth) + ", ratio "
        + "/".join(f"{r:.1f}" for r in row["roughness_over_truth"])
        + f"); one-sided strength fraction {row['one_sided_strength_fraction']:.3f}")
    report[f"clone_store_{row['method']}"] = row


def accuracy(out: Path, refine_epochs: int, report: dict, parts=("oracle", "clones"),
             batch_size: int = 4):
    from jaxspec.pixel_emulator import PixelEmulator

    grid = default_grid(out)
    held = held_mask(grid)
    params, flat = grid.node_params()
    flux = grid.flux.reshape(-1, grid.n_pix)[flat]
    is_held = held.reshape(-1)[flat]
    hot = params[:, 0] >= 7000.0
    log(f"grid: {grid}; {int(is_held.sum())} held-out nodes (Teff "
        + ", ".join(f"{grid.axes['teff'][i]:g}" for i in HELD_TEFF) + " K)")

    t0 = time.perf_counter()
    pixel = PixelEmulator.from_grid(grid, holdout=params[is_held])
    base = emulator_spectra(pixel, params[is_held])
    rms, mx = errors(base, flux[is_held])
    log(f"baseline pixel interpolation at held-out nodes: RMS {rms:.2e}, max {mx:.2e} "
        f"({time.perf_counter() - t0:.0f} s)")
    report["pixel_baseline_heldout"] = {"rms": rms, "max": mx}
    for name, sel in (("cool", ~hot[is_held]), ("hot", hot[is_held])):
        r, m = errors(base[sel], flux[is_held][sel])
        report[f"pixel_baseline_heldout_{name}"] = {"rms": r, "max": m}
    # Cubic pixel interpolation across the held-out Teff columns (a grid without them:
    # filling them first would make cubic return the fill).
    keep = np.setdiff1d(np.arange(grid.axes["teff"].size), HELD_TEFF)
    sub = SpectralGrid({**grid.axes, "teff": grid.axes["teff"][keep]}, grid.wavelength,
                       grid.flux[keep], normalized=True)
    cubic = emulator_spectra(PixelEmulator.from_grid(sub, method="cubic"), params[is_held])
    row = {"rms": errors(cubic, flux[is_held])[0]}
    for name, sel in (("cool", ~hot[is_held]), ("hot", hot[is_held])):
        row[name] = errors(cubic[sel], flux[is_held][sel])[0]
    report["pixel_cubic_heldout"] = row
    log(f"baseline cubic pixel interpolation at held-out nodes: RMS {row['rms']:.2e} (cool "
        f"{row['cool']:.2e}, hot {row['hot']:.2e})")

    def assess(label, emulator):
        model = emulator_spectra(emulator, params)
        row = {"unique_lines": emulator.n_lines}
        per = emulator.present().sum(0)[np.asarray(emulator.observed)]
        row["lines_per_node"] = float(per.mean()) if per.size else 0.0
        for name, sel in (("train", ~is_held), ("heldout", is_held),
                          ("heldout_cool", is_held & ~hot), ("heldout_hot", is_held & hot)):
            r, m = errors(model[sel], flux[sel])
            row[name] = {"rms": r, "max": m}
        log(f"{label:>14}: {row['unique_lines']:6,} lines, {row['lines_per_node']:6.0f}/node; "
            f"train RMS {row['train']['rms']:.2e} max {row['train']['max']:.2e}; held-out RMS "
            f"{row['heldout']['rms']:.2e} max {row['heldout']['max']:.2e} (cool "
            f"{row['heldout_cool']['rms']:.2e}, hot {row['heldout_hot']['rms']:.2e})")
        report[label] = row
        return row

    def assess_cubic(label, emulator):
        """The emulator's manifold without the held-out Teff columns, interpolated by
        cubic Hermite across them (LineManifold(method="cubic"))."""
        from jaxspec.validate import without_columns

        return assess(label, without_columns(emulator, keep, method="cubic"))

    oracle = LineEmulator.from_identification(oracle_identification(grid, held), grid.wavelength,
                                           interpolation="linear")
    if "oracle" in parts:
        assess_cubic("oracle_exact_cubic", oracle)
        oracle_part(grid, held, oracle, assess, refine_epochs, report)
    if "clones" not in parts:
        return oracle
    return clones_part(grid, held, out, assess, refine_epochs, report, batch_size,
                       assess_cubic)


def oracle_part(grid, held, oracle, assess, refine_epochs, report):
    from jaxspec.identify import complete_values
    from jaxspec.refine import refine

    assess("oracle_exact", oracle)
    nodes, _ = oracle_nodes(grid, held)
    for matcher in ("id", "track"):
        t0 = time.perf_counter()
        ident = identify_lines(nodes, grid.axes, matcher=matcher)
        log(f"oracle clones, {ident.summary()} ({time.perf_counter() - t0:.1f} s)")
        assess(f"oracle_{matcher}", LineEmulator.from_identification(
            ident, grid.wavelength, interpolation="linear"))

    # Clone-like scatter on the perfect clones, then end-to-end refinement: what refine()
    # recovers when every node value carries independent fitting noise.
    rng = np.random.default_rng(0)
    values = np.array(oracle.manifold.values)
    present = oracle.present()
    scatter = np.array([0.001, 0.03, 0.03, 0.03], dtype=np.float32)
    values += np.where(present[..., None], rng.normal(0, 1, values.shape) * scatter, 0.0)
    complete_values(values, present, np.asarray(oracle.observed), grid.axes)
    noisy = oracle.with_table(np.moveaxis(values, 0, -2))
    assess("oracle_noisy", noisy)
    if refine_epochs:
        refined, history = refine(noisy, grid, epochs=refine_epochs, batch_size=8,
                                  progress=False)
        log(f"refine (oracle_noisy): {history.summary()}")
        report["refine_oracle_noisy"] = {
            "epochs": refine_epochs, "seconds": history.seconds, "loss": history.loss,
            "rms_train_before": history.rms_train_before,
            "rms_train_after": history.rms_train_after,
            "rms_heldout_before": history.rms_holdout_before,
            "rms_heldout_after": history.rms_holdout_after,
        }
        assess("refined_oracle_noisy", refined)


def clones_part(grid, held, out, assess, refine_epochs, report, batch_size, assess_cubic):
    from jaxspec.io.clone_store import CloneStore
    from jaxspec.refine import refine

    store = clone_store(out, report)
    # grid file -> emulator file, per stage (`jaxspec clone` then `jaxspec build --grid`)
    stages = {"clone (this run)": report["clone_wall_s"][CLONE_METHOD]}

    built = {}
    matchers = ("identity",) if CloneStore.open(store).identities is not None else ("id",
                                                                                   "track")
    oracle = oracle_identification(grid, held)
    for matcher in matchers:
        t0 = time.perf_counter()
        ident = identify_store(CloneStore.open(store), matcher=matcher)
        emulator = LineEmulator.from_identification(ident, interpolation="linear")
        stages["identify + build"] = time.perf_counter() - t0
        log(f"{matcher}: {ident.summary()} ({stages['identify + build']:.1f} s)")
        if matcher == matchers[-1]:
            store_metrics(grid, held, store, ident, oracle, report)
        built[matcher] = emulator
        assess(f"clones_{matcher}", emulator)
        assess_cubic(f"clones_{matcher}_cubic", emulator)
        path = emulator.save(out / f"emulator_default_{matcher}.h5", overwrite=True)
        report[f"clones_{matcher}"]["file_MiB"] = path.stat().st_size / 2**20
    if refine_epochs:
        jax.clear_caches()  # the assessments' programs: memory for the joint fit's
        for matcher in matchers[-1:]:
            t0 = time.perf_counter()
            refined, history = refine(built[matcher], grid, epochs=refine_epochs,
                                      batch_size=8, smoothness=SMOOTHNESS, progress=False,
                                      presmooth=DEFAULT_PRESMOOTH,
                                      learning_rate=DEFAULT_LEARNING_RATE)
            stages["joint fit"] = time.perf_counter() - t0
            log(f"refine ({matcher}): {history.summary()}")
            report[f"refine_{matcher}"] = {
                "epochs": refine_epochs, "seconds": history.seconds, "loss": history.loss,
                "rms_train_before": history.rms_train_before,
                "rms_train_after": history.rms_train_after,
                "rms_heldout_before": history.rms_holdout_before,
                "rms_heldout_after": history.rms_holdout_after, "smoothness": SMOOTHNESS,
                "presmooth": DEFAULT_PRESMOOTH, "learning_rate": DEFAULT_LEARNING_RATE,
            }
            rough = roughness(emulator_lines(refined))
            truth = roughness(oracle)
            report[f"refine_{matcher}"]["roughness_over_truth"] = [
                a / b for a, b in zip(rough, truth)]
            log("roughness after the joint fit: ln a/σ/γ " + "/".join(
                f"{a:.3f}" for a in rough) + " (truth " + "/".join(f"{b:.3f}" for b in truth)
                + ", ratio " + "/".join(f"{a / b:.1f}" for a, b in zip(rough, truth)) + ")")
            assess(f"refined_{matcher}", refined)
            assess_cubic(f"refined_{matcher}_cubic", refined)
            t0 = time.perf_counter()
            refined.save(out / f"emulator_default_{matcher}_refined.h5", overwrite=True)
            stages["save"] = time.perf_counter() - t0
            report["grid_to_emulator_s"] = {**stages, "total": sum(stages.values())}
            log("grid file -> emulator file: " + " + ".join(
                f"{k} {v:.0f} s" for k, v in stages.items())
                + f" = {sum(stages.values()):.0f} s ({sum(stages.values()) / 60:.1f} min)")
        return refined
    return built[matchers[-1]]


# ------------------------------------------------------------------ low resolution


def lowres_grid(out: Path, resolution: float) -> SpectralGrid:
    """The default grid convolved with a Gaussian LSF of resolving power ``resolution``
    and resampled log-uniformly at 3 px per resolution element (Δλ = λ / 3R), cached."""
    from jaxspec.extrinsic import ExtrinsicModel

    path = out / f"grid_default_R{int(resolution)}.h5"
    if path.exists():
        return SpectralGrid.from_hdf5(path)
    grid = default_grid(out)
    wl = grid.wavelength
    step = math.log1p(1.0 / (3.0 * resolution))
    new = wl[0] * np.exp(step * np.arange(int(math.log(wl[-1] / wl[0]) / step) + 1))
    model = ExtrinsicModel.build(wl, new, resolution_min=resolution, pad="continuum")
    observe = eqx.filter_jit(jax.vmap(lambda f: model(f, resolution=resolution)))
    flux = grid.flux.reshape(-1, wl.size)
    lowres = np.full((flux.shape[0], new.size), np.nan, dtype=np.float32)
    ok = np.flatnonzero(grid.mask.reshape(-1))
    for start in range(0, ok.size, 64):
        rows = ok[start:start + 64]
        pad = np.r_[rows, np.repeat(rows[:1], 64 - rows.size)]
        lowres[rows] = np.asarray(observe(jnp.asarray(flux[pad])))[: rows.size]
    grid = SpectralGrid(grid.axes, new, lowres.reshape(*grid.shape, new.size),
                        mask=grid.mask, normalized=True)
    grid.to_hdf5(path)
    log(f"default grid at R = {resolution:,.0f}: {new.size:,} px ({wl.size:,} native) -> {path}")
    return grid


def lowres_part(out: Path, resolution: float, report: dict):
    """The identity gate on the default grid at ``resolution`` (issue "Grid-coherent
    clones"): identities in the store against the largest node's line count."""
    from jaxspec.clone import clone_grid
    from jaxspec.io.clone_store import CloneStore

    grid = lowres_grid(out, resolution)
    held = held_mask(grid)
    flux = np.where(held[..., None], np.nan, grid.flux)
    masked = SpectralGrid(grid.axes, grid.wavelength, flux, mask=grid.mask & ~held,
                          normalized=True)
    path = out / f"clones_default_R{int(resolution)}_{CLONE_METHOD}.h5"
    t0 = time.perf_counter()
    clone_grid(masked, out=path, method=CLONE_METHOD, start=CLONE_START or None,
               **CLONE_SETTINGS)
    seconds = time.perf_counter() - t0
    store = CloneStore.open(path)
    matcher = "identity" if store.identities is not None else "track"
    ident = identify_store(store, matcher=matcher)
    largest = int(store.n_lines[store.mask].max())
    row = {
        "resolution": resolution, "n_pix": int(grid.n_pix), "method": CLONE_METHOD,
        "matcher": matcher, "clone_s_this_run": seconds, "identities": ident.n_lines,
        "largest_node_lines": largest, "identities_over_largest_node": ident.n_lines / largest,
        "median_residual_rms": float(np.median(store.residual_rms[store.mask])),
    }
    emulator = LineEmulator.from_identification(ident, interpolation="linear")
    params, flat = grid.node_params()
    held_flat = held.reshape(-1)[flat]
    truth = grid.flux.reshape(-1, grid.n_pix)[flat][held_flat]
    pred = emulator_spectra(emulator, params[held_flat])
    row["heldout_rms"] = float(np.sqrt(np.mean((pred - truth) ** 2)))
    log(f"R = {resolution:,.0f} ({grid.n_pix:,} px, {CLONE_METHOD}, {seconds:.0f} s): "
        f"{ident.n_lines:,} identities = {row['identities_over_largest_node']:.2f}x the largest "
        f"node's {largest:,} lines; median residual RMS {row['median_residual_rms']:.2e}; "
        f"line emulator held-out RMS {row['heldout_rms']:.2e}")
    report[f"lowres_R{int(resolution)}_{CLONE_METHOD}"] = row


# ------------------------------------------------------------------------- speed


def blase3d_axes():
    teff = np.concatenate([np.arange(2300.0, 7000.0, 100.0), np.arange(7000.0, 12001.0, 200.0)])
    return {"teff": teff, "logg": np.arange(2.0, 6.01, 0.5), "feh": np.array([-0.5, 0.0])}


def blase3d_scale_emulator():
    """The real T4700 clone with smooth synthetic dependence on the PHOENIX lattice."""
    lines = LineList.from_npz(DATA / "phoenix_clone_T4700_g4.5_HPF.npz")
    axes = blase3d_axes()
    rng = np.random.default_rng(0)
    n = lines.n_lines
    t = (axes["teff"][:, None, None] - 4700.0) / 1000.0
    g = axes["logg"][None, :, None] - 4.5
    z = axes["feh"][None, None, :]
    alpha = rng.normal(-0.3, 0.3, n)
    beta = rng.normal(0.0, 0.1, n)
    values = np.empty((n, *(a.size for a in axes.values()), 4), dtype=np.float32)
    tt, gg, zz = (np.broadcast_to(v, values.shape[1:4]) for v in (t, g, z))
    col = LineTable
    values[..., col.SHIFT] = ((0.002 * tt + 0.001 * gg)[None]
                              * rng.normal(1, 0.3, n)[:, None, None, None])
    values[..., col.LN_AMPLITUDE] = (np.asarray(lines.ln_amplitude)[:, None, None, None]
                                     + alpha[:, None, None, None] * tt * (tt < 0.5)
                                     + beta[:, None, None, None] * gg + 0.5 * zz)
    values[..., col.LN_SIGMA] = (np.asarray(lines.ln_sigma)[:, None, None, None]
                                 + 0.25 * np.log1p(tt * 0.2127))
    values[..., col.LN_GAMMA] = np.asarray(lines.ln_gamma)[:, None, None, None] + 0.3 * gg
    # Lines vanish away from a random Teff range around 4700 K (absent: ln a = -1000).
    lo = rng.uniform(2300.0, 4600.0, n)
    hi = rng.uniform(4800.0, 9000.0, n)
    absent = (axes["teff"][None, :] < lo[:, None]) | (axes["teff"][None, :] > hi[:, None])
    values[..., col.LN_AMPLITUDE][np.broadcast_to(absent[:, :, None, None], values.shape[:4])] = (
        col.ABSENT)
    manifold = LineManifold(axes, values)
    wl = 8038.0 + 0.01 * np.arange(481_100)
    return LineEmulator(manifold, np.asarray(lines.center), wl)


def speed(emulator, label, report, repeats):
    theta = jnp.asarray(np.mean(emulator.bounds, axis=1) + np.array([37.0, 0.07, -0.03]))
    rng = np.random.default_rng(1)
    lo, hi = emulator.bounds[:, 0], emulator.bounds[:, 1]
    batch = jnp.asarray(lo + (hi - lo) * rng.random((64, len(lo))))
    t0 = time.perf_counter()
    jax.block_until_ready(evaluate(emulator, theta))
    compile_s = time.perf_counter() - t0
    single = timed(evaluate, emulator, theta, repeats=repeats)
    jax.block_until_ready(evaluate(emulator, batch))
    batched = timed(evaluate, emulator, batch, repeats=max(1, repeats // 4)) / 64
    grad = eqx.filter_jit(jax.grad(lambda p, e: jnp.sum(e(p) ** 2)))
    jax.block_until_ready(grad(theta, emulator))
    t_grad = timed(grad, theta, emulator, repeats=repeats)
    n_eval = emulator.synthesis_plan.n_evaluations()
    log(f"{label}: {emulator.n_lines:,} lines, {emulator.n_pix:,} px, {n_eval / 1e6:.1f} M profile "
        f"evaluations; compile {compile_s:.1f} s; single {single * 1e3:.1f} ms; batched(64) "
        f"{batched * 1e3:.1f} ms/spectrum; grad wrt params {t_grad * 1e3:.1f} ms")
    report[f"speed_{label}"] = {"n_lines": emulator.n_lines, "n_pix": emulator.n_pix,
                                "single_ms": single * 1e3, "batched64_ms": batched * 1e3,
                                "grad_ms": t_grad * 1e3, "compile_s": compile_s}


# ------------------------------------------------------------------------- storage


def blase3d_storage(out: Path, report: dict):
    """Write a blase3D-sized sparse manifold with realistic sparsity; report its size."""
    axes = blase3d_axes()
    shape = tuple(a.size for a in axes.values())
    n_nodes = math.prod(shape)
    n_lines = 128_723
    rng = np.random.default_rng(0)
    # Presence: a Teff interval x log g interval x [Fe/H] subset per line, sized so that a
    # node holds 9,167 lines on average (7.1 % of 128,723), as in blase3D Sect. 3.1.
    nt, ng, nz = shape
    len_t = np.clip(rng.geometric(1 / 10.05, n_lines), 1, nt)
    len_g = rng.integers(2, ng + 1, n_lines)
    t0 = rng.integers(0, nt - len_t + 1)
    g0 = rng.integers(0, ng - len_g + 1)
    both_z = rng.random(n_lines) < 0.7
    z0 = rng.integers(0, nz, n_lines)
    it = np.arange(nt)[None, :]
    ig = np.arange(ng)[None, :]
    in_t = (it >= t0[:, None]) & (it < (t0 + len_t)[:, None])
    in_g = (ig >= g0[:, None]) & (ig < (g0 + len_g)[:, None])
    in_z = both_z[:, None] | (np.arange(nz)[None, :] == z0[:, None])
    present = (in_t[:, :, None, None] & in_g[:, None, :, None] & in_z[:, None, None, :])
    present = present.reshape(n_lines, n_nodes)
    n_present = int(present.sum())
    # Values: smooth in the node parameters plus clone-to-clone scatter, as fitted clones.
    tt, gg, zz = (m.reshape(-1) for m in np.meshgrid(*axes.values(), indexing="ij"))
    line_of, node_of = np.nonzero(present)
    base = rng.normal(0.0, 1.0, (n_lines, 4))
    vals = np.empty((n_present, 4), dtype=np.float32)
    col = LineTable
    vals[:, col.SHIFT] = (0.003 * base[line_of, col.SHIFT] + 1e-6 * (tt[node_of] - 5000)
                          + rng.normal(0, 0.002, n_present))
    vals[:, col.LN_AMPLITUDE] = (-4.0 + base[line_of, col.LN_AMPLITUDE]
                                 - 2e-4 * (tt[node_of] - 5000) + 0.3 * zz[node_of]
                                 + rng.normal(0, 0.05, n_present))
    vals[:, col.LN_SIGMA] = (-3.3 + 0.2 * base[line_of, col.LN_SIGMA]
                             + 0.5 * np.log(tt[node_of] / 5000) + rng.normal(0, 0.02, n_present))
    vals[:, col.LN_GAMMA] = (-3.0 + 0.2 * base[line_of, col.LN_GAMMA] + 0.3 * (gg[node_of] - 4.5)
                             + rng.normal(0, 0.02, n_present))
    center = np.sort(rng.uniform(8038.0, 12849.0, n_lines))
    wl = 8038.0 + 0.01 * np.arange(481_100)
    observed = np.ones(shape, dtype=bool)
    sizes = {}
    for comp in ("gzip", None):
        path = out / f"blase3d_sized_{comp or 'raw'}.h5"
        t_start = time.perf_counter()
        write_emulator_file(path, wavelength=wl, axes=axes, center=center, observed=observed,
                            present=present, values=vals, compression=comp, overwrite=True)
        sizes[comp or "raw"] = (path.stat().st_size, time.perf_counter() - t_start)
    dense = 4 * n_lines * n_nodes * 4
    log(f"blase3D-sized manifold: {n_lines:,} lines x {n_nodes} nodes; {n_present:,} detections "
        f"({n_present / n_nodes:,.0f} per node, {100 * n_present / (n_lines * n_nodes):.1f} %)")
    log(f"  dense float32 would be {dense / 1e9:.2f} GB; sparse layout: raw "
        f"{sizes['raw'][0] / 1e9:.3f} GB, gzip {sizes['gzip'][0] / 1e9:.3f} GB "
        f"(write {sizes['gzip'][1]:.0f} s); arithmetic: {n_present:,} x 16 B = "
        f"{n_present * 16 / 1e9:.3f} GB values + {n_lines:,} x {math.ceil(n_nodes / 8)} B = "
        f"{n_lines * math.ceil(n_nodes / 8) / 1e9:.3f} GB presence bits + centres/wavelength")
    report["storage_blase3d"] = {
        "n_lines": n_lines, "n_nodes": n_nodes, "n_present": n_present,
        "dense_float32_GB": dense / 1e9, "raw_GB": sizes["raw"][0] / 1e9,
        "gzip_GB": sizes["gzip"][0] / 1e9, "write_s": sizes["gzip"][1],
    }
    (out / "blase3d_sized_raw.h5").unlink()
    return out / "blase3d_sized_gzip.h5"


def main():
    global CLONE_METHOD, CLONE_SETTINGS, SMOOTHNESS, CLONE_WORKERS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/jaxspec_bench", help="cache and output folder")
    parser.add_argument("--parts", default="oracle,clones,speed,storage")
    parser.add_argument("--refine-epochs", type=int, default=10)
    parser.add_argument("--clone-refine-epochs", type=int, default=DEFAULT_EPOCHS,
                        help="epochs of the joint smooth fit of the clone-built emulator "
                        f"(jaxspec build --grid's default: {DEFAULT_EPOCHS} at step "
                        f"{DEFAULT_LEARNING_RATE:g}, after the smoothing solve; ~40 s each "
                        "on 2 cores)")
    parser.add_argument("--smoothness", type=float, nargs="+",
                        default=list(np.atleast_1d(SMOOTHNESS)),
                        help="curvature weight(s) of that joint fit (one, or one per column "
                        "μ' − μ, ln a, ln σ, ln γ; default: jaxspec build's)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--clone-method", default="continuation",
                        choices=("continuation", "independent"),
                        help="clone_grid method of the clones part (store cached per method)")
    parser.add_argument("--clone-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a CloneSettings field for the clones (repeatable), e.g. "
                        "warm_width_anchor=0.001; use another --out, the store is cached")
    parser.add_argument("--clone-workers", type=int, default=None,
                        help="clone in this many local processes (jaxspec clone --workers; "
                        "default: this process)")
    parser.add_argument("--clone-start", action="append", default=[], metavar="NAME=VALUE",
                        help="continuation: a coordinate of the start node (repeatable), "
                        "e.g. teff=9000; default: clone_grid's")
    parser.add_argument("--resolution", type=float, default=22_500.0,
                        help="resolving power of the lowres part's grid (3 px per element)")
    parser.add_argument("--load-big", action="store_true",
                        help="also load the blase3D-sized file (needs ~10 GB of memory)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    CLONE_METHOD = args.clone_method
    CLONE_WORKERS = args.clone_workers
    for item in args.clone_setting:
        name, _, value = item.partition("=")
        if not value:
            parser.error(f"--clone-setting {item!r}: pass NAME=VALUE, e.g. warm_width_anchor=0.001")
        try:
            CLONE_SETTINGS[name] = float(value) if any(c in value for c in ".e") else int(value)
        except ValueError:
            CLONE_SETTINGS[name] = value
    for item in args.clone_start:
        name, _, value = item.partition("=")
        try:
            CLONE_START[name] = float(value)
        except ValueError:
            parser.error(f"--clone-start {item!r}: pass NAME=NUMBER, e.g. teff=9000")
    SMOOTHNESS = args.smoothness[0] if len(args.smoothness) == 1 else args.smoothness
    log(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), cpus visible: "
        f"{os.cpu_count()}; timings on shared CPUs are noisy")
    path = out / "report.json"
    report: dict = json.loads(path.read_text()) if path.exists() else {}
    emulators = {}
    if "oracle" in parts:
        emulators["default_oracle"] = accuracy(out, args.refine_epochs, report,
                                               parts=("oracle",))
    if "clones" in parts:
        built = accuracy(out, args.clone_refine_epochs, report, parts=("clones",))
        if built is not None:
            emulators["default_clones"] = built
    if "lowres" in parts:
        lowres_part(out, args.resolution, report)
    if "speed" in parts:
        if not emulators:
            grid = default_grid(out)
            emulators["default_oracle"] = LineEmulator.from_identification(
                oracle_identification(grid, held_mask(grid)), grid.wavelength,
                interpolation="linear")
            # For bench_inference.py --emulator: the line emulator of perfect clones.
            emulators["default_oracle"].save(out / "emulator_default_oracle.h5", overwrite=True)
        for label, emulator in emulators.items():
            speed(emulator, label, report, args.repeats)
        if (DATA / "phoenix_clone_T4700_g4.5_HPF.npz").exists():
            speed(blase3d_scale_emulator(), "blase3d_scale", report, args.repeats)
        else:
            log("blase3D-scale speed: skipped (needs ../shared/data/phoenix_clone_T4700_g4.5_HPF.npz)")
    default = emulators.get("default_clones", emulators.get("default_oracle"))
    if "storage" in parts:
        if default is not None:
            path = default.save(out / "emulator_default.h5", overwrite=True)
            report["storage_default_MiB"] = path.stat().st_size / 2**20
            log(f"default emulator file: {report['storage_default_MiB']:.1f} MiB "
                f"({default.n_lines:,} lines x {default.manifold.grid_shape} nodes)")
        big = blase3d_storage(out, report)
        if args.load_big:
            t0 = time.perf_counter()
            emu = LineEmulator.load(big)
            report["storage_blase3d"]["load_s"] = time.perf_counter() - t0
            log(f"  loaded back in {report['storage_blase3d']['load_s']:.0f} s "
                f"({emu.n_lines:,} lines)")
    report.setdefault("runs", []).append({"parts": sorted(parts), **environment()})
    (out / "report.json").write_text(json.dumps(report, indent=1))
    log(f"report: {out / 'report.json'}")


if __name__ == "__main__":
    main()
