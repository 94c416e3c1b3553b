"""Turning what users pass (flux arrays, Spectrum, Observation, lists) into batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec._batching import map_batches  # noqa: F401  (re-exported for the fitters)
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


def boxes(emulator, n: int, guess, window, param: str = "teff"):
    """Per-spectrum ``(lower, upper)`` ``(n, k)`` (:func:`~jaxspec.infer._box.search_box`
    with ``guess ± window`` on ``param``) and the emulator's bounds."""
    lo, hi, _ = search_box(emulator, guess, window, param)
    lo = np.broadcast_to(lo, (n, emulator.n_params)) if lo.ndim == 1 else lo
    hi = np.broadcast_to(hi, (n, emulator.n_params)) if hi.ndim == 1 else hi
    if lo.shape[0] != n:
        raise ValueError(f"{lo.shape[0]} {param} guesses for {n} spectra; pass one or one "
                         "each")
    b = np.asarray(emulator.bounds, dtype=np.float64)
    return jnp.asarray(lo), jnp.asarray(hi), jnp.asarray(b[:, 0]), jnp.asarray(b[:, 1])


def keys_for(key, n: int):
    if key is None:
        key = jax.random.PRNGKey(0)
    elif isinstance(key, int):
        key = jax.random.PRNGKey(key)
    return jax.random.split(key, n)


def star_sharding(devices):
    """A ``NamedSharding`` that splits axis 0 (stars) of a batch over ``devices``, or None.

    Args:
        devices: None (one device, the default: no sharding), ``"all"``
            (``jax.devices()``), a device count ``d`` (the first ``d`` of
            ``jax.devices()``) or a sequence of ``jax.Device``.

    Returns:
        ``jax.sharding.NamedSharding`` over a 1-D mesh with axis ``"star"``, or None for
        None or a single device.

    Raises:
        ValueError: more devices asked for than exist (with the XLA flag that makes more
            CPU devices), or none.
        TypeError: ``devices`` of another type.
    """
    if devices is None:
        return None
    available = jax.devices()
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(f"devices={devices!r}; pass 'all', a device count or a list of "
                             "jax devices")
        chosen = available
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"devices={devices}: {len(available)} device(s) available; pass 1 to "
                f"{len(available)} (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count"
                "=N before importing jax makes N devices)")
        chosen = available[:int(devices)]
    elif isinstance(devices, (list, tuple)) and all(isinstance(d, jax.Device) for d in devices):
        if not devices:
            raise ValueError("devices=[]: pass at least one jax device")
        chosen = list(devices)
    else:
        raise TypeError(f"devices={devices!r}; pass None, 'all', a device count or a list of "
                        "jax devices")
    if len(chosen) == 1:
        return None
    mesh = jax.sharding.Mesh(np.array(chosen), ("star",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("star"))


def unbatch(result, batched: bool):
    """Drop the batch axis of a result when the input was one spectrum."""
    return result if batched else jax.tree.map(lambda a: a[0], result)
