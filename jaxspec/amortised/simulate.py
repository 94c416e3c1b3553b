r"""Training sets for amortised inference, simulated with an emulator and streamed.

A training example is a pair :math:`(\theta, x)`: parameters drawn from the prior and a
noisy spectrum generated from them,

.. math::
    \theta \sim \mathcal U(\text{box}), \qquad
    \ln(\mathrm{S/N}) \sim \mathcal U(\ln s_{min}, \ln s_{max}), \qquad
    x = R\,T_\xi\big[E(\theta)\big] + \epsilon, \quad
    \epsilon_i \sim \mathcal N(0, 1/\mathrm{S/N}^2),

where :math:`E` is any :class:`~jaxspec.emulator.Emulator` (flux on its pixels),
:math:`T_\xi` an optional extrinsic transform (``transform(flux, key)``, e.g. a radial
velocity shift or broadening drawn per spectrum), and :math:`R` the :class:`Rebin`
operator onto the networks' pixels. The noise is white with 1σ = 1/(S/N) per network
pixel: the S/N is that of the continuum of a continuum-normalised spectrum (flux ≈ 1).
The cINN paper (Candebat et al., sect. 2.1) trained at 19 fixed S/N levels from 10 to
1000 Å⁻¹ and names a continuous S/N as future work (sect. 5); here the S/N is drawn
log-uniformly from ``snr_range`` (default 10–1000, the paper's range).

Streaming. :func:`training_batch` makes batch ``b`` of a training set from two keys:
``fold_in(key, b)`` fixes its parameters, S/N and extrinsic draws (the *set*), and a key
per epoch draws fresh noise (data augmentation, as BOSS Net adds noise scaled by the
errors, Sizemore et al. sect. 3.2). Nothing but one batch is ever in memory; the set is
reproducible from its key.

Standardisation (:class:`Standardizer`): labels are shifted and scaled by the mean and
standard deviation of the uniform prior, :math:`(\theta - (lo + hi)/2) / ((hi - lo) /
\sqrt{12})`; flux per pixel by its mean and standard deviation over a pilot batch of the
training distribution (the cINN paper standardises fluxes per bin and the labels, sect.
3.2); the S/N enters the flow as :math:`\log_{10}` S/N, standardised likewise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

__all__ = [
    "BinnedEmulator",
    "Rebin",
    "Simulator",
    "Standardizer",
    "as_key",
    "cell_edges",
    "der_snr",
    "fit_standardizer",
    "network_grid",
    "training_batch",
]

#: S/N range of the cINN paper's training set (Å⁻¹), sect. 2.1.
SNR_RANGE = (10.0, 1000.0)


def as_key(key):
    """A new-style typed PRNG key from an int seed, a raw ``uint32[2]`` key or a typed key.

    Raises:
        TypeError: anything else.
    """
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return jax.random.wrap_key_data(key)
    raise TypeError(f"key={key!r}; pass an int seed or a jax.random.key")


# --------------------------------------------------------------------------- rebinning


class Rebin(eqx.Module):
    r"""Linear map from flux on source pixels to averages over target bins.

    Each source pixel :math:`j` stands for its cell :math:`[c_j, c_{j+1})` (cell edges at
    the midpoints between pixels, half a step beyond the ends); the flux is taken as
    constant over a cell. With target bin edges :math:`e_0 < \dots < e_m`,

    .. math::
        y_i = \frac{C(e_{i+1}) - C(e_i)}{e_{i+1} - e_i},\qquad
        C(e) = \sum_{j<k} F_j (c_{j+1} - c_j) + F_k (e - c_k)
        \quad (c_k \le e < c_{k+1}),

    the flux-conserving rebinning of piecewise-constant spectra (e.g. Carnall 2017,
    arXiv:1705.05165, eq. 3). Bins made of whole cells (:func:`network_grid`) get the
    plain mean of their pixels, bins equal to the cells the identity. The same operator
    turns emulator spectra into training spectra and observed spectra into network
    inputs, so both see one convolution. Wavelengths are float64 and the cumulative sum
    runs in float64.

    Fields: ``index`` ``(m + 1,)`` cell of each edge, ``offset`` ``(m + 1,)`` Å from the
    cell's start, ``cell`` ``(n,)`` cell widths (Å), ``width`` ``(m,)`` bin widths (Å).
    """

    index: Int[Array, " m1"]
    offset: Float[Array, " m1"]
    cell: Float[Array, " n"]
    width: Float[Array, " m"]

    @classmethod
    def between(cls, source_wavelength, edges, *, label: str = "spectrum") -> Rebin:
        """The operator from pixels at ``source_wavelength`` ``(n,)`` Å onto bins with
        ``edges`` ``(m + 1,)`` Å.

        Edges beyond the source cells by at most one bin are clipped to them (the end
        bin then averages a shorter stretch).

        Raises:
            ValueError: fewer than 2 source pixels, edges not increasing, or the source
                misses more than one bin at either end (message gives both ranges).
        """
        x = np.asarray(source_wavelength, dtype=np.float64)
        e = np.asarray(edges, dtype=np.float64)
        if x.ndim != 1 or x.size < 2:
            raise ValueError(f"{label}: wavelength has shape {x.shape}; pass >= 2 pixels")
        if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0):
            raise ValueError("edges must be a strictly increasing 1-D array of >= 2 values (Å)")
        c = cell_edges(x)
        w = np.diff(e)
        if c[0] > e[0] + w[0] or c[-1] < e[-1] - w[-1]:
            raise ValueError(
                f"{label} covers {x[0]:.3f}–{x[-1]:.3f} Å but the network expects "
                f"{e[0]:.3f}–{e[-1]:.3f} Å; pass a spectrum covering the network's range "
                "(or train a network on the spectrum's range with wavelength_range=)"
            )
        ec = np.clip(e, c[0], c[-1])
        k = np.clip(np.searchsorted(c, ec, side="right") - 1, 0, x.size - 1)
        return cls(
            index=jnp.asarray(k, dtype=jnp.int32),
            offset=jnp.asarray(ec - c[k], dtype=jnp.float64),
            cell=jnp.asarray(np.diff(c), dtype=jnp.float64),
            width=jnp.asarray(np.maximum(np.diff(ec), 1e-300), dtype=jnp.float64),
        )

    def __call__(self, flux: Float[Array, "... n"]) -> Float[Array, "... m"]:
        """Source flux ``(..., n)`` → bin averages ``(..., m)`` (float64)."""
        f = jnp.asarray(flux, dtype=jnp.float64)
        c = jnp.cumsum(f * self.cell, axis=-1)
        c = jnp.concatenate([jnp.zeros_like(f[..., :1]), c], axis=-1)
        ce = jnp.take(c, self.index, axis=-1) + jnp.take(f, self.index, axis=-1) * self.offset
        return jnp.diff(ce, axis=-1) / self.width


def cell_edges(wavelength) -> np.ndarray:
    """``(n + 1,)`` edges of the cells of pixels at ``wavelength`` ``(n,)``: midpoints
    between neighbours, half a step beyond the first and last pixel (float64 Å)."""
    x = np.asarray(wavelength, dtype=np.float64)
    mid = 0.5 * (x[1:] + x[:-1])
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


def network_grid(
    wavelength, *, bin: int = 1, wavelength_range: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""Pixels of a network: blocks of ``bin`` emulator pixels, optionally in a range.

    Each source pixel owns its cell (:func:`cell_edges`); a network pixel is the union of
    ``bin`` consecutive cells (so :class:`Rebin` gives the mean of their ``bin`` pixels),
    its centre the midpoint of its edges. Pixels left over at the red
    end (fewer than ``bin``) are dropped.

    Args:
        wavelength: ``(n,)`` float64 source wavelengths, Å (an emulator's).
        bin: source pixels per network pixel (>= 1).
        wavelength_range: ``(lo, hi)`` Å: keep only source pixels inside, or None.

    Returns:
        ``(centres (m,), edges (m + 1,))``, float64 Å.

    Raises:
        ValueError: ``bin`` < 1, or fewer than 2 network pixels result.
    """
    x = np.asarray(wavelength, dtype=np.float64)
    if not isinstance(bin, (int, np.integer)) or bin < 1:
        raise ValueError(f"bin={bin!r}; pass a positive integer (source pixels per pixel)")
    if wavelength_range is not None:
        lo, hi = map(float, wavelength_range)
        keep = (x >= lo) & (x <= hi)
        if keep.sum() < 2:
            raise ValueError(
                f"wavelength_range={wavelength_range} keeps {int(keep.sum())} of the "
                f"emulator's pixels ({x[0]:.3f}–{x[-1]:.3f} Å); pass a range inside it"
            )
        x = x[keep]
    cell = cell_edges(x)
    m = x.size // bin
    if m < 2:
        raise ValueError(
            f"bin={bin} leaves {m} network pixel(s) from {x.size} emulator pixels; pass a "
            "smaller bin or a wider wavelength_range"
        )
    edges = cell[: m * bin + 1 : bin]
    return 0.5 * (edges[1:] + edges[:-1]), edges


