"""What the amortised models (:class:`~jaxspec.amortised.CNNRegressor`,
:class:`~jaxspec.amortised.FlowPosterior`) share: their file (``save`` / ``load``
through :mod:`jaxspec.io.emulator_file`), the start of ``predict``, the end of training
(build the model, then recalibrate it) and the residual ``loss`` of their results.

Imports no model module (the models import it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from os import PathLike
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.amortised import _io
from jaxspec.amortised._inputs import prepare
from jaxspec.amortised.calibration import Recalibration
from jaxspec.amortised.simulate import Simulator, Standardizer, _Labelled, as_key
from jaxspec.io import emulator_file
from jaxspec.io.emulator_file import AMORTISED_FORMAT, Contents


def register_amortised(kind: str):
    """Class decorator: record ``cls`` as the model of amortised files of ``kind``."""
    return emulator_file.register(kind, format=AMORTISED_FORMAT)


class AmortisedModel(_Labelled):
    """Base of the amortised models (not registered itself).

    Fields every model has (keyword-only, so that a model declares its networks after
    them): ``standardizer`` (:class:`~jaxspec.amortised.simulate.Standardizer`),
    ``wavelength`` ``(m,)`` and ``edges`` ``(m + 1,)`` (float64 Å, the pixels it reads),
    ``box`` (prior bounds ``((lo, hi), ...)``), ``names`` (parameter names),
    ``snr_range`` (training S/N), ``config`` (architecture, JSON), ``history`` (training
    log, JSON) and ``calibration``
    (:class:`~jaxspec.amortised.calibration.Recalibration`, or None). A model adds its
    networks, named in :attr:`networks` and rebuilt on load by :meth:`skeleton`.
    """

    standardizer: Standardizer = eqx.field(kw_only=True)
    wavelength: np.ndarray = eqx.field(kw_only=True)
    edges: np.ndarray = eqx.field(kw_only=True)
    box: tuple[tuple[float, float], ...] = eqx.field(static=True, kw_only=True)
    names: tuple[str, ...] = eqx.field(static=True, kw_only=True)
    snr_range: tuple[float, float] = eqx.field(static=True, kw_only=True)
    config: str = eqx.field(static=True, kw_only=True)
    history: str = eqx.field(static=True, default="{}", kw_only=True)
    calibration: Recalibration | None = eqx.field(default=None, kw_only=True)

    #: the fields holding the networks, in the order :meth:`skeleton` returns them
    networks = ()

    @classmethod
    def skeleton(cls, config: dict, n_pix: int, n_params: int) -> tuple:
        """The networks of ``config`` (any weights: the file's replace them)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ files

    def save(self, path: str | PathLike, *, overwrite: bool = False) -> Path:
        """Write the model to HDF5 (layout in :mod:`jaxspec.amortised._io`, ``kind`` the
        model's), atomically: an existing file is replaced only once the new one is
        complete, and only with ``overwrite=True``; returns the path."""
        return emulator_file.save(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | PathLike):
        """Read a file written by :meth:`save` (of this kind)."""
        return emulator_file.load(path, format=AMORTISED_FORMAT, cls=cls)

    def to_contents(self) -> Contents:
        """The file's contents (:func:`jaxspec.amortised._io.contents`)."""
        return _io.contents(self, tuple(getattr(self, name) for name in self.networks))

    @classmethod
    def from_contents(cls, contents: Contents, path):
        """The model from the contents of its file."""
        d = _io.read(contents, path)
        skeleton = cls.skeleton(d["config"], len(d["wavelength"]), len(d["names"]))
        networks = _io.restore(skeleton, d["leaves"], path)
        return cls(**dict(zip(cls.networks, networks)), **_io.model_fields(d),
                   calibration=_io.calibration_of(d, Recalibration))

    # ------------------------------------------------------------------ predict

    def _network_flux(self, flux):
        """``flux`` as a JAX array; ValueError unless its last axis is the network's
        pixels."""
        flux = jnp.asarray(flux)
        if flux.shape[-1:] != (self.n_pix,):
            raise ValueError(
                f"flux has shape {flux.shape}; the last axis must be the network's "
                f"{self.n_pix} pixels"
            )
        return flux

    def _inputs(self, data, uncertainty, snr, key, batch_size: int, count_name: str,
                count: int):
        """The start of ``predict``: ``(flux (n, m), sigma (n, m) or None, snr (n,),
        key, n, b)`` with ``b`` the spectra per batch; ValueError unless ``count`` (the
        draws per spectrum, named ``count_name``) is an integer >= 2."""
        if not isinstance(count, (int, np.integer)) or count < 2:
            raise ValueError(f"{count_name}={count!r}; pass an integer >= 2")
        flux, sigma, snr_used, _, _ = prepare(self, data, uncertainty, snr)
        n = flux.shape[0]
        return flux, sigma, snr_used, as_key(key), n, max(1, min(int(batch_size), n))


def check_training(simulator, n_calibrate) -> None:
    """The checks every ``train_*`` makes first: a Simulator, and ``n_calibrate`` a
    non-negative integer."""
    if not isinstance(simulator, Simulator):
        raise TypeError(
            f"simulator is a {type(simulator).__name__}; pass "
            "jaxspec.amortised.Simulator.from_emulator(emulator, ...)"
        )
    if not isinstance(n_calibrate, (int, np.integer)) or n_calibrate < 0:
        raise ValueError(f"n_calibrate={n_calibrate!r}; pass 0 (no recalibration) or a "
                         "number of held-out spectra (>= 100)")


def finish_training(cls, networks: tuple, std, simulator, config: dict, history: dict,
                    calibrate: Callable, n_calibrate: int, key, progress: bool):
    """The end of every ``train_*``: the model ``cls`` with ``networks`` (in
    ``cls.networks`` order), standardisation ``std`` and the simulator's pixels, box,
    names and S/N range, then recalibrated by ``calibrate(model, simulator, n=, key=,
    progress=)`` on ``n_calibrate`` held-out spectra (none for 0; the key is ``key`` with
    17 folded in, one the training never used)."""
    history["snr_range"] = list(simulator.snr_range)
    model = cls(
        **dict(zip(cls.networks, networks)), standardizer=std,
        wavelength=np.asarray(simulator.wavelength), edges=np.asarray(simulator.edges),
        box=simulator.box, names=simulator.names, snr_range=simulator.snr_range,
        config=json.dumps(config), history=json.dumps(history))
    if n_calibrate:
        model = calibrate(model, simulator, n=n_calibrate,
                          key=jax.random.fold_in(key, 17), progress=progress)
    return model


def residual_loss(emulator, model, params, flux) -> np.ndarray:
    """RMS residual (blase3D eq. 4) ``(n,)`` between ``flux`` ``(n, m)`` on the model's
    pixels and the emulator at ``params`` ``(n, k)`` (clipped into its box), rebinned
    onto them; NaN without an emulator or where ``params`` is not finite."""
    n = flux.shape[0]
    if emulator is None:
        return np.full(n, np.nan)
    from jaxspec.amortised.simulate import Rebin

    rebin = Rebin.between(emulator.wavelength, model.edges, label="the emulator")
    b = np.asarray(emulator.bounds)
    p = np.clip(np.nan_to_num(np.asarray(params), nan=0.0), b[:, 0], b[:, 1])
    model_flux = np.asarray(rebin(emulator(jnp.asarray(p))))
    loss = np.sqrt(np.mean((model_flux - flux) ** 2, axis=-1))
    return np.where(np.all(np.isfinite(params), axis=-1), loss, np.nan)
