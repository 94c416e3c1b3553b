r"""Conditional normalising-flow posteriors :math:`p(\theta \mid x)` (the cINN approach).

Model (Candebat et al., sect. 3): a conditional invertible network maps standardised
labels :math:`\tilde\theta` to a standard-normal latent :math:`u = f(\tilde\theta; c)`
conditioned on features :math:`c = h(\tilde x, \tilde s)` that a dense embedding network
extracts from the standardised spectrum and log S/N (the paper feeds the S/N as an input
too). Its density (eq. 2 / 7) is

.. math::
    \log q(\tilde\theta \mid x) = \log \mathcal N\big(f(\tilde\theta; c); 0, I\big)
        + \log\left|\det \frac{\partial f}{\partial \tilde\theta}\right|,
    \qquad \log p(\theta \mid x) = \log q(\tilde\theta \mid x) - \sum_j \log s_j,

with :math:`s_j` the label scales (:class:`~jaxspec.amortised.simulate.Standardizer`).

* Flow: flowjax's :func:`~flowjax.flows.coupling_flow` — ``flow_layers`` affine coupling
  layers (RealNVP / GLOW-style affine blocks as in the paper, sect. 3.2, each followed by
  a fixed random permutation), conditioners ReLU MLPs of width ``nn_width`` and depth
  ``nn_depth`` on the untransformed half and :math:`c`.
* Embedding: dense ReLU layers ``hidden`` → ``features``. The paper uses 2048 → 1024 →
  512 → 256 on ~10⁴ pixels; here the widths scale with the pixel count (h₁ =
  :math:`2^{\mathrm{round}(\log_2(m/2))}` clipped to [64, 2048], then h₁/2, h₁/4; the
  paper's sizes from ~4,000 pixels on) and ``features`` is 32, because every coupling
  layer reads the features once per draw and inference draws 4,096 per spectrum.
* Training (:func:`train_flow`): maximum likelihood, :math:`\mathcal L = -\frac1N\sum_n
  \log q(\tilde\theta_n \mid x_n)` (eq. 7) on streamed simulations, Adam with L2 weight
  regularisation and a learning rate decaying by ``lr_decay`` per epoch (the paper's
  scheme; its values are not in our copy, so lr 1e-3, L2 1e-5, decay 0.95 here), early
  stopping on a validation set. The paper's secondary latent-noise loss (eq. 8) is left
  out: it notes that the likelihood term drives training.
* Inference (:meth:`FlowPosterior.predict`, sect. 3.5): 4,096 draws per spectrum; draws
  outside the box are rejected and their fraction reported; the MAP is the retained draw
  of highest density; medians and 16 / 84 % quantiles of the retained draws.
* Recalibration (:func:`calibrate_flow`, run by :func:`train_flow` by default). A flow
  trained for minutes on a CPU is centred slightly off: its medians sit ~+0.1–0.3
  posterior σ above the truth on held-out simulations, more at high S/N (where the
  posteriors are narrow and the network's own regression error is a larger share of
  them), and its intervals are a little too wide. Both are fitted on held-out
  simulations (a key the training never used) and undone at inference: each draw
  :math:`\theta_d` becomes :math:`m + w(\theta_d - m) - \sigma_{post}(b_0 + b_1 t +
  b_2 t^2)`,
  :math:`m` the median and :math:`\sigma_{post}` half the 16–84 % range of the raw
  retained draws, :math:`t` the standardised log10 S/N; :math:`(b_0, b_1)` is the least-
  squares fit of the standardised residual :math:`(m - \theta)/\sigma_{post}` against
  :math:`(1, t, t^2)`, the constant :math:`w` minimises the largest deviation of the
  expected-coverage curve (:func:`~jaxspec.amortised.calibration.coverage_curve`). Draws moved outside the box
  are rejected. Stored in the model file; ``predict(calibrated=False)`` skips it.
"""

from __future__ import annotations

