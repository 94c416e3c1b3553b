r"""Fully connected networks and their minibatch training, shared by The Payne and the
autoencoder generator.

A network is a tuple of layers ``((W_1, b_1), ..., (W_L, b_L))`` with ``W_l`` shaped
``(n_{l-1}, n_l)``, applied to row vectors:

.. math:: h_l = \phi_l(h_{l-1} W_l + b_l), \qquad h_0 = x,

so leading batch axes of ``x`` pass through. Weights are float32 (the precision they are
trained in); inputs are cast to the weights' dtype.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

Layers = tuple[tuple[jax.Array, jax.Array], ...]

#: negative slope of the leaky ReLU: PyTorch's default, the seed snippet's ``LeakyReLU()``.
LEAKY_SLOPE = 0.01

ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, LEAKY_SLOPE),
    "linear": lambda x: x,
}


def init_layers(key, sizes, dtype=jnp.float32) -> Layers:
    """Glorot-uniform weights and zero biases for widths ``sizes = (n_0, ..., n_L)``
    (Keras' default initialiser, Glorot & Bengio 2010)."""
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:]):
        limit = np.sqrt(6.0 / (n_in + n_out))
        w = jax.random.uniform(k, (n_in, n_out), dtype, -limit, limit)
        layers.append((w, jnp.zeros((n_out,), dtype)))
    return tuple(layers)


def apply(layers: Layers, x, activations, *, dropout=0.0, key=None):
    """Forward pass ``x (..., n_0) → (..., n_L)``.

    Args:
        layers: the network.
        x: inputs, cast to the weights' dtype.
        activations: one name of :data:`ACTIVATIONS` per layer.
        dropout: rate applied to the output of each layer when ``key`` is given
            (training; inverted dropout, kept units scaled by ``1/(1 - rate)``): one float
            for every hidden layer, or one rate per layer; ignored without ``key``.
        key: PRNG key for dropout, or None (inference: deterministic).
    """
    h = jnp.asarray(x).astype(layers[0][0].dtype)
    n = len(layers)
    rates = (dropout,) * (n - 1) + (0.0,) if np.ndim(dropout) == 0 else tuple(dropout)
    keys = jax.random.split(key, n) if key is not None else [None] * n
    for (w, b), act, rate, k in zip(layers, activations, rates, keys):
        h = ACTIVATIONS[act](h @ w + b)
        if k is not None and rate > 0:
            keep = jax.random.bernoulli(k, 1.0 - rate, h.shape)
            h = jnp.where(keep, h / (1.0 - rate), 0.0)
    return h


def fold_output(layers: Layers, scale, offset) -> Layers:
    """Network computing ``offset + scale * net(x)`` (scale scalar or ``(n_L,)``)."""
    w, b = layers[-1]
    scale = jnp.asarray(scale, w.dtype)
    offset = jnp.asarray(offset, w.dtype)
    return (*layers[:-1], (w * scale, b * scale + offset))


def fold_input(layers: Layers, scale, offset) -> Layers:
    """Network computing ``net((x - offset) / scale)`` (scale scalar or ``(n_0,)``)."""
    w, b = layers[0]
    scale = jnp.asarray(scale, w.dtype)
    offset = jnp.broadcast_to(jnp.asarray(offset, w.dtype), (w.shape[0],))
    w_new = w / jnp.reshape(scale, (-1, 1)) if jnp.ndim(scale) else w / scale
    return ((w_new, b - offset @ w_new), *layers[1:])


