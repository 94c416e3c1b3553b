"""Batched evaluation: a function over many stars, a fixed-size slice at a time.

A leaf used by the fitters (:mod:`jaxspec.infer`) and the amortised networks
(:mod:`jaxspec.amortised`): slices of one shape compile once; slices can be placed over
several devices (a ``NamedSharding``, :func:`jaxspec.infer._prepare.star_sharding`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

__all__ = ["map_batches"]


def map_batches(fn, args, n: int, batch_size: int, progress: bool = False, desc: str = "",
                sharding=None):
    """Apply ``fn`` to slices of the pytree ``args`` along axis 0, ``batch_size`` at a time.

    The last slice is padded by repeating its last element so that every call has one
    shape (one compilation); outputs are concatenated and trimmed to ``n``.

    With ``sharding`` (:func:`jaxspec.infer._prepare.star_sharding`), each slice is placed split along axis 0
    over that sharding's devices before ``fn`` (jit-compiled) runs on it: XLA partitions
    the vmapped fit, each device fitting ``batch_size / n_devices`` stars.
    ``batch_size`` is then rounded up to a multiple of the device count.
    """
    batch_size = max(1, min(int(batch_size), n))
    if sharding is not None:
        d = len(sharding.device_set)
        batch_size = -(-batch_size // d) * d
    outs = []
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        idx = np.minimum(np.arange(start, start + batch_size), n - 1)
        chunk = jax.tree.map(lambda a, idx=idx: a[idx], args)
        if sharding is not None:
            chunk = jax.device_put(chunk, sharding)
        out = fn(*chunk)
        m = min(batch_size, n - start)
        outs.append(jax.tree.map(lambda a, m=m: a[:m], out))
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *outs)