# --------------------------------------------------------------------------- simulator


class _Labelled(eqx.Module):
    """Base of the simulator and the networks: fields ``names``, ``box`` (``((lo, hi),
    ...)``, the parameters' box) and ``wavelength`` (network pixels, Å) give
    ``param_names``, ``bounds`` and ``n_pix``."""

    @property
    def param_names(self) -> tuple[str, ...]:
        return self.names

    @property
    def bounds(self) -> np.ndarray:
        """(k, 2) float64 box of the parameters (the training prior's support)."""
        return np.asarray(self.box, dtype=np.float64).reshape(-1, 2)

    @property
    def n_pix(self) -> int:
        return int(np.shape(self.wavelength)[0])


class Simulator(_Labelled):
    r"""Draws ``(θ, S/N, noisy spectrum)`` from the prior (module docstring).

    Fields:

    emulator
        any :class:`~jaxspec.emulator.Emulator` (or object with its interface).
    rebin
        :class:`Rebin` from the emulator's pixels onto the network pixels.
    wavelength, edges
        ``(m,)`` and ``(m + 1,)`` float64 network pixel centres and edges, Å.
    box, names
        the emulator's bounds ``((lo, hi), ...)`` and parameter names (static, so that
        they are known inside jit).
    snr_range
        ``(s_min, s_max)``: S/N per network pixel, drawn log-uniformly.
    transform
        None or ``transform(flux (n_pix,), key) -> flux (n_pix,)`` on the emulator's
        pixels (extrinsic effects); must be jit- and vmap-able.

    Build one with :meth:`from_emulator`.
    """

    emulator: eqx.Module
    rebin: Rebin
    wavelength: np.ndarray
    edges: np.ndarray
    box: tuple[tuple[float, float], ...] = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True)
    snr_range: tuple[float, float] = eqx.field(static=True)
    transform: Callable | None = None

    def __check_init__(self):
        lo, hi = self.snr_range
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ValueError(
                f"snr_range={self.snr_range}; pass (min, max) with 0 < min <= max < inf"
            )
        if self.transform is not None and not callable(self.transform):
            raise TypeError(
                f"transform is a {type(self.transform).__name__}; pass a callable "
                "transform(flux, key) -> flux or None"
            )

    @classmethod
    def from_emulator(
        cls,
        emulator,
        *,
        bin: int = 1,
        wavelength_range: tuple[float, float] | None = None,
        snr_range: tuple[float, float] = SNR_RANGE,
        transform: Callable | None = None,
    ) -> Simulator:
        """A simulator on blocks of ``bin`` emulator pixels (see :func:`network_grid`).

        Args:
            emulator: any emulator (``param_names``, ``bounds``, ``wavelength``,
                ``__call__``).
            bin: emulator pixels per network pixel (a box-car of that width).
            wavelength_range: ``(lo, hi)`` Å to restrict the networks to, or None.
            snr_range: ``(min, max)`` S/N per network pixel (log-uniform).
            transform: optional extrinsic ``transform(flux, key) -> flux``.

        Raises:
            TypeError: ``emulator`` lacks the emulator interface.
            ValueError: bad ``bin``, ``wavelength_range`` or ``snr_range``.
        """
        for attr in ("param_names", "bounds", "wavelength"):
            if not hasattr(emulator, attr):
                raise TypeError(
                    f"emulator is a {type(emulator).__name__} without {attr!r}; pass a "
                    "jaxspec Emulator (e.g. load_emulator(path))"
                )
        centres, edges = network_grid(emulator.wavelength, bin=bin,
                                      wavelength_range=wavelength_range)
        bounds = np.asarray(emulator.bounds, dtype=np.float64)
        if bounds.shape != (len(emulator.param_names), 2) or np.any(bounds[:, 1] <= bounds[:, 0]):
            raise ValueError(
                f"emulator bounds {bounds.tolist()} are not one increasing [low, high] per "
                f"parameter {tuple(emulator.param_names)}; a prior box needs positive widths"
            )
        return cls(
            emulator=emulator,
            rebin=Rebin.between(emulator.wavelength, edges, label="the emulator"),
            wavelength=centres,
            edges=edges,
            box=tuple((float(a), float(b)) for a, b in bounds),
            names=tuple(emulator.param_names),
            snr_range=(float(snr_range[0]), float(snr_range[1])),
            transform=transform,
        )

    def noise_free(self, theta: Float[Array, "n k"], keys=None) -> Float[Array, "n m"]:
        """Noise-free network-pixel spectra ``(n, m)`` (float64) at ``theta`` ``(n, k)``;
        ``keys`` ``(n,)`` feed ``transform`` (required when one is set)."""
        flux = self.emulator(theta)
        if self.transform is not None:
            if keys is None:
                raise ValueError("this simulator has a transform; pass one key per spectrum")
            flux = jax.vmap(self.transform)(flux, keys)
        return self.rebin(flux)

    def draw(self, key, n: int, snr=None):
        """``n`` examples: ``(theta (n, k) float64, snr (n,), flux (n, m) float32)``
        (compiled once per ``n``).

        Args:
            key: PRNG key or int seed.
            n: number of spectra.
            snr: None (draw log-uniformly from ``snr_range``), a number, or ``(n,)``.
        """
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n={n!r}; pass a positive integer number of spectra")
        snr = None if snr is None else jnp.asarray(snr, dtype=jnp.float64)
        return _draw(self, as_key(key), int(n), snr)

    def forward_model(self) -> BinnedEmulator:
        """The emulator seen through this simulator's transform-free rebinning, on the
        network pixels: for :func:`jaxspec.infer.fit_map` on the same data."""
        return BinnedEmulator(self.emulator, self.rebin, np.asarray(self.wavelength),
                              self.box, self.names)


