r"""End-to-end refinement of a line emulator against the grid it emulates.

blase3D builds its generator in two disconnected steps: clone every node independently,
then interpolate the identified lines (Sect. 5.2 notes that the manifold step is not
differentiable). Here the emulator is differentiable in its node values, so after
identification all node values are optimised *jointly through the emulator* on the
reconstruction loss

.. math::
    \mathcal{L} = \frac{1}{|B|\,n_{pix}} \sum_{n \in B} \sum_i
        \left[E(\lambda_i; \theta_n) - S_n(\lambda_i)\right]^2,

over minibatches :math:`B` of grid nodes :math:`\theta_n` with spectra :math:`S_n`
(Adam; its moments advance only at the nodes a batch touches, see :class:`LazyAdam`). The synthesis seen in training is exactly the emulator's (same windows,
same dead-line rule, identification already applied), so clone-to-clone inconsistencies,
duplicate identifiers dropped by the id rule and truncation effects are corrected.

What is trained: the detected entries (ln a > −100) of nodes that had a clone. Absent
entries stay at ln a = −1000 and unobserved nodes stay the interpolation of their
neighbours; both are rebuilt from the trained values at the end with
:func:`jaxspec.identify.complete_values` (the rule the file format uses), so the returned
emulator saves and loads exactly. Steps on μ' − μ are scaled by ``center_scale`` (Å per
unit step) because a line centre must move by mÅ, not by the 0.05 that suits ln a.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxspec.grid import SpectralGrid
from jaxspec.identify import complete_values
from jaxspec.line_emulator import LineEmulator
from jaxspec.lines import LineTable

__all__ = ["LazyAdam", "RefineHistory", "lazy_adam", "reconstruction_rms", "refine"]


@dataclass
class RefineHistory:
    """What :func:`refine` did.

    Attributes:
        loss: mean training loss (mean squared flux residual) per epoch.
        rms_train_before, rms_train_after: RMS flux residual over the training nodes.
        rms_holdout_before, rms_holdout_after: the same over unobserved / held-out nodes
            present in the grid (NaN when there are none).
        n_train, n_holdout: node counts.
        seconds: wall time of the optimisation.
    """

    loss: list[float] = field(default_factory=list)
    rms_train_before: float = math.nan
    rms_train_after: float = math.nan
    rms_holdout_before: float = math.nan
    rms_holdout_after: float = math.nan
    n_train: int = 0
    n_holdout: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"refined on {self.n_train} nodes in {self.seconds:.0f} s: RMS at training nodes "
            f"{self.rms_train_before:.2e} -> {self.rms_train_after:.2e}; at {self.n_holdout} "
            f"held-out nodes {self.rms_holdout_before:.2e} -> {self.rms_holdout_after:.2e}"
        )


def _grid_pixels(emulator: LineEmulator, grid: SpectralGrid) -> np.ndarray:
    """Indices of the grid pixels at the emulator's wavelengths (they must coincide)."""
    wl, gwl = emulator.wavelength, grid.wavelength
    idx = np.clip(np.searchsorted(gwl, wl), 0, gwl.size - 1)
    lower = np.clip(idx - 1, 0, gwl.size - 1)
    idx = np.where(np.abs(gwl[lower] - wl) < np.abs(gwl[idx] - wl), lower, idx)
    if not np.allclose(gwl[idx], wl, rtol=0, atol=1e-6):
        raise ValueError(
            f"the emulator's {wl.size} pixels ({wl[0]:.2f}–{wl[-1]:.2f} Å) are not pixels of "
            f"the grid ({gwl[0]:.2f}–{gwl[-1]:.2f} Å, {gwl.size} px); refine against the "
            "grid the clones were made from"
        )
    return idx


def _check_axes(emulator: LineEmulator, grid: SpectralGrid) -> None:
    if tuple(grid.param_names) != tuple(emulator.param_names):
        raise ValueError(
            f"grid parameters {grid.param_names} differ from the emulator's "
            f"{emulator.param_names}"
        )
    for name, axis in emulator.axes.items():
        g = grid.axes[name]
        if g.shape != axis.shape or not np.allclose(g, axis, rtol=1e-12, atol=0):
            raise ValueError(
                f"grid axis {name} ({g.size} values) differs from the emulator's ({axis.size}); "
                "refine against the grid the clones were made from"
            )


