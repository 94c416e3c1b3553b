r"""The autoencoder generator (Gebran et al., seed 002): spectra are compressed by an
autoencoder; a dense network maps labels to the latent space; decoder ∘ dense network is
the emulator.

.. math::
    z = E(f) \in \mathbb{R}^{10}, \qquad \hat f = D(z), \qquad
    \text{Spectrum} = D\big(N(x(\ell))\big),

the paper's "Spectrum = decoder(NN(Stellar Labels))" (their sect. 2.4), with
:math:`x(\ell) = (\ell - \ell_{min})/(\ell_{max} - \ell_{min}) - \tfrac12`.

Architecture (paper's tables 2 and 3; every hidden layer ReLU):

* encoder E: n_pix → 1024 → 512 → 256 → 64 → 32 → latent 10 (ReLU, as in table 2);
* decoder D: the mirror, 10 → 32 → 64 → 256 → 512 → 1024 → n_pix (linear output);
* dense network N: labels → 5000 → 2000 → 512 → 32 → 10 (linear), dropout 30 % after
  the 5000, 2000 and 512 layers during training.

Training (:func:`train_autoencoder`), as in the paper: the autoencoder first (Adam,
mean-squared error on flux), then N on the latent vectors of the training spectra
(Adamax, mean-squared error), each with 80 % / 20 % train / validation split and early
stopping after 15 epochs without improvement; no joint fine-tuning (``finetune_epochs``
adds one, beyond the paper). Widths are arguments:
the paper's spectra have 4,000 px; for longer spectra on a CPU the first encoder layers
(and the mirrored last decoder layers) can be narrowed, e.g. ``encoder=(256, 256, 256, 64,
32)`` for 25,410 px, which cuts the cost of the two n_pix-wide layers fourfold.

Choices beyond the paper: fluxes are centred on the training mean spectrum and divided by
their overall standard deviation, and latent targets standardised per dimension, for
training; both affine maps are folded into the first encoder, last decoder and last dense
layer afterwards. Glorot initialisation. Weights are float32, as trained.
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

__all__ = ["AutoencoderEmulator", "train_autoencoder"]

#: activation of the latent layer: ReLU, as in the paper's table 2 (a unit can die, i.e.
#: output 0 for every spectrum; ``info["dead_latent_units"]`` counts them after training).
LATENT_ACT = "relu"
_LAYER = tuple[Float[Array, "n_in n_out"], Float[Array, " n_out"]]


@register_emulator("autoencoder")
class AutoencoderEmulator(PeerEmulator):
    r"""Decoder stacked on the labels → latent network (module docstring).

    Fields:

    encoder, decoder, dense
        layer chains ``((W, b), ...)`` float32: encoder n_pix → latent, decoder latent →
        n_pix, dense k → latent.
    label_min, label_max
        ``(k,)`` label scaling of the dense network (training minimum and maximum; also
        the bounds).
    wavelength_, names, provenance
        as in :class:`~jaxspec.peers._base.PeerEmulator` (which also gives ``save`` /
        ``load``).

    ``emulator(params)``: params ``(..., k)`` → flux ``(..., n_pix)`` float32; jit-,
    vmap- and grad-safe. :meth:`encode`, :meth:`decode` and :meth:`reconstruct` expose the
    autoencoder. Train with :func:`train_autoencoder`.
    """

    encoder: tuple[_LAYER, ...]
    decoder: tuple[_LAYER, ...]
    dense: tuple[_LAYER, ...]
    label_min: Float[Array, " k"]
    label_max: Float[Array, " k"]

    file_arrays = ("label_min", "label_max")
    file_networks = ("encoder", "decoder", "dense")

    def __check_init__(self):
        k, n_pix = len(self.names), int(np.shape(self.wavelength_)[0])
        enc = _dense.check_chain(self.encoder, "AutoencoderEmulator encoder")
        dec = _dense.check_chain(self.decoder, "AutoencoderEmulator decoder")
        den = _dense.check_chain(self.dense, "AutoencoderEmulator dense")
        if enc[0] != n_pix or dec[-1] != n_pix or den[0] != k or not (
            enc[-1] == dec[0] == den[-1]
        ):
            raise ValueError(
                f"AutoencoderEmulator: encoder {enc[0]} → {enc[-1]}, decoder {dec[0]} → "
                f"{dec[-1]}, dense {den[0]} → {den[-1]} do not fit {k} parameters, {n_pix} "
                "pixels and one latent size"
            )

    @property
    def n_latent(self) -> int:
        """Dimension of the latent space."""
        return int(self.decoder[0][0].shape[0])

    def encode(self, flux) -> Float[Array, "... n_latent"]:
        """Latent vector ``z = E(f)`` of spectra ``(..., n_pix)`` → ``(..., n_latent)``."""
        acts = ("relu",) * (len(self.encoder) - 1) + (LATENT_ACT,)
        return _dense.apply(self.encoder, flux, acts)

    def decode(self, latent) -> Float[Array, "... n_pix"]:
        """Spectrum ``D(z)`` of latent vectors ``(..., n_latent)`` → ``(..., n_pix)``."""
        acts = ("relu",) * (len(self.decoder) - 1) + ("linear",)
        return _dense.apply(self.decoder, latent, acts)

    def reconstruct(self, flux) -> Float[Array, "... n_pix"]:
        """``D(E(f))``: the autoencoder's reconstruction of spectra ``(..., n_pix)``."""
        return self.decode(self.encode(flux))

    def latent(self, params) -> Float[Array, "... n_latent"]:
        """The dense network's latent vector ``N(x(ℓ))`` for params ``(..., k)``."""
        x = self._unit_labels(params)
        acts = ("relu",) * (len(self.dense) - 1) + ("linear",)
        return _dense.apply(self.dense, x, acts)

    def __call__(self, params) -> Float[Array, "... n_pix"]:
        """Flux ``D(N(x(ℓ)))`` at params ``(..., k)`` → ``(..., n_pix)``."""
        return self.decode(self.latent(params))



