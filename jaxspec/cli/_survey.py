"""Fitting many spectrum files for ``jaxspec infer``: in this process or on Dask.

One function, :func:`fit_file`, reads, checks and fits one spectrum file and returns its
outcome (a results row, the posterior, plot paths, warnings, or the error). Two runners
call it over the stars of a batch and yield the outcomes as they finish:

:func:`run_local`
    in this process, one star after another (no Dask needed).
:func:`run_dask`
    on a ``dask.distributed`` cluster: a local one of ``workers`` processes (one thread
    each: JAX's own threads use the cores), or an existing one at ``scheduler``. Only a
    window of ``4 × threads`` stars is in flight at a time, so a survey of 10^6 files
    never floods the scheduler, and a client that stops loses at most that window's
    work in progress. Each worker process loads the emulator once and keeps it (a
    per-process cache keyed by the emulator file's path and SHA-256), so its compiled
    fits are reused for every star it gets; a line-list template (built in the client
    from the spectra) is sent to every worker once (``scatter(broadcast=True)``).

Both runners use the same :func:`fit_file` with the same padding of every observation
to a length of the ladder :func:`padded_length`, so a star's numbers do not depend on
where it was fitted or with which other stars. The client keeps the one
:class:`~jaxspec.io.results_writer.ResultsWriter` (and posterior writer): rows are written
there as outcomes arrive, so a killed client or cluster loses no finished star and a
rerun fits only what is missing.
"""

from __future__ import annotations

import glob
import math
import textwrap
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxspec.cli._common import matplotlib_pyplot, save_figure

__all__ = ["StarTask", "expand_spectra", "fit_file", "padded_length", "read_lsf", "run_dask",
           "run_local"]

#: Messages of rows that have no posterior (so a rerun with --posterior does not refit
#: them): an unusable input, or a fit that raised.
NO_POSTERIOR_PREFIXES = ("input error: ", "fit failed: ")


class StarTask(NamedTuple):
    """One spectrum file to fit: its path as given, SHA-256, guess of the windowed
    parameter (Teff by default; or None) and,
    with ``--plot``, the stem of its figure names (:func:`jaxspec.cli._common.plot_stem`,
    computed in the client, which knows every path)."""

    path: str
    checksum: str
    guess: float | None
    plot_stem: str | None = None


def expand_spectra(arguments) -> list[str]:
    """Spectrum paths from the command line: each argument is a path, a glob pattern
    (quoted, e.g. ``'spectra/*.fits'``, so that the shell does not expand 10^6 names;
    ``**`` recurses; matches sorted) or ``@LIST``, a text file of paths, one per line
    (blank lines and ``#`` comments skipped).

    Raises:
        ValueError: a pattern matches no file, or a list file is unreadable.
    """
    out = []
    for arg in arguments:
        arg = str(arg)
        if arg.startswith("@") and not Path(arg).exists():
            try:
                lines = Path(arg[1:]).read_text().splitlines()
            except OSError as err:
                raise ValueError(f"{arg[1:]}: cannot read the list of spectra "
                                 f"({err.strerror}); pass @FILE with one path per line") from None
            out.extend(s.strip() for s in lines if s.strip() and not s.strip().startswith("#"))
        elif glob.has_magic(arg) and not Path(arg).exists():
            found = sorted(glob.glob(arg, recursive=True))
            if not found:
                raise ValueError(f"{arg}: no file matches this pattern; check it (quote it so "
                                 "that the shell passes it to jaxspec unexpanded)")
            out.extend(found)
        else:
            out.append(arg)
    return out


def padded_length(m: int) -> int:
    """The pixel count an observation of ``m`` pixels is padded to (masked pixels): the
    smallest of :math:`2^k \\cdot \\{1, 1.25, 1.5, 1.75\\}` that is ≥ ``max(m, 16)``.

    One compiled fit serves every spectrum of one length class; the padding wastes at
    most 25 % and does not depend on the other spectra of a batch (a star's result is
    the same in any batch, process or worker)."""
    m = max(int(m), 16)
    k = 2 ** math.floor(math.log2(m))
    for f in (1.0, 1.25, 1.5, 1.75, 2.0):
        if k * f >= m:
            return int(k * f)
    return 2 * k  # pragma: no cover


