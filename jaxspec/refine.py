r"""The joint smooth fit: all node values of a line emulator fitted together on its grid.

blase3D builds its generator in two disconnected steps: clone every node independently,
then interpolate the identified lines (Sect. 5.2 notes that the manifold step is not
differentiable, and wishes for an "ideally monolithic" system whose manifolds generalise
rather than memorise). Here the emulator is differentiable in its node values, so after
identification all node values are optimised *jointly through the emulator* on

.. math::
    \mathcal{L} = \frac{1}{N}\Big[\sum_{n} \frac{1}{n_{pix}} \sum_i
        \left[E(\lambda_i; \theta_n) - S_n(\lambda_i)\right]^2 + \lambda_s P\Big],

the reconstruction misfit (blase3D eq. 4) at the N trained grid nodes :math:`\theta_n`
with spectra :math:`S_n`, plus ``smoothness`` :math:`\lambda_s` times a strength-weighted
curvature penalty :math:`P` of every line's parameters along every grid axis
(:class:`CurvaturePenalty`). The synthesis seen in training is exactly the emulator's (the
one engine, :mod:`jaxspec.synthesis`, with the same wing cut and dead-line rule): clones
fitted with another window rule, clone-to-clone inconsistencies and truncation effects
are corrected, and the penalty pulls each line onto a smooth track where the spectra
leave it free, which is what interpolation between nodes needs.

Each epoch is one Adam step of every trained node: the misfit's gradient is gathered over
batches of nodes (each batch synthesised with windows planned for its own lines, on a
compile-size ladder), the penalty's over the whole table. A checkpoint after every epoch
makes a killed fit resumable.

What is trained: the detected entries (ln a > −100) of nodes that had a clone. Absent
entries stay at ln a = −1000 and unobserved nodes stay the interpolation of their
neighbours; both are rebuilt from the trained values at the end with
:func:`jaxspec.identify.complete_values` (the rule the file format uses), so the returned
emulator saves and loads exactly. Steps on μ' − μ are scaled by ``center_scale`` (Å per
unit step) because a line centre must move by mÅ, not by the 0.05 that suits ln a.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from tqdm.auto import tqdm

from jaxspec._track_smoothing import fwhm_and_depth, smooth_tracks
from jaxspec.grid import SpectralGrid
from jaxspec.identify import complete_values
from jaxspec.line_emulator import LineEmulator, plan_over_nodes
from jaxspec.lines import LineTable

__all__ = ["CurvaturePenalty", "LazyAdam", "RefineHistory", "axis_triples", "curvature_penalty",
           "lazy_adam", "reconstruction_rms", "refine"]


@dataclass
class RefineHistory:
    """What :func:`refine` did.

    Attributes:
        loss: mean training loss (mean squared flux residual) per epoch.
        rms_train_before, rms_train_after: RMS flux residual over the training nodes.
        rms_holdout_before, rms_holdout_after: the same over unobserved / held-out nodes
            present in the grid (NaN when there are none).
        n_train, n_holdout: node counts.
        seconds: wall time of the optimisation (the smoothing solve included).
        presmooth: what the smoothing solve did (entries moved, iterations, relative
            residual), empty without one.
    """

    loss: list[float] = field(default_factory=list)
    rms_train_before: float = math.nan
    rms_train_after: float = math.nan
    rms_holdout_before: float = math.nan
    rms_holdout_after: float = math.nan
    n_train: int = 0
    n_holdout: int = 0
    seconds: float = 0.0
    presmooth: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line: nodes, time, and the RMS before -> after at the training and (when
        the grid has any) the held-out nodes."""
        text = (f"refined on {self.n_train} nodes in {self.seconds:.0f} s: RMS at training "
                f"nodes {self.rms_train_before:.2e} -> {self.rms_train_after:.2e}")
        if self.n_holdout == 0:  # e.g. a grid whose unobserved nodes have no spectra
            return text + "; no held-out node to measure generalisation (refine(holdout=))"
        return (text + f"; at {self.n_holdout} held-out nodes {self.rms_holdout_before:.2e}"
                f" -> {self.rms_holdout_after:.2e}")


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
    smoothness: float | Sequence[float] = 0.0,
    holdout: float | np.ndarray | None = None,
    seed: int = 0,
    progress: bool = True,
    plan_margin: float = 0.3,
    checkpoint: str | PathLike | None = None,
    presmooth: float | Sequence[float] = 0.0,
) -> tuple[LineEmulator, RefineHistory]:
    r"""Fit all node values of ``emulator`` jointly on the grid's spectra (the joint smooth fit).

    The loss, per trained node and in mean squared flux,

    .. math::
        \mathcal{L} = \frac{1}{N}\Big[\sum_{n} \langle (E(\lambda; v_n) - S_n)^2
            \rangle_\lambda + \lambda_s P(v)\Big],

    is the reconstruction misfit of blase3D eq. 4 at every trained node n (its values
    :math:`v_n` synthesised by the emulator's own engine and windows) plus ``smoothness``
    :math:`\lambda_s` times the strength-weighted curvature :math:`P` of the node values
    along every grid axis (:class:`CurvaturePenalty`), which couples the nodes: a line's
    parameters are pulled onto a smooth track where the spectra do not pin them, so the
    manifold generalises between nodes instead of memorising each clone. Each epoch is
    one Adam step of every node (the misfit's gradient gathered over batches of
    ``batch_size`` nodes, the penalty's over the whole table).

    Args:
        emulator: built from clones (:meth:`LineEmulator.from_identification`).
        grid: the grid the clones came from (same axes; its pixels include the
            emulator's, so a restricted emulator refines on its own range).
        epochs: Adam steps (each a pass over every training node).
        batch_size: nodes per compiled gradient call.
        learning_rate: Adam step size in ln a, ln σ, ln γ (≈ relative change per step).
        center_scale: Å per unit step of μ' − μ (its step is ``learning_rate ×
            center_scale``).
        smoothness: :math:`\lambda_s` ≥ 0, the weight of the curvature penalty (0: the
            plain end-to-end refinement; 1: a second difference of δ costs as much as a
            misfit of δ at one node); or four weights, one per column (μ' − μ, ln a,
            ln σ, ln γ): the penalty's terms of column k scaled by the k-th (README,
            *Smoothing the widths in the joint fit, tried*).
        holdout: nodes kept out of training and turned unobserved (so that they are
            interpolated from their neighbours and measure generalisation): a fraction of
            the observed nodes drawn at random (seeded), a ``(*grid_shape)`` bool mask,
            or None. Nodes already unobserved (never cloned) are always held out.
        seed: hold-out draws.
        progress: tqdm bar over epochs (loss, ETA).
        plan_margin: extra ln-room in the synthesis windows during training (lines may
            grow); the returned emulator is replanned tightly.
        checkpoint: a file (HDF5) written atomically after every epoch with the node
            values and the optimiser state; when it exists, the fit resumes from it (it
            must come from the same emulator, grid nodes and settings) and loses at most
            the epoch in progress.
        presmooth: λ of a smoothing solve before the epochs (0: none; one weight or four,
            one per column, in the units of ``smoothness``): the curvature penalty
            minimised at once against each node's local quadratic model of its misfit
            (isolated-line Gauss–Newton blocks, :mod:`jaxspec._track_smoothing`), for the
            lines wider than 2 pixels and deeper than 10⁻³. It smooths what the flux does
            not pin (the Lorentzian width of a Gaussian-dominated line and the reverse),
            which Adam's small steps cannot do in a few epochs. README, *The joint smooth
            fit*, for what it measured.

    Returns:
        ``(refined_emulator, history)``; the refined emulator has the held-out nodes
        unobserved (refine again with ``holdout=None`` for a final product).

    Raises:
        ValueError: grid and emulator disagree, bad settings, no node left to train on,
            or a checkpoint made for another fit.
    """
    import time

    _check_axes(emulator, grid)
    pix = jnp.asarray(_grid_pixels(emulator, grid))
    lam = np.asarray(smoothness, dtype=np.float64)
    pre = np.asarray(presmooth, dtype=np.float64)
    for name, value, arr in (("smoothness", smoothness, lam), ("presmooth", presmooth, pre)):
        if arr.shape not in ((), (LineTable.N_COLUMNS,)) or not np.all(arr >= 0):
            raise ValueError(
                f"{name}={value!r}: pass one weight >= 0 or {LineTable.N_COLUMNS}, one per "
                "column (μ' − μ, ln a, ln σ, ln γ)")
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
    flat = table0.reshape(n_nodes, n_lines, LineTable.N_COLUMNS)
    present_flat = np.moveaxis(present, 0, -1).reshape(n_nodes, n_lines)
    mask = jnp.asarray(present_flat[..., None], dtype=table0.dtype)
    base_penalty = None  # from the starting values, for the epochs and the smoothing solve
    if np.any(lam > 0) or np.any(pre > 0):
        base_penalty = curvature_penalty(np.asarray(flat), present_flat, axes, train_mask,
                                         emulator.wavelength)

    def weighted(w):  # the weights folded into the penalty: λ P enters as P
        return eqx.tree_at(lambda p: p.weight, base_penalty, base_penalty.weight * jnp.asarray(
            np.broadcast_to(w, (LineTable.N_COLUMNS,)), base_penalty.weight.dtype))

    penalty = weighted(lam) if np.any(lam > 0) else None
    smoothness = float(lam) if lam.ndim == 0 else [float(x) for x in lam]
    presmooth = float(pre) if pre.ndim == 0 else [float(x) for x in pre]
    scale = LineTable(shift=center_scale, ln_amplitude=1.0, ln_sigma=1.0,
                      ln_gamma=1.0).to_array().astype(table0.dtype)
    optimiser = lazy_adam(learning_rate, scale)
    touched = jnp.asarray(train_mask.reshape(n_nodes, 1, 1))
    flux_all = grid.flux.reshape(-1, grid.n_pix)
    n_train = float(train.size)

    @eqx.filter_jit
    def misfit_grad(flat, grad, emu, flux, weight, nodes):
        # At a node the manifold returns that node's values (interpolation weights 0 and
        # 1), so its misfit depends on its own values only: gather the batch's node
        # slices, differentiate through the emulator's synthesis (its plan swapped for
        # the batch's), scatter back. Padded entries carry weight 0 and node index
        # n_nodes (dropped on write).
        def loss_fn(sub):
            mse = jnp.mean((emu.synthesize(sub) - flux[:, pix]) ** 2, axis=-1)
            return jnp.sum(weight * mse)

        sub = flat.at[nodes].get(mode="fill", fill_value=0)
        loss, g = jax.value_and_grad(loss_fn)(sub)
        return grad.at[nodes].set(g, mode="drop"), loss

    batches = [train[i:i + batch_size] for i in range(0, train.size, batch_size)]
    center = np.asarray(emulator.center)

    def batch_emulators(flat):
        """The emulator with synthesis windows planned for each batch's own nodes (the
        lines alive there, their extremes + ``plan_margin``): a cool node carries ~3,000
        of the grid's lines, a hot one ~700. Compile-size ladder: a few programs."""
        values = np.asarray(flat)
        return [eqx.tree_at(lambda e: e.synthesis_plan, emulator, plan_over_nodes(
            values[sel], center, emulator.wavelength, emulator.tolerance,
            margin=plan_margin, wing_cut=emulator.wing_cut, reuse=True)) for sel in batches]

    @eqx.filter_jit
    def apply(flat, grad, state, penalty):
        pen = jnp.zeros((), flat.dtype)
        if penalty is not None:
            pen, pgrad = jax.value_and_grad(penalty)(flat)
            grad = grad + pgrad
        updates, state = optimiser.update(grad * mask / n_train, state, touched)
        return flat + updates, state, pen

    state = optimiser.init(flat)
    settings = {"epochs_done": 0, "learning_rate": learning_rate, "center_scale": center_scale,
                "smoothness": smoothness, "n_train": int(train.size),
                "train_nodes": _fingerprint(train), "start": _fingerprint(np.asarray(flat)),
                "shape": [n_nodes, n_lines]}
    if np.any(pre > 0):
        settings["presmooth"] = presmooth
    replan_every = 5
    done = 0
    t0 = time.perf_counter()
    if checkpoint is not None and Path(checkpoint).exists():
        flat, state, done, losses = _read_refine_checkpoint(checkpoint, settings, flat, state)
        history.loss = losses
    elif np.any(pre > 0):  # the smoothing solve (a resumed fit has it in its values)
        values, history.presmooth = smooth_tracks(np.asarray(flat), present_flat, center,
                                                  emulator.wavelength, weighted(pre))
        flat = jnp.asarray(values, dtype=flat.dtype)
    bar = tqdm(range(done, epochs), desc="refine", unit="epoch", disable=not progress,
               initial=done, total=epochs)
    for epoch in bar:
        if (epoch - done) % replan_every == 0:
            emus = batch_emulators(flat)
        grad = jnp.zeros_like(flat)
        total = 0.0
        for sel, emu in zip(batches, emus):
            weight = np.zeros(batch_size)
            weight[: sel.size] = 1.0
            nodes = np.concatenate([sel, np.full(batch_size - sel.size, n_nodes)])
            spectra = flux_all[np.concatenate([sel, np.full(batch_size - sel.size, sel[0])])]
            grad, loss = misfit_grad(flat, grad, emu, jnp.asarray(spectra),
                                     jnp.asarray(weight), jnp.asarray(nodes))
            total += float(loss)
        flat, state, pen = apply(flat, grad, state, penalty)
        history.loss.append((total + float(pen)) / n_train)
        bar.set_postfix(loss=f"{history.loss[-1]:.3e}", rms=f"{math.sqrt(total / n_train):.2e}")
        if checkpoint is not None:
            _write_refine_checkpoint(checkpoint, {**settings, "epochs_done": epoch + 1},
                                     flat, state, history.loss)
    history.seconds = time.perf_counter() - t0

    # Rebuild absent fills and unobserved nodes from the trained detections, replan.
    values = np.array(jnp.moveaxis(flat.reshape(table0.shape), -2, 0))
    complete_values(values, present, train_mask, axes)
    info = {"refine": {
        "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
        "center_scale": center_scale, "smoothness": smoothness, "presmooth": presmooth,
        "n_train": int(train.size),
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


def _fingerprint(array: np.ndarray) -> str:
    """A short content hash (checkpoints: the same start, the same nodes)."""
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def _write_refine_checkpoint(path, settings: dict, flat, state, losses) -> None:
    from jaxspec.io.emulator_file import REFINE_CHECKPOINT_FORMAT, Contents, write

    contents = Contents(kind=None, version=1, format=REFINE_CHECKPOINT_FORMAT,
                        attrs={"settings": json.dumps(settings), "loss": json.dumps(losses)},
                        arrays={"values": np.asarray(flat), "adam/mu": np.asarray(state.mu),
                                "adam/nu": np.asarray(state.nu),
                                "adam/count": np.asarray(state.count)})
    write(path, contents, overwrite=True)


def _read_refine_checkpoint(path, settings: dict, flat, state):
    """``(flat, state, epochs_done, losses)`` from a checkpoint of this very fit."""
    from jaxspec.io.emulator_file import REFINE_CHECKPOINT_FORMAT, read

    found = read(path, format=REFINE_CHECKPOINT_FORMAT)
    found.require(path, "values", "adam/mu", "adam/nu", "adam/count", "@settings",
                  fix="delete it to start the fit afresh")
    saved = json.loads(found.attrs["settings"])
    differ = [k for k in {**saved, **settings} if k != "epochs_done"
              and saved.get(k) != settings.get(k)]
    if differ:
        raise ValueError(
            f"{path}: refine checkpoint of another fit ({', '.join(differ)} differ: "
            f"{ {k: saved.get(k) for k in differ} } against { {k: settings.get(k) for k in differ} }); "
            "pass the settings it was made with, or delete it to start afresh"
        )
    values = jnp.asarray(found.arrays["values"], dtype=flat.dtype)
    state = LazyAdamState(jnp.asarray(found.arrays["adam/mu"], dtype=flat.dtype),
                          jnp.asarray(found.arrays["adam/nu"], dtype=flat.dtype),
                          jnp.asarray(found.arrays["adam/count"], dtype=state.count.dtype))
    return values, state, int(saved["epochs_done"]), json.loads(found.attrs.get("loss", "[]"))


# ------------------------------------------------------------------ curvature penalty


class CurvaturePenalty(eqx.Module):
    r"""Strength-weighted curvature of the node values along every grid axis.

    .. math::
        P = \sum_{t}\sum_{l} w_{tl} \sum_{k} s_{tlk}
            \Big(\sum_{j=1}^{3} c_{tj}\, v_{i_{tj}, l, k}\Big)^2,

    over *triples* t of consecutive trained nodes :math:`i_{t1} < i_{t2} < i_{t3}` along
    one axis (nodes left out of training are skipped, so a held-out column is bridged as
    the interpolation will bridge it), with :math:`c_t` the second divided difference on
    the non-uniform axis scaled by the squared median step of that axis (1, −2, 1 on a
    uniform axis). Weights are the data's own sensitivity, so that :math:`\lambda P`
    (``smoothness`` λ) is in the units of the per-node mean squared flux residual: a
    line of peak depth d and FWHM f (Å, f_px pixels of n_pix) changes the mean squared
    flux by about :math:`d^2 f_{px}/n_{pix}` per unit change of ln a, ln σ or ln γ, and
    by :math:`(2/f)^2` times that per Å of centre, so :math:`w_{tl}` is the smallest
    :math:`d^2 f_{px}/n_{pix}` of the three nodes and :math:`s = ((2/f)^2, 1, 1, 1)` for
    (μ' − μ, ln a, ln σ, ln γ). Lines absent at any node of a triple do not enter it.

    Weights are fixed when the penalty is built (from the starting values): the
    penalty is then a fixed quadratic form, so it cannot reward a line for weakening.

    Attributes:
        index: ``(n_triples, 3)`` flat node indices (C order).
        coef: ``(n_triples, 3)`` second-difference coefficients.
        weight: ``(n_triples, n_lines, 4)`` :math:`w_{tl} s_{tlk}`.
    """

    index: jax.Array
    coef: jax.Array
    weight: jax.Array

    def __call__(self, flat: Float[Array, "n_nodes n_lines 4"]) -> Float[Array, ""]:
        """P for node values ``flat`` ``(n_nodes, n_lines, 4)``."""
        d2 = jnp.einsum("tj,tjlk->tlk", self.coef.astype(flat.dtype), flat[self.index])
        return jnp.sum(self.weight * d2**2)

    @property
    def n_triples(self) -> int:
        return int(self.index.shape[0])


def axis_triples(axes: dict[str, np.ndarray], trained: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive trained-node triples along every axis and their curvature coefficients.

    Args:
        axes: the grid axes ``{name: (n_i,)}``.
        trained: ``(*grid_shape)`` bool, the nodes whose values are fitted.

    Returns:
        ``(index, coef)``: ``(n_triples, 3)`` int64 flat C-order node indices and float64
        coefficients :math:`c = 2h^2 \\,(1/(h_-(h_-+h_+)),\\ -1/(h_-h_+),\\ 1/(h_+(h_-+h_+)))`
        (the second divided difference times :math:`h^2`, h the axis's median step), so
        ``coef @ v`` is the plain second difference on a uniform axis.
    """
    shape = tuple(a.size for a in axes.values())
    flat_index = np.arange(math.prod(shape)).reshape(shape)
    index, coef = [], []
    for d, axis in enumerate(axes.values()):
        axis = np.asarray(axis, dtype=np.float64)
        if axis.size < 3:
            continue
        h = float(np.median(np.diff(axis)))
        fibres = np.moveaxis(flat_index, d, -1).reshape(-1, axis.size)
        keep = np.moveaxis(trained, d, -1).reshape(-1, axis.size)
        for fibre, ok in zip(fibres, keep):
            pos = np.flatnonzero(ok)
            if pos.size < 3:
                continue
            x = axis[pos]
            hm, hp = x[1:-1] - x[:-2], x[2:] - x[1:-1]
            c = 2.0 * h**2 * np.stack([1.0 / (hm * (hm + hp)), -1.0 / (hm * hp),
                                       1.0 / (hp * (hm + hp))], axis=-1)
            index.append(np.stack([fibre[pos[:-2]], fibre[pos[1:-1]], fibre[pos[2:]]], axis=-1))
            coef.append(c)
    if not index:
        return np.zeros((0, 3), dtype=np.int64), np.zeros((0, 3))
    return np.concatenate(index), np.concatenate(coef)


def curvature_penalty(flat: np.ndarray, present: np.ndarray, axes: dict[str, np.ndarray],
                      trained: np.ndarray, wavelength: np.ndarray) -> CurvaturePenalty:
    """The :class:`CurvaturePenalty` of node values ``flat`` ``(n_nodes, n_lines, 4)``.

    Args:
        flat: node values, C-order nodes first (μ' − μ Å, ln a, ln σ, ln γ).
        present: ``(n_nodes, n_lines)`` bool, the line is fitted at the node.
        axes: the grid axes.
        trained: ``(*grid_shape)`` bool, the nodes being fitted.
        wavelength: ``(n_pix,)`` Å, the emulator's pixels (for f_px and n_pix).

    Returns:
        the penalty, weights from these values (class docstring).
    """
    index, coef = axis_triples(axes, trained)
    v = np.asarray(flat, dtype=np.float64)
    f, depth = fwhm_and_depth(v)
    wl = np.asarray(wavelength, dtype=np.float64)
    n_pix = wl.size
    step = float(np.median(np.diff(wl))) if n_pix > 1 else 1.0
    sens = np.where(present, depth**2 * np.clip(f / step, 1.0, n_pix) / n_pix, 0.0)
    w = np.min(sens[index], axis=1)  # (T, L)
    scale = np.ones(w.shape + (v.shape[-1],))
    scale[..., LineTable.SHIFT] = (2.0 / f[index[:, 1]]) ** 2
    weight = (w[..., None] * scale).astype(np.float32)
    return CurvaturePenalty(jnp.asarray(index), jnp.asarray(coef), jnp.asarray(weight))
