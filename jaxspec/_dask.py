"""Dask clusters for the commands that spread work over processes and machines.

``jaxspec infer`` and ``jaxspec clone`` take ``--workers N`` (a local
``dask.distributed`` cluster of N worker processes, one thread each: JAX's own threads
use the cores) or ``--scheduler ADDRESS`` (an existing cluster: SLURM/PBS/Kubernetes
through dask-jobqueue and friends). Both ask this module for the client.
"""

from __future__ import annotations

import logging

__all__ = ["dask_client"]


def dask_client(workers: int | None, scheduler: str | None):
    """``(client, cluster or None)``: a client of the cluster at ``scheduler``, or of a
    new local cluster of ``workers`` processes (one thread each; close both when done).

    Raises:
        ImportError: dask.distributed is not installed (the message says how to).
        ValueError: neither or both of ``workers`` and ``scheduler`` given, ``workers``
            below 1, or no cluster answers at ``scheduler``.
    """
    if (workers is None) == (scheduler is None):
        raise ValueError("pass workers= (a local cluster of that many processes) or "
                         "scheduler= (the address of a running cluster), not both or neither")
    if workers is not None and (isinstance(workers, bool) or int(workers) != workers
                                or workers < 1):
        raise ValueError(f"workers={workers!r}: pass the number of worker processes, >= 1")
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ImportError("workers=/scheduler= (--workers/--scheduler) need "
                          "dask.distributed; install it with "
                          "`pip install 'dask[distributed]'`") from None
    if scheduler:
        try:
            return Client(scheduler, timeout="30s"), None
        except (OSError, TimeoutError) as err:
            raise ValueError(f"scheduler {scheduler}: cannot connect ({err}); check the "
                             "address (e.g. tcp://host:8786) and that the scheduler "
                             "runs") from None
    cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)
    return Client(cluster), cluster
