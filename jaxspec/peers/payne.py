r"""The Payne (Ting et al. 2019, ApJ 879, 69): one multilayer perceptron, labels → spectrum.

.. math::
    x = \frac{\ell - \ell_{min}}{\ell_{max} - \ell_{min}} - \tfrac12, \qquad
    f(\ell) = W_3\,\phi\big(W_2\,\phi(W_1 x + b_1) + b_2\big) + b_3,

with :math:`\phi` the leaky ReLU (slope 0.01), two hidden layers of 100 units and one
output per pixel: the network of the seed snippet (``Linear(num_label, 100), LeakyReLU,
Linear(100, 100), LeakyReLU, Linear(100, num_pix)``, Adam with learning rate 1e-3) and of
the authors' code (``The_Payne/training.py``: labels scaled to [−0.5, 0.5] by the
training minimum and maximum, mean-squared-error loss, minibatches, the weights of the
best validation loss kept).

Choices beyond the seed: the training spectra are centred on their mean spectrum and
divided by their overall standard deviation for training, and that affine map is folded
back into the last layer afterwards (the network computed is the one above); Glorot
initialisation; early stopping after ``patience`` epochs without validation improvement.
Weights are float32, as trained.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from jaxspec.emulator import register_emulator
from jaxspec.grid import SpectralGrid
from jaxspec.peers import _dense
from jaxspec.peers._base import PeerEmulator
from jaxspec.peers._data import (
    check_positive_int,
    check_widths,
    scaled_set,
    training_set,
)

__all__ = ["PayneEmulator", "train_payne"]


@register_emulator("payne")
class PayneEmulator(PeerEmulator):
    r"""The Payne's network (module docstring).

    Fields:

    layers
        ``((W_1, b_1), ..., (W_L, b_L))`` float32, ``W_l`` shaped ``(n_{l-1}, n_l)``,
        ``n_L = n_pix``.
    label_min, label_max
        ``(k,)`` the label scaling (training minimum and maximum; also the bounds).
    wavelength_, names, provenance
        as in :class:`~jaxspec.peers._base.PeerEmulator` (which also gives ``save`` /
        ``load``).

    ``emulator(params)``: params ``(..., k)`` → flux ``(..., n_pix)`` float32; jit-,
    vmap- and grad-safe. Train with :func:`train_payne`.
    """

    layers: tuple[tuple[Float[Array, "n_in n_out"], Float[Array, " n_out"]], ...]
    label_min: Float[Array, " k"]
    label_max: Float[Array, " k"]

    file_arrays = ("label_min", "label_max")
    file_networks = ("layers",)

    def __check_init__(self):
        k, n_pix = len(self.names), int(np.shape(self.wavelength_)[0])
        sizes = _dense.check_chain(self.layers, "PayneEmulator")
        if sizes[0] != k or sizes[-1] != n_pix:
            raise ValueError(
                f"PayneEmulator: the network maps {sizes[0]} → {sizes[-1]} but the emulator "
                f"has {k} parameters and {n_pix} pixels"
            )

    @property
    def hidden(self) -> tuple[int, ...]:
        """Widths of the hidden layers."""
        return tuple(int(w.shape[1]) for w, _ in self.layers[:-1])

    def __call__(self, params) -> Float[Array, "... n_pix"]:
        """Flux at params ``(..., k)`` (order of ``param_names``) → ``(..., n_pix)``."""
        x = self._unit_labels(params)
        acts = ("leaky_relu",) * (len(self.layers) - 1) + ("linear",)
        return _dense.apply(self.layers, x, acts)



def train_payne(
    grid: SpectralGrid,
    holdout=None,
    *,
    hidden=(100, 100),
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    max_epochs: int = 1000,
    patience: int = 100,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> PayneEmulator:
    r"""Train The Payne on the nodes of a grid.

    Args:
        grid: a :class:`~jaxspec.grid.SpectralGrid` of normalised spectra.
        holdout: nodes to leave out entirely: None, a bool array of ``grid.shape``,
            ``(n, k)`` node parameters or ``{name: value}`` dicts.
        hidden: hidden-layer widths (seed: two of 100).
        learning_rate: Adam step (seed: 1e-3).
        batch_size: spectra per step. The authors' code uses 512 for grids of 10³–10⁴
            spectra; with ~10³ nodes that is one or two steps per epoch, so the default
            here is 64.
        max_epochs: at most this many passes over the training nodes.
        patience: stop after this many epochs without a better validation loss.
        val_fraction: fraction of the training nodes (random, ``seed``) kept for
            validation and early stopping; 0 uses the training loss.
        seed: initialisation, split, shuffling.
        progress: tqdm bar over epochs.

    Returns:
        A :class:`PayneEmulator` holding the best-validation weights; ``info`` records the
        settings, ``best_epoch``, ``epochs``, the losses per epoch (MSE of flux) and the
        training seconds.

    Raises:
        ValueError: a non-positive size, a label with a single value, or too few nodes.
    """
    hidden = check_widths("hidden", hidden)
    batch_size = check_positive_int("batch_size", batch_size)
    max_epochs = check_positive_int("max_epochs", max_epochs)
    patience = check_positive_int("patience", patience)
    if not learning_rate > 0:
        raise ValueError(f"learning_rate={learning_rate}; pass a positive step size")
    labels, flux = training_set(grid, holdout)
    names = grid.param_names
    scaled = scaled_set(labels, flux, names, val_fraction, seed)
    lo, hi, x, y, mean, std = (scaled[k] for k in ("lo", "hi", "x", "y", "mean", "std"))
    tr, va = scaled["train"], scaled["val"]

    acts = ("leaky_relu",) * len(hidden) + ("linear",)
    net = _dense.init_layers(jax.random.PRNGKey(seed), (len(names), *hidden, grid.n_pix))

    def loss(layers, xb, yb, key):
        return jnp.mean((_dense.apply(layers, xb, acts) - yb) ** 2)

    net, history = _dense.fit(
        net, loss, (x[tr], y[tr]), (x[va], y[va]) if va.size else None,
        optax.adam(learning_rate), max_epochs=max_epochs, batch_size=batch_size,
        patience=patience, seed=seed, progress=progress, desc="train payne",
    )
    net = _dense.fold_output(net, std, mean)
    info = {
        "n_train": int(tr.size), "n_val": int(va.size), "hidden": list(hidden),
        "activation": "leaky_relu", "learning_rate": learning_rate,
        "batch_size": batch_size, "max_epochs": max_epochs, "patience": patience,
        "seed": seed, "flux_scale": std,
        "best_epoch": history["best_epoch"], "epochs": history["epochs"],
        "best_val_mse": history["best_loss"] * std**2, "seconds": history["seconds"],
        "train_loss": [v * std**2 for v in history["train_loss"]],
        "val_loss": [v * std**2 for v in history["val_loss"]],
    }
    return PayneEmulator(
        layers=net, label_min=jnp.asarray(lo, dtype=jnp.float64),
        label_max=jnp.asarray(hi, dtype=jnp.float64),
        wavelength_=np.asarray(grid.wavelength, dtype=np.float64), names=tuple(names),
        provenance=json.dumps(info),
    )