def fit(
    params,
    loss_fn: Callable,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
    optimizer: optax.GradientTransformation,
    *,
    max_epochs: int,
    batch_size: int,
    patience: int,
    seed: int,
    progress: bool,
    desc: str,
):
    r"""Minibatch gradient descent with early stopping on a validation set.

    Each epoch visits the training set in a fresh random order in
    :math:`\lceil n / B \rceil` minibatches of ``batch_size`` B (the last one filled up
    with items from the start of the order, so every step has one shape), taking one
    optimiser step per minibatch; then the mean validation loss (no dropout) is computed.
    The parameters of the best validation epoch are returned (The Payne's rule, Ting et
    al. 2019 code); training stops after ``patience`` epochs without improvement (Gebran
    et al.: 15) or at ``max_epochs``. Without a validation set the training loss of each
    epoch serves instead.

    Args:
        params: initial pytree of arrays.
        loss_fn: ``loss_fn(params, x, y, key) -> scalar``; ``key`` None means evaluation.
        train, val: ``(inputs (n, ...), targets (n, ...))``; ``val`` may be None.
        optimizer: an optax transformation.
        max_epochs, batch_size, patience, seed: as above.
        progress, desc: tqdm bar.

    Returns:
        ``(best_params, history)`` with history ``{"train_loss": [...], "val_loss": [...],
        "best_epoch", "epochs", "best_loss", "seconds"}`` (losses per epoch).
    """
    x, y = (jnp.asarray(a) for a in train)
    n = x.shape[0]
    batch_size = min(batch_size, n)
    n_batches = -(-n // batch_size)

    # data enter the compiled functions as arguments, not as closed-over constants
    def epoch(params, state, key, x, y):
        k_perm, k_drop = jax.random.split(key)
        order = jax.random.permutation(k_perm, n)
        order = jnp.concatenate([order, order])[: n_batches * batch_size]
        batches = order.reshape(n_batches, batch_size)

        def step(carry, idx_key):
            params, state = carry
            idx, k = idx_key
            loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx], k)
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        keys = jax.random.split(k_drop, n_batches)
        (params, state), losses = jax.lax.scan(step, (params, state), (batches, keys))
        return params, state, jnp.mean(losses)

    epoch = jax.jit(epoch)
    if val is not None and val[0].shape[0] > 0:
        xv, yv = (jnp.asarray(a) for a in val)
        evaluate = jax.jit(lambda p, a, b: loss_fn(p, a, b, None))
    else:
        evaluate = None

    state = optimizer.init(params)
    key = jax.random.PRNGKey(seed)
    best, best_loss, best_epoch = params, np.inf, -1
    train_hist, val_hist = [], []
    t0 = time.perf_counter()
    bar = tqdm(range(max_epochs), desc=desc, disable=not progress, unit="epoch")
    for e in bar:
        key, sub = jax.random.split(key)
        params, state, train_loss = epoch(params, state, sub, x, y)
        train_loss = float(train_loss)
        val_loss = float(evaluate(params, xv, yv)) if evaluate is not None else train_loss
        train_hist.append(train_loss)
        val_hist.append(val_loss)
        if np.isfinite(val_loss) and val_loss < best_loss:
            best, best_loss, best_epoch = params, val_loss, e
        if not np.isfinite(train_loss):
            raise FloatingPointError(
                f"{desc}: training loss became {train_loss} at epoch {e}; lower the "
                "learning rate"
            )
        bar.set_postfix(train=f"{train_loss:.3g}", val=f"{val_loss:.3g}", refresh=False)
        if e - best_epoch >= patience:
            break
    bar.close()
    history = {
        "train_loss": train_hist,
        "val_loss": val_hist,
        "best_epoch": int(best_epoch),
        "best_loss": float(best_loss),
        "epochs": len(train_hist),
        "seconds": time.perf_counter() - t0,
    }
    return best, history


def check_chain(layers, owner: str) -> list[int]:
    """Widths ``[n_0, ..., n_L]`` of a layer chain, checking consecutive shapes agree."""
    if not layers:
        raise ValueError(f"{owner}: the network has no layers")
    sizes = [int(layers[0][0].shape[0])]
    for i, (w, b) in enumerate(layers):
        if w.ndim != 2 or w.shape[0] != sizes[-1] or tuple(b.shape) != (w.shape[1],):
            raise ValueError(
                f"{owner}: layer {i} has W {tuple(w.shape)} and b {tuple(b.shape)}; expected "
                f"W ({sizes[-1]}, n) and b (n,)"
            )
        sizes.append(int(w.shape[1]))
    return sizes