def _node_params(axes: dict[str, np.ndarray], flat: np.ndarray) -> np.ndarray:
    shape = tuple(a.size for a in axes.values())
    idx = np.unravel_index(flat, shape)
    return np.stack([a[i] for a, i in zip(axes.values(), idx)], axis=-1)


@eqx.filter_jit
def _batch_mse(emulator, params, flux, pix):
    model = emulator(params)
    return jnp.mean((model - flux[..., pix]) ** 2, axis=-1)


def reconstruction_rms(
    emulator: LineEmulator,
    grid: SpectralGrid,
    nodes: np.ndarray | None = None,
    *,
    batch_size: int = 8,
) -> np.ndarray:
    """RMS flux residual of the emulator at grid nodes.

    Args:
        emulator: a :class:`~jaxspec.line_emulator.LineEmulator`.
        grid: the grid (same axes; its wavelengths must include the emulator's).
        nodes: flat C-order node indices (default: every existing grid node).
        batch_size: nodes per compiled call.

    Returns:
        ``(len(nodes),)`` float64, :math:`\\langle (E - S)^2 \\rangle^{1/2}` per node (blase3D
        eq. 4) over the emulator's pixels.
    """
    _check_axes(emulator, grid)
    pix = jnp.asarray(_grid_pixels(emulator, grid))
    if nodes is None:
        nodes = np.flatnonzero(grid.mask.reshape(-1))
    nodes = np.asarray(nodes, dtype=np.int64)
    flux = grid.flux.reshape(-1, grid.n_pix)
    out = np.empty(nodes.size)
    for start in range(0, nodes.size, batch_size):
        sel = nodes[start:start + batch_size]
        pad = np.concatenate([sel, np.full(batch_size - sel.size, sel[0])])
        mse = _batch_mse(emulator, _node_params(emulator.axes, pad), jnp.asarray(flux[pad]), pix)
        out[start:start + sel.size] = np.sqrt(np.asarray(mse)[: sel.size])
    return out


def _pool(rms: np.ndarray) -> float:
    return float(np.sqrt(np.mean(rms**2))) if rms.size else math.nan


class LazyAdamState(eqx.Module):
    """Moments of :func:`lazy_adam` and each entry's own step count."""

    mu: jax.Array
    nu: jax.Array
    count: jax.Array


class LazyAdam(eqx.Module):
    """Adam whose moments and step counts advance only where ``touched`` (a mask
    broadcastable to the parameters): the sparse ("lazy") Adam of minibatches that each
    reach a few grid nodes. Plain Adam would keep moving every node for ~1/(1-β1) steps
    after its batch (momentum without fresh gradient), overshooting by ~30 steps' worth.

    ``update(grad, state, touched)`` → ``(updates, state)``; ``updates = −lr · scale ·
    m̂ / (√v̂ + ε)`` where touched, 0 elsewhere."""

    learning_rate: float
    scale: jax.Array
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def init(self, params) -> LazyAdamState:
        """State for ``params`` ``(n_nodes, n_lines, n_out)`` (one step count per node)."""
        zeros = jnp.zeros_like(params)
        return LazyAdamState(zeros, zeros, jnp.zeros(params.shape[:-2] + (1, 1), jnp.int32))

    def update(self, grad, state: LazyAdamState, touched):
        mu = jnp.where(touched, self.b1 * state.mu + (1 - self.b1) * grad, state.mu)
        nu = jnp.where(touched, self.b2 * state.nu + (1 - self.b2) * grad**2, state.nu)
        count = state.count + touched.astype(jnp.int32)
        t = jnp.maximum(count, 1).astype(grad.dtype)
        mu_hat = mu / (1 - self.b1**t)
        nu_hat = nu / (1 - self.b2**t)
        step = -self.learning_rate * self.scale * mu_hat / (jnp.sqrt(nu_hat) + self.eps)
        return jnp.where(touched, step, 0.0).astype(grad.dtype), LazyAdamState(mu, nu, count)


