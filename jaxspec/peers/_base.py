"""Interface properties and file contents the peer emulators share (fields ``names``,
``wavelength_``, ``provenance``, and ``label_min``/``label_max`` for the networks)."""

from __future__ import annotations

import json

import equinox as eqx
import numpy as np

from jaxspec.emulator import Emulator
from jaxspec.peers import _store


class PeerEmulator(Emulator):
    """Base of the Cannon, Payne and autoencoder emulators (not registered itself).

    Fields every peer has (keyword-only, so that a peer declares its own before them):

    wavelength_
        ``(n_pix,)`` float64, Å.
    names
        parameter names (static).
    provenance
        JSON string of training information (static; see :attr:`info`).

    Files: the layout of :mod:`jaxspec.peers._store` with the kind's arrays
    (:attr:`file_arrays`) and layer chains (:attr:`file_networks`) as datasets and groups
    of the same names; ``save`` / ``load`` come from :class:`~jaxspec.emulator.Emulator`.
    """

    wavelength_: np.ndarray = eqx.field(kw_only=True)
    names: tuple[str, ...] = eqx.field(static=True, kw_only=True)
    provenance: str = eqx.field(static=True, default="{}", kw_only=True)

    #: the fields stored as datasets of the same name
    file_arrays = ()
    #: the layer chains ``((W, b), ...)`` stored as groups ``<name>/<i>/W, b``
    file_networks = ()

    @property
    def param_names(self) -> tuple[str, ...]:
        return self.names

    @property
    def bounds(self) -> np.ndarray:
        """(n_params, 2) float64: the label range of the training set."""
        return np.stack([np.asarray(self.label_min), np.asarray(self.label_max)],
                        axis=-1).astype(np.float64)

    @property
    def wavelength(self) -> np.ndarray:
        return np.asarray(self.wavelength_, dtype=np.float64)

    def _unit_labels(self, params):
        """Params ``(..., k)`` after the out-of-box check, scaled by the training
        minimum and maximum to [-0.5, 0.5] (the networks' input)."""
        params = self._check_params(params)
        return (params - self.label_min) / (self.label_max - self.label_min) - 0.5

    @property
    def info(self) -> dict:
        """Training information (sizes, epochs, losses, seconds, ...), from the file."""
        return json.loads(self.provenance or "{}")

    def to_contents(self):
        """The file contents (:mod:`jaxspec.peers._store`)."""
        return _store.contents(
            self.kind, self.names, self.wavelength_, self.bounds, self.provenance,
            {name: getattr(self, name) for name in self.file_arrays},
            {name: getattr(self, name) for name in self.file_networks},
        )

    @classmethod
    def from_contents(cls, contents, path):
        """The emulator from the contents of its file (:meth:`to_contents`)."""
        d = _store.fields(contents, path, cls.__name__, cls.file_arrays, cls.file_networks)
        stored = {name: d[name] for name in cls.file_arrays + cls.file_networks}
        if "bounds_" in cls.__dataclass_fields__:
            stored["bounds_"] = d["bounds"]
        return cls(**stored, wavelength_=d["wavelength"], names=d["names"],
                   provenance=d["info"])
