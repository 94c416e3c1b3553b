"""Interface properties the peer emulators share (fields ``names``, ``wavelength_``,
``provenance``, and ``label_min``/``label_max`` for the networks)."""

from __future__ import annotations

import json

import numpy as np

from jaxspec.emulator import Emulator


class PeerEmulator(Emulator):
    """Base of the Cannon, Payne and autoencoder emulators (not registered itself)."""

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

    @property
    def info(self) -> dict:
        """Training information (sizes, epochs, losses, seconds, ...), from the file."""
        return json.loads(self.provenance or "{}")
