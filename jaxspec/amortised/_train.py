"""The training loop shared by the regressor and the flow: streamed batches, early stopping.

Each epoch walks the ``n_train // batch_size`` batches of the training set (parameters fixed
by the set's key, fresh noise per epoch; :func:`~jaxspec.amortised.simulate.
training_batch`), then scores a fixed validation set (its own key, fixed noise). Training
stops when the validation loss has not improved for ``patience`` epochs (BOSS Net:
"terminated at the point when the performance on the validation set stops improving",
Sizemore et al. sect. 4) and the best weights are returned.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import paramax
from tqdm.auto import tqdm

from jaxspec.amortised.simulate import Simulator, Standardizer, training_batch


def trainable(tree) -> object:
    """Filter spec: True at floating arrays that are trained (not flowjax NonTrainable)."""
    return jax.tree.map(
        eqx.is_inexact_array, tree, is_leaf=lambda x: isinstance(x, paramax.NonTrainable)
    )


def check_sizes(n_train: int, batch_size: int, n_val: int, max_epochs: int, patience: int):
    for name, value, low in (("n_train", n_train, 2), ("batch_size", batch_size, 2),
                             ("n_val", n_val, 2), ("max_epochs", max_epochs, 1),
                             ("patience", patience, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{name}={value!r}; pass an integer")
        if value < low:
            raise ValueError(f"{name}={value}; pass an integer >= {low}")


def fit(
    model,
    state,
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    simulator: Simulator,
    standardizer: Standardizer,
    *,
    n_train: int,
    batch_size: int,
    n_val: int,
    max_epochs: int,
    patience: int,
    key,
    progress: bool,
    desc: str,
    eval_model: Callable = lambda m: m,
):
    """Train ``model`` with ``loss_fn(model, state, z, x, s, training) -> (loss, state)``.

    ``z`` standardised labels ``(b, k)``, ``x`` standardised flux ``(b, m)`` float32, ``s``
    standardised log S/N ``(b,)``. ``state`` is the batch-norm state (None for none);
    ``eval_model`` turns the model into its evaluation form (batch norm on running
    statistics). Returns ``(model, state, history)``.
    """
    check_sizes(n_train, batch_size, n_val, max_epochs, patience)
    batch_size = min(batch_size, n_train)
    steps = n_train // batch_size
    val_batch = min(batch_size, n_val)
    val_steps = math.ceil(n_val / val_batch)
    k_set, k_noise, k_val = jax.random.split(key, 3)
    spec = trainable(model)
    params, static = eqx.partition(model, spec)
    opt_state = optimizer.init(params)

    def batch(set_key, noise_key, n):
        theta, snr, flux = training_batch(simulator, set_key, noise_key, n)
        return (standardizer.labels(theta), standardizer.flux(flux), standardizer.snr(snr))

    @eqx.filter_jit
    def step(params, state, opt_state, set_key, noise_key):
        z, x, s = batch(set_key, noise_key, batch_size)

        def objective(p):
            return loss_fn(eqx.combine(p, static), state, z, x, s, True)

        (loss, new_state), grads = eqx.filter_value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        return params, new_state, opt_state, loss

    @eqx.filter_jit
    def val_loss(params, state, set_key):
        z, x, s = batch(set_key, jax.random.fold_in(set_key, 7), val_batch)
        loss, _ = loss_fn(eval_model(eqx.combine(params, static)), state, z, x, s, False)
        return loss

    def validate(params, state):
        return float(np.mean([float(val_loss(params, state, jax.random.fold_in(k_val, i)))
                              for i in range(val_steps)]))

    history = {"initial_val_loss": validate(params, state), "train_loss": [], "val_loss": [],
               "epoch_seconds": []}
    best = (jnp.inf, params, state, 0)
    bar = tqdm(range(max_epochs), desc=desc, disable=not progress, unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        losses = []
        noise_epoch = jax.random.fold_in(k_noise, epoch)
        for b in range(steps):
            params, state, opt_state, loss = step(
                params, state, opt_state, jax.random.fold_in(k_set, b),
                jax.random.fold_in(noise_epoch, b))
            losses.append(loss)
        train = float(np.mean(jax.device_get(losses)))
        val = validate(params, state)
        history["train_loss"].append(train)
        history["val_loss"].append(val)
        history["epoch_seconds"].append(time.perf_counter() - t0)
        bar.set_postfix(train=f"{train:.4g}", val=f"{val:.4g}")
        if not math.isfinite(train):
            raise FloatingPointError(
                f"{desc}: training loss is {train} at epoch {epoch}; lower the learning rate"
            )
        if val < best[0]:
            best = (val, params, state, epoch)
        elif epoch - best[3] >= patience:
            break
    history["best_epoch"] = int(best[3])
    history["epochs"] = len(history["train_loss"])
    history["n_train"] = int(steps * batch_size)
    history["seconds"] = float(np.sum(history["epoch_seconds"]))
    return eqx.combine(best[1], static), best[2], history