@eqx.filter_jit
def _draw(simulator, key, n, snr):
    k_set, k_noise = jax.random.split(key)
    return training_batch(simulator, k_set, k_noise, n, snr=snr)


class BinnedEmulator(_Labelled):
    """An emulator followed by a :class:`Rebin`: ``params (..., k) -> flux (..., m)`` on
    the network pixels. It has the :class:`~jaxspec.emulator.Emulator` interface that
    inference uses (``param_names``, ``bounds``, ``wavelength``, ``n_params``, ``n_pix``,
    call) but no file format (it is made from a simulator, not saved)."""

    emulator: eqx.Module
    rebin: Rebin
    wavelength_: np.ndarray
    box: tuple[tuple[float, float], ...] = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True)

    def __call__(self, params):
        """Flux ``(..., m)`` at ``params`` ``(..., k)``."""
        return self.rebin(self.emulator(params))

    @property
    def wavelength(self) -> np.ndarray:
        return np.asarray(self.wavelength_, dtype=np.float64)

    @property
    def n_params(self) -> int:
        return len(self.names)

    @property
    def n_pix(self) -> int:
        return int(self.wavelength_.shape[0])


def training_batch(simulator: Simulator, set_key, noise_key, n: int, snr=None):
    r"""One streamed batch of :math:`x = R\,T_\xi[E(\theta)] + \epsilon` (module
    docstring): parameters, S/N and extrinsic draws from ``set_key``, noise from
    ``noise_key``. Jit-able (``n`` static).

    Args:
        simulator: the :class:`Simulator`.
        set_key, noise_key: PRNG keys.
        n: spectra in the batch.
        snr: None (log-uniform in ``snr_range``), a number or ``(n,)``.

    Returns:
        ``(theta (n, k) float64 physical, snr (n,) float64, flux (n, m) float32)``.
    """
    bounds = jnp.asarray(simulator.bounds)
    k = bounds.shape[0]
    k_theta, k_snr, k_ext = jax.random.split(set_key, 3)
    u = jax.random.uniform(k_theta, (n, k), dtype=jnp.float64)
    theta = bounds[:, 0] + u * (bounds[:, 1] - bounds[:, 0])
    if snr is None:
        lo, hi = (math.log(s) for s in simulator.snr_range)
        snr = jnp.exp(jax.random.uniform(k_snr, (n,), dtype=jnp.float64, minval=lo, maxval=hi))
    else:
        snr = jnp.broadcast_to(jnp.asarray(snr, dtype=jnp.float64), (n,))
    clean = simulator.noise_free(theta, jax.random.split(k_ext, n))
    noise = jax.random.normal(noise_key, clean.shape, dtype=jnp.float64) / snr[:, None]
    return theta, snr, (clean + noise).astype(jnp.float32)


