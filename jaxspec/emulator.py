r"""Emulators: stellar parameters in, spectrum out.

Every emulator in jaxspec is an :class:`Emulator`, an equinox Module with

* ``emulator(params)``: params shaped ``(..., n_params)`` in the order of
  ``param_names`` → flux shaped ``(..., n_pix)`` on ``wavelength``; jit-, vmap- and
  grad-safe with respect to ``params``;
* ``param_names``: tuple of str, e.g. ``("teff", "logg", "feh")``;
* ``bounds``: ``(n_params, 2)`` float64 array of ``[low, high]`` per parameter, the box
  the emulator was built on (inference stays inside it);
* ``wavelength``: ``(n_pix,)`` float64, Å;
* ``save(path)`` and ``Emulator.load(path)`` (HDF5, root attributes
  ``format = "jaxspec-emulator"`` and ``kind``), with :func:`load_emulator` reading any
  kind;
* optionally ``model_variance``: ``(n_pix,)`` variance of the emulator's own error per
  pixel (e.g. The Cannon's intrinsic scatter squared), added to the data variance by
  :func:`jaxspec.infer.observe`; None (the default) when the emulator claims none.

Inference (:mod:`jaxspec.infer`), extrinsic effects and the CLI only use this interface.
"""

from __future__ import annotations

import abc
from os import PathLike
from pathlib import Path

import equinox as eqx
import numpy as np

__all__ = ["Emulator", "load_emulator", "register_emulator"]

FORMAT = "jaxspec-emulator"
_KINDS: dict[str, type] = {}


def register_emulator(kind: str):
    """Class decorator: record ``cls`` as the loader of emulator files of ``kind``."""

    def decorate(cls):
        _KINDS[kind] = cls
        cls.kind = kind
        return cls

    return decorate


class Emulator(eqx.Module):
    """Abstract base of every emulator (see the module docstring for the contract)."""

    kind = "abstract"

    @abc.abstractmethod
    def __call__(self, params):
        """params (..., n_params) → flux (..., n_pix)."""

    @property
    @abc.abstractmethod
    def param_names(self) -> tuple[str, ...]:
        """Parameter names, in the order of the last axis of ``params``."""

    @property
    @abc.abstractmethod
    def bounds(self) -> np.ndarray:
        """(n_params, 2) float64 [low, high] of each parameter."""

    @property
    @abc.abstractmethod
    def wavelength(self) -> np.ndarray:
        """(n_pix,) float64 wavelengths, Å."""

    @abc.abstractmethod
    def save(self, path: str | PathLike) -> Path:
        """Write the emulator to an HDF5 file; returns the path."""

    @classmethod
    def load(cls, path: str | PathLike) -> Emulator:
        """Read an emulator file written by ``save`` (of this class)."""
        raise NotImplementedError(f"{cls.__name__} has no loader")

    @property
    def model_variance(self):
        """``(n_pix,)`` variance (flux²) of the emulator's own error, added in quadrature
        to the data's σ² in inference, or None (default: the emulator claims none)."""
        return None

    def _check_params(self, params):
        """``params`` as a JAX array whose last axis holds the parameters (ValueError
        naming the expected names otherwise); shape checks run at trace time."""
        import jax.numpy as jnp

        params = jnp.asarray(params)
        k = len(self.param_names)
        if params.shape[-1:] != (k,):
            raise ValueError(
                f"params has shape {params.shape}; the last axis must hold the {k} "
                f"parameters {tuple(self.param_names)}"
            )
        return params

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    @property
    def n_pix(self) -> int:
        return int(np.shape(self.wavelength)[0])


def load_emulator(path: str | PathLike) -> Emulator:
    """Load any jaxspec emulator file, dispatching on its ``kind`` attribute.

    Args:
        path: HDF5 file written by an emulator's ``save``.

    Returns:
        The emulator (an :class:`Emulator` subclass instance).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a jaxspec emulator file, or a kind this version does not know.
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such emulator file")
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
            kind = f.attrs.get("kind")
    except OSError as err:
        raise ValueError(f"{path}: not an HDF5 file ({err}); pass an emulator .h5 file") from None
    if fmt != FORMAT:
        raise ValueError(
            f"{path}: root attribute format is {fmt!r}, expected {FORMAT!r}; build an "
            "emulator with `jaxspec build` or `jaxspec train`"
        )
    _import_all_kinds()
    if kind not in _KINDS:
        raise ValueError(
            f"{path}: emulator kind {kind!r} is unknown to this jaxspec "
            f"(known: {', '.join(sorted(_KINDS))}); upgrade jaxspec or rebuild the file"
        )
    return _KINDS[kind].load(path)


def _import_all_kinds() -> None:
    """Import the modules that define emulator kinds so that they register."""
    import importlib
    import importlib.util

    for module in (
        "jaxspec.line_emulator",
        "jaxspec.pixel_emulator",
        "jaxspec.peers.cannon",
        "jaxspec.peers.payne",
        "jaxspec.peers.autoencoder",
        "jaxspec.extrinsic",
    ):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # parent package absent
            found = False
        if found:
            importlib.import_module(module)