def train_autoencoder(
    grid: SpectralGrid,
    holdout=None,
    *,
    encoder=(1024, 512, 256, 64, 32),
    latent: int = 10,
    dense=(5000, 2000, 512, 32),
    dropout: float = 0.3,
    learning_rate: float = 1e-3,
    dense_learning_rate: float = 1e-3,
    batch_size: int = 64,
    max_epochs: int = 300,
    dense_max_epochs: int | None = None,
    finetune_epochs: int = 0,
    patience: int = 15,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> AutoencoderEmulator:
    r"""Train the autoencoder, then the labels → latent network (module docstring).

    Args:
        grid: a :class:`~jaxspec.grid.SpectralGrid` of normalised spectra.
        holdout: nodes to leave out entirely: None, a bool array of ``grid.shape``,
            ``(n, k)`` node parameters or ``{name: value}`` dicts.
        encoder: encoder hidden widths, input side first (paper: 1024, 512, 256, 64, 32);
            the decoder mirrors them.
        latent: latent dimension (paper: 10).
        dense: hidden widths of the labels → latent network (paper: 5000, 2000, 512, 32).
        dropout: rate after every dense hidden layer except the last (paper: 0.3).
        learning_rate: Adam step of the autoencoder (Keras' default 1e-3).
        dense_learning_rate: Adamax step of the dense network (Keras' default 1e-3).
        batch_size: spectra per step for both. The paper's 512 was for 2×10⁵ spectra
            (hundreds of steps per epoch); on grids of ~10³ nodes it gives one or two
            steps per epoch and stops untrained after 15 epochs, so the default is 64.
        max_epochs: epoch limit of the autoencoder; ``dense_max_epochs`` of the dense
            network (default: the same).
        finetune_epochs: beyond the paper, 0 by default: after the two stages, train the
            generator D∘N end to end on flux (Adam, ``learning_rate``, dropout as in N)
            for up to this many epochs with the same early stopping.
        patience: early-stopping patience, epochs (paper: 15).
        val_fraction: validation fraction (paper: 0.2); the same nodes are held back in
            both stages.
        seed: initialisation, split, shuffling, dropout.
        progress: tqdm bars over epochs.

    Returns:
        An :class:`AutoencoderEmulator`; ``info`` records the settings and, per stage,
        ``best_epoch``, ``epochs``, per-epoch losses and seconds (flux MSE for the
        autoencoder, standardised latent MSE for the dense network).

    Raises:
        ValueError: a non-positive size or rate outside [0, 1), a label with a single
            value, or too few nodes.
    """
    encoder = check_widths("encoder", encoder)
    dense = check_widths("dense", dense)
    latent = check_positive_int("latent", latent)
    batch_size = check_positive_int("batch_size", batch_size)
    max_epochs = check_positive_int("max_epochs", max_epochs)
    dense_max_epochs = check_positive_int(
        "dense_max_epochs", max_epochs if dense_max_epochs is None else dense_max_epochs)
    patience = check_positive_int("patience", patience)
    if not isinstance(finetune_epochs, (int, np.integer)) or isinstance(
        finetune_epochs, bool
    ) or finetune_epochs < 0:
        raise ValueError(
            f"finetune_epochs={finetune_epochs!r}; pass 0 (none, as in the paper) or a "
            "positive number of epochs"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout}; pass a rate in [0, 1)")
    for name, lr in (("learning_rate", learning_rate),
                     ("dense_learning_rate", dense_learning_rate)):
        if not lr > 0:
            raise ValueError(f"{name}={lr}; pass a positive step size")
    labels, flux = training_set(grid, holdout)
    names = grid.param_names
    n_pix = grid.n_pix
    scaled = scaled_set(labels, flux, names, val_fraction, seed)
    lo, hi, x, y, mean, std = (scaled[k] for k in ("lo", "hi", "x", "y", "mean", "std"))
    tr, va = scaled["train"], scaled["val"]
    k_enc, k_dec, k_dense = jax.random.split(jax.random.PRNGKey(seed), 3)

    # 1. the autoencoder, on standardised spectra
    enc = _dense.init_layers(k_enc, (n_pix, *encoder, latent))
    dec = _dense.init_layers(k_dec, (latent, *encoder[::-1], n_pix))
    enc_acts = ("relu",) * len(encoder) + (LATENT_ACT,)
    dec_acts = ("relu",) * len(encoder) + ("linear",)

    def ae_loss(nets, fb, _, key):
        e, d = nets
        return jnp.mean((_dense.apply(d, _dense.apply(e, fb, enc_acts), dec_acts) - fb) ** 2)

    (enc, dec), ae_hist = _dense.fit(
        (enc, dec), ae_loss, (y[tr], y[tr]), (y[va], y[va]) if va.size else None,
        optax.adam(learning_rate), max_epochs=max_epochs, batch_size=batch_size,
        patience=patience, seed=seed, progress=progress, desc="train autoencoder",
    )

    # 2. labels → latent, on standardised latent vectors
    z = np.asarray(jax.jit(lambda e, f: _dense.apply(e, f, enc_acts))(enc, y),
                   dtype=np.float64)
    z_mean = z[tr].mean(axis=0)
    z_std = z[tr].std(axis=0)
    z_std = np.where(z_std > 0, z_std, 1.0)  # a dead (always 0) ReLU latent unit
    zs = ((z - z_mean) / z_std).astype(np.float32)
    net = _dense.init_layers(k_dense, (len(names), *dense, latent))
    dense_acts = ("relu",) * len(dense) + ("linear",)
    rates = (dropout,) * (len(dense) - 1) + (0.0, 0.0)

    def dense_loss(layers, xb, zb, key):
        return jnp.mean((_dense.apply(layers, xb, dense_acts, dropout=rates, key=key) - zb) ** 2)

    net, dense_hist = _dense.fit(
        net, dense_loss, (x[tr], zs[tr]), (x[va], zs[va]) if va.size else None,
        optax.adamax(dense_learning_rate), max_epochs=dense_max_epochs,
        batch_size=batch_size, patience=patience, seed=seed + 1, progress=progress,
        desc="train labels→latent",
    )

    net = _dense.fold_output(net, z_std, z_mean)
    tune_hist = None
    if finetune_epochs:
        # 3. (beyond the paper) the generator D∘N end to end on standardised flux
        def gen_loss(nets, xb, fb, key):
            n_, d_ = nets
            zb = _dense.apply(n_, xb, dense_acts, dropout=rates, key=key)
            return jnp.mean((_dense.apply(d_, zb, dec_acts) - fb) ** 2)

        (net, dec), tune_hist = _dense.fit(
            (net, dec), gen_loss, (x[tr], y[tr]), (x[va], y[va]) if va.size else None,
            optax.adam(learning_rate), max_epochs=finetune_epochs, batch_size=batch_size,
            patience=patience, seed=seed + 2, progress=progress, desc="fine-tune generator",
        )
    enc = _dense.fold_input(enc, std, mean)
    dec = _dense.fold_output(dec, std, mean)
    info = {
        "n_train": int(tr.size), "n_val": int(va.size), "encoder": list(encoder),
        "latent": latent, "dense": list(dense), "dropout": dropout,
        "learning_rate": learning_rate, "dense_learning_rate": dense_learning_rate,
        "batch_size": batch_size, "patience": patience, "seed": seed, "flux_scale": std,
        "dead_latent_units": int(np.sum(z[tr].std(axis=0) == 0)),
        "autoencoder": _stage(ae_hist, std**2),
        "dense_network": _stage(dense_hist, 1.0),
        "finetune": None if tune_hist is None else _stage(tune_hist, std**2),
        "seconds": ae_hist["seconds"] + dense_hist["seconds"]
        + (tune_hist["seconds"] if tune_hist else 0.0),
    }
    return AutoencoderEmulator(
        encoder=enc, decoder=dec, dense=net,
        label_min=jnp.asarray(lo, dtype=jnp.float64),
        label_max=jnp.asarray(hi, dtype=jnp.float64),
        wavelength_=np.asarray(grid.wavelength, dtype=np.float64), names=tuple(names),
        provenance=json.dumps(info),
    )


def _stage(history: dict, unit: float) -> dict:
    """A training history with losses multiplied by ``unit`` (back to flux² units)."""
    return {
        "best_epoch": history["best_epoch"], "epochs": history["epochs"],
        "best_val_mse": history["best_loss"] * unit, "seconds": history["seconds"],
        "train_loss": [v * unit for v in history["train_loss"]],
        "val_loss": [v * unit for v in history["val_loss"]],
    }
