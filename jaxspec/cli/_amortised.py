"""``jaxspec train regressor|flow`` and ``jaxspec infer --method amortized``.

:func:`add_train_parsers` adds the two training sub-commands to the ``jaxspec train``
sub-parser; :func:`infer_amortized` runs a trained model over spectrum files and writes
the same ECSV results table as ``jaxspec infer``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from jaxspec.cli._common import parse_range, report_results

__all__ = ["add_train_parsers", "infer_amortized"]


def add_train_parsers(subparsers) -> None:
    """Add ``regressor`` and ``flow`` to the sub-parsers of ``jaxspec train``.

    Both read an EMULATOR file, simulate ``--n-train`` spectra from it (streamed), train
    with progress bars (``--quiet``: none), checkpoint every epoch to ``<out>.ckpt``
    (``--resume`` continues from it), recalibrate on ``--n-calibrate`` held-out
    simulations and write ``--out`` (HDF5, ``format = "jaxspec-amortised"``, atomically).
    ``--calibrate N`` afterwards checks coverage on N further held-out simulated spectra
    and writes ``<out>_ranks.png``.
    """
    from jaxspec.amortised import flow, regressor

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("emulator", help="emulator file (any kind) to simulate spectra with")
    common.add_argument("--n-train", type=int, metavar="N",
                        help="training spectra (parameters fixed, noise redrawn each epoch; "
                        "default: regressor %d, flow %d)" % (regressor.N_TRAIN, flow.N_TRAIN))
    common.add_argument("--n-val", type=int, metavar="N",
                        help="validation spectra for early stopping (default n-train/10)")
    common.add_argument("--out", required=True, help="model file to write (.h5)")
    common.add_argument("--overwrite", action="store_true",
                        help="replace --out (only once the new model is complete) and start "
                        "afresh over an old <out>.ckpt")
    common.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint <out>.ckpt of an interrupted (or "
                        "finished, to train longer) run with the same options; without "
                        "one, train from the start")
    common.add_argument("--bin", type=int, default=1, metavar="K",
                        help="emulator pixels averaged into one network pixel (default 1)")
    common.add_argument("--wavelength-range", type=parse_range, metavar="LO:HI",
                        help="restrict the network to LO:HI Å")
    common.add_argument("--snr-range", type=parse_range, default=(10.0, 1000.0),
                        metavar="LO:HI", help="training S/N, drawn log-uniformly (default "
                        "10:1000, the cINN paper's range)")
    common.add_argument("--max-epochs", type=int, metavar="E",
                        help="default: regressor %d, flow %d" % (regressor.MAX_EPOCHS,
                                                                 flow.MAX_EPOCHS))
    common.add_argument("--patience", type=int, metavar="E",
                        help="epochs without validation improvement before stopping "
                        "(default: regressor %d, flow %d)" % (regressor.PATIENCE,
                                                              flow.PATIENCE))
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--n-calibrate", type=int, metavar="N",
                        help="held-out simulated spectra the model's uncertainties are "
                        "recalibrated on after training (default %d; 0: none)"
                        % regressor.N_CALIBRATE)
    common.add_argument("--calibrate", type=int, default=0, metavar="N",
                        help="after training, coverage and rank histograms on N further "
                        "held-out simulated spectra (writes <out>_ranks.png)")
    common.add_argument("--quiet", action="store_true",
                        help="no progress bars (default: bars over epochs and batches, "
                        "with ETA)")
    common.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)

    p = subparsers.add_parser(
        "regressor", parents=[common],
        help="train a BOSS Net-style CNN that maps spectra to labels",
        description="Train a 1-D residual CNN (BOSS Net) on spectra simulated with the "
        "EMULATOR: MSE loss, Adamax, early stopping; uncertainties at inference from 20 "
        "draws over the flux errors, recalibrated on held-out simulations (the noise "
        "draws alone miss the network's own error). The defaults train on the tiny "
        "grid's pixel emulator (1,990 px) in " + regressor.DEFAULTS_TIMING + "; the "
        "paper's settings are --n-train 100000 --batch-size 512 --lr 1e-4 --max-epochs "
        "100 --patience 5 (about a day on 2 CPU cores).")
    p.add_argument("--batch-size", type=int, default=regressor.BATCH_SIZE,
                   help="default %d (paper 512)" % regressor.BATCH_SIZE)
    p.add_argument("--lr", type=float, default=regressor.LR,
                   help="Adamax learning rate (default %g; paper 1e-4)" % regressor.LR)
    p.add_argument("--channels", type=int, help="stem channels (default: scaled to pixels)")
    p.add_argument("--stages", type=int, help="residual blocks (default: scaled to pixels)")
    p.set_defaults(func=_train, kind="regressor")

    p = subparsers.add_parser(
        "flow", parents=[common],
        help="train a conditional normalising flow p(θ | spectrum) (cINN style)",
        description="Train a conditional affine-coupling flow (flowjax) on a dense "
        "embedding of the spectrum and its S/N, by maximum likelihood on spectra "
        "simulated with the EMULATOR, then recentre it on held-out simulations. The "
        "defaults train on the tiny grid's pixel emulator (1,990 px) in "
        + flow.DEFAULTS_TIMING + ".")
    p.add_argument("--batch-size", type=int, default=flow.BATCH_SIZE,
                   help="default %d" % flow.BATCH_SIZE)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--lr-decay", type=float, default=0.95, help="per-epoch factor")
    p.add_argument("--weight-decay", type=float, default=1e-5, help="L2 regularisation")
    p.add_argument("--hidden", type=int, nargs="+", metavar="W",
                   help="embedding widths (default: scaled to pixels, e.g. 512 256 128)")
    p.add_argument("--features", type=int, help="embedding output size (default 32)")
    p.add_argument("--flow-layers", type=int, help="coupling layers (default 8)")
    p.add_argument("--nn-width", type=int, help="conditioner width (default 64)")
    p.add_argument("--nn-depth", type=int, help="conditioner hidden layers (default 1)")
    p.set_defaults(func=_train, kind="flow")


def checkpoint_path(out: Path) -> Path:
    """``<out>.ckpt``: the per-epoch training checkpoint beside the model file."""
    return out.with_name(out.name + ".ckpt")


def _train(args: argparse.Namespace) -> int:
    from jaxspec.amortised import (
        Simulator,
        simulation_based_calibration,
        train_flow,
        train_regressor,
    )
    from jaxspec.emulator import load_emulator

    out = Path(args.out)
    ckpt = checkpoint_path(out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it (with --resume "
                              f"to train it further from {ckpt})")
    if ckpt.exists() and not (args.resume or args.overwrite):
        raise FileExistsError(
            f"{ckpt} holds the checkpoint of an earlier run; pass --resume to continue it or "
            "--overwrite to start afresh")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: no such directory for --out {out}")
    emulator = load_emulator(args.emulator)
    sim = Simulator.from_emulator(emulator, bin=args.bin, wavelength_range=args.wavelength_range,
                                  snr_range=args.snr_range)
    progress = not args.quiet
    common = {"n_val": args.n_val, "batch_size": args.batch_size, "lr": args.lr,
              "key": args.seed, "progress": progress, "checkpoint": ckpt,
              "resume": args.resume}
    for kw, value in (("n_train", args.n_train), ("max_epochs", args.max_epochs),
                      ("patience", args.patience), ("n_calibrate", args.n_calibrate)):
        if value is not None:
            common[kw] = value
    print(f"jaxspec train {args.kind}: {sim.n_pix} network pixels "
          f"({sim.wavelength[0]:.3f}–{sim.wavelength[-1]:.3f} Å), parameters "
          f"{', '.join(sim.names)}, S/N {sim.snr_range[0]:g}–{sim.snr_range[1]:g}; "
          f"checkpoint {ckpt}" + (" (resuming)" if args.resume and ckpt.exists() else ""),
          flush=True)
    if args.kind == "regressor":
        model = train_regressor(sim, channels=args.channels, stages=args.stages, **common)
    else:
        model = train_flow(sim, lr_decay=args.lr_decay, weight_decay=args.weight_decay,
                           hidden=args.hidden, features=args.features,
                           flow_layers=args.flow_layers, nn_width=args.nn_width,
                           nn_depth=args.nn_depth, **common)
    hist = json.loads(model.history)
    model.save(out, overwrite=True)
    print(f"wrote {out}: {hist['epochs']} epochs (best {hist['best_epoch'] + 1}), validation "
          f"loss {min(hist['val_loss']):.4g}, {hist['seconds']:.0f} s of training; "
          f"checkpoint kept in {ckpt} (--resume --max-epochs N trains further)")
    if model.calibration is not None:
        _print_recalibration(model, sim.names)
    if args.calibrate:
        cal = simulation_based_calibration(
            model, sim, n=args.calibrate, key=args.seed + 1_000_003,
            plot=out.with_name(out.stem + "_ranks.png"))
        for level in (0.68, 0.95):
            cov = ", ".join(f"{n} {100 * c:.1f} %" for n, c in zip(sim.names,
                                                                   cal["coverage"][level]))
            print(f"coverage of {100 * level:.0f} % intervals (± {100 * cal['stderr'][level]:.1f}"
                  f" %): {cov}")
        print(f"wrote {cal['plot']}")
    return 0


def _print_recalibration(model, names) -> None:
    """One or two lines on what the recalibration did on its held-out set."""
    rep = json.loads(model.calibration.report)

    def per(key, fmt):
        return ", ".join(f"{n} {fmt(v)}" for n, v in zip(names, rep[key]))

    if model.kind == "regressor":
        print(f"recentred on {rep['n']} held-out spectra: mean (estimate - truth) / σ "
              + per("raw_mean_z", lambda v: f"{v:+.2f}") + " with the noise-draw σ before, "
              + per("calibrated_mean_z", lambda v: f"{v:+.2f}") + " after")
        for level in ("68", "95"):
            print(f"recalibrated σ on {rep['n']} held-out spectra: {level} % intervals cover "
                  + per(f"calibrated_coverage_{level}", lambda v: f"{100 * v:.1f} %")
                  + " (noise draws alone: " + per(f"raw_coverage_{level}",
                                                  lambda v: f"{100 * v:.1f} %") + ")")
    else:
        print(f"recentred on {rep['n']} held-out spectra: mean (median - truth) / σ "
              + per("raw_mean_z", lambda v: f"{v:+.2f}") + " before, "
              + per("calibrated_mean_z", lambda v: f"{v:+.2f}") + " after; largest coverage "
              "deviation " + per("raw_max_coverage_deviation", lambda v: f"{v:.3f}")
              + " before, " + per("calibrated_max_coverage_deviation", lambda v: f"{v:.3f}")
              + " after")


def infer_amortized(model_path, spectrum_paths, out, *, overwrite: bool = False,
                    n_samples: int = 4096, n_draws: int = 20, seed: int = 0,
                    batch_size: int = 16, emulator=None, snr=None,
                    progress: bool = False) -> int:
    """Run a trained amortised model over spectrum files; write the ``jaxspec infer`` table.

    Args:
        model_path: model file from ``jaxspec train regressor|flow``.
        spectrum_paths: spectrum tables (ECSV/FITS/CSV with wavelength [Å], flux and
            optionally uncertainty, mask); resampled onto the model's pixels.
        out: output ECSV path, written like the other ``jaxspec infer`` methods' tables
            (:class:`~jaxspec.io.results_writer.ResultsWriter`: rows streamed to
            ``OUT.partial`` after every batch, a rerun skips spectra already done, one
            writer at a time, an unreadable spectrum becomes a ``converged=False`` row).
        overwrite: start afresh instead of resuming ``out``.
        n_samples: flow draws per spectrum (4096).
        n_draws: regressor noise draws per spectrum (20).
        seed: PRNG seed.
        batch_size: spectra per compiled call.
        emulator: None or an emulator file/object: fills the ``loss`` column (RMS
            residual at the estimate, blase3D eq. 4); NaN otherwise.
        snr: None, one S/N, or one per spectrum (default: from the uncertainties, else
            DER_SNR).
        progress: progress bar over batches (of ``batch_size`` spectra).

    Returns:
        Exit code 0. The table has the columns of ``jaxspec infer`` (``file, method,
        <name>, <name>_err, loss, n_evaluations, seconds, converged, message``) plus
        ``snr``, ``<name>_median``, ``<name>_q16``, ``<name>_q84`` and, for a flow,
        ``rejected_fraction``; ``seconds`` is the batch time divided by the spectra.
    """
    from jaxspec.amortised import load_amortised
    from jaxspec.emulator import load_emulator
    from jaxspec.infer import results_table
    from jaxspec.io.results_writer import ResultsWriter, file_checksum
    from jaxspec.io.spectrum import read_spectrum

    out = Path(out)
    if isinstance(spectrum_paths, (str, Path)):
        spectrum_paths = [spectrum_paths]
    if not spectrum_paths:
        raise ValueError("no spectrum files given; pass one or more SPECTRUM tables")
    paths = [str(p) for p in spectrum_paths]
    snrs = None if snr is None else np.broadcast_to(np.asarray(snr, float), (len(paths),))
    model = load_amortised(model_path)
    if isinstance(emulator, (str, Path)):
        emulator = load_emulator(emulator)
    method = f"amortized-{model.kind}"
    kw = {"n_samples": n_samples} if model.kind == "flow" else {"n_draws": n_draws}
    settings = {"method": method, "model": str(model_path),
                "model_sha256": file_checksum(model_path), "seed": seed, **kw,
                "emulator": None if emulator is None else type(emulator).__name__}
    # Rows stream to OUT.partial batch by batch (a kill loses at most one batch, a rerun
    # skips the spectra done), as for the other methods of `jaxspec infer`.
    with ResultsWriter(out, settings=settings, overwrite=overwrite) as writer:
        todo = [(i, p, file_checksum(p)) for i, p in enumerate(paths)]
        todo = [t for t in todo if not writer.done(t[1], t[2])]
        good = []
        for i, path, checksum in todo:
            try:
                good.append((i, path, checksum, read_spectrum(path)))
            except (ValueError, OSError) as err:
                writer.write_error(path, checksum, err, method=method)
        batches = range(0, len(good), batch_size)
        for start in _progress(batches, progress, "amortized"):
            chunk = good[start:start + batch_size]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                # Draws depend on the seed and the chunk's first input index.
                result = model.predict(
                    [c[3] for c in chunk], key=seed + chunk[0][0], batch_size=batch_size,
                    snr=None if snrs is None else snrs[[c[0] for c in chunk]],
                    emulator=emulator, **kw)
                seconds = (time.perf_counter() - t0) / len(chunk)
            for w in caught:
                print(f"jaxspec infer: warning: {w.message}", file=sys.stderr)
            table = results_table(result, model.param_names, files=[c[1] for c in chunk],
                                  method=method, seconds=seconds)
            for row, (_, _, checksum, _) in zip(table, chunk):
                writer.write_row({**{c: row[c] for c in table.colnames},
                                  "checksum": checksum})
        table = writer.finish(order=paths, meta={
            "model": str(model_path), "method": method, "seed": seed,
            "note": "seconds: batch wall-clock time / spectra, JIT included"},
            descriptions={"loss": "RMS residual, blase3D eq. (4); NaN without an emulator"})
    report_results(table, out, method, "estimate(s) flagged")
    return 0


def _progress(iterable, progress: bool, what: str):
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=f"jaxspec infer ({what}, batches)", unit="batch")
