r"""The continuation sweep's fits side by side in local processes (``clone_grid(...,
workers=N)``).

The sweep (:class:`jaxspec.clone.sweep._Sweep`) works in *rounds*: up to
``CloneSettings.parallel_batches`` batches of ready nodes whose fits do not depend on each
other. Everything between fits (warm starts, births, the catalogue of identities, the
store) runs in the calling process, batch after batch in a fixed order; only the fits —
almost all of the time — are handed to a :class:`FitPool`. So the store does not depend
on the number of processes: ``workers=1`` (in-process) and ``workers=2`` write the same
lines.

Why processes, not threads: one XLA:CPU program per process uses a second core poorly
(a batch of 8 default-grid nodes, 1,000–1,500 lines each: 7.1 s on 2 cores, 8.7 s on one,
1.2×), and two programs in one process share one CPU device and run one after the other
(two threads: 1.3×, also with two host devices). Two processes, each pinned to its own
core, fit two batches in 9.0 s where one process takes 14.6 s for both (1.6×). On the
whole default grid (2 cores) the clone took 2,282 s against 2,674 s (1.17×: a round waits
for its slower batch, the births and the back-fill run in the calling process, the narrow
start of the sweep has one batch a round, and each process compiles its programs).
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["FitPool", "default_processes"]

_WORKER: dict = {}


def _cpus() -> list[int]:
    """The CPUs this process may run on (``sched_getaffinity``; all of them elsewhere)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def default_processes(parallel_batches: int) -> int | None:
    """``jaxspec clone``'s default ``--workers`` for continuation: as many processes as
    a round has batches (``parallel_batches``) and this process has CPUs; None (this
    process) when that is one."""
    n = min(int(parallel_batches), len(_cpus()))
    return n if n > 1 else None


def _init_worker(wl, settings, cpus, counter, cache_dir) -> None:
    """Worker start: keep the wavelengths and settings; pin the process to one CPU of
    ``cpus`` (the k-th started worker to ``cpus[k % len(cpus)]``); share compiled
    programs with the other workers through JAX's persistent compilation cache in
    ``cache_dir`` (None: no sharing)."""
    with counter.get_lock():
        k = counter.value
        counter.value += 1
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpus[k % len(cpus)]})
    if cache_dir is not None:
        import jax

        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    _WORKER["wl"], _WORKER["settings"] = wl, settings


def _fit_one(wl, settings, flux, good, batch, options):
    """One :func:`jaxspec.clone.fit._fit`; returns (batch, history, model, slot count),
    ``batch`` updated in place."""
    from jaxspec.clone.fit import _fit

    history, model, n_slots = _fit(wl, flux, good, batch, settings, **options)
    return batch, history, model, n_slots


def _fit_task(flux, good, batch, options):
    """:func:`_fit_one` in a worker, with the wavelengths and settings it started with
    (returns the worker's copy of ``batch``, updated)."""
    return _fit_one(_WORKER["wl"], _WORKER["settings"], flux, good, batch, options)


class FitPool:
    """Runs a round of continuation fits, in this process or in ``processes`` local ones.

    Args:
        wl: (n_pix,) float64 wavelengths, Å (the grid's).
        settings: the :class:`~jaxspec.clone.CloneSettings` of the sweep.
        processes: 1 (or None): fit in this process, one request after another; N > 1:
            N spawned worker processes, each pinned to one of the CPUs this process may
            use (Linux). A round of one request is fitted in this process.
        share_compiles: the workers share compiled programs through a temporary JAX
            compilation cache (removed on exit).

    Use as a context manager (the workers are shut down on exit). :meth:`fit` takes a
    list of requests ``(flux (B, n_pix), good (B, n_pix), batch, options)`` — the
    arguments of :func:`jaxspec.clone.fit._fit` — and returns, in the same order,
    ``(batch, history (B, epochs), model (B, n_pix), n_slots)``.
    """

    def __init__(self, wl, settings, processes: int | None = None, share_compiles=True):
        self.check(processes)
        self.wl, self.settings = np.asarray(wl, dtype=np.float64), settings
        self.processes = int(processes or 1)
        self.share_compiles = share_compiles
        self._executor = self._cache = None

    @staticmethod
    def check(processes) -> None:
        """Refuse a process count that is not None or an integer >= 1 (ValueError)."""
        ok = processes is None
        try:
            ok = ok or (int(processes) == processes and processes >= 1)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"workers={processes!r}: pass the number of local processes "
                             "that fit the continuation sweep's batches, an integer >= 1 "
                             "(or None: this process)")

    def __enter__(self):
        if self.processes > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("spawn")
            cpus = _cpus()
            if len(cpus) < self.processes:
                cpus = []  # fewer CPUs than workers: leave the scheduling to the OS
            if self.share_compiles:
                import tempfile

                self._cache = tempfile.mkdtemp(prefix="jaxspec-clone-xla-")
            self._executor = ProcessPoolExecutor(
                self.processes, mp_context=ctx, initializer=_init_worker,
                initargs=(self.wl, self.settings, cpus, ctx.Value("i", 0), self._cache))
        return self

    def __exit__(self, *exc):
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._cache is not None:
            import shutil

            shutil.rmtree(self._cache, ignore_errors=True)
            self._cache = None
        return False

    def fit(self, requests: list) -> list:
        """Fit every request (see the class docstring); results in request order."""
        if self._executor is None or len(requests) == 1:
            return [_fit_one(self.wl, self.settings, *r) for r in requests]
        futures = [self._executor.submit(_fit_task, *r) for r in requests]
        return [f.result() for f in futures]