# --------------------------------------------------------------------------- standardising


class Standardizer(eqx.Module):
    r"""Affine maps between physical values and the networks' standardised ones.

    :math:`\tilde\theta = (\theta - \mu_\theta)/s_\theta`,
    :math:`\tilde x_i = (x_i - \mu_i)/s_i`,
    :math:`\tilde s = (\log_{10}\mathrm{S/N} - \mu_s)/s_s` (see the module docstring).
    All fields are float64 arrays: ``label_mean``, ``label_scale`` ``(k,)``,
    ``flux_mean``, ``flux_scale`` ``(m,)``, ``snr_mean``, ``snr_scale`` ``()``.
    """

    label_mean: Float[Array, " k"]
    label_scale: Float[Array, " k"]
    flux_mean: Float[Array, " m"]
    flux_scale: Float[Array, " m"]
    snr_mean: Float[Array, ""]
    snr_scale: Float[Array, ""]

    def labels(self, theta):
        """Physical ``(..., k)`` → standardised."""
        return (theta - self.label_mean) / self.label_scale

    def physical(self, z):
        """Standardised ``(..., k)`` → physical."""
        return self.label_mean + z * self.label_scale

    def flux(self, x):
        """Network-pixel flux ``(..., m)`` → standardised float32."""
        return ((x - self.flux_mean) / self.flux_scale).astype(jnp.float32)

    def snr(self, snr):
        """S/N ``(...)`` → standardised log10 S/N, float32."""
        return ((jnp.log10(snr) - self.snr_mean) / self.snr_scale).astype(jnp.float32)


