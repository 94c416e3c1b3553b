"""``jaxspec infer``: stellar parameters of observed spectra with any emulator."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from jaxspec.cli._common import (
    add_dask_options,
    parse_range,
    plot_stem,
    report_results,
)

_METHODS = ("bo", "map", "nuts", "amortized")


def register(sub) -> None:
    p = sub.add_parser(
        "infer",
        help="infer stellar parameters of spectra (Bayesian optimisation, MAP or NUTS)",
        description="Fit each SPECTRUM with the EMULATOR and write one row per spectrum to "
        "an ECSV table: file, method, every parameter, <name>_err (1σ: Laplace for map, "
        "posterior std for nuts; absent for bo), loss (RMS, blase3D eq. 4), n_evaluations, "
        "seconds, converged and a message. A SPECTRUM is a table astropy reads (ECSV, "
        "FITS, CSV) with columns wavelength (Å), flux and optionally uncertainty (1σ; or "
        "variance, ivar), mask and segment; an APOGEE apStar/aspcapStar file; a "
        "multi-order echelle FITS file (HPF layout); or a 1-D FITS image with a linear or "
        "log-linear wavelength WCS. A SPECTRUM may be a quoted glob pattern "
        "('spectra/*.fits') or @LIST (a file of paths). Spectra without uncertainties get "
        "a fitted noise scale. Survey scale: --workers N fits on a local Dask cluster of N "
        "processes, --scheduler ADDRESS on an existing one; rows are written by this "
        "process as stars finish. With --fit (or "
        "--rv/--vsini/--resolution/--lsf) the emulator is observed through radial "
        "velocity, rotation, line-spread function, pixel integration and a Chebyshev "
        "continuum (jaxspec.extrinsic); EMULATOR may then also be a line-list .npz (a "
        "blase clone), fitted as a fixed template. "
        "Rows are written as they are fitted (appended to OUT.partial; OUT is written "
        "from them, atomically, at the end), so a killed batch loses at most the spectrum being fitted; a rerun with the same "
        "options skips spectra already in OUT or OUT.partial (same path and file checksum) "
        "unless --overwrite. A file that cannot be used becomes a row with converged=False "
        "and the reason; implausible fits (chi2/nu far above 1, a box corner, posterior = "
        "prior) are converged=False too. One run writes OUT at a time (OUT.lock).",
    )
    p.add_argument("emulator", help="emulator file (any kind: jaxspec build / train)")
    p.add_argument("spectra", nargs="+", metavar="SPECTRUM",
                   help="spectrum file(s), quoted glob patterns ('spectra/*.fits') or "
                   "@LIST (one path per line)")
    p.add_argument("--method", choices=_METHODS, default="map",
                   help="bo: GP Bayesian optimisation (paper); map: gradient MAP + Laplace "
                   "errors (default); nuts: posterior samples; amortized: a network from "
                   "`jaxspec train regressor|flow` given as EMULATOR")
    p.add_argument("--out", required=True,
                   help="output table (.ecsv); rows of an earlier run with the same options "
                   "are kept and their spectra skipped")
    p.add_argument("--overwrite", action="store_true",
                   help="start the table afresh (the old OUT stays until the new one is "
                   "complete)")
    p.add_argument("--guess", "--teff-guess", dest="guess", type=float, nargs="+",
                   metavar="VALUE",
                   help="guess(es) of the --window-param parameter (Teff in K by default): "
                   "one for all spectra or one per spectrum; its search is limited to "
                   "guess ± --window (--teff-guess: the older name)")
    p.add_argument("--window", "--teff-window", dest="window", type=float, default=None,
                   metavar="HALF_WIDTH",
                   help="half width of that window, in the parameter's unit (default 500 K "
                   "for Teff, as in the paper; required for another parameter; "
                   "--teff-window: the older name)")
    p.add_argument("--window-param", default="teff", metavar="NAME",
                   help="the parameter --guess and --window apply to (default teff)")
    p.add_argument("--plot", action="store_true",
                   help="write <out>_<spectrum>_fit.png (data, model, residual) and, for "
                   "map/nuts, <out>_<spectrum>_corner.png beside the table")
    p.add_argument("--resample", choices=("model", "data"), default="model",
                   help="model: emulator onto the data pixels (default); data: data onto "
                   "the emulator pixels")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("bo")
    g.add_argument("--n-random", type=int, default=100)
    g.add_argument("--n-guided", type=int, default=20)
    g = p.add_argument_group("map")
    g.add_argument("--starts", type=int, default=4, help="optimisations per spectrum")
    g = p.add_argument_group("nuts")
    g.add_argument("--warmup", type=int, default=500)
    g.add_argument("--samples", type=int, default=500)
    g.add_argument("--chains", type=int, default=4)
    g = p.add_argument_group(
        "extrinsic", "radial velocity (km/s, relativistic), v sin i (km/s, Gray's kernel), "
        "resolving power R (Gaussian LSF of FWHM λ/R) and a Chebyshev continuum")
    g.add_argument("--fit", metavar="LIST",
                   help="extrinsic parameters fitted with the stellar ones, comma-separated "
                   "from rv, vsini, resolution, continuum=K (Chebyshev degree K: K + 1 "
                   "coefficients c0..cK), e.g. rv,vsini,resolution,continuum=3")
    g.add_argument("--rv", type=float, default=0.0, metavar="KMS",
                   help="fixed RV when rv is not fitted (default 0)")
    g.add_argument("--vsini", type=float, default=0.0, metavar="KMS",
                   help="fixed v sin i when vsini is not fitted (default 0: no rotation)")
    g.add_argument("--resolution", type=float, metavar="R",
                   help="fixed R when resolution is not fitted (default: no LSF)")
    g.add_argument("--rv-range", type=parse_range, default=(-100.0, 100.0), metavar="LO:HI",
                   help="RV prior box, km/s (default -100:100); the model must cover the "
                   "spectrum at every RV in it")
    g.add_argument("--vsini-range", type=parse_range, default=(0.0, 50.0), metavar="LO:HI",
                   help="v sin i prior box, km/s (default 0:50)")
    g.add_argument("--resolution-range", type=parse_range, default=(20000.0, 120000.0),
                   metavar="LO:HI", help="R prior box (default 20000:120000)")
    g.add_argument("--c0-range", type=parse_range, default=(0.5, 1.5), metavar="LO:HI",
                   help="box of the continuum's c0 (default 0.5:1.5)")
    g.add_argument("--continuum-range", type=parse_range, default=(-0.5, 0.5),
                   metavar="LO:HI", help="box of c1..cK (default -0.5:0.5)")
    g.add_argument("--epsilon", type=float, default=0.6,
                   help="linear limb darkening of the rotation kernel (default 0.6)")
    g.add_argument("--lsf", metavar="TABLE",
                   help="tabulated LSF instead of a Gaussian: a table with columns "
                   "velocity (km/s) and profile")
    g.add_argument("--rv-step", type=float, default=1.0, metavar="KMS",
                   help="step of the initial RV scan (default 1 km/s)")
    g.add_argument("--rv-window", type=float, default=20.0, metavar="KMS",
                   help="after the RV scan, search rv within best ± this (default 20 km/s; "
                   "0: keep the whole --rv-range)")
    g.add_argument("--template-step", type=float, default=0.3, metavar="KMS",
                   help="sampling of a line-list template, km/s per pixel (default 0.3)")
    p.add_argument("--prior", action="append", default=[], metavar="NAME=normal:MU:SIGMA",
                   help="Gaussian prior (truncated to the box) on any parameter, e.g. "
                   "resolution=normal:55000:3000; repeatable; map and nuts only")
    p.add_argument("--fit-noise", action="store_true",
                   help="fit a noise scale even when uncertainties are given (errors then "
                   "scale with sqrt(chi2/nu))")
    p.add_argument("--mask-bits", type=int, metavar="N",
                   help="the mask column is an integer bitmask (0 = good): use the pixels "
                   "where (mask & N) == 0, e.g. 1 for bit 0; without it a mask column must be "
                   "bool or 0/1 (True = used)")
    g = p.add_argument_group(
        "observed spectra", "how spectrum files are read and prepared (bo, map, nuts)")
    g.add_argument("--normalize", action="store_true",
                   help="divide each spectrum (each echelle order / APOGEE chip separately) "
                   "by its continuum, fitted with the grid's method (Chebyshev through the "
                   "upper envelope, blase3D eq. 1), before the fit; for flux-calibrated or "
                   "raw spectra (apStar). Alternative: --fit continuum=K fits it jointly")
    g.add_argument("--normalize-order", type=int, default=5, metavar="K",
                   help="Chebyshev degree of --normalize (default 5, as for the grid)")
    g.add_argument("--normalize-quantile", type=float, default=0.9, metavar="Q",
                   help="flux quantile per envelope bin for --normalize (default 0.9: the "
                   "bin maximum of noisy data is biased high)")
    g.add_argument("--layout", choices=("table", "apogee", "echelle", "image"),
                   help="file layout (default: detected from each file)")
    g.add_argument("--visit", type=int, metavar="K",
                   help="APOGEE apStar: fit visit K (1..NVISITS) instead of the combined "
                   "spectrum")
    g.add_argument("--orders", type=_parse_orders, metavar="LIST",
                   help="echelle files: the orders (row indices, e.g. 3,4,5 or 3-8) to use "
                   "(default all)")
    g.add_argument("--spectrum-medium", choices=("air", "vacuum"),
                   help="wavelength medium of spectrum files that do not record it "
                   "(APOGEE and HPF files are vacuum; tables may say it in meta 'medium')")
    g.add_argument("--emulator-medium", choices=("air", "vacuum"),
                   help="wavelength medium of the emulator (vacuum for PHOENIX grids, air for "
                   "the synthetic grid): spectra in the other medium are converted (Morton "
                   "2000 / VALD, jaxspec.medium); default: no conversion")
    g = p.add_argument_group("output and scale")
    g.add_argument("--posterior", metavar="FILE.nc",
                   help="also write the posteriors as one arviz InferenceData NetCDF file "
                   "with a star dimension: nuts samples and sample stats; map the Laplace "
                   "mean and covariance (group 'laplace'). Resumes like OUT")
    add_dask_options(
        g, "fit on a local Dask cluster of N worker processes (each loads and compiles the "
        "emulator once)",
        "fit on an existing Dask cluster (e.g. tcp://host:8786); the spectrum and emulator "
        "paths must be readable by its workers")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (by default a bar with ETA over spectra on stderr)")
    p.add_argument("--progress", action="store_true",
                   help="accepted for old scripts; the progress bar is on by default")
    p.set_defaults(func=_infer)


def _infer(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from tqdm.auto import tqdm

    from jaxspec.cli._survey import NO_POSTERIOR_PREFIXES, StarTask, expand_spectra
    from jaxspec.io.posterior import PosteriorWriter
    from jaxspec.io.results_writer import ResultsWriter, file_checksum

    out = Path(args.out)
    args.spectra = expand_spectra(args.spectra)
    if args.method == "amortized":
        _validate_amortized(args)
        from jaxspec.cli._amortised import infer_amortized

        return infer_amortized(args.emulator, args.spectra, out, overwrite=args.overwrite,
                               seed=args.seed, progress=not args.quiet)
    _validate(args)  # every option before any work
    paths, guesses = _unique_spectra(args)
    settings = _settings(args)
    # an emulator file that cannot be loaded fails here, before any star (a line list
    # becomes a template only once the spectra are read: _outcomes)
    if Path(args.emulator).suffix.lower() == ".npz":
        _check_line_list(args)
        model = None
    else:
        model = _load_model(args, [])
    posterior = (PosteriorWriter(args.posterior, settings=settings, overwrite=args.overwrite)
                 if args.posterior else nullcontext())
    with ResultsWriter(out, settings=settings, overwrite=args.overwrite) as writer, \
            posterior as post:

        def done(path, checksum):
            """A row exists (and, with --posterior, its posterior or no need of one)."""
            if not writer.done(path, checksum):
                return False
            if post is None:
                return True
            message = str(writer.row(path).get("message", ""))
            return post.has(path, checksum) or message.startswith(NO_POSTERIOR_PREFIXES)

        todo = [(p, file_checksum(p), g) for p, g in zip(paths, guesses)]
        todo = [t for t in todo if not done(t[0], t[1])]
        if len(todo) < len(paths):
            print(f"jaxspec infer: {out}: {writer.n_resumed} row(s) of an earlier run kept; "
                  f"{len(paths) - len(todo)} of {len(paths)} spectra already done",
                  file=sys.stderr)
        tasks = [StarTask(p, c, g, plot_stem(out, p, args.spectra) if args.plot else None)
                 for p, c, g in todo]
        n_bad = n_fitted = 0
        bar = tqdm(total=len(tasks), desc="jaxspec infer", unit="star", disable=args.quiet,
                   file=sys.stderr)
        outcomes = _outcomes(args, tasks, model, settings["emulator_sha256"])
        try:
            for outcome in outcomes:
                for text in outcome["warnings"]:
                    bar.write(f"jaxspec infer: warning: {text}", file=sys.stderr)
                if "error" in outcome:
                    n_bad += _record_error(writer, outcome, args.method, bar)
                else:
                    n_fitted += 1
                    if post is not None and outcome["posterior"] is not None:
                        post.write(outcome["file"], outcome["checksum"], outcome["posterior"])
                    writer.write_row(outcome["row"])
                    for path in outcome["plots"]:
                        bar.write(f"wrote {path}")
                bar.update(1)
        finally:
            bar.close()
            if hasattr(outcomes, "close"):  # stop a Dask run now (cancel, shut down)
                outcomes.close()
        table = writer.finish(meta=_meta(args), units=_UNITS, order=paths, descriptions={
            "loss": "RMS residual, blase3D eq. (4)",
            "chi2_nu": "chi2 per degree of freedom (given uncertainties)",
            "checksum": "SHA-256 of the spectrum file (rows are reused on rerun while it "
                        "is unchanged)",
        })
        if post is not None:
            written = post.finish({str(r["file"]): str(r["checksum"]) for r in table},
                                  order=paths)
            if written is not None:
                print(f"wrote {written}: posteriors of the fitted spectra")
    report_results(table, out, args.method, "fit(s) did not converge")
    if todo and n_fitted == 0 and n_bad == len(todo):
        return 1  # nothing in this run could be fitted: every input was bad
    return 0


_UNITS = {"teff": "K", "teff_err": "K", "rv": "km/s", "rv_err": "km/s", "vsini": "km/s",
          "vsini_err": "km/s"}


def _record_error(writer, outcome, method, bar) -> int:
    """Report a star that was not fitted; write its row unless a rerun should retry it
    (a dead worker). Returns 1 for an input error, else 0."""
    if outcome.get("retry"):
        bar.write(f"jaxspec infer: error: {outcome['error']}", file=sys.stderr)
        return 0
    bar.write(f"jaxspec infer: error: {outcome['error']} (row written with converged=False; "
              "the batch goes on)", file=sys.stderr)
    if outcome["input_error"]:
        writer.write_error(outcome["file"], outcome["checksum"], outcome["error"],
                           method=method)
        return 1
    writer.write_row({"file": outcome["file"], "method": method, "converged": False,
                      "message": f"fit failed: {outcome['error']}",
                      "checksum": outcome["checksum"]})
    return 0


def _outcomes(args, tasks, model, emulator_sha256: str):
    """The outcome of every task (:func:`jaxspec.cli._survey.fit_file`), fitted in this
    process (with ``model``, the loaded emulator) or on Dask (--workers / --scheduler:
    each worker loads the emulator file itself, once), as they finish."""
    from jaxspec.cli._survey import run_dask, run_local

    if not tasks:
        return iter(())
    # what every star's fit needs; the path list and guesses travel in the tasks
    config = argparse.Namespace(**{k: v for k, v in vars(args).items()
                                   if k not in ("func", "spectra", "guess")})
    config.emulator_sha256 = emulator_sha256
    if Path(args.emulator).suffix.lower() == ".npz":
        # a line-list template must cover every spectrum: built once, here, from all
        from jaxspec.cli._survey import read_for_fit

        spectra = []
        for task in tasks:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # fit_file reports them
                    spectra.append(read_for_fit(task.path, config))
            except (ValueError, TypeError, OSError):
                continue  # fit_file reports it
        if spectra:
            model = _load_model(args, spectra)
    if args.workers or args.scheduler:
        shipped = model if Path(args.emulator).suffix.lower() == ".npz" else None
        return run_dask(tasks, config, shipped, workers=args.workers,
                        scheduler=args.scheduler)
    return run_local(tasks, config, model)


def _validate_amortized(args) -> None:
    """Options of bo/map/nuts that --method amortized does not take: refused loudly."""
    given = [flag for flag, value in (
        ("--workers", args.workers), ("--scheduler", args.scheduler),
        ("--posterior", args.posterior), ("--normalize", args.normalize),
        ("--visit", args.visit), ("--orders", args.orders), ("--layout", args.layout),
        ("--spectrum-medium", args.spectrum_medium),
        ("--emulator-medium", args.emulator_medium)) if value]
    if given:
        raise ValueError(f"{', '.join(given)}: not taken by --method amortized (a trained "
                         "network evaluates its batch in one process); use bo, map or nuts")


def _parse_orders(text: str) -> list[int]:
    """``"3,4,5"`` or ``"3-8"`` (or a mix) → sorted unique order indices."""
    out = set()
    try:
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            out.update(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected order indices like 3,4,5 or 3-8, got "
                                         f"{text!r}") from None
    return sorted(out)


def _validate(args) -> None:
    """Every numeric option checked before any spectrum is read or fitted."""
    checks = [("--starts", args.starts, 1), ("--n-random", args.n_random, 1),
              ("--n-guided", args.n_guided, 0)]
    if args.method == "nuts":
        checks += [("--samples", args.samples, 2), ("--warmup", args.warmup, 0),
                   ("--chains", args.chains, 1)]
    for flag, value, least in checks:
        if value < least:
            raise ValueError(f"{flag} {value}: pass an integer >= {least}")
    if args.mask_bits is not None and args.mask_bits < 1:
        raise ValueError(f"--mask-bits {args.mask_bits}: pass a positive integer, the bits "
                         "that mark a bad pixel (e.g. 1)")
    from jaxspec.infer import DEFAULT_TEFF_WINDOW

    if args.window is None and args.window_param == "teff":
        args.window = DEFAULT_TEFF_WINDOW
    if args.guess is not None and args.window is None:
        raise ValueError(f"--guess for {args.window_param} needs --window (its half width); "
                         f"only Teff has a default ({DEFAULT_TEFF_WINDOW:g} K)")
    positive = [("--template-step", args.template_step), ("--rv-step", args.rv_step)]
    if args.window is not None:
        positive.insert(0, ("--window", args.window))
    for flag, value in positive:
        if not value > 0:
            raise ValueError(f"{flag} {value}: pass a positive number")
    if args.rv_window < 0:
        raise ValueError(f"--rv-window {args.rv_window}: pass 0 (whole --rv-range) or more")
    if args.fit:
        from jaxspec.observed_emulator import parse_fit

        parse_fit(args.fit)
    if args.method == "bo" and args.prior:
        raise ValueError("--prior needs --method map or nuts; bo searches the box (a uniform "
                         "prior): narrow it with the --*-range options instead")
    if args.guess is not None and len(args.guess) not in (1, len(args.spectra)):
        raise ValueError(
            f"--guess has {len(args.guess)} values for {len(args.spectra)} spectra; "
            "give one for all or one per spectrum"
        )
    if args.posterior and args.method == "bo":
        raise ValueError("--posterior needs --method nuts (samples) or map (Laplace mean and "
                         "covariance); bo gives no posterior")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers {args.workers}: pass the number of worker processes, "
                         ">= 1")
    if args.normalize_order < 0:
        raise ValueError(f"--normalize-order {args.normalize_order}: pass a degree >= 0 "
                         "(5 as for the grid)")
    if not 0.0 < args.normalize_quantile <= 1.0:
        raise ValueError(f"--normalize-quantile {args.normalize_quantile}: pass a value in "
                         "(0, 1]")
    if args.visit is not None and args.visit < 1:
        raise ValueError(f"--visit {args.visit}: APOGEE visits are numbered from 1")
    if args.posterior and Path(args.posterior).resolve() == Path(args.out).resolve():
        raise ValueError(f"--posterior {args.posterior} is --out; pass another file (.nc)")


def _unique_spectra(args):
    """The spectrum paths, each once (a repeated path is fitted once, with a warning), and
    their guesses (of ``--window-param``)."""
    guesses = [None] * len(args.spectra)
    if args.guess is not None:
        guesses = [float(g) for g in np.broadcast_to(args.guess, (len(args.spectra),))]
    paths, out = [], []
    for path, guess in zip(args.spectra, guesses):
        if path in paths:
            print(f"jaxspec infer: warning: {path} is given more than once; fitted once",
                  file=sys.stderr)
            continue
        paths.append(path)
        out.append(guess)
    return paths, out


def _settings(args) -> dict:
    """What makes the rows of a results table (a rerun reuses rows only under equal
    settings): the emulator (path and SHA-256), the method and every option of it."""
    from jaxspec.io.results_writer import file_checksum

    keys = ["method", "resample", "seed", "fit", "rv", "vsini",
            "resolution", "rv_range", "vsini_range", "resolution_range", "c0_range",
            "continuum_range", "epsilon", "lsf", "rv_step", "rv_window", "template_step",
            "prior", "fit_noise", "mask_bits"]
    keys += {"bo": ["n_random", "n_guided"], "map": ["starts"],
             "nuts": ["starts", "warmup", "samples", "chains"]}[args.method]
    settings = {k: getattr(args, k) for k in keys}
    # a Teff window keeps the keys of earlier versions, so that their tables still resume
    if args.window_param == "teff":
        settings.update(teff_window=args.window, teff_guess=args.guess)
    else:
        settings.update(window_param=args.window_param, window=args.window, guess=args.guess)
    # reading options enter only when used, so tables of earlier versions still resume
    for key, default in (("normalize", False), ("layout", None), ("visit", None),
                         ("orders", None), ("spectrum_medium", None),
                         ("emulator_medium", None)):
        if getattr(args, key) != default:
            settings[key] = getattr(args, key)
    if args.normalize:
        settings["normalize_order"] = args.normalize_order
        settings["normalize_quantile"] = args.normalize_quantile
    settings["emulator"] = str(args.emulator)
    settings["emulator_sha256"] = file_checksum(args.emulator)
    return settings


def _meta(args) -> dict:
    meta = {
        "emulator": str(args.emulator), "method": args.method,
        f"{args.window_param}_window": args.window, "resample": args.resample,
        "seed": args.seed,
        "note": "seconds of the first spectrum fitted in a run include JIT compilation",
    }
    if args.fit or args.rv or args.vsini or args.resolution is not None or args.lsf:
        meta.update({
            "fit": args.fit or "", "rv_range": list(args.rv_range),
            "vsini_range": list(args.vsini_range),
            "resolution_range": list(args.resolution_range), "epsilon": args.epsilon,
            "rv_window": args.rv_window, "priors": list(args.prior),
        })
    return meta


def _load_model(args, spectra):
    """The emulator file, or a line-list .npz synthesised as a Template covering every
    spectrum at every RV of --rv-range (plus the broadening margin)."""
    import jaxspec.template  # noqa: F401  (registers the "template" emulator kind)
    from jaxspec.emulator import load_emulator

    path = Path(args.emulator)
    if path.suffix.lower() != ".npz":
        return load_emulator(path)
    from jaxspec.extrinsic import required_model_range
    from jaxspec.lines import LineList
    from jaxspec.observed_emulator import parse_fit
    from jaxspec.template import Template

    _check_line_list(args)
    names, _ = parse_fit(args.fit)
    rv_range = args.rv_range if "rv" in names else (args.rv, args.rv)
    vsini_max = args.vsini_range[1] if "vsini" in names else args.vsini
    r_min = args.resolution_range[0] if "resolution" in names else args.resolution
    lsf_half = 0.0
    if args.lsf:
        from jaxspec.cli._survey import read_lsf

        v, _ = read_lsf(args.lsf)
        lsf_half = float(np.max(np.abs(v)))
    ranges = [required_model_range(s.wavelength, rv_range=rv_range, vsini_max=max(vsini_max, 0),
                                   resolution_min=r_min if (r_min or 0) > 0 else None,
                                   lsf_half_width=lsf_half, velocity_step=args.template_step)
              for s in spectra]
    lo = min(r[0] for r in ranges) - 1.0
    hi = max(r[1] for r in ranges) + 1.0
    lines = LineList.from_npz(path)
    return Template.from_line_list(lines, (lo, hi), velocity_step=args.template_step,
                                   label=path.name)


def _check_line_list(args) -> None:
    """A line-list EMULATOR exists and comes with extrinsic options (checked before the
    spectra are read)."""
    path = Path(args.emulator)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such line-list file")
    if not (args.fit or args.rv or args.vsini or args.resolution):
        raise ValueError(f"{path} is a line list (a template without parameters); pass "
                         "--fit (e.g. rv,vsini,resolution,continuum=3)")
