r"""The pixel emulator: multilinear interpolation of grid spectra, pixel by pixel.

The obvious baseline :class:`~jaxspec.emulator.Emulator`. For parameters
:math:`\theta = (\theta_1, \dots, \theta_k)` inside a cell of the rectilinear grid with
lower corner index :math:`(i_1, \dots, i_k)` and fractional positions
:math:`t_d = (\theta_d - a_{d, i_d}) / (a_{d, i_d + 1} - a_{d, i_d})`,

.. math::
    F(\lambda; \theta) = \sum_{b \in \{0, 1\}^k}
        \Big[\prod_d t_d^{b_d} (1 - t_d)^{1 - b_d}\Big]\,
        F(\lambda; a_{1, i_1 + b_1}, \dots, a_{k, i_k + b_k}),

the same regular-grid linear interpolation that the blase3D paper (sect. 3) applies to
line parameters, applied here to fluxes instead. It reproduces the grid exactly at its
nodes and is continuous, with kinks on the node planes (the gradient is that of the cell
on the low side at a node). Parameters outside the box follow the emulators' out-of-box
policy (:mod:`jaxspec.emulator`): an error by default; ``emulator.clamped()`` clamps them
to its faces (flux and gradient of the face).

Missing nodes. A rectilinear interpolator needs every node. Nodes that the grid lacks
(``grid.mask`` False) raise a ``ValueError`` by default; with ``fill="interpolate"`` each is
replaced by linear interpolation along one axis (``fill_axis``, default the first: Teff
in jaxspec grids) between the nearest existing nodes on either side with the same other
parameters; beyond the last existing node of that line, by linear extrapolation from the
two nearest (a copy when only one exists). Extrapolated fluxes are not clipped. Nodes
held out with ``holdout=`` (e.g. to test inference on spectra the emulator has not seen)
are always filled that way.
"""

from __future__ import annotations

import json
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxspec.emulator import Emulator, register_emulator
from jaxspec.grid import SpectralGrid
from jaxspec.io.emulator_file import Contents, check_version
from jaxspec.manifold import METHODS, axis_stencil

__all__ = ["PixelEmulator"]

_VERSION = 1


