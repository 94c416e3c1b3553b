r"""Emulators: stellar parameters in, spectrum out.

Every emulator in jaxspec is an :class:`Emulator`, an equinox Module with

* ``emulator(params)``: params shaped ``(..., n_params)`` in the order of
  ``param_names`` → flux shaped ``(..., n_pix)`` on ``wavelength``; jit-, vmap- and
  grad-safe with respect to ``params``;
* ``param_names``: tuple of str, e.g. ``("teff", "logg", "feh")``;
* ``bounds``: ``(n_params, 2)`` float64 array of ``[low, high]`` per parameter, the box
  the emulator was built on (inference stays inside it);
* ``wavelength``: ``(n_pix,)`` float64, Å;
* ``save(path, overwrite=False)`` and ``Emulator.load(path)`` (HDF5, root attributes
  ``format = "jaxspec-emulator"`` and ``kind``), with :func:`load_emulator` reading any
  kind. Files are written and read by :mod:`jaxspec.io.emulator_file`; a kind supplies
  only its arrays and attributes (``to_contents`` and the classmethod
  ``from_contents``) and registers with :func:`register_emulator`;
* optionally ``model_variance``: ``(n_pix,)`` variance of the emulator's own error per
  pixel (e.g. The Cannon's intrinsic scatter squared), added to the data variance by
  :func:`jaxspec.infer.observe`; None (the default) when the emulator claims none.

Inference (:mod:`jaxspec.infer`), extrinsic effects and the CLI only use this interface.

Out of box. Every emulator follows one policy for parameters outside ``bounds`` (the box
it was built on; nothing outside it was seen), applied by :meth:`Emulator._check_params`
at the start of each ``__call__``:

``"error"`` (default)
    concrete parameters (numpy or JAX arrays, outside ``jit``) outside the box or NaN
    raise a one-line ``ValueError`` naming the parameter, its value and the box, before
    any work; under ``jit`` (traced values) :func:`equinox.error_if` fails at run time
    with the box in the message. A relative slack of 1e-9 lets values read back from
    text in.
``"clamp"``
    parameters are clipped into the box: flux and gradient of the nearest face (flat
    outside). Get such an emulator with ``emulator.clamped()`` or
    ``load_emulator(path, out_of_box="clamp")``.

Inference never leaves the box (its searches and priors are inside it), so the policy
matters for direct calls (``jaxspec synth``, scripts). When the emulator itself is traced
(e.g. ``eqx.filter_jit(emulator)`` or gradients with respect to its fields) its box is not
a constant and is not checked.
"""

from __future__ import annotations

import abc
from os import PathLike
from pathlib import Path

import equinox as eqx
import numpy as np

from jaxspec.io import emulator_file
from jaxspec.io.emulator_file import FORMAT

__all__ = ["ClampedEmulator", "Emulator", "box_text", "load_emulator", "register_emulator"]

#: The out-of-box policies (module docstring).
OUT_OF_BOX = ("error", "clamp")


def register_emulator(kind: str):
    """Class decorator: record ``cls`` as the loader of emulator files of ``kind``
    (:func:`jaxspec.io.emulator_file.register`)."""
    return emulator_file.register(kind, format=FORMAT)


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

    def save(self, path: str | PathLike, *, overwrite: bool = False) -> Path:
        """Write the emulator to an HDF5 file (:func:`jaxspec.io.emulator_file.save`:
        atomic; an existing file is replaced only with ``overwrite=True``,
        FileExistsError otherwise); returns the path."""
        return emulator_file.save(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | PathLike) -> Emulator:
        """Read an emulator file written by ``save`` (of this class).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not an emulator file, another kind, or an incomplete file (the
                message names the file and what it lacks).
        """
        return emulator_file.load(path, format=FORMAT, cls=cls)

    def to_contents(self) -> emulator_file.Contents:
        """The arrays and attributes of the emulator's file (a kind overrides it)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    @classmethod
    def from_contents(cls, contents: emulator_file.Contents, path) -> Emulator:
        """The emulator from its file's contents (a kind overrides it); ``path`` for
        messages."""
        raise NotImplementedError(f"{cls.__name__} has no loader")

    @property
    def model_variance(self):
        """``(n_pix,)`` variance (flux²) of the emulator's own error, added in quadrature
        to the data's σ² in inference, or None (default: the emulator claims none)."""
        return None

    #: What a parameter outside ``bounds`` does (module docstring, "Out of box"):
    #: ``"error"`` or ``"clamp"``. :meth:`clamped` returns an emulator with ``"clamp"``.
    out_of_box = "error"

    def clamped(self) -> Emulator:
        """This emulator with parameters clipped into ``bounds`` instead of an error
        (module docstring, "Out of box"): flux and gradient of the nearest face."""
        return ClampedEmulator(self)

    def _check_params(self, params, policy: str | None = None):
        """``params`` as a JAX array whose last axis holds the parameters, after the
        out-of-box policy (module docstring): clipped into ``bounds`` for ``"clamp"``;
        for ``"error"`` a one-line ValueError with the bounds when a concrete value is
        outside them or NaN, and ``eqx.error_if`` under ``jit``. ``policy`` defaults to
        :attr:`out_of_box`. ValueError naming the expected names for a wrong shape."""
        import jax
        import jax.numpy as jnp

        params = jnp.asarray(params)
        k = len(self.param_names)
        if params.shape[-1:] != (k,):
            raise ValueError(
                f"params has shape {params.shape}; the last axis must hold the {k} "
                f"parameters {tuple(self.param_names)}"
            )
        policy = self.out_of_box if policy is None else policy
        if policy not in OUT_OF_BOX:
            raise ValueError(f"out_of_box={policy!r}; pass one of {OUT_OF_BOX}")
        try:
            with jax.ensure_compile_time_eval():  # a constant box under jit too
                bounds = np.asarray(self.bounds, dtype=np.float64).reshape(k, 2)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
            return params  # the emulator itself is traced (differentiated): no fixed box
        if policy == "clamp":
            return jnp.clip(params, bounds[:, 0], bounds[:, 1])
        lo, hi = _slack_box(bounds)
        if isinstance(params, jax.core.Tracer):
            outside = jnp.any((params < lo) | (params > hi))
            return eqx.error_if(params, outside, f"parameters outside the emulator's box "
                                f"({box_text(self, bounds)}); keep them inside or use "
                                "emulator.clamped()")
        values = np.asarray(params, dtype=np.float64).reshape(-1, k)
        bad = ~((values >= lo) & (values <= hi))  # NaN counts as outside
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(
                f"{self.param_names[col]}={values[row, col]:g} outside the emulator's box "
                f"({box_text(self, bounds)}); pass parameters inside it, or use emulator.clamped() "
                "to clip them to the box"
            )
        return params

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    @property
    def n_pix(self) -> int:
        return int(np.shape(self.wavelength)[0])


