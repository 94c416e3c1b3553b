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

from jaxspec.cli._common import parse_range, write_results

__all__ = ["add_train_parsers", "infer_amortized"]


def add_train_parsers(subparsers) -> None:
    """Add ``regressor`` and ``flow`` to the sub-parsers of ``jaxspec train``.

    Both read an EMULATOR file, simulate ``--n-train`` spectra from it (streamed), train,
    and write ``--out`` (HDF5, ``format = "jaxspec-amortised"``). ``--calibrate N``
    afterwards checks coverage on N held-out simulated spectra and writes
    ``<out>_ranks.png``.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("emulator", help="emulator file (any kind) to simulate spectra with")
    common.add_argument("--n-train", type=int, default=100_000, metavar="N",
                        help="training spectra (default 100000; parameters fixed, noise "
                        "redrawn each epoch)")
    common.add_argument("--n-val", type=int, metavar="N",
                        help="validation spectra for early stopping (default n-train/10)")
    common.add_argument("--out", required=True, help="model file to write (.h5)")
    common.add_argument("--overwrite", action="store_true")
    common.add_argument("--bin", type=int, default=1, metavar="K",
                        help="emulator pixels averaged into one network pixel (default 1)")
    common.add_argument("--wavelength-range", type=parse_range, metavar="LO:HI",
                        help="restrict the network to LO:HI Å")
    common.add_argument("--snr-range", type=parse_range, default=(10.0, 1000.0),
                        metavar="LO:HI", help="training S/N, drawn log-uniformly (default "
                        "10:1000, the cINN paper's range)")
    common.add_argument("--max-epochs", type=int, default=100)
    common.add_argument("--patience", type=int, default=5,
                        help="epochs without validation improvement before stopping")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--calibrate", type=int, default=0, metavar="N",
                        help="after training, coverage and rank histograms on N held-out "
                        "simulated spectra (writes <out>_ranks.png)")
    common.add_argument("--progress", action="store_true", help="progress bar over epochs")

    p = subparsers.add_parser(
        "regressor", parents=[common],
        help="train a BOSS Net-style CNN that maps spectra to labels",
        description="Train a 1-D residual CNN (BOSS Net) on spectra simulated with the "
        "EMULATOR: MSE loss, Adamax, early stopping; uncertainties at inference from 20 "
        "draws over the flux errors.")
    p.add_argument("--batch-size", type=int, default=512, help="default 512 (paper)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adamax learning rate (1e-4, paper)")
    p.add_argument("--channels", type=int, help="stem channels (default: scaled to pixels)")
    p.add_argument("--stages", type=int, help="residual blocks (default: scaled to pixels)")
    p.set_defaults(func=_train, kind="regressor")

    p = subparsers.add_parser(
        "flow", parents=[common],
        help="train a conditional normalising flow p(θ | spectrum) (cINN style)",
        description="Train a conditional affine-coupling flow (flowjax) on a dense "
        "embedding of the spectrum and its S/N, by maximum likelihood on spectra "
        "simulated with the EMULATOR.")
    p.add_argument("--batch-size", type=int, default=256)
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


def _train(args: argparse.Namespace) -> int:
    from jaxspec.amortised import (
        Simulator,
        simulation_based_calibration,
        train_flow,
        train_regressor,
    )
    from jaxspec.emulator import load_emulator

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    emulator = load_emulator(args.emulator)
    sim = Simulator.from_emulator(emulator, bin=args.bin, wavelength_range=args.wavelength_range,
                                  snr_range=args.snr_range)
    common = {"n_train": args.n_train, "n_val": args.n_val, "batch_size": args.batch_size,
              "lr": args.lr, "max_epochs": args.max_epochs, "patience": args.patience,
              "key": args.seed, "progress": args.progress}
    print(f"jaxspec train {args.kind}: {sim.n_pix} network pixels "
          f"({sim.wavelength[0]:.3f}–{sim.wavelength[-1]:.3f} Å), parameters "
          f"{', '.join(sim.names)}, S/N {sim.snr_range[0]:g}–{sim.snr_range[1]:g}")
    if args.kind == "regressor":
        model = train_regressor(sim, channels=args.channels, stages=args.stages, **common)
    else:
        model = train_flow(sim, lr_decay=args.lr_decay, weight_decay=args.weight_decay,
                           hidden=args.hidden, features=args.features,
                           flow_layers=args.flow_layers, nn_width=args.nn_width,
                           nn_depth=args.nn_depth, **common)
    hist = json.loads(model.history)
    model.save(out, overwrite=True)
    print(f"wrote {out}: {hist['epochs']} epochs (best {hist['best_epoch']}), validation loss "
          f"{min(hist['val_loss']):.4g}, {hist['seconds']:.0f} s")
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


def infer_amortized(model_path, spectrum_paths, out, *, overwrite: bool = False,
                    n_samples: int = 4096, n_draws: int = 20, seed: int = 0,
                    batch_size: int = 16, emulator=None, snr=None,
                    progress: bool = False) -> int:
    """Run a trained amortised model over spectrum files; write the ``jaxspec infer`` table.

    Args:
        model_path: model file from ``jaxspec train regressor|flow``.
        spectrum_paths: spectrum tables (ECSV/FITS/CSV with wavelength [Å], flux and
            optionally uncertainty, mask); resampled onto the model's pixels.
        out: output ECSV path.
        overwrite: replace ``out``.
        n_samples: flow draws per spectrum (4096).
        n_draws: regressor noise draws per spectrum (20).
        seed: PRNG seed.
        batch_size: spectra per compiled call.
        emulator: None or an emulator file/object: fills the ``loss`` column (RMS
            residual at the estimate, blase3D eq. 4); NaN otherwise.
        snr: None, one S/N, or one per spectrum (default: from the uncertainties, else
            DER_SNR).
        progress: progress bar over batches.

    Returns:
        Exit code 0. The table has the columns of ``jaxspec infer`` (``file, method,
        <name>, <name>_err, loss, n_evaluations, seconds, converged, message``) plus
        ``snr``, ``<name>_median``, ``<name>_q16``, ``<name>_q84`` and, for a flow,
        ``rejected_fraction``; ``seconds`` is the batch time divided by the spectra.
    """
    from jaxspec.amortised import load_amortised
    from jaxspec.emulator import load_emulator
    from jaxspec.infer import results_table
    from jaxspec.io.spectrum import read_spectrum

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if isinstance(spectrum_paths, (str, Path)):
        spectrum_paths = [spectrum_paths]
    if not spectrum_paths:
        raise ValueError("no spectrum files given; pass one or more SPECTRUM tables")
    model = load_amortised(model_path)
    if isinstance(emulator, (str, Path)):
        emulator = load_emulator(emulator)
    spectra = [read_spectrum(p) for p in spectrum_paths]
    kw = {"n_samples": n_samples} if model.kind == "flow" else {"n_draws": n_draws}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        result = model.predict(spectra, snr=snr, key=seed, batch_size=batch_size,
                               emulator=emulator, progress=progress, **kw)
        seconds = (time.perf_counter() - t0) / len(spectra)
    for w in caught:
        print(f"jaxspec infer: warning: {w.message}", file=sys.stderr)
    method = f"amortized-{model.kind}"
    table = results_table(result, model.param_names, files=[str(p) for p in spectrum_paths],
                          method=method, seconds=seconds)
    table.meta.update({
        "model": str(model_path), "method": method,
        "seed": seed, "note": "seconds: batch wall-clock time / spectra, JIT included",
    })
    table["loss"].description = "RMS residual, blase3D eq. (4); NaN without an emulator"
    write_results(table, out, method, "estimate(s) flagged")
    return 0