@register_emulator("pixel")
class PixelEmulator(Emulator):
    r"""Multilinear interpolation of a rectilinear grid of spectra (see module docstring).

    Fields:

    axes
        tuple of k 1-D float64 arrays, strictly increasing node values per parameter.
    flux
        ``(n_1, ..., n_k, n_pix)`` node spectra (float32 stays float32).
    names
        tuple of k parameter names (static).
    wavelength_
        ``(n_pix,)`` float64 wavelengths, Å.
    filled
        ``(n_1, ..., n_k)`` bool, True at nodes whose spectrum was filled by interpolation
        (missing from the grid or held out).
    method
        ``"linear"`` (multilinear, default) or ``"cubic"``: cubic Hermite along every axis
        of >= 4 nodes, the same stencils as :class:`jaxspec.manifold.LineManifold`
        (:func:`jaxspec.manifold.axis_stencil`; no clipping: a flux may overshoot).

    Calling ``emulator(params)`` with params ``(..., k)`` returns flux ``(..., n_pix)``;
    jit-, vmap- and grad-safe. Build one with :meth:`from_grid`.
    """

    axes: tuple[Float[Array, " n_i"], ...]
    flux: Float[Array, "*shape n_pix"]
    wavelength_: np.ndarray
    filled: np.ndarray
    names: tuple[str, ...] = eqx.field(static=True)
    method: str = eqx.field(static=True, default="linear")

    def __check_init__(self):
        shape = tuple(int(a.shape[0]) for a in self.axes)
        if len(self.names) != len(self.axes):
            raise ValueError(
                f"PixelEmulator: {len(self.names)} names for {len(self.axes)} axes; pass one "
                "name per axis"
            )
        if tuple(self.flux.shape) != (*shape, int(np.shape(self.wavelength_)[0])):
            raise ValueError(
                f"PixelEmulator: flux has shape {tuple(self.flux.shape)}, expected "
                f"{(*shape, int(np.shape(self.wavelength_)[0]))} (axes then wavelength)"
            )

    # ------------------------------------------------------------------ interface

    @property
    def param_names(self) -> tuple[str, ...]:
        return self.names

    @property
    def bounds(self) -> np.ndarray:
        return np.array([[float(a[0]), float(a[-1])] for a in self.axes], dtype=np.float64)

    @property
    def wavelength(self) -> np.ndarray:
        return np.asarray(self.wavelength_, dtype=np.float64)

    def __call__(self, params) -> Float[Array, "... n_pix"]:
        """Flux at ``params`` ``(..., k)`` (order of ``param_names``) → ``(..., n_pix)``."""
        params = self._check_params(params)
        return _interpolate(self.axes, self.flux, params, self.method)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_grid(
        cls,
        grid: SpectralGrid,
        holdout=None,
        *,
        fill: str = "error",
        fill_axis: int = 0,
        method: str = "linear",
    ) -> PixelEmulator:
        """Build the emulator from a :class:`~jaxspec.grid.SpectralGrid`.

        Args:
            grid: the grid (any number of parameters; every axis needs >= 1 value).
            holdout: nodes to leave out: ``(n, k)`` array of parameter values in
                ``grid.param_names`` order, or a sequence of ``{name: value}`` dicts.
                Each must be a node of the grid. Their spectra are replaced by
                interpolation along ``fill_axis`` (see module docstring), so the emulator
                has not seen them.
            fill: what to do with nodes missing from the grid: ``"error"`` (default,
                raise) or ``"interpolate"`` (fill them like held-out nodes).
            fill_axis: the axis along which missing / held-out nodes are interpolated.
            method: ``"linear"`` (default) or ``"cubic"`` (see the class).

        Returns:
            A :class:`PixelEmulator` on the grid's wavelengths.

        Raises:
            ValueError: missing nodes with ``fill="error"``, a hold-out that is not a
                node, or a node that cannot be filled (no existing node on its line).
        """
        if fill not in ("error", "interpolate"):
            raise ValueError(f"fill={fill!r}; pass 'error' or 'interpolate'")
        if method not in METHODS:
            raise ValueError(f"method={method!r}; pass one of {METHODS}")
        names = grid.param_names
        k = len(names)
        if not 0 <= fill_axis < k:
            raise ValueError(f"fill_axis={fill_axis} but the grid has {k} axes {names}")
        missing = ~grid.mask
        if missing.any() and fill == "error":
            params, _ = grid.node_params(include_missing=True)
            first = params[np.flatnonzero(missing.reshape(-1))[0]]
            raise ValueError(
                f"the grid lacks {int(missing.sum())} node(s) (first: "
                + ", ".join(f"{n}={v:g}" for n, v in zip(names, first))
                + "); a pixel emulator needs every node of the rectilinear grid: pass "
                "fill='interpolate' to fill them along the "
                f"{names[fill_axis]} axis, or subset the grid to a complete block"
            )
        held = np.zeros(grid.shape, dtype=bool)
        holdout_params = _holdout_params(holdout, names)
        for row in holdout_params:
            held[grid.index(**dict(zip(names, row)))] = True
        flux = np.array(grid.flux, copy=True)
        todo = missing | held
        if todo.any():
            flux = _fill_along(flux, ~todo, grid.axes[names[fill_axis]], fill_axis, names)
        return cls(
            axes=tuple(jnp.asarray(a, dtype=jnp.float64) for a in grid.axes.values()),
            flux=jnp.asarray(flux),
            wavelength_=np.asarray(grid.wavelength, dtype=np.float64),
            filled=todo,
            names=tuple(names),
            method=method,
        )

    # ------------------------------------------------------------------ files

    def to_contents(self) -> Contents:
        """The file (written by ``save``): root attributes ``format``, ``kind="pixel"``,
        ``version``, ``param_names`` (JSON), ``method``; datasets ``wavelength`` (Å),
        ``axes/<name>``, ``flux`` and ``filled``."""
        arrays = {"wavelength": self.wavelength}
        arrays.update({f"axes/{name}": np.asarray(axis)
                       for name, axis in zip(self.names, self.axes)})
        arrays.update(flux=np.asarray(self.flux), filled=np.asarray(self.filled))
        return Contents(kind=self.kind, version=_VERSION, arrays=arrays,
                        attrs={"param_names": json.dumps(list(self.names)),
                               "method": self.method})

    @classmethod
    def from_contents(cls, contents: Contents, path) -> PixelEmulator:
        """The emulator from the contents of a file written by ``save``."""
        check_version(path, contents, _VERSION)
        contents.require(path, "@param_names", fix="rewrite it with PixelEmulator.save")
        names = tuple(json.loads(contents.attrs["param_names"]))
        contents.require(path, "flux", "wavelength", "filled", *(f"axes/{n}" for n in names),
                         fix="rewrite it with PixelEmulator.save")
        a = contents.arrays
        return cls(axes=tuple(jnp.asarray(a[f"axes/{n}"], dtype=jnp.float64) for n in names),
                   flux=jnp.asarray(a["flux"]),
                   wavelength_=np.asarray(a["wavelength"], dtype=np.float64),
                   filled=np.asarray(a["filled"], dtype=bool), names=names,
                   method=str(contents.attrs.get("method", "linear")))


