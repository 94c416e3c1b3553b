r"""``clone_grid`` on a Dask cluster: nodes spread over workers, one writer for the store.

:func:`clone_grid_distributed` is what :func:`jaxspec.clone.clone_grid` runs when given
``workers=N`` (a local cluster of N processes) or ``scheduler=ADDRESS`` (a running one).
Only ``method="independent"`` spreads: every node is cloned on its own, so the batches of
``batch_size`` nodes that the serial sweep runs one after another are independent tasks.
Each task carries its batch's validated spectra (``batch_size × n_pix`` floats; the grid
itself never travels) and returns the batch's line lists; the client, the only writer,
appends them to the store with the same :class:`~jaxspec.io.clone_store.CloneStoreWriter`
as the serial path, batch by batch as they finish. Batches are the serial sweep's
batches, padded the same way and run by the same compiled program, so a node's clone is
the same on a worker as in one process; the store is resumable as the serial one is (a
killed client loses at most the batches in flight: at most ``2 ×`` the cluster's
threads).

Continuation cloning warm-starts every node from a cloned neighbour: only its fits spread,
over local processes (:mod:`jaxspec.clone._processes`, ``clone_grid(..., workers=N)``
without a scheduler); a scheduler is refused here with the fix.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["clone_grid_distributed"]


def _clone_batch_task(wavelength, flux, good, n_bad, settings, n_keep: int):
    """Clone one padded batch (run on a worker): ``[(line_id, center, ln_amplitude,
    ln_sigma, ln_gamma, residual_rms)]`` for its first ``n_keep`` spectra.

    ``flux``/``good`` ``(batch_size, n_pix)``; the same calls as the serial sweep."""
    from jaxspec.clone.fit import _clone_batch, _results

    batch, history, model = _clone_batch(wavelength, flux, good, settings, blends=False)
    results = _results(wavelength, flux, good, batch, history, model, settings, n_bad)
    return [(np.asarray(r.line_id), np.asarray(r.lines.center),
             np.asarray(r.lines.ln_amplitude), np.asarray(r.lines.ln_sigma),
             np.asarray(r.lines.ln_gamma), float(r.residual_rms))
            for r in results[:n_keep]]


def clone_grid_distributed(grid, out, settings=None, *, workers: int | None = None,
                           scheduler: str | None = None, batch_size: int = 8,
                           resume: bool = True, overwrite_settings: bool = False,
                           progress: bool = True, max_nodes: int | None = None,
                           callback=None, grid_file: str | PathLike | None = None,
                           start=None, **options):
    """:func:`jaxspec.clone.clone_grid` with its batches cloned on a Dask cluster.

    Args:
        grid, out, settings, batch_size, resume, overwrite_settings, progress,
            max_nodes, callback, grid_file, **options: as for
            :func:`~jaxspec.clone.clone_grid` (``grid``: a normalised
            :class:`~jaxspec.grid.SpectralGrid` or the path of a grid file; ``out``: the
            ``.h5`` store; each batch: ``batch_size`` spectra of ``n_pix`` pixels).
        workers: start a local cluster of this many worker processes (one thread each).
        scheduler: or use the running cluster at this address (e.g. ``tcp://host:8786``).
        start: continuation's start node; refused (continuation is not spread over a
            cluster).

    Returns:
        The :class:`~jaxspec.io.clone_store.CloneStore` at ``out``, with the same node
        clones as :func:`~jaxspec.clone.clone_grid` in one process.

    Raises:
        ValueError: ``method="continuation"`` (nodes depend on their parents: pass
            ``method="independent"``, CLI ``--method independent``, to use a cluster),
            neither or both of ``workers``/``scheduler``, and every error of the serial
            path (grid not normalised, bad ``batch_size``, a store of other settings).
        TypeError: ``grid`` is neither a SpectralGrid nor a path, or an unknown setting.
    """
    from tqdm.auto import tqdm

    from jaxspec._dask import dask_client
    from jaxspec.clone.settings import resolve_settings
    from jaxspec.grid import SpectralGrid
    from jaxspec.io.clone_store import CloneStore, CloneStoreWriter
    from jaxspec.io.grid_hdf5 import grid_checksum

    settings = resolve_settings(settings, options, "clone_grid")
    if settings.method != "independent" or start is not None:
        raise ValueError(
            f"method={settings.method!r} with scheduler: continuation cloning warm-starts "
            "every node from a cloned neighbour, so only its fits spread, over local "
            "processes (workers=N, CLI --workers N); pass method='independent' (CLI: "
            "--method independent) to clone on a Dask cluster, or drop scheduler")
    if (workers is None) == (scheduler is None):
        raise ValueError("pass workers= (a local cluster of that many processes) or "
                         "scheduler= (the address of a running cluster), not both")
    if isinstance(grid, (str, PathLike)):
        grid_file = grid_file if grid_file is not None else Path(grid).resolve()
        grid = SpectralGrid.from_hdf5(grid)
    if not isinstance(grid, SpectralGrid):
        raise TypeError(f"grid is a {type(grid).__name__}; pass a jaxspec.grid.SpectralGrid "
                        "or the path of a grid file")
    if not grid.normalized:
        raise ValueError("grid.normalized is False: clones model continuum-normalised "
                         "spectra; normalise the grid first with "
                         "jaxspec.preprocess.preprocess_grid")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; pass an integer >= 1, e.g. 8")
    batch_size = int(batch_size)
    writer = CloneStoreWriter(
        out, grid.axes, grid.wavelength, settings.as_dict(), resume=resume,
        overwrite_settings=overwrite_settings,
        grid_file=None if grid_file is None else str(grid_file),
        grid_checksum=grid_checksum(grid), identities=False, start=None)
    params, flat = grid.node_params()
    indices = [tuple(int(i) for i in idx) for idx in zip(*np.unravel_index(flat, grid.shape))]
    todo = [j for j, idx in enumerate(indices) if not writer.done[idx]]
    if max_nodes is not None:
        todo = todo[: max(int(max_nodes), 0)]
    n_total = len(indices)
    n_done = n_total - sum(not writer.done[idx] for idx in indices)
    chunks = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
    bar = tqdm(total=n_total, initial=n_done, disable=not progress, unit="node",
               desc=f"cloning {Path(out).name}", dynamic_ncols=True)
    client = cluster = None
    try:
        if chunks:
            client, cluster = dask_client(workers, scheduler)
            _run(client, grid, settings, batch_size, chunks, indices, params, writer, bar,
                 callback, n_done, n_total)
    finally:
        bar.close()
        writer.close()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return CloneStore(out)


def _run(client, grid, settings, batch_size, chunks, indices, params, writer, bar,
         callback, n_done, n_total) -> None:
    """Submit the batches (at most ``2 ×`` the cluster's threads in flight) and write
    each as it finishes."""
    from dask.distributed import as_completed

    from jaxspec.clone.detection import _batch_spectra
    from jaxspec.clone.fit import _report
    from jaxspec.io.clone_store import NodeClone

    wavelength = client.scatter(np.asarray(grid.wavelength), broadcast=True)
    window = 2 * max(sum(client.nthreads().values()), 1)
    pending = iter(chunks)
    running = {}
    queue = as_completed()

    def submit_next():
        chunk = next(pending, None)
        if chunk is None:
            return
        rows = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one shape, as serial
        flux, good, n_bad = _batch_spectra(grid, [indices[j] for j in rows])
        future = client.submit(_clone_batch_task, wavelength, flux, good, n_bad, settings,
                               len(chunk), pure=False)
        running[future] = chunk
        queue.add(future)

    try:
        for _ in range(window):
            submit_next()
        for future in queue:
            chunk = running.pop(future)
            results = future.result()  # a failed batch stops the run, as in one process
            future.release()
            submit_next()
            nodes = [NodeClone(index=indices[j], params=params[j], line_id=r[0],
                                center=r[1], ln_amplitude=r[2], ln_sigma=r[3],
                                ln_gamma=r[4], residual_rms=r[5])
                     for j, r in zip(chunk, results)]
            writer.write(nodes)
            n_done += len(chunk)
            _report(bar, nodes, len(chunk))
            if callback is not None:
                callback(n_done, n_total)
    finally:
        for future in list(running):
            future.cancel()