def fit_standardizer(simulator: Simulator, key, n: int = 2048, batch: int = 256) -> Standardizer:
    r"""A :class:`Standardizer` from the prior box and ``n`` simulated spectra.

    Labels: :math:`\mu = (lo + hi)/2`, :math:`s = (hi - lo)/\sqrt{12}` (uniform prior);
    log10 S/N likewise over ``snr_range``; flux: per-pixel mean and standard deviation of
    ``n`` spectra from :func:`training_batch`, accumulated batch by batch (Chan et al.
    1979 pairwise merge of means and variances), so ``n`` may exceed memory; scales are
    floored at 1e-6.

    Args:
        simulator: the :class:`Simulator`.
        key: PRNG key.
        n: pilot spectra (>= 2).
        batch: spectra per simulated batch.
    """
    if n < 2:
        raise ValueError(f"n={n}; pass at least 2 pilot spectra")
    b = simulator.bounds
    lo, hi = (math.log10(s) for s in simulator.snr_range)
    draw = eqx.filter_jit(
        lambda sim, k, m: training_batch(sim, k, jax.random.fold_in(k, 1), m)[2])
    count, mean, m2 = 0, 0.0, 0.0
    for i in range(math.ceil(n / batch)):
        m = min(batch, n - i * batch)
        x = np.asarray(draw(simulator, jax.random.fold_in(key, i), m), dtype=np.float64)
        bm, bv = x.mean(0), x.var(0)
        delta = bm - mean
        tot = count + m
        mean = mean + delta * m / tot
        m2 = m2 + bv * m + delta**2 * count * m / tot
        count = tot
    std = np.sqrt(m2 / count)
    return Standardizer(
        label_mean=jnp.asarray(0.5 * (b[:, 0] + b[:, 1])),
        label_scale=jnp.asarray(np.maximum((b[:, 1] - b[:, 0]) / math.sqrt(12.0), 1e-12)),
        flux_mean=jnp.asarray(mean),
        flux_scale=jnp.asarray(np.maximum(std, 1e-6)),
        snr_mean=jnp.asarray(0.5 * (lo + hi)),
        snr_scale=jnp.asarray(max((hi - lo) / math.sqrt(12.0), 0.1)),
    )


def der_snr(flux) -> np.ndarray:
    r"""S/N of spectra from the flux alone (DER_SNR; Stoehr et al. 2008, ASP Conf. 394, 505).

    .. math::
        \mathrm{S/N} = \frac{\operatorname{median}(F)}{1.482602/\sqrt6\;
            \operatorname{median}|2F_i - F_{i-2} - F_{i+2}|}

    Args:
        flux: ``(..., m)`` flux (m >= 5).

    Returns:
        ``(...)`` S/N. Resolved lines inflate the second differences, so it is a lower
        bound for spectra with many lines at high S/N; pass uncertainties when known.
    """
    f = np.asarray(flux, dtype=np.float64)
    if f.shape[-1] < 5:
        raise ValueError(f"flux has {f.shape[-1]} pixels; DER_SNR needs at least 5")
    d = np.abs(2 * f[..., 2:-2] - f[..., :-4] - f[..., 4:])
    noise = 1.482602 / math.sqrt(6.0) * np.median(d, axis=-1)
    return np.median(f, axis=-1) / np.maximum(noise, 1e-12)