@partial(jax.jit, static_argnames="method")
def _interpolate(axes, flux, params, method="linear"):
    """Interpolation of ``flux`` (*shape, n_pix) at ``params`` (..., k).

    Jitted on its own so that eager calls (notebooks) run one compiled kernel, not one per
    primitive; inside a caller's jit it inlines.
    """
    k = len(axes)
    batch = params.shape[:-1]
    out = jax.vmap(lambda theta: _one(axes, flux, theta, method))(params.reshape(-1, k))
    return out.reshape(*batch, out.shape[-1])


def _one(axes, flux, theta, method):
    """One spectrum: the stencil nodes of every axis gathered from the flattened grid and
    weighted by the product of the axes' weights."""
    shape = flux.shape[:-1]
    strides = np.cumprod((1,) + shape[::-1])[:-1][::-1]
    flat = flux.reshape(-1, flux.shape[-1])
    index = jnp.zeros((), jnp.int32)
    weight = jnp.ones((), theta.dtype)
    for d, axis in enumerate(axes):
        start, linear, cubic = axis_stencil(axis, theta[d], method)
        w = cubic if method == "cubic" else linear
        if method == "linear":  # flat beyond the box, as before
            w = jnp.clip(w, 0.0, 1.0)
        nodes = start + jnp.arange(w.shape[0], dtype=jnp.int32)
        index = index[..., None] + nodes * int(strides[d])
        weight = weight[..., None] * w.astype(theta.dtype)
    return jnp.tensordot(weight.reshape(-1).astype(flat.dtype), flat[index.reshape(-1)],
                         axes=1)


def _holdout_params(holdout, names) -> np.ndarray:
    k = len(names)
    if holdout is None:
        return np.zeros((0, k))
    if isinstance(holdout, dict):
        holdout = [holdout]
    rows = []
    for item in holdout:
        if isinstance(item, dict):
            unknown = set(item) - set(names)
            if unknown or len(item) != k:
                raise ValueError(
                    f"holdout entry {item} must give exactly the parameters {names}"
                )
            rows.append([float(item[n]) for n in names])
        else:
            rows.append(np.asarray(item, dtype=np.float64).reshape(-1))
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, k) if rows else np.zeros((0, k))
    if arr.shape[1:] != (k,):
        raise ValueError(f"holdout has shape {arr.shape}; pass (n, {k}) node parameters {names}")
    return arr


def _fill_along(flux, exists, axis_values, axis, names):
    """Fill nodes where ``exists`` is False by linear interpolation along ``axis``."""
    moved = np.moveaxis(flux, axis, -2)  # (..., n_axis, n_pix), a view
    have = np.moveaxis(exists, axis, -1)  # (..., n_axis)
    out = moved.copy()
    for idx in np.ndindex(have.shape[:-1]):
        ok = np.flatnonzero(have[idx])
        bad = np.flatnonzero(~have[idx])
        if bad.size == 0:
            continue
        if ok.size == 0:
            raise ValueError(
                f"cannot fill: every node along {names[axis]} is missing or held out for "
                + ", ".join(
                    f"{n}={i}" for n, i in zip([m for j, m in enumerate(names) if j != axis], idx)
                )
                + " (indices); hold out fewer nodes"
            )
        for j in bad:
            x = axis_values[j]
            hi = ok[ok > j]
            lo = ok[ok < j]
            if lo.size and hi.size:
                a, b = lo[-1], hi[0]
            elif hi.size >= 2:  # below the first existing node: extrapolate
                a, b = hi[0], hi[1]
            elif lo.size >= 2:  # above the last
                a, b = lo[-2], lo[-1]
            else:
                out[idx + (j,)] = moved[idx + ((lo[-1] if lo.size else hi[0]),)]
                continue
            t = (x - axis_values[a]) / (axis_values[b] - axis_values[a])
            out[idx + (j,)] = (1 - t) * moved[idx + (a,)] + t * moved[idx + (b,)]
    return np.moveaxis(out, -2, axis)