def lazy_adam(learning_rate: float, scale=1.0) -> LazyAdam:
    """:class:`LazyAdam` with step ``learning_rate`` (× ``scale`` per output channel)."""
    return LazyAdam(float(learning_rate), jnp.asarray(scale))


def refine(
    emulator: LineEmulator,
    grid: SpectralGrid,
    *,
    epochs: int = 20,
    batch_size: int = 8,
    learning_rate: float = 0.02,
    center_scale: float = 0.01,
    holdout: float | np.ndarray | None = None,
    seed: int = 0,
    progress: bool = True,
    plan_margin: float = 0.3,
) -> tuple[LineEmulator, RefineHistory]:
    """Optimise all node values of ``emulator`` jointly on the grid's spectra.

    Args:
        emulator: built from clones (:meth:`LineEmulator.from_identification`).
        grid: the grid the clones came from (same axes; its pixels include the
            emulator's, so a restricted emulator refines on its own range).
        epochs: passes over the training nodes (each node's values take one Adam step
            per epoch).
        batch_size: nodes per Adam step.
        learning_rate: Adam step size in ln a, ln σ, ln γ (≈ relative change per step).
        center_scale: Å per unit step of μ' − μ (its step is ``learning_rate ×
            center_scale``).
        holdout: nodes kept out of training and turned unobserved (so that they are
            interpolated from their neighbours and measure generalisation): a fraction of
            the observed nodes drawn at random (seeded), a ``(*grid_shape)`` bool mask,
            or None. Nodes already unobserved (never cloned) are always held out.
        seed: shuffling and hold-out draws.
        progress: tqdm bar over epochs.
        plan_margin: extra ln-room in the synthesis windows during training (lines may
            grow); the returned emulator is replanned tightly.

    Returns:
        ``(refined_emulator, history)``; the refined emulator has the held-out nodes
        unobserved (refine again with ``holdout=None`` for a final product).

    Raises:
        ValueError: grid and emulator disagree, or no node is left to train on.
    """
    import time

    _check_axes(emulator, grid)
    pix = jnp.asarray(_grid_pixels(emulator, grid))
    if epochs < 0 or batch_size < 1 or not learning_rate > 0:
        raise ValueError(
            f"epochs={epochs}, batch_size={batch_size}, learning_rate={learning_rate}: need "
            "epochs >= 0, batch_size >= 1 and learning_rate > 0"
        )
    rng = np.random.default_rng(seed)
    shape = emulator.manifold.grid_shape
    observed = np.asarray(emulator.observed) & grid.mask
    if holdout is None:
        held = np.zeros(shape, dtype=bool)
    elif np.ndim(holdout) == 0:
        frac = float(holdout)
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"holdout={holdout!r}: pass a fraction in [0, 1) or a node mask")
        cand = np.flatnonzero(observed.reshape(-1))
        held = np.zeros(math.prod(shape), dtype=bool)
        held[rng.choice(cand, size=round(frac * cand.size), replace=False)] = True
        held = held.reshape(shape)
    else:
        held = np.asarray(holdout, dtype=bool)
        if held.shape != shape:
            raise ValueError(f"holdout mask has shape {held.shape}, the grid {shape}")
    train_mask = observed & ~held
    train = np.flatnonzero(train_mask.reshape(-1))
    if train.size == 0:
        raise ValueError("refine: no observed grid node is left to train on; lower holdout")
    evaluate = np.flatnonzero((grid.mask & ~train_mask).reshape(-1))

    # Held-out nodes become unobserved: their values are interpolated from neighbours.
    axes = emulator.axes
    values = np.array(emulator.manifold.values)  # (L, *grid, 4), a writable copy
    present = emulator.present() & train_mask
    if held.any():
        complete_values(values, present, train_mask, axes)
    emulator = emulator.with_table(np.moveaxis(values, 0, -2), observed=train_mask,
                                   plan_margin=plan_margin)
    history = RefineHistory(n_train=int(train.size), n_holdout=int(evaluate.size))
    history.rms_train_before = _pool(reconstruction_rms(emulator, grid, train, batch_size=batch_size))
    history.rms_holdout_before = _pool(reconstruction_rms(emulator, grid, evaluate, batch_size=batch_size))

    table0 = emulator.manifold.table
    n_nodes = math.prod(shape)
    n_lines = emulator.n_lines
    # At a node the manifold returns that node's values (interpolation weights 0 and 1),
    # so the loss at node n depends on its own values only: a step gathers the batch's
    # node slices, differentiates through the emulator's synthesis, and scatters back.
    mask = jnp.asarray(np.moveaxis(present, 0, -1).reshape(n_nodes, n_lines, 1),
                       dtype=table0.dtype)
    scale = LineTable(shift=center_scale, ln_amplitude=1.0, ln_sigma=1.0,
                      ln_gamma=1.0).to_array().astype(table0.dtype)
    optimiser = lazy_adam(learning_rate, scale)
    flux_all = grid.flux.reshape(-1, grid.n_pix)

    def loss_fn(sub, emu, flux, weight):
        mse = jnp.mean((emu.synthesize(sub) - flux[:, pix]) ** 2, axis=-1)
        return jnp.sum(weight * mse) / jnp.sum(weight)

    @eqx.filter_jit
    def step(flat, state, emu, flux, weight, nodes):
        # Padded batch entries carry weight 0 and node index n_nodes (dropped on write).
        take = lambda a: a.at[nodes].get(mode="fill", fill_value=0)
        sub = take(flat)
        loss, grad = jax.value_and_grad(loss_fn)(sub, emu, flux, weight)
        sub_state = LazyAdamState(take(state.mu), take(state.nu), take(state.count))
        touched = (weight > 0)[:, None, None]
        updates, sub_state = optimiser.update(grad * take(mask), sub_state, touched)
        put = lambda a, v: a.at[nodes].set(v, mode="drop")
        state = LazyAdamState(put(state.mu, sub_state.mu), put(state.nu, sub_state.nu),
                              put(state.count, sub_state.count))
        return put(flat, sub + updates), state, loss

    flat = table0.reshape(n_nodes, n_lines, LineTable.N_COLUMNS)
    state = optimiser.init(flat)
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc="refine", unit="epoch", disable=not progress)
    for _ in bar:
        order = rng.permutation(train)
        losses = []
        for start in range(0, order.size, batch_size):
            sel = order[start:start + batch_size]
            weight = np.zeros(batch_size)
            weight[: sel.size] = 1.0
            nodes = np.concatenate([sel, np.full(batch_size - sel.size, n_nodes)])
            spectra = flux_all[np.concatenate([sel, np.full(batch_size - sel.size, sel[0])])]
            flat, state, loss = step(flat, state, emulator, jnp.asarray(spectra),
                                     jnp.asarray(weight), jnp.asarray(nodes))
            losses.append(float(loss) * np.count_nonzero(weight))
        history.loss.append(sum(losses) / order.size)
        bar.set_postfix(loss=f"{history.loss[-1]:.3e}")
    history.seconds = time.perf_counter() - t0

    # Rebuild absent fills and unobserved nodes from the trained detections, replan.
    values = np.array(jnp.moveaxis(flat.reshape(table0.shape), -2, 0))
    complete_values(values, present, train_mask, axes)
    info = {"refine": {
        "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
        "center_scale": center_scale, "n_train": int(train.size),
        "n_holdout": int(evaluate.size),
        "rms_train_before": history.rms_train_before,
        "rms_holdout_before": history.rms_holdout_before,
    }}
    refined = emulator.with_table(np.moveaxis(values, 0, -2), observed=train_mask,
                                  provenance=info)
    history.rms_train_after = _pool(reconstruction_rms(refined, grid, train, batch_size=batch_size))
    history.rms_holdout_after = _pool(reconstruction_rms(refined, grid, evaluate, batch_size=batch_size))
    prov = refined.info
    prov["refine"].update(rms_train_after=history.rms_train_after,
                          rms_holdout_after=history.rms_holdout_after,
                          loss=history.loss)
    refined = refined.with_provenance(prov)
    return refined, history
