"""``jaxspec infer``: stellar parameters of observed spectra with any emulator."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from jaxspec.cli._common import matplotlib_pyplot, save_figure

_METHODS = ("bo", "map", "nuts")


def register(sub) -> None:
    p = sub.add_parser(
        "infer",
        help="infer stellar parameters of spectra (Bayesian optimisation, MAP or NUTS)",
        description="Fit each SPECTRUM with the EMULATOR and write one row per spectrum to "
        "an ECSV table: file, method, every parameter, <name>_err (1σ: Laplace for map, "
        "posterior std for nuts; absent for bo), loss (RMS, blase3D eq. 4), n_evaluations, "
        "seconds, converged and a message. A SPECTRUM is a table astropy reads (ECSV, "
        "FITS, CSV) with columns wavelength (Å), flux and optionally uncertainty (1σ) and "
        "mask. Spectra without uncertainties get a fitted noise scale.",
    )
    p.add_argument("emulator", help="emulator file (any kind: jaxspec build / train)")
    p.add_argument("spectra", nargs="+", metavar="SPECTRUM", help="spectrum table(s)")
    p.add_argument("--method", choices=_METHODS, default="map",
                   help="bo: GP Bayesian optimisation (paper); map: gradient MAP + Laplace "
                   "errors (default); nuts: posterior samples")
    p.add_argument("--out", required=True, help="output table (.ecsv)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--teff-guess", type=float, nargs="+", metavar="K",
                   help="Teff guess(es): one for all spectra or one per spectrum; the search "
                   "is limited to guess ± --teff-window")
    p.add_argument("--teff-window", type=float, default=500.0, metavar="K",
                   help="half width of the Teff window (default 500 K, as in the paper)")
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
    p.add_argument("--progress", action="store_true", help="progress bar over spectra")
    p.set_defaults(func=_infer)


def _infer(args: argparse.Namespace) -> int:
    from astropy.table import vstack
    from tqdm.auto import tqdm

    from jaxspec.emulator import load_emulator
    from jaxspec.infer import bayes_opt, fit_map, observe, results_table, sample_nuts
    from jaxspec.infer.spectrum import pad_observation
    from jaxspec.io.spectrum import read_spectrum

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    emulator = load_emulator(args.emulator)
    spectra = [read_spectrum(path) for path in args.spectra]
    guesses = [None] * len(spectra)
    if args.teff_guess is not None:
        if len(args.teff_guess) not in (1, len(spectra)):
            raise ValueError(
                f"--teff-guess has {len(args.teff_guess)} values for {len(spectra)} spectra; "
                "give one for all or one per spectrum"
            )
        guesses = list(np.broadcast_to(args.teff_guess, (len(spectra),)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        observations = [observe(s, emulator, args.resample) for s in spectra]
    for w in caught:
        print(f"jaxspec infer: warning: {w.message}", file=sys.stderr)
    # one pixel count for all spectra: one compilation
    length = max(int(o.flux.shape[0]) for o in observations)
    observations = [pad_observation(o, length) for o in observations]

    names = emulator.param_names
    tables, results = [], []
    for i in tqdm(range(len(spectra)), desc="jaxspec infer", disable=not args.progress):
        kw = dict(teff_guess=guesses[i], teff_window=args.teff_window, key=args.seed)
        t0 = time.perf_counter()
        if args.method == "bo":
            res = bayes_opt(emulator, observations[i], n_random=args.n_random,
                            n_guided=args.n_guided, **kw)
        elif args.method == "map":
            res = fit_map(emulator, observations[i], n_starts=args.starts, **kw)
        else:
            res = sample_nuts(emulator, observations[i], num_warmup=args.warmup,
                              num_samples=args.samples, num_chains=args.chains,
                              inference_data=False, **kw)
        np.asarray(res.params)  # wait for the device
        seconds = time.perf_counter() - t0
        results.append(res)
        tables.append(results_table(res, names, files=[args.spectra[i]], method=args.method,
                                    seconds=seconds))
    table = vstack(tables, metadata_conflicts="silent")
    table.meta.update({
        "emulator": str(args.emulator), "method": args.method,
        "teff_window": args.teff_window, "resample": args.resample, "seed": args.seed,
        "note": "seconds of the first spectrum include JIT compilation",
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    table.write(out, format="ascii.ecsv", overwrite=True)
    print(f"wrote {out}: {len(table)} spectra, method {args.method}")
    bad = [f"{row['file']} ({row['message']})" for row in table if not row["converged"]]
    if bad:
        print(f"jaxspec infer: warning: {len(bad)} of {len(table)} fit(s) did not converge: "
              + "; ".join(bad), file=sys.stderr)
    if args.plot:
        for i, res in enumerate(results):
            for path in _plots(emulator, observations[i], res, args, out, Path(args.spectra[i])):
                print(f"wrote {path}")
    return 0


def _plots(emulator, obs, res, args, out: Path, spectrum_path: Path):
    import jax.numpy as jnp

    plt = matplotlib_pyplot()
    stem = f"{out.with_suffix('')}_{spectrum_path.stem}"
    names = emulator.param_names
    params = np.asarray(res.params)
    mask = np.asarray(obs.mask)
    wl = np.asarray(obs.wavelength)[mask]
    data = np.asarray(obs.flux)[mask]
    model = np.asarray(obs.project(emulator(jnp.asarray(params))))[mask]
    fig, (ax, axr) = plt.subplots(2, 1, figsize=(11, 5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(wl, data, lw=0.6, color="k", label="data")
    ax.plot(wl, model, lw=0.6, color="C3", label="model")
    ax.set_ylabel("normalised flux")
    ax.legend(loc="lower left")
    ax.set_title(f"{spectrum_path.name} ({args.method}): " + ", ".join(
        f"{n}={v:.4g}" for n, v in zip(names, params)))
    axr.plot(wl, data - model, lw=0.5, color="k")
    axr.axhline(0, color="C3", lw=0.6)
    axr.set_ylabel("data − model")
    axr.set_xlabel("wavelength [Å]")
    paths = [save_figure(fig, f"{stem}_fit.png")]
    plt.close(fig)
    samples = None
    if args.method == "nuts":
        samples = np.stack([res.samples[n].reshape(-1) for n in names], -1)
    elif args.method == "map" and np.all(np.isfinite(np.asarray(res.covariance))):
        rng = np.random.default_rng(args.seed)
        samples = rng.multivariate_normal(params, np.asarray(res.covariance), size=4000)
    if samples is not None:
        fig = _corner(plt, samples, list(names))
        label = "NUTS posterior" if args.method == "nuts" else "Laplace approximation"
        fig.suptitle(f"{spectrum_path.name} ({label})", y=1.04)
        paths.append(save_figure(fig, f"{stem}_corner.png"))
        plt.close(fig)
    return paths


def _corner(plt, samples, labels):
    """A corner plot: the ``corner`` package, or plain matplotlib when it is missing."""
    try:
        import corner
    except ImportError:
        k = samples.shape[1]
        fig, axes = plt.subplots(k, k, figsize=(2.5 * k, 2.5 * k), squeeze=False)
        for i in range(k):
            for j in range(k):
                ax = axes[i, j]
                if j > i:
                    ax.set_visible(False)
                elif i == j:
                    ax.hist(samples[:, i], bins=40, histtype="step", color="k")
                else:
                    ax.plot(samples[:, j], samples[:, i], ",", color="k", alpha=0.3)
                if i == k - 1:
                    ax.set_xlabel(labels[j])
                if j == 0 and i > 0:
                    ax.set_ylabel(labels[i])
        return fig
    return corner.corner(samples, labels=labels, quantiles=(0.16, 0.5, 0.84),
                         show_titles=True, title_fmt=".4g")