def box_text(emulator, bounds=None) -> str:
    """The box as one line, e.g. ``"teff in [4000, 7000], logg in [3.5, 4.5]"``
    (``bounds``: ``(k, 2)`` instead of ``emulator.bounds``)."""
    b = np.asarray(emulator.bounds if bounds is None else bounds, dtype=np.float64)
    b = b.reshape(-1, 2)
    return ", ".join(f"{n} in [{lo:g}, {hi:g}]" for n, (lo, hi) in zip(emulator.param_names, b))


def _slack_box(bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box widened by 1e-9 (relative): values read back from text still count."""
    slack = 1e-9 * np.maximum(1.0, np.abs(bounds).max(axis=1))
    return bounds[:, 0] - slack, bounds[:, 1] + slack


class ClampedEmulator(Emulator):
    """An emulator whose parameters are clipped into its box (out-of-box policy
    ``"clamp"``; see the module docstring). Made by :meth:`Emulator.clamped`.

    Fields:

    base
        the wrapped emulator; names, bounds, wavelengths and ``model_variance`` are its.
    """

    base: Emulator
    out_of_box = "clamp"

    def __call__(self, params):
        """params ``(..., n_params)``, clipped into ``bounds`` → the base's flux."""
        return self.base(self._check_params(params, "clamp"))

    @property
    def kind(self) -> str:
        return self.base.kind

    @property
    def param_names(self) -> tuple[str, ...]:
        return self.base.param_names

    @property
    def bounds(self) -> np.ndarray:
        return self.base.bounds

    @property
    def wavelength(self) -> np.ndarray:
        return self.base.wavelength

    @property
    def model_variance(self):
        return self.base.model_variance

    def clamped(self) -> Emulator:
        return self

    def save(self, path: str | PathLike, **kwargs) -> Path:
        """The base emulator's file (the policy is a choice at load time, not stored)."""
        return self.base.save(path, **kwargs)

    def to_contents(self) -> emulator_file.Contents:
        """The base emulator's contents (the policy is not stored)."""
        return self.base.to_contents()


def load_emulator(path: str | PathLike, *, out_of_box: str = "error") -> Emulator:
    """Load any jaxspec emulator file, dispatching on its ``kind`` attribute.

    Args:
        path: HDF5 file written by an emulator's ``save``.
        out_of_box: ``"error"`` (default) or ``"clamp"`` (module docstring, "Out of box").

    Returns:
        The emulator (an :class:`Emulator` subclass instance; a :class:`ClampedEmulator`
        around it for ``"clamp"``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a jaxspec emulator file, or a kind this version does not know.
    """
    if out_of_box not in OUT_OF_BOX:
        raise ValueError(f"out_of_box={out_of_box!r}; pass one of {OUT_OF_BOX}")
    _import_all_kinds()
    emulator = emulator_file.load(path, format=FORMAT)
    return emulator.clamped() if out_of_box == "clamp" else emulator


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
        "jaxspec.observed_emulator",
        "jaxspec.template",
    ):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # parent package absent
            found = False
        if found:
            importlib.import_module(module)
