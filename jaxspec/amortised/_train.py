"""The training loop shared by the regressor and the flow: streamed batches, early stopping.

Each epoch walks the ``n_train // batch_size`` batches of the training set (parameters fixed
by the set's key, fresh noise per epoch; :func:`~jaxspec.amortised.simulate.
training_batch`), then scores a fixed validation set (its own key, fixed noise). Training
stops when the validation loss has not improved for ``patience`` epochs (BOSS Net:
"terminated at the point when the performance on the validation set stops improving",
Sizemore et al. sect. 4) and the best weights are returned.

Checkpoints. With ``checkpoint=PATH`` the whole training state (weights, batch-norm
statistics, optimiser state, the best weights so far, the history and the epoch reached)
is written after every epoch, atomically (:mod:`jaxspec.io.atomic`: a partial file,
then a rename; the previous checkpoint stays intact until the new one is complete). ``resume=True`` reloads
it and continues with the next epoch. Every batch is drawn from keys that depend only on
the run's key, the epoch and the batch number, so a resumed run takes exactly the steps
of an uninterrupted one and ends with the same weights (to floating-point
reproducibility of the backend). The checkpoint records the settings that shape the run
(``fingerprint``); resuming with different ones is refused, naming the setting.

Progress: a bar over epochs (ETA to ``max_epochs``; early stopping may end sooner) and,
under it, one over the batches of the current epoch (ETA to the epoch's end).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import paramax
from tqdm.auto import tqdm

from jaxspec.amortised import _io
from jaxspec.amortised.simulate import Simulator, Standardizer, training_batch


def trainable(tree) -> object:
    """Filter spec: True at floating arrays that are trained (not flowjax NonTrainable)."""
    return jax.tree.map(
        eqx.is_inexact_array, tree, is_leaf=lambda x: isinstance(x, paramax.NonTrainable)
    )


def run_fingerprint(kind: str, simulator: Simulator, config: dict, **settings) -> dict:
    """The settings a resumed run must share with its checkpoint: the model kind and
    architecture, the simulator's pixels, box, names and S/N range, a probe of its
    emulator (the summed flux at the box centre, so that another emulator file is caught)
    and ``settings`` (learning rates and the like; JSON-able)."""
    centre = np.asarray(simulator.bounds).mean(axis=1)
    probe = float(np.sum(np.asarray(simulator.rebin(simulator.emulator(
        jnp.asarray(centre[None]))), dtype=np.float64)))
    return {"kind": kind, "config": config, "n_pix": int(simulator.n_pix),
            "wavelength": [float(simulator.wavelength[0]), float(simulator.wavelength[-1])],
            "names": list(simulator.names), "box": [list(b) for b in simulator.box],
            "snr_range": list(simulator.snr_range), "emulator_probe": round(probe, 6),
            **{k: v for k, v in settings.items()}}


def check_sizes(n_train: int, batch_size: int, n_val: int, max_epochs: int, patience: int):
    """Raise TypeError / ValueError naming the first size that is not an integer >= its
    minimum."""
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
    checkpoint=None,
    resume: bool = False,
    fingerprint: dict | None = None,
):
    """Train ``model`` with ``loss_fn(model, state, z, x, s, training) -> (loss, state)``.

    ``z`` standardised labels ``(b, k)``, ``x`` standardised flux ``(b, m)`` float32, ``s``
    standardised log S/N ``(b,)``. ``state`` is the batch-norm state (None for none);
    ``eval_model`` turns the model into its evaluation form (batch norm on running
    statistics). ``checkpoint``: path of the per-epoch checkpoint (None: none);
    ``resume``: continue from it when it exists (module docstring); ``fingerprint``: a
    JSON-able dict of the settings a resumed run must share (checked field by field).
    Returns ``(model, state, history)``.

    Raises:
        ValueError: the checkpoint was made with other settings (the field is named).
        FloatingPointError: the training loss became non-finite.
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

    fingerprint = {**(fingerprint or {}), "n_train": int(n_train),
                   "batch_size": int(batch_size), "n_val": int(n_val),
                   "patience": int(patience),
                   "key": np.asarray(jax.random.key_data(key)).tolist()}
    ckpt = None if checkpoint is None else Path(checkpoint)
    start, stopped, history, best = 0, False, None, None
    if ckpt is not None and resume:
        if ckpt.exists():
            start, stopped, history, best, params, state, opt_state = _resume(
                ckpt, fingerprint, params, state, opt_state)
        else:
            warnings.warn(f"{ckpt}: no checkpoint to resume from; training from the start",
                          stacklevel=3)
    if history is None:
        history = {"initial_val_loss": validate(params, state), "train_loss": [],
                   "val_loss": [], "epoch_seconds": []}
        best = (math.inf, params, state, 0)
    bar = tqdm(total=max_epochs, initial=min(start, max_epochs), desc=desc,
               disable=not progress, unit="epoch", dynamic_ncols=True)
    inner = tqdm(total=steps, desc="  batches", disable=not progress, unit="batch",
                 leave=False, dynamic_ncols=True)
    for epoch in range(start, max_epochs):
        if stopped:
            break
        t0 = time.perf_counter()
        losses = []
        noise_epoch = jax.random.fold_in(k_noise, epoch)
        inner.reset(total=steps)
        inner.set_description(f"  epoch {epoch + 1} batches")
        for b in range(steps):
            params, state, opt_state, loss = step(
                params, state, opt_state, jax.random.fold_in(k_set, b),
                jax.random.fold_in(noise_epoch, b))
            losses.append(loss)
            inner.update()
        train = float(np.mean(jax.device_get(losses)))
        val = validate(params, state)
        history["train_loss"].append(train)
        history["val_loss"].append(val)
        history["epoch_seconds"].append(time.perf_counter() - t0)
        bar.update()
        bar.set_postfix(train=f"{train:.4g}", val=f"{val:.4g}", best=best[3] + 1)
        if not math.isfinite(train):
            raise FloatingPointError(
                f"{desc}: training loss is {train} at epoch {epoch}; lower the learning rate"
            )
        if val < best[0]:
            best = (val, params, state, epoch)
        elif epoch - best[3] >= patience:
            stopped = True
        if ckpt is not None:
            _io.write_checkpoint(
                ckpt, {"params": params, "state": state, "opt_state": opt_state,
                       "best_params": best[1], "best_state": best[2]},
                {"epoch": epoch + 1, "stopped": stopped, "best_val": float(best[0]),
                 "best_epoch": int(best[3]), "history": history,
                 "fingerprint": fingerprint})
    inner.close()
    bar.close()
    history["best_epoch"] = int(best[3])
    history["epochs"] = len(history["train_loss"])
    history["n_train"] = int(steps * batch_size)
    history["seconds"] = float(np.sum(history["epoch_seconds"]))
    return eqx.combine(best[1], static), best[2], history


def _resume(ckpt: Path, fingerprint: dict, params, state, opt_state):
    """``(start epoch, stopped, history, best, params, state, opt_state)`` from a
    checkpoint of :func:`fit`, after checking its settings against ``fingerprint``."""
    skeleton = {"params": params, "state": state, "opt_state": opt_state,
                "best_params": params, "best_state": state}
    tree, meta = _io.read_checkpoint(ckpt, skeleton)
    saved = meta.get("fingerprint", {})
    for name in sorted(set(saved) | set(fingerprint)):
        if saved.get(name) != fingerprint.get(name):
            raise ValueError(
                f"{ckpt}: checkpoint was made with {name} = {saved.get(name)!r}, this run "
                f"has {fingerprint.get(name)!r}; resume with the same settings, or delete "
                "the checkpoint (--overwrite) to start again"
            )
    best = (meta["best_val"], tree["best_params"], tree["best_state"], meta["best_epoch"])
    return (int(meta["epoch"]), bool(meta["stopped"]), meta["history"], best,
            tree["params"], tree["state"], tree["opt_state"])