import json
import math
from os import PathLike

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import paramax
from flowjax.bijections import Affine, Chain, Coupling, Flip, Invert, Permute, Scan
from flowjax.distributions import Normal, Transformed
from paramax.utils import inv_softplus

from jaxspec._batching import map_batches
from jaxspec.amortised._model import (
    AmortisedModel,
    check_training,
    finish_training,
    register_amortised,
    residual_loss,
)
from jaxspec.amortised._train import fit, run_fingerprint
from jaxspec.amortised.calibration import Recalibration, coverage_deviation, held_out
from jaxspec.amortised.result import AmortisedResult, status_of
from jaxspec.amortised.simulate import (
    Simulator,
    as_key,
    fit_standardizer,
)

__all__ = ["FlowPosterior", "calibrate_flow", "default_flow_architecture", "train_flow"]

_F32 = jnp.float32
#: Posterior draws per spectrum (cINN paper, sect. 3.5).
N_SAMPLES = 4096
#: Defaults of :func:`train_flow`, sized to train on the tiny grid's pixel emulator
#: (1,990 px) in under 10 minutes on 2 CPU cores (README, "Amortised inference").
N_TRAIN, BATCH_SIZE, MAX_EPOCHS, PATIENCE, N_CALIBRATE = 24576, 256, 30, 5, 1024
#: Measured time of the defaults (help text of ``jaxspec train flow``).
DEFAULTS_TIMING = (
    "2.6 minutes on 2 CPU cores at load ~2 (8 minutes for 32,768 spectra at load ~5), 30 "
    "epochs; "
    "held-out scatter of the MAP 82 / 22 / 12 / 6 K in Teff, 0.14 / 0.036 / 0.022 / "
    "0.009 in log g and 0.040 / 0.010 / 0.005 / 0.003 dex in [Fe/H] at S/N 10 / 50 / 100 "
    "/ 1000; after recentring its 68 % / 95 % intervals cover 65-68 % / 93-95 % of "
    "held-out truths, largest coverage deviation <= 0.031")


def default_flow_architecture(n_pix: int) -> dict:
    """``{"hidden": [h1, h1/2, h1/4], "features": 32, "flow_layers": 8, "nn_width": 64,
    "nn_depth": 1}`` for ``n_pix`` pixels (module docstring)."""
    if n_pix < 2:
        raise ValueError(f"n_pix={n_pix}; the embedding needs at least 2 pixels")
    h1 = int(np.clip(2 ** round(math.log2(n_pix / 2)), 64, 2048))
    return {"hidden": [h1, h1 // 2, h1 // 4], "features": 32, "flow_layers": 8,
            "nn_width": 64, "nn_depth": 1}


class _Embedding(eqx.Module):
    """Dense ReLU feature extractor: ``(m + 1,)`` float32 → ``(features,)``."""

    layers: tuple[eqx.nn.Linear, ...]

    def __init__(self, n_in: int, hidden, features: int, key):
        sizes = [n_in, *hidden, features]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(eqx.nn.Linear(a, b, dtype=_F32, key=k)
                            for a, b, k in zip(sizes[:-1], sizes[1:], keys))

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def _coupling_flow(key, dim: int, cond_dim: int, flow_layers: int, nn_width: int,
                   nn_depth: int) -> Transformed:
    """flowjax's ``coupling_flow`` (affine transformer with scale >= 0.01, a random
    permutation after each layer, layers scanned, inverted for fast ``log_prob``), with
    the layers made in a Python loop and stacked instead of ``filter_vmap``-ed: the same
    flow, but eager construction compiles one layer instead of a batched copy of every
    initialiser (seconds on a small CPU)."""
    min_scale = 1e-2
    transformer = eqx.tree_at(
        lambda aff: aff.scale, Affine(),
        paramax.Parameterize(lambda x: jax.nn.softplus(x) + min_scale,
                             inv_softplus(1 - min_scale)))
    layers = []
    for k in jax.random.split(key, flow_layers):
        k_bij, k_perm = jax.random.split(k)
        bij = Coupling(key=k_bij, transformer=transformer, untransformed_dim=dim // 2, dim=dim,
                       cond_dim=cond_dim, nn_width=nn_width, nn_depth=nn_depth)
        if dim == 2:
            bij = Chain([bij, Flip((dim,))]).merge_chains()
        elif dim > 2:
            perm = Permute(jax.random.permutation(k_perm, jnp.arange(dim)))
            bij = Chain([bij, perm]).merge_chains()
        layers.append(bij)
    arrays = [eqx.filter(layer, eqx.is_array) for layer in layers]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *arrays)
    scanned = eqx.combine(stacked, eqx.filter(layers[0], eqx.is_array, inverse=True))
    return Transformed(Normal(jnp.zeros(dim)), Invert(Scan(scanned)))