# ---------------------------------------------------------------- one star

_MODELS: dict = {}  # per process: (path, sha256) -> emulator; a worker keeps its emulator


def cached_emulator(path: str, checksum: str):
    """The emulator file ``path``, loaded once per process (keyed by path and SHA-256, at
    most two kept), so every star a Dask worker fits reuses its compiled functions."""
    key = (str(path), str(checksum))
    if key not in _MODELS:
        import jaxspec.template  # noqa: F401  (registers the "template" emulator kind)
        from jaxspec.emulator import load_emulator

        while len(_MODELS) >= 2:
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[key] = load_emulator(path)
    return _MODELS[key]


def read_for_fit(path: str, config):
    """The spectrum file read with the run's reader options, in the emulator's medium
    and normalised when asked (``--normalize``), checked for a continuum near 1."""
    from jaxspec.infer.spectrum import check_normalized, normalize_continuum
    from jaxspec.io.spectrum import read_spectrum

    spectrum = read_spectrum(path, mask_bits=config.mask_bits, layout=config.layout,
                             medium=config.spectrum_medium, visit=config.visit,
                             orders=config.orders)
    if config.emulator_medium and spectrum.medium and spectrum.medium != config.emulator_medium:
        spectrum = spectrum.to_medium(config.emulator_medium)
    if config.normalize:
        spectrum = normalize_continuum(spectrum, config.normalize_order,
                                       quantile=config.normalize_quantile)
    scale = config.c0_range if "continuum" in (config.fit or "") else (1.0, 1.0)
    check_normalized(spectrum, scale)
    return spectrum


