r"""A 1-D residual CNN that maps a spectrum straight to labels (BOSS Net).

Architecture (Sizemore et al. 2024, sect. 3.2 and fig. 5), for a standardised spectrum
:math:`\tilde x \in \mathbb R^m` with a positional-encoding channel (a ramp from -1 to 1
across the pixels, the paper's "positional encoding as a channel"):

* stem: Conv1d(2 → c, kernel 7) → BatchNorm → ELU → MaxPool(2);
* ``stages`` residual blocks, block j with :math:`c\,2^{\min(j, 3)}` channels, each
  :math:`y = \mathrm{ELU}(\mathrm{BN}(W_2 * \mathrm{ELU}(\mathrm{BN}(W_1 * h))) + P h)`
  (He et al. 2016), the first convolution of every block after the first with stride 2,
  :math:`P` a 1×1 convolution where the shape changes (identity otherwise);
* adaptive average pooling to 8 positions, then a ReLU MLP 128 → 64 → k.

Widths scale with the spectrum length: :math:`c = 2^{\mathrm{round}(\log_2(m/128))}`
clipped to [4, 64] (8 channels for ~1,000 pixels, 32 for BOSS Net's 3,900) and
``stages`` = :math:`\lfloor\log_2(m/32)\rfloor` clipped to [1, 4], so that the last
block sees at least ~16 positions. The paper does not list its widths.

Training (:func:`train_regressor`): mean squared error on standardised labels, Adamax
with learning rate 1e-4 and batch 512 (the paper's), early stopping on a validation set.
Spectra are simulated and streamed (:mod:`jaxspec.amortised.simulate`).

Uncertainties (:meth:`CNNRegressor.predict`): BOSS Net (sect. 4) passes 20 copies of the
spectrum scattered by its uncertainties (capped at 5× their median) through the network
and adopts the scatter of the predictions,
:math:`\sigma_\theta = \mathrm{std}_d\,f(x + \sigma \odot \epsilon_d)`,
:math:`\epsilon_d \sim \mathcal N(0, I)`, :math:`d = 1..20`; the point estimate is
:math:`f(x)`. This is a measure of sensitivity to the noise, not a posterior width: it
leaves out the network's own error, so alone it covers far fewer truths than it should
(39 % within ±1σ on the default grid).

Recalibration (:func:`calibrate_regressor`, run by :func:`train_regressor` by default):
on held-out simulated spectra (a key the training never used) fit, per parameter,

.. math::
    \sigma_{tot}^2 = a^2\,\sigma_{noise}^2 + \big(s_\theta\,
    e^{c_0 + c_1 t + \alpha\cdot u + \beta\cdot u^2}\big)^2,

with :math:`t` the standardised log10 S/N, :math:`u` the vector of standardised raw
estimates of all parameters (clipped to ±2: the network's error depends on where in the
box the star is, e.g. log g is harder for hot stars) and
:math:`s_\theta` the label scale, by
maximising the Gaussian likelihood of the residuals :math:`f(x_n) - \theta_n` less
their mean :math:`s_\theta(d_0 + d_1 t + d_2 t^2)` (a least-squares fit; a network
trained for minutes has a systematic offset, e.g. −40 to −70 K in Teff on the tiny
grid). :math:`a` rescales the noise term, the second term is the network's own error,
which shrinks with S/N but not as 1/S/N. :meth:`CNNRegressor.predict` then subtracts
the mean error from the estimate and its median and reports :math:`\sigma_{tot}` and
``q16/q84`` = estimate ∓ :math:`\sigma_{tot}` (``calibrated=False`` gives the raw
network output and noise-draw σ and quantiles). The coefficients are stored in the model file.
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

from jaxspec._batching import map_batches
from jaxspec.amortised._model import (
    AmortisedModel,
    check_training,
    finish_training,
    register_amortised,
    residual_loss,
)
from jaxspec.amortised._train import fit, run_fingerprint
from jaxspec.amortised.calibration import (
    Recalibration,
    coverage_curve,
    gaussian_ranks,
    held_out,
)
from jaxspec.amortised.result import AmortisedResult, status_of
from jaxspec.amortised.simulate import (
    Simulator,
    as_key,
    fit_standardizer,
)

__all__ = ["CNNRegressor", "calibrate_regressor", "default_architecture", "train_regressor"]

_F32 = jnp.float32
#: Monte Carlo draws over the flux errors (BOSS Net sect. 4).
N_DRAWS = 20


def default_architecture(n_pix: int) -> dict:
    """``{"channels": c, "stages": s, "pool": 8, "head": [128, 64]}`` for ``n_pix`` pixels
    (module docstring)."""
    if n_pix < 8:
        raise ValueError(f"n_pix={n_pix}; the CNN needs at least 8 pixels")
    c = int(np.clip(2 ** round(math.log2(n_pix / 128)), 4, 64))
    s = int(np.clip(math.floor(math.log2(n_pix / 32)), 1, 4))
    return {"channels": c, "stages": s, "pool": 8, "head": [128, 64]}


def _bn(c):
    return eqx.nn.BatchNorm(c, axis_name="batch", momentum=0.9, mode="batch", dtype=_F32)


def _normed(bn, y, state):
    # equinox's zero-debiasing (1 - momentum**counter, counter int64) promotes the
    # normalised output to float64 under x64; the network stays float32
    y, state = bn(y, state)
    return y.astype(_F32), state


class _ResBlock(eqx.Module):
    conv1: eqx.nn.Conv1d
    bn1: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv1d
    bn2: eqx.nn.BatchNorm
    proj: eqx.nn.Conv1d | None

    def __init__(self, cin, cout, stride, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv1d(cin, cout, 3, stride=stride, padding=1, dtype=_F32, key=k1)
        self.bn1 = _bn(cout)
        self.conv2 = eqx.nn.Conv1d(cout, cout, 3, padding=1, dtype=_F32, key=k2)
        self.bn2 = _bn(cout)
        self.proj = (None if cin == cout and stride == 1 else
                     eqx.nn.Conv1d(cin, cout, 1, stride=stride, dtype=_F32, key=k3))

    def __call__(self, h, state):
        y, state = _normed(self.bn1, self.conv1(h), state)
        y, state = _normed(self.bn2, self.conv2(jax.nn.elu(y)), state)
        skip = h if self.proj is None else self.proj(h)
        return jax.nn.elu(y + skip), state


class _ResNet1d(eqx.Module):
    """The BOSS Net network: standardised flux ``(m,)`` float32 → standardised labels
    ``(k,)``; call as ``net(x, state) -> (y, state)`` inside ``vmap(axis_name="batch")``."""

    stem: eqx.nn.Conv1d
    stem_bn: eqx.nn.BatchNorm
    blocks: tuple[_ResBlock, ...]
    head: tuple[eqx.nn.Linear, ...]
    pool: int = eqx.field(static=True)

    def __init__(self, n_pix: int, n_out: int, channels: int, stages: int, pool: int,
                 head: list[int], key):
        keys = jax.random.split(key, stages + len(head) + 2)
        self.stem = eqx.nn.Conv1d(2, channels, 7, padding=3, dtype=_F32, key=keys[0])
        self.stem_bn = _bn(channels)
        blocks, cin = [], channels
        for j in range(stages):
            cout = channels * 2 ** min(j, 3)
            blocks.append(_ResBlock(cin, cout, 1 if j == 0 else 2, keys[1 + j]))
            cin = cout
        self.blocks = tuple(blocks)
        sizes = [cin * pool, *head, n_out]
        self.head = tuple(eqx.nn.Linear(a, b, dtype=_F32, key=k)
                          for a, b, k in zip(sizes[:-1], sizes[1:], keys[stages + 1:]))
        self.pool = pool

    def __call__(self, x, state):
        m = x.shape[-1]
        pos = jnp.linspace(-1.0, 1.0, m, dtype=_F32)
        h = jnp.stack([x.astype(_F32), pos])
        h, state = _normed(self.stem_bn, self.stem(h), state)
        h = eqx.nn.MaxPool1d(2, 2)(jax.nn.elu(h))
        for block in self.blocks:
            h, state = block(h, state)
        h = eqx.nn.AdaptiveAvgPool1d(self.pool)(h).reshape(-1)
        for layer in self.head[:-1]:
            h = jax.nn.relu(layer(h))
        return self.head[-1](h), state


def _network(config: dict, n_pix: int, n_out: int, key):
    return eqx.nn.make_with_state(_ResNet1d)(
        n_pix, n_out, config["channels"], config["stages"], config["pool"], config["head"], key)


def _mse(net, state, z, x, s, training):
    pred, state = jax.vmap(net, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
        x, state)
    # equinox's running-variance update (x n/(n-1)) promotes to float64 under x64; keep
    # the state float32 so that its dtype (and the compiled step) never changes
    state = jax.tree.map(
        lambda a: a.astype(_F32) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    return jnp.mean((pred - z.astype(_F32)) ** 2), state


@register_amortised("regressor")
class CNNRegressor(AmortisedModel):
    """A trained BOSS Net-style regressor (module docstring).

    Fields: ``network`` and ``state`` (weights and batch-norm statistics),
    ``standardizer`` (:class:`~jaxspec.amortised.simulate.Standardizer`), ``wavelength``
    ``(m,)`` and ``edges`` ``(m + 1,)`` (float64 Å, the pixels it reads), ``box`` (prior
    bounds), ``names`` (parameter names), ``snr_range`` (training S/N), ``config``
    (architecture, JSON), ``history`` (training log, JSON) and ``calibration``
    (:class:`~jaxspec.amortised.calibration.Recalibration` of the uncertainties, or None).
    Train one with :func:`train_regressor`; :meth:`predict` infers labels; :meth:`save` /
    :meth:`load`.
    """

    network: _ResNet1d
    state: eqx.nn.State

    kind = "regressor"
    networks = ("network", "state")

    @classmethod
    def skeleton(cls, config: dict, n_pix: int, n_params: int):
        """``(network, state)`` of ``config``, shapes only (``eqx.filter_eval_shape``)."""
        return eqx.filter_eval_shape(_network, config, n_pix, n_params, jax.random.key(0))

    def __call__(self, flux):
        """Labels ``(..., k)`` (physical units) of noise-scattered-free spectra ``(..., m)``
        on the network's pixels (jit- and grad-safe; batch norm on running statistics)."""
        flux = self._network_flux(flux)
        net = eqx.nn.inference_mode(self.network)
        x = self.standardizer.flux(flux).reshape(-1, self.n_pix)
        z = jax.vmap(lambda v: net(v, self.state)[0])(x)
        return self.standardizer.physical(z.astype(jnp.float64)).reshape(
            *flux.shape[:-1], len(self.names))

    def predict(
        self,
        data,
        uncertainty=None,
        *,
        snr=None,
        n_draws: int = N_DRAWS,
        key=0,
        batch_size: int = 64,
        emulator=None,
        return_samples: bool = False,
        progress: bool = False,
        calibrated: bool = True,
    ) -> AmortisedResult:
        """Labels of spectra, with Monte Carlo uncertainties (module docstring).

        Args:
            data: flux ``(m,)`` / ``(n, m)`` on the network's pixels, a
                :class:`~jaxspec.infer.Spectrum` (any wavelengths; resampled) or a list.
            uncertainty: 1σ for a flux array (broadcastable), or None.
            snr: S/N per spectrum when no uncertainty is known (default: DER_SNR of the
                flux); the noise draws then use σ = 1/snr.
            n_draws: noise draws per spectrum (20, the paper's).
            key: PRNG key or int seed.
            batch_size: spectra per compiled call.
            emulator: optional emulator (on any pixels covering the network's) to report
                the RMS residual ``loss`` at the estimate; else NaN.
            return_samples: keep the ``n_draws`` predictions in ``samples`` (the noise
                draws, before recalibration).
            progress: tqdm bar over batches.
            calibrated: apply the stored recalibration (default; a model without one
                reports the raw noise-draw σ).

        Returns:
            :class:`~jaxspec.amortised.AmortisedResult` (``method="regressor"``):
            ``sigma`` the recalibrated 1σ, ``q16``/``q84`` the estimate ∓ that σ (raw:
            the noise-draw standard deviation and quantiles), ``median`` of the draws.
        """
        flux, sigma, snr_used, key, n, b = self._inputs(data, uncertainty, snr, key,
                                                        batch_size, "n_draws", n_draws)

        def batch(f, s, ids):  # ids: spectrum numbers; ids[0] // b is the batch number
            return _predict_batch(self, f, s, jax.random.fold_in(key, int(ids[0]) // b),
                                  int(n_draws))

        point, draws = (np.asarray(a) for a in map_batches(
            batch, (jnp.asarray(flux), jnp.asarray(sigma), np.arange(n)), n, b, progress,
            "regressor"))
        q16, med, q84 = np.quantile(draws, [0.16, 0.5, 0.84], axis=1)
        sigma = draws.std(axis=1, ddof=1)
        if calibrated and self.calibration is not None:
            sigma = self.total_sigma(sigma, snr_used, point)
            shift = self.bias(snr_used)
            point, med = point - shift, med - shift
            q16, q84 = point - sigma, point + sigma
        loss = residual_loss(emulator, self, point, flux)
        return AmortisedResult(
            params=point, sigma=sigma, median=med, q16=q16, q84=q84,
            rejected_fraction=np.zeros(n), snr=snr_used, loss=loss,
            status=status_of(point, self.bounds), n_evaluations=int(n_draws) + 1,
            samples=draws if return_samples else None, method="regressor", names=self.names,
        )

    def bias(self, snr) -> np.ndarray:
        """Mean error ``(n, k)`` of the network's estimate at S/N ``(n,)`` on held-out
        simulations, :math:`s_\theta(d_0 + d_1 t + d_2 t^2)` (module docstring; zero
        without a calibration); ``predict`` subtracts it."""
        snr = np.atleast_1d(np.asarray(snr, dtype=np.float64))
        if self.calibration is None:
            return np.zeros((snr.size, len(self.names)))
        c = np.asarray(self.calibration.values)
        t = np.asarray(self.standardizer.snr(jnp.asarray(snr)), dtype=np.float64)[:, None]
        return np.asarray(self.standardizer.label_scale) * (c[:, 0] + c[:, 1] * t
                                                            + c[:, 2] * t**2)

    def total_sigma(self, sigma_noise, snr, estimate) -> np.ndarray:
        """Recalibrated 1σ ``(n, k)`` (module docstring) from the noise-draw σ ``(n, k)``,
        the S/N ``(n,)`` and the network's raw estimate ``(n, k)``; ``sigma_noise``
        unchanged when there is no calibration."""
        sigma_noise = np.asarray(sigma_noise, dtype=np.float64)
        if self.calibration is None:
            return sigma_noise
        c = np.asarray(self.calibration.values)
        t = np.asarray(self.standardizer.snr(jnp.asarray(snr, dtype=jnp.float64)),
                       dtype=np.float64)[:, None]
        return _total_sigma(c, sigma_noise, t, _features(self, estimate),
                            np.asarray(self.standardizer.label_scale))


@eqx.filter_jit
def _predict_batch(model: CNNRegressor, flux, sigma, key, n_draws: int):
    noise = jax.random.normal(key, (n_draws,) + flux.shape, dtype=jnp.float64) * sigma
    xs = jnp.concatenate([flux[None], flux[None] + noise])  # (1 + d, b, m)
    theta = model(xs)
    return theta[0], jnp.moveaxis(theta[1:], 0, 1)


def _features(model, estimate) -> np.ndarray:
    """``(n, 2k)``: the standardised raw estimates ``u`` (clipped to ±2) and ``u²``, the
    position in the box that the recalibrated σ depends on."""
    u = np.clip(np.asarray(model.standardizer.labels(jnp.asarray(estimate)),
                           dtype=np.float64).reshape(-1, len(model.names)), -2, 2)
    return np.concatenate([u, u**2], axis=1)


def _total_sigma(c, sigma_noise, t, feats, scale) -> np.ndarray:
    """σ_tot ``(n, k)`` (module docstring) from ``values`` ``c`` ``(k, 6 + 2k)``."""
    log_floor = c[:, 4] + c[:, 5] * t + feats @ c[:, 6:].T
    return np.sqrt((np.exp(c[:, 3]) * np.asarray(sigma_noise)) ** 2
                   + (scale * np.exp(log_floor)) ** 2)


#: Defaults of :func:`train_regressor`, sized to train on the tiny grid's pixel emulator
#: (1,990 px) in under 10 minutes on 2 CPU cores (README, "Amortised inference").
N_TRAIN, BATCH_SIZE, LR, MAX_EPOCHS, PATIENCE, N_CALIBRATE = 4096, 64, 1e-3, 10, 3, 1024
#: Measured time of the defaults (help text of ``jaxspec train regressor``).
DEFAULTS_TIMING = (
    "4.5 minutes on 2 CPU cores shared with other jobs (load ~3), 10 epochs, still "
    "improving; held-out scatter of the estimates 199 / 87 / 59 K in Teff, 0.23 / 0.14 / "
    "0.09 in log g and 0.07 / 0.03 / 0.02 dex in [Fe/H] at S/N 10 / 50 / 100 (no better "
    "above: the network's own error); its mean error (-40 to -70 K in Teff) is removed "
    "by the recalibration, whose 68 % / 95 % intervals cover 68-70 % / 93.5-95.5 % of "
    "1,000 held-out truths (noise draws alone: 23-26 % / 43-46 %). --resume --overwrite "
    "--max-epochs 30 trains further")


def train_regressor(
    simulator: Simulator,
    *,
    n_train: int = N_TRAIN,
    n_val: int | None = None,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    max_epochs: int = MAX_EPOCHS,
    patience: int = PATIENCE,
    channels: int | None = None,
    stages: int | None = None,
    n_standardize: int = 2048,
    n_calibrate: int = N_CALIBRATE,
    key=0,
    progress: bool = False,
    checkpoint: str | PathLike | None = None,
    resume: bool = False,
) -> CNNRegressor:
    """Train a :class:`CNNRegressor` on spectra streamed from ``simulator``, then
    recalibrate its uncertainties (:func:`calibrate_regressor`).

    The defaults are sized for minutes on a CPU (module constants; README): BOSS Net's
    own (Sizemore et al. sect. 3.2) are 100,000+ spectra, batch 512, Adamax 1e-4 and up to
    100 epochs, which on 2 CPU cores takes about a day; pass them to reproduce the paper.

    Args:
        simulator: :class:`~jaxspec.amortised.simulate.Simulator` (emulator, network
            pixels, S/N range, optional extrinsic transform).
        n_train: training spectra (parameters fixed, noise redrawn each epoch).
        n_val: validation spectra (default ``n_train // 10``, at least 2; the paper's
            80:10:10 split), rounded up to whole batches.
        batch_size: spectra per step (paper: 512).
        lr: Adamax learning rate (paper: 1e-4, which needs many more epochs).
        max_epochs, patience: early stopping on the validation MSE.
        channels, stages: override :func:`default_architecture`.
        n_standardize: pilot spectra for the flux standardisation.
        n_calibrate: held-out spectra for the recalibration of σ (0: none; then
            ``predict`` reports the raw noise-draw σ).
        key: PRNG key or int seed.
        progress: tqdm bars over epochs and batches.
        checkpoint: path of a per-epoch checkpoint (atomic), or None.
        resume: continue from ``checkpoint`` if it exists (same settings required).

    Returns:
        The trained model; ``json.loads(model.history)`` holds per-epoch losses and times.
    """
    check_training(simulator, n_calibrate)
    if not lr > 0:
        raise ValueError(f"lr={lr}; pass a positive learning rate")
    key = as_key(key)
    k_std, k_net, k_fit = jax.random.split(key, 3)
    config = default_architecture(simulator.n_pix)
    if channels is not None:
        config["channels"] = int(channels)
    if stages is not None:
        config["stages"] = int(stages)
    std = fit_standardizer(simulator, k_std, n=n_standardize)
    network, state = _network(config, simulator.n_pix, len(simulator.names), k_net)
    network, state, history = fit(
        network, state, _mse, optax.adamax(lr), simulator, std,
        n_train=n_train, batch_size=batch_size,
        n_val=max(2, n_train // 10) if n_val is None else n_val,
        max_epochs=max_epochs, patience=patience, key=k_fit, progress=progress,
        desc="train regressor", eval_model=eqx.nn.inference_mode,
        checkpoint=checkpoint, resume=resume,
        fingerprint=run_fingerprint("regressor", simulator, config, lr=lr,
                                    n_standardize=n_standardize))
    history.update({"optimizer": "adamax", "lr": lr, "batch_size": batch_size})
    return finish_training(CNNRegressor, (network, state), std, simulator, config, history,
                           calibrate_regressor, n_calibrate, key, progress)


def calibrate_regressor(
    model: CNNRegressor,
    simulator: Simulator,
    *,
    n: int = N_CALIBRATE,
    key=17,
    n_draws: int = N_DRAWS,
    batch_size: int = 64,
    progress: bool = False,
) -> CNNRegressor:
    r"""Fit the recalibration of the regressor's σ on ``n`` held-out simulated spectra.

    Per parameter: the mean error :math:`s_\theta(d_0 + d_1 t + d_2 t^2)` by least
    squares of the residuals :math:`f(x_n) - \theta_n` on :math:`(1, t, t^2)`; then
    :math:`(\ln a, c_0, c_1, \alpha, \beta)` of :math:`\sigma_{tot}^2 = a^2
    \sigma_{noise}^2 + (s_\theta e^{c_0 + c_1 t + \alpha\cdot u + \beta\cdot u^2})^2`
    (module docstring) maximise :math:`\sum_n
    -\ln\sigma_{tot,n} - r_n^2 / 2\sigma_{tot,n}^2`, :math:`r_n` the residual less its
    mean (L-BFGS, from :math:`a = 1`, :math:`c_1 = 0` and :math:`c_0` the residuals'
    scale); last, one factor on :math:`\sigma_{tot}` (in [0.5, 2]) minimising the larger
    of :math:`|C(0.68) - 0.68| / 0.05` and :math:`|C(0.95) - 0.95| / 0.03` (the coverage
    targets in units of their tolerances), because the residuals are more peaked and
    longer-tailed than a Gaussian: the likelihood fit alone over-covers at 68 %, a fit to
    the whole coverage curve under-covers at 95 %. Use a key the training never used (the default in
    :func:`train_regressor` folds 17 into the training key).

    Args:
        model: a trained :class:`CNNRegressor`.
        simulator: its training simulator (prior, S/N range, pixels).
        n: held-out spectra (>= 100; 1,024 fit three coefficients to ~3 %).
        key: PRNG key or int seed.
        n_draws: noise draws per spectrum (as in :meth:`CNNRegressor.predict`).
        batch_size: spectra per compiled call.
        progress: tqdm bar over batches.

    Returns:
        A copy of ``model`` with ``calibration`` (``values`` ``(k, 6 + 2k)`` = ``(d0, d1,
        d2, ln a, c0, c1, α (k), β (k))``) set; its ``report`` (JSON) gives ``n``, the mean standardised
        error and the held-out coverage of the 68 % / 95 % Gaussian intervals (±0.99σ /
        ±1.96σ) before (``raw_*``) and after (``calibrated_*``), per parameter.
    """
    from scipy.optimize import minimize, minimize_scalar

    from jaxspec.infer import gaussian_coverage

    theta, snr, flux = held_out(model, simulator, n, key, minimum=100,
                                purpose=" to recalibrate")
    raw = model.predict(flux, snr=snr, key=as_key(key), n_draws=n_draws,
                        batch_size=batch_size, progress=progress, calibrated=False)
    point, sig = np.asarray(raw.params), np.asarray(raw.sigma)
    t = np.asarray(model.standardizer.snr(jnp.asarray(snr)), dtype=np.float64)
    scale = np.asarray(model.standardizer.label_scale)
    k = len(model.names)
    values = np.zeros((k, 6 + 2 * k))
    feats = _features(model, point)  # (n, 2k)
    for j in range(len(model.names)):
        r = (point[:, j] - theta[:, j]) / scale[j]
        sn = sig[:, j] / scale[j]
        ok = np.isfinite(r) & np.isfinite(sn)
        r, sn, tj, fj = r[ok], sn[ok], t[ok], feats[ok]
        design = np.stack([np.ones_like(tj), tj, tj**2], axis=1)
        values[j, :3] = np.linalg.lstsq(design, r, rcond=None)[0]
        r = r - design @ values[j, :3]

        def nll(c, r=r, sn=sn, tj=tj, fj=fj):
            var = np.exp(2 * c[0]) * sn**2 + np.exp(2 * (c[1] + c[2] * tj + fj @ c[3:]))
            g = 0.5 * np.log(var) + 0.5 * r**2 / var
            return float(np.mean(g))

        start = np.concatenate([[0.0, np.log(max(np.std(r), 1e-6)), 0.0], np.zeros(2 * k)])
        c = minimize(nll, start, method="L-BFGS-B").x
        spread = np.sqrt(np.exp(2 * c[0]) * sn**2 + np.exp(2 * (c[1] + c[2] * tj + fj @ c[3:])))
        # the residuals are not quite Gaussian (peaked, long tails): one factor g on σ
        # balances the 68 % and 95 % levels, each deviation in units of its tolerance
        def miss(lg, r=r, spread=spread):
            c68, c95 = coverage_curve(
                gaussian_ranks(r[:, None], 0.0, np.exp(lg) * spread[:, None]), [0.68, 0.95])
            return max(abs(c68[0] - 0.68) / 0.05, abs(c95[0] - 0.95) / 0.03)

        g = minimize_scalar(miss, bounds=(np.log(0.5), np.log(2.0)), method="bounded",
                            options={"xatol": 1e-3}).x
        values[j, 3:] = np.concatenate([[c[0] + g, c[1] + g], c[2:]])
    cal = Recalibration(
        values=jnp.asarray(values),
        description="regressor: estimate -> estimate - label_scale (v0 + v1 t + v2 t^2), "
                    "sigma^2 = (exp(v3) sigma_noise)^2 + (label_scale exp(v4 + v5 t + "
                    "v[6:6+k] . u + v[6+k:] . u^2))^2, t = standardised log10 S/N, u the "
                    "standardised raw estimate (k,) clipped to +-2",
        report="{}")
    model = eqx.tree_at(lambda m: m.calibration, model, cal,
                        is_leaf=lambda x: x is None)
    total = model.total_sigma(sig, snr, point)
    fixed = point - model.bias(snr)
    report = {"n": int(n),
              "raw_mean_z": np.nanmean((point - theta) / sig, axis=0).tolist(),
              "calibrated_mean_z": np.nanmean((fixed - theta) / total, axis=0).tolist()}
    for name, p_, s_ in (("raw", point, sig), ("calibrated", fixed, total)):
        cov = gaussian_coverage(theta, p_, s_)["coverage"]
        report[f"{name}_coverage_68"] = np.asarray(cov[0.68]).tolist()
        report[f"{name}_coverage_95"] = np.asarray(cov[0.95]).tolist()
    cal = Recalibration(values=cal.values, description=cal.description,
                        report=json.dumps(report))
    return eqx.tree_at(lambda m: m.calibration, model, cal)