def _build(config: dict, n_pix: int, n_params: int, key):
    k_emb, k_flow = jax.random.split(key)
    embedding = _Embedding(n_pix + 1, config["hidden"], config["features"], k_emb)
    flow = _coupling_flow(k_flow, n_params, config["features"], config["flow_layers"],
                          config["nn_width"], config["nn_depth"])
    return embedding, flow


def _condition(embedding, x, s):
    """Features ``(..., features)`` float64 of standardised flux ``(..., m)`` and S/N."""
    inp = jnp.concatenate([x.astype(_F32), s.astype(_F32)[..., None]], axis=-1)
    if inp.ndim == 1:
        return embedding(inp).astype(jnp.float64)
    flat = inp.reshape(-1, inp.shape[-1])
    return jax.vmap(embedding)(flat).astype(jnp.float64).reshape(*inp.shape[:-1], -1)


def _nll(model, state, z, x, s, training):
    embedding, flow = model
    flow = paramax.unwrap(flow)
    return -jnp.mean(flow.log_prob(z, _condition(embedding, x, s))), state


@register_amortised("flow")
class FlowPosterior(AmortisedModel):
    """A trained conditional flow :math:`p(\\theta \\mid x)` (module docstring).

    Fields: ``embedding`` and ``flow`` (the networks), ``standardizer``, ``wavelength``
    ``(m,)`` and ``edges`` ``(m + 1,)`` (float64 Å, the pixels it reads), ``box`` (prior
    bounds), ``names``, ``snr_range`` (training S/N), ``config`` and ``history`` (JSON),
    ``calibration`` (:class:`~jaxspec.amortised.calibration.Recalibration`: the recentring
    and width of :func:`calibrate_flow`, or None). Train one with :func:`train_flow`;
    :meth:`predict` for spectra; :meth:`log_prob`, :meth:`sample` (the raw flow, not
    recalibrated); :meth:`save` / :meth:`load`.
    """

    embedding: _Embedding
    flow: eqx.Module

    kind = "flow"
    networks = ("embedding", "flow")

    @classmethod
    def skeleton(cls, config: dict, n_pix: int, n_params: int):
        """``(embedding, flow)`` of ``config``, built for real, not with
        ``eqx.filter_eval_shape``: flowjax's Coupling keeps a closure over its
        transformer's initial parameters, which would leak a tracer."""
        return _build(config, n_pix, n_params, jax.random.key(0))

    def _features(self, flux, snr):
        flux = self._network_flux(flux)
        std = self.standardizer
        snr = jnp.broadcast_to(jnp.asarray(snr, dtype=jnp.float64), flux.shape[:-1])
        return _condition(self.embedding, std.flux(flux), std.snr(snr))

    def log_prob(self, theta, flux, snr):
        r""":math:`\log p(\theta \mid x)` (module docstring), nats per unit of
        :math:`\theta`; ``theta`` ``(..., k)`` physical, ``flux`` ``(..., m)`` on the
        network's pixels, ``snr`` ``(...)``; the flow's density is not truncated to the
        box. Jit- and grad-safe."""
        c = self._features(flux, snr)
        z = self.standardizer.labels(jnp.asarray(theta, dtype=jnp.float64))
        flow = paramax.unwrap(self.flow)
        return flow.log_prob(z, c) - jnp.sum(jnp.log(self.standardizer.label_scale))

    def sample(self, key, flux, snr, n: int = N_SAMPLES):
        """``n`` draws ``(n, k)`` (physical, not truncated) for one spectrum ``(m,)``."""
        c = self._features(flux, snr)
        if c.ndim != 1:
            raise ValueError("sample takes one spectrum (m,); use predict for many")
        z = paramax.unwrap(self.flow).sample(key, (int(n),), condition=c)
        return self.standardizer.physical(z)

    def predict(
        self,
        data,
        uncertainty=None,
        *,
        snr=None,
        n_samples: int = N_SAMPLES,
        key=0,
        batch_size: int = 16,
        emulator=None,
        return_samples: bool = False,
        progress: bool = False,
        calibrated: bool = True,
    ) -> AmortisedResult:
        """Posterior summaries of spectra (module docstring; cINN sect. 3.5).

        Args:
            data: flux ``(m,)`` / ``(n, m)`` on the network's pixels, a
                :class:`~jaxspec.infer.Spectrum` (any wavelengths; resampled) or a list.
            uncertainty: 1σ for a flux array, or None; gives the S/N as ``1/median(σ)``.
            snr: S/N per spectrum (overrides ``uncertainty``; default DER_SNR of the flux
                when neither is given), clipped to the training range.
            n_samples: draws per spectrum (4096, the paper's).
            key: PRNG key or int seed.
            batch_size: spectra per compiled call.
            emulator: optional emulator to report the RMS residual ``loss`` at the MAP.
            return_samples: keep the draws (NaN where rejected) in ``samples``.
            progress: tqdm bar over batches.
            calibrated: apply the stored recalibration to the draws (default; module
                docstring); a model without one gives the raw flow.

        Returns:
            :class:`~jaxspec.amortised.AmortisedResult` (``method="flow"``): ``params`` the
            MAP, ``sigma`` half the 16–84 % range, ``median``, ``q16``, ``q84``,
            ``rejected_fraction``.
        """
        flux, _, snr_used, key, n, b = self._inputs(data, uncertainty, snr, key,
                                                    batch_size, "n_samples", n_samples)

        def batch(f, s, ids):  # ids: spectrum numbers; ids[0] // b is the batch number
            out = _posterior_batch(self, f, s, jax.random.fold_in(key, int(ids[0]) // b),
                                   int(n_samples), bool(calibrated))
            if not return_samples:
                del out["samples"]
            return out

        cat = map_batches(batch, (jnp.asarray(flux), jnp.asarray(snr_used), np.arange(n)), n,
                          b, progress, "flow")
        cat = {k: np.asarray(v) for k, v in cat.items()}
        lo, hi = cat["q16"], cat["q84"]
        return AmortisedResult(
            params=cat["map"], sigma=0.5 * (hi - lo), median=cat["median"], q16=lo, q84=hi,
            rejected_fraction=cat["rejected"], snr=snr_used,
            loss=residual_loss(emulator, self, cat["map"], flux),
            status=status_of(cat["map"], self.bounds, cat["rejected"]),
            n_evaluations=int(n_samples), samples=cat.get("samples"), method="flow",
            names=self.names,
        )


@eqx.filter_jit
def _posterior_batch(model: FlowPosterior, flux, snr, key, n_samples: int,
                     calibrated: bool = True):
    """MAP, quantiles, rejected fraction and draws (NaN where rejected) for a batch
    ``(b, m)`` of spectra (recalibrated when ``calibrated`` and the model has one)."""
    c = model._features(flux, snr)  # (b, features)
    t = model.standardizer.snr(jnp.broadcast_to(jnp.asarray(snr, dtype=jnp.float64),
                                                flux.shape[:-1])).astype(jnp.float64)
    flow = paramax.unwrap(model.flow)
    b = np.asarray(model.box)
    lo, hi = jnp.asarray(b[:, 0]), jnp.asarray(b[:, 1])
    cal = model.calibration if calibrated else None

    def one(ci, ki, ti):
        z, lp = flow.sample_and_log_prob(ki, (n_samples,), condition=ci)
        theta = model.standardizer.physical(z)
        if cal is not None:
            theta = _recalibrate(cal.values, theta, ti, lo, hi)
        inside = jnp.all((theta >= lo) & (theta <= hi), axis=-1)
        score = jnp.where(inside & jnp.isfinite(lp), lp, -jnp.inf)
        best = theta[jnp.argmax(score)]
        any_in = jnp.any(inside)
        kept = jnp.where(inside[:, None], theta, jnp.nan)
        q = jnp.nanquantile(kept, jnp.array([0.16, 0.5, 0.84]), axis=0)
        return {
            "map": jnp.where(any_in, best, jnp.nan),
            "q16": q[0], "median": q[1], "q84": q[2],
            "rejected": 1.0 - jnp.mean(inside),
            "samples": kept,
        }

    keys = jax.random.split(key, flux.shape[0])
    return jax.vmap(one)(c, keys, t)


def _recalibrate(values, theta, t, lo, hi):
    r"""Draws ``(L, k)`` of one spectrum moved by the flow's recalibration (module
    docstring): :math:`m + w(\theta - m) - \sigma_{post}(b_0 + b_1 t + b_2 t^2)`, with
    ``values`` ``(k, 4)`` = ``(b0, b1, b2, ln w)``, and ``m``, :math:`\sigma_{post}` from the draws inside
    the box ``lo``, ``hi``."""
    inside = jnp.all((theta >= lo) & (theta <= hi), axis=-1)
    q = jnp.nanquantile(jnp.where(inside[:, None], theta, jnp.nan),
                        jnp.array([0.16, 0.5, 0.84]), axis=0)
    m, spread = q[1], 0.5 * (q[2] - q[0])
    shift = spread * (values[:, 0] + values[:, 1] * t + values[:, 2] * t**2)
    return m + jnp.exp(values[:, 3]) * (theta - m) - shift


def train_flow(
    simulator: Simulator,
    *,
    n_train: int = N_TRAIN,
    n_val: int | None = None,
    batch_size: int = BATCH_SIZE,
    lr: float = 1e-3,
    lr_decay: float = 0.95,
    weight_decay: float = 1e-5,
    max_epochs: int = MAX_EPOCHS,
    patience: int = PATIENCE,
    hidden=None,
    features: int | None = None,
    flow_layers: int | None = None,
    nn_width: int | None = None,
    nn_depth: int | None = None,
    n_standardize: int = 2048,
    n_calibrate: int = N_CALIBRATE,
    key=0,
    progress: bool = False,
    checkpoint: str | PathLike | None = None,
    resume: bool = False,
) -> FlowPosterior:
    """Train a :class:`FlowPosterior` by maximum likelihood on spectra from ``simulator``,
    then recalibrate it on held-out simulations (:func:`calibrate_flow`).

    The defaults (module constants) are sized for minutes on a CPU (README).

    Args:
        simulator: :class:`~jaxspec.amortised.simulate.Simulator`.
        n_train: training spectra (parameters fixed, noise redrawn each epoch).
        n_val: validation spectra (default ``n_train // 10``, at least 2).
        batch_size: spectra per step.
        lr: Adam learning rate at the first epoch; multiplied by ``lr_decay`` each epoch.
        weight_decay: L2 weight regularisation (added to the gradient, as Adam's
            ``weight_decay`` in PyTorch).
        max_epochs, patience: early stopping on the validation negative log likelihood.
        hidden, features, flow_layers, nn_width, nn_depth: override
            :func:`default_flow_architecture`.
        n_standardize: pilot spectra for the flux standardisation.
        n_calibrate: held-out spectra for :func:`calibrate_flow` (0: none).
        key: PRNG key or int seed.
        progress: tqdm bars over epochs and batches.
        checkpoint: path of a per-epoch checkpoint (atomic), or None.
        resume: continue from ``checkpoint`` if it exists (same settings required).

    Returns:
        The trained model; ``json.loads(model.history)`` holds per-epoch losses and times.
    """
    check_training(simulator, n_calibrate)
    if not lr > 0 or not 0 < lr_decay <= 1 or weight_decay < 0:
        raise ValueError(
            f"lr={lr}, lr_decay={lr_decay}, weight_decay={weight_decay}; pass lr > 0, "
            "0 < lr_decay <= 1 and weight_decay >= 0"
        )
    key = as_key(key)
    k_std, k_net, k_fit = jax.random.split(key, 3)
    config = default_flow_architecture(simulator.n_pix)
    for name, value in (("hidden", hidden), ("features", features),
                        ("flow_layers", flow_layers), ("nn_width", nn_width),
                        ("nn_depth", nn_depth)):
        if value is not None:
            config[name] = [int(v) for v in value] if name == "hidden" else int(value)
    std = fit_standardizer(simulator, k_std, n=n_standardize)
    embedding, flow = _build(config, simulator.n_pix, len(simulator.names),
                             k_net)
    steps = max(1, n_train // max(1, min(batch_size, n_train)))
    schedule = optax.exponential_decay(lr, transition_steps=steps, decay_rate=lr_decay,
                                       staircase=True)
    optimizer = optax.chain(optax.clip_by_global_norm(10.0),
                            optax.add_decayed_weights(weight_decay), optax.adam(schedule))
    (embedding, flow), _, history = fit(
        (embedding, flow), None, _nll, optimizer, simulator, std,
        n_train=n_train, batch_size=batch_size,
        n_val=max(2, n_train // 10) if n_val is None else n_val,
        max_epochs=max_epochs, patience=patience, key=k_fit, progress=progress,
        desc="train flow", checkpoint=checkpoint, resume=resume,
        fingerprint=run_fingerprint("flow", simulator, config, lr=lr, lr_decay=lr_decay,
                                    weight_decay=weight_decay, n_standardize=n_standardize))
    history.update({"optimizer": "adam+l2", "lr": lr, "lr_decay": lr_decay,
                    "weight_decay": weight_decay, "batch_size": batch_size})
    return finish_training(FlowPosterior, (embedding, flow), std, simulator, config,
                           history, calibrate_flow, n_calibrate, key, progress)


def calibrate_flow(
    model: FlowPosterior,
    simulator: Simulator,
    *,
    n: int = N_CALIBRATE,
    key=17,
    n_samples: int = 512,
    batch_size: int = 16,
    progress: bool = False,
) -> FlowPosterior:
    r"""Fit the flow's recentring and width (module docstring) on ``n`` held-out
    simulated spectra.

    Per parameter: :math:`(b_0, b_1, b_2)` by least squares of the standardised residual
    :math:`z_n = (m_n - \theta_n)/\sigma_{post,n}` (clipped to ±5) on
    :math:`(1, t_n, t_n^2)`;
    then the width factor :math:`w \in [0.5, 2]` (bounded scalar search; one sweep over
    the parameters, which the box couples weakly) minimising the largest deviation of the
    expected-coverage curve (credible levels 0.05–0.95), the truths' ranks computed among
    the draws moved and box-rejected as :meth:`FlowPosterior.predict` does. (A width
    varying with S/N, fitted to the worst third of the S/N range, over-fitted 1,024
    spectra: held-out coverage got worse.) Use a key the training
    never used (the default in :func:`train_flow` folds 17 into the training key).

    Args:
        model: a trained :class:`FlowPosterior`.
        simulator: its training simulator.
        n: held-out spectra (>= 100).
        key: PRNG key or int seed.
        n_samples: draws per spectrum (512: ranks to ~0.2 %, quantiles to ~3 %).
        batch_size: spectra per compiled call.
        progress: tqdm bar over batches.

    Returns:
        A copy of ``model`` with ``calibration`` set; its ``report`` (JSON) gives ``n``,
        the mean standardised residual and the largest coverage deviation before
        (``raw_*``) and after (``calibrated_*``), per parameter.
    """
    from scipy.optimize import minimize_scalar

    theta, snr, flux = held_out(model, simulator, n, key, minimum=100,
                                purpose=" to recalibrate")
    raw = model.predict(flux, snr=snr, key=as_key(key), n_samples=n_samples,
                        batch_size=batch_size, return_samples=True, progress=progress,
                        calibrated=False)
    draws = np.asarray(raw.samples)  # (n, L, k), NaN where rejected
    med, spread = np.asarray(raw.median), np.asarray(raw.sigma)
    t = np.asarray(model.standardizer.snr(jnp.asarray(snr)), dtype=np.float64)
    ok = (np.all(np.isfinite(med) & (spread > 0), axis=1)
          & (np.sum(np.all(np.isfinite(draws), axis=2), axis=1) > 1))
    draws, med, spread, t, theta = draws[ok], med[ok], spread[ok], t[ok], theta[ok]
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    k = len(model.names)
    def moved(v, j):  # parameter j of the draws as predict moves them
        w = np.exp(v[j, 3])
        shift = v[j, 0] + v[j, 1] * t + v[j, 2] * t**2
        return (med[:, None, j] + w * (draws[:, :, j] - med[:, None, j])
                - (spread[:, j] * shift)[:, None])

    def inside_box(v, skip=None):  # draws kept: every parameter (but skip) in the box
        keep = np.ones(draws.shape[:2], dtype=bool)
        for i in range(k):
            if i != skip:
                x = moved(v, i)
                keep &= (x >= lo[i]) & (x <= hi[i])  # NaN (rejected) compares False
        return keep

    def ranks_of(x, keep, j):  # the truths' ranks among the kept moved draws x (n, L)
        keep = keep & (x >= lo[j]) & (x <= hi[j])
        below = np.sum((x < theta[:, None, j]) & keep, axis=1)
        return (below / np.maximum(keep.sum(axis=1), 1))[:, None]

    def ranks(v):
        keep = inside_box(v)
        return np.concatenate([ranks_of(moved(v, j), keep, j) for j in range(k)], axis=1)

    values = np.zeros((k, 4))
    z = np.clip((med - theta) / spread, -5, 5)
    design = np.stack([np.ones_like(t), t, t**2], axis=1)
    values[:, :3] = np.linalg.lstsq(design, z, rcond=None)[0].T
    for j in range(k):  # one coordinate sweep (the box couples the parameters weakly)
        others = inside_box(values, skip=j)

        def deviation(c, j=j, others=others):  # largest |C(α) - α| of parameter j
            v = values.copy()
            v[j, 3] = c
            return float(coverage_deviation(ranks_of(moved(v, j), others, j))[0])

        res = minimize_scalar(deviation, bounds=(np.log(0.5), np.log(2.0)), method="bounded",
                              options={"xatol": 2e-3})
        values[j, 3] = res.x
    report = {"n": int(n), "n_used": int(ok.sum()),
              "raw_mean_z": np.mean(z, axis=0).tolist(),
              "calibrated_mean_z": np.mean(z - design @ values[:, :3].T, axis=0).tolist(),
              "raw_max_coverage_deviation": coverage_deviation(ranks(np.zeros((k, 4)))).tolist(),
              "calibrated_max_coverage_deviation": coverage_deviation(ranks(values)).tolist()}
    cal = Recalibration(
        values=jnp.asarray(values),
        description="flow: draw -> m + exp(v3) (draw - m) - s (v0 + v1 t + v2 t^2), "
                    "m median, "
                    "s half the 16-84 % range of the raw draws, t standardised log10 S/N",
        report=json.dumps(report))
    return eqx.tree_at(lambda m: m.calibration, model, cal, is_leaf=lambda x: x is None)