def fit_file(task: StarTask, config, model=None) -> dict:
    """Read, check and fit one spectrum file (the work of one star).

    Args:
        task: the :class:`StarTask`.
        config: the ``jaxspec infer`` options (an ``argparse.Namespace``).
        model: the emulator or template object, or None (load ``config.emulator``
            through :func:`cached_emulator`).

    Returns:
        ``{"file", "checksum", "warnings": [str], "plots": [str]}`` plus either ``"row"``
        (the results row) and ``"posterior"`` (a payload of
        :mod:`jaxspec.io.posterior`, or None), or ``"error"`` (text) and
        ``"input_error"`` (True: the file cannot be used; False: the fit raised).
    """
    out = {"file": task.path, "checksum": task.checksum, "warnings": [], "plots": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            spectrum = read_for_fit(task.path, config)
            if model is None:
                model = cached_emulator(config.emulator, config.emulator_sha256)
            if _wants_extrinsic(config, model):
                em, init, note = _observed(config, model, spectrum)
            else:
                em, init, note = model, None, ""
            from jaxspec.infer import observe

            obs = observe(spectrum, em, config.resample)
            priors = _priors(config.prior, em)
        except (ValueError, TypeError, OSError) as err:
            text = str(err)
            if Path(task.path).name not in text:
                text = f"{task.path}: {text}"
            out.update(error=text, input_error=True)
        else:
            try:
                out.update(_fit(task, config, em, obs, init, note, priors))
            except Exception as err:  # noqa: BLE001 - one star's failure must not stop a survey
                out.update(error=f"{task.path}: {type(err).__name__}: {err}",
                           input_error=False)
    out["warnings"] = [str(w.message) for w in caught]
    return out


def _fit(task, config, em, obs, init, note, priors) -> dict:
    """Fit one prepared observation; ``{"row", "posterior", "plots"}``."""
    from jaxspec.infer import bayes_opt, fit_map, results_table, sample_nuts
    from jaxspec.infer.spectrum import pad_observation
    from jaxspec.io.posterior import laplace_payload, nuts_payload

    obs = pad_observation(obs, padded_length(int(obs.flux.shape[0])))
    kw = {"guess": task.guess, "window": config.window,
          "window_param": config.window_param, "key": config.seed}
    fit_noise = True if config.fit_noise else None
    want_posterior = bool(getattr(config, "posterior", None))
    t0 = time.perf_counter()
    posterior = None
    if config.method == "bo":
        res = bayes_opt(em, obs, n_random=config.n_random, n_guided=config.n_guided, **kw)
    elif config.method == "map":
        res = fit_map(em, obs, n_starts=config.starts, init=init, priors=priors,
                      fit_noise=fit_noise, **kw)
        if want_posterior:
            posterior = laplace_payload(res, em.param_names)
    else:
        start = "map"
        if init is not None:  # the MAP from the RV scan's start, then NUTS
            start = np.asarray(fit_map(em, obs, n_starts=config.starts, init=init,
                                       priors=priors, fit_noise=fit_noise, **kw).params)
        res = sample_nuts(em, obs, num_warmup=config.warmup, num_samples=config.samples,
                          num_chains=config.chains, inference_data=False, init=start,
                          priors=priors, fit_noise=fit_noise, **kw)
        if want_posterior:
            posterior = nuts_payload(res)
    np.asarray(res.params)  # wait for the device
    seconds = time.perf_counter() - t0
    table = results_table(res, em.param_names, files=[task.path], method=config.method,
                          seconds=seconds)
    row = {name: table[name][0] for name in table.colnames}
    chi2_nu = _chi2_nu(em, obs, res)
    if chi2_nu is not None:
        row["chi2_nu"] = chi2_nu
    if note:
        row["extrinsic_note"] = note
    row["checksum"] = task.checksum
    plots = []
    if config.plot:
        plots = [str(p) for p in _plots(em, obs, res, config, task.plot_stem,
                                            Path(task.path))]
    return {"row": row, "posterior": posterior, "plots": plots}


# ---------------------------------------------------------------- runners


def run_local(tasks, config, model=None):
    """Outcomes of :func:`fit_file` for ``tasks``, fitted in this process in order."""
    for task in tasks:
        yield fit_file(task, config, model)


def _dask_client(workers: int | None, scheduler: str | None):
    """``(client, cluster or None)``: :func:`jaxspec._dask.dask_client` with the CLI's
    option names in its messages."""
    from jaxspec._dask import dask_client

    try:
        return dask_client(workers, scheduler)
    except ValueError as err:
        raise ValueError(f"--{err}") from None


def run_dask(tasks, config, model=None, *, workers: int | None = None,
             scheduler: str | None = None):
    """Outcomes of :func:`fit_file` for ``tasks``, fitted on a Dask cluster, in the order
    they finish (module docstring).

    A task whose worker died more often than the cluster allows (``KilledWorker``) or
    that cannot be run yields an outcome with ``"retry": True`` and no row, so that a
    rerun tries that star again. Stopping the iteration (an exception or Ctrl-C in the
    client) cancels the tasks in flight and shuts a local cluster down.
    """
    from dask.distributed import as_completed

    client, cluster = _dask_client(workers, scheduler)
    try:
        n_threads = max(sum(client.nthreads().values()), 1)
        model_ref = client.scatter(model, broadcast=True) if model is not None else None
        pending = iter(tasks)
        running = {}
        queue = as_completed()

        def submit_next():
            task = next(pending, None)
            if task is not None:
                future = client.submit(fit_file, task, config, model_ref, pure=False)
                running[future] = task
                queue.add(future)

        for _ in range(4 * n_threads):
            submit_next()
        for future in queue:
            task = running.pop(future)
            try:
                outcome = future.result()
            except Exception as err:  # noqa: BLE001 - a dead worker, a lost task
                outcome = {"file": task.path, "checksum": task.checksum, "warnings": [],
                           "plots": [], "retry": True,
                           "error": f"{task.path}: not fitted ({type(err).__name__}: {err}); "
                                    "run again to retry it"}
            future.release()
            submit_next()
            yield outcome
    finally:
        for future in list(running):
            future.cancel()
        client.close()
        if cluster is not None:
            cluster.close()


# ---------------------------------------------------------------------- one star's fit


def _wants_extrinsic(args, base) -> bool:
    from jaxspec.template import Template

    return bool(args.fit or args.rv or args.vsini or args.resolution is not None or args.lsf
                or isinstance(base, Template))


def read_lsf(path):
    """The ``--lsf`` table (ECSV/FITS/CSV, columns ``velocity`` km/s and ``profile``) as
    ``(velocity, profile)`` float64 arrays."""
    from astropy.table import Table

    t = Table.read(path)
    cols = {c.lower(): c for c in t.colnames}
    if "velocity" not in cols or "profile" not in cols:
        raise ValueError(f"{path}: an LSF table needs columns velocity (km/s) and profile "
                         f"(columns present: {', '.join(t.colnames)})")
    return (np.asarray(t[cols["velocity"]], dtype=np.float64),
            np.asarray(t[cols["profile"]], dtype=np.float64))


def _observed(args, base, spectrum):
    """The emulator observed at ``spectrum``'s pixels, a start and a note for the table.

    When rv is fitted, a χ² scan over the RV box (continuum by least squares) gives the
    start and narrows the rv box to best ± --rv-window (a multimodal RV likelihood
    otherwise defeats local optimisers), like --guess/--window for Teff.
    """
    from jaxspec.infer import initial_guess
    from jaxspec.observed_emulator import ObservedEmulator

    em = ObservedEmulator.build(
        base, spectrum.wavelength, fit=args.fit, rv=args.rv, vsini=args.vsini,
        resolution=args.resolution, rv_range=args.rv_range, vsini_range=args.vsini_range,
        resolution_range=args.resolution_range,
        continuum_range=(args.c0_range, args.continuum_range), epsilon=args.epsilon,
        lsf=read_lsf(args.lsf) if args.lsf else None)
    _priors(args.prior, em)  # bad --prior options fail before the RV scan
    fitted = em.extrinsic_names
    if "rv" not in fitted and em.continuum_degree is None:
        return em, None, ""
    guess = initial_guess(em, spectrum.flux, spectrum.uncertainty, spectrum.mask,
                          step=args.rv_step)
    note = ""
    if "rv" in fitted:
        note = f"rv scan best {guess.best_rv:.2f} km/s"
        if args.rv_window > 0:
            lo, hi = em.bounds[em.param_names.index("rv")]
            box = (max(lo, guess.best_rv - args.rv_window),
                   min(hi, guess.best_rv + args.rv_window))
            em = em.with_bounds(rv=box)
            note += f"; rv searched in {box[0]:.2f}:{box[1]:.2f}"
    return em, guess.params, note


def _priors(specs, em):
    """``NAME=normal:MU:SIGMA`` options → numpyro TruncatedNormal priors within the box."""
    import numpyro.distributions as dist

    priors = {}
    for spec in specs:
        name, eq, rest = spec.partition("=")
        parts = rest.split(":")
        if not eq or len(parts) != 3 or parts[0] != "normal":
            raise ValueError(f"--prior {spec!r}: write NAME=normal:MU:SIGMA, e.g. "
                             "resolution=normal:55000:3000")
        if name not in em.param_names:
            raise ValueError(f"--prior {spec!r}: no parameter {name!r}; the parameters are "
                             f"{', '.join(em.param_names)}")
        try:
            mu, sigma = float(parts[1]), float(parts[2])
        except ValueError:
            raise ValueError(f"--prior {spec!r}: MU and SIGMA must be numbers") from None
        if not sigma > 0:
            raise ValueError(f"--prior {spec!r}: SIGMA must be > 0")
        lo, hi = em.bounds[em.param_names.index(name)]
        priors[name] = dist.TruncatedNormal(mu, sigma, low=lo, high=hi)
    return priors or None


def _chi2_nu(em, obs, res):
    """χ²/ν at the result's parameters (None without uncertainties, NaN for NaN ones)."""
    import jax.numpy as jnp

    if not obs.has_uncertainty:
        return None
    if not np.all(np.isfinite(np.asarray(res.params))):
        return float("nan")
    model = np.asarray(obs.project(em(jnp.asarray(np.asarray(res.params)))))
    mask = np.asarray(obs.mask)
    z = (model - np.asarray(obs.flux))[mask] / np.asarray(obs.sigma)[mask]
    return float(np.sum(z**2) / max(int(mask.sum()) - em.n_params, 1))


def _plots(emulator, obs, res, args, stem: str, spectrum_path: Path):
    """Fit and corner figures of one spectrum, named ``<stem>_fit.png`` and
    ``<stem>_corner.png`` (``stem`` from :func:`plot_stem`: unique per input path)."""
    import jax.numpy as jnp

    plt = matplotlib_pyplot()
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
    title = f"{spectrum_path.name} ({args.method}): " + ", ".join(
        f"{n}={v:.4g}" for n, v in zip(names, params))
    ax.set_title(textwrap.fill(title, 110), fontsize=9)
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
