"""Turning what users pass (flux arrays, Spectrum, Observation, lists) into batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxspec.infer._box import search_box
from jaxspec.infer.spectrum import (
    Observation,
    Spectrum,
    as_spectrum,
    observe,
    stack_observations,
)


def as_batch(emulator, data, uncertainty=None, mask=None, resample="model"):
    """``(observations (n, m), batched)`` from any accepted input.

    ``data`` is a flux array ``(n_pix,)`` or ``(n, n_pix)`` on the emulator's wavelengths
    (with optional ``uncertainty`` and ``mask`` of the same shape), a :class:`Spectrum`
    or ``specutils.Spectrum``, an :class:`Observation`, or a list of them.
    """
    from jaxspec.io.specutils import is_specutils

    if is_specutils(data):
        data = as_spectrum(data)
    elif isinstance(data, (list, tuple)) and data and any(map(is_specutils, data)):
        data = [as_spectrum(d) if is_specutils(d) else d for d in data]
    if isinstance(data, Observation):
        if data.flux.ndim == 1:
            return stack_observations([data]), False
        return data, True
    if isinstance(data, Spectrum):
        return stack_observations([observe(data, emulator, resample)]), False
    if isinstance(data, (list, tuple)) and data and isinstance(data[0], (Spectrum, Observation)):
        obs = [d if isinstance(d, Observation) else observe(d, emulator, resample) for d in data]
        return stack_observations(obs), True
    flux = np.asarray(data, dtype=np.float64)
    if flux.ndim not in (1, 2) or flux.shape[-1] != emulator.n_pix:
        raise ValueError(
            f"flux has shape {flux.shape}; pass (n_pix,) or (n_spectra, n_pix) with n_pix = "
            f"{emulator.n_pix} (the emulator's pixels), or a Spectrum for other wavelengths"
        )
    batched = flux.ndim == 2
    flux2 = np.atleast_2d(flux)
    unc = None if uncertainty is None else np.broadcast_to(uncertainty, flux2.shape)
    msk = None if mask is None else np.broadcast_to(mask, flux2.shape)
    spectra = [
        Spectrum(
            emulator.wavelength, f,
            None if unc is None else unc[i],
            None if msk is None else np.array(msk[i], dtype=bool),
            name=f"spectrum {i}" if batched else "spectrum",
        )
        for i, f in enumerate(flux2)
    ]
    return stack_observations([observe(s, emulator, resample) for s in spectra]), batched


def boxes(emulator, n: int, teff_guess, teff_window):
    """Per-spectrum ``(lower, upper)`` ``(n, k)`` and the emulator's bounds."""
    lo, hi, _ = search_box(emulator, teff_guess, teff_window)
    lo = np.broadcast_to(lo, (n, emulator.n_params)) if lo.ndim == 1 else lo
    hi = np.broadcast_to(hi, (n, emulator.n_params)) if hi.ndim == 1 else hi
    if lo.shape[0] != n:
        raise ValueError(f"{lo.shape[0]} Teff guesses for {n} spectra; pass one or one each")
    b = np.asarray(emulator.bounds, dtype=np.float64)
    return jnp.asarray(lo), jnp.asarray(hi), jnp.asarray(b[:, 0]), jnp.asarray(b[:, 1])


def keys_for(key, n: int):
    if key is None:
        key = jax.random.PRNGKey(0)
    elif isinstance(key, int):
        key = jax.random.PRNGKey(key)
    return jax.random.split(key, n)


def map_batches(fn, args, n: int, batch_size: int, progress: bool = False, desc: str = ""):
    """Apply ``fn`` to slices of the pytree ``args`` along axis 0, ``batch_size`` at a time.

    The last slice is padded by repeating its last element so that every call has one
    shape (one compilation); outputs are concatenated and trimmed to ``n``.
    """
    batch_size = max(1, min(int(batch_size), n))
    outs = []
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        idx = np.minimum(np.arange(start, start + batch_size), n - 1)
        chunk = jax.tree.map(lambda a: a[idx], args)
        out = fn(*chunk)
        m = min(batch_size, n - start)
        outs.append(jax.tree.map(lambda a: a[:m], out))
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *outs)


def unbatch(result, batched: bool):
    """Drop the batch axis of a result when the input was one spectrum."""
    return result if batched else jax.tree.map(lambda a: a[0], result)
