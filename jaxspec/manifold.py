r"""Line manifolds: per-line parameters as continuous functions of stellar parameters.

A :class:`LineManifold` holds, for every spectral line ``j``, its parameter vector
(for the emulator: :math:`\mu'_j - \mu_j`, :math:`\ln a_j`, :math:`\ln\sigma_j`,
:math:`\ln\gamma_j`) on the nodes of a rectilinear grid of stellar parameters
:math:`\theta = (T_{eff}, \log g, [Fe/H], \dots)` and evaluates it anywhere inside the
grid by multilinear interpolation (blase3D paper, Sect. 3.2, eq. 3):

.. math::
    v_j(\theta) = \sum_{c \in \{0,1\}^k} \Big[\prod_{d=1}^{k} w_{d,c_d}(\theta_d)\Big]
                  \, v_j(\mathbf{i} + c),
    \qquad w_{d,1} = t_d = \frac{\theta_d - x_{d,i_d}}{x_{d,i_d+1} - x_{d,i_d}},
    \quad w_{d,0} = 1 - t_d,

with :math:`i_d` the cell of axis ``d`` that holds :math:`\theta_d`. This is exactly
scipy's ``RegularGridInterpolator(method="linear")``, which blase3D used one line at a
time; here all lines share one cell lookup and one gather of the :math:`2^k` corner slabs,
so 10^5 lines cost one memory pass. Axes may be non-uniform (PHOENIX: 100 K steps below
7000 K, 200 K above).

``method="cubic"`` interpolates each axis of at least 4 nodes by the cubic Hermite
polynomial whose slope at each node is that of the parabola through the node and its two
neighbours (three-point slopes; the triple is one-sided at the ends). With
:math:`h_- = x_i - x_{i-1}` and :math:`h_+ = x_{i+1} - x_i`,

.. math::
    m_i = -\frac{h_+}{h_-(h_- + h_+)} v_{i-1} + \frac{h_+ - h_-}{h_- h_+} v_i
          + \frac{h_-}{h_+(h_- + h_+)} v_{i+1},

the central difference on a uniform axis (Catmull-Rom there) and second-order accurate on
a non-uniform one, where the plain Catmull-Rom slope
:math:`(v_{i+1} - v_{i-1}) / (x_{i+1} - x_{i-1})` is only first-order: next to a wider
cell (PHOENIX's 100 → 200 K step, a grid with a column left out) its error made the cubic
only about 2× better than linear interpolation (jaxspec measured 9.5e-4 against 1.8e-3
held-out flux RMS with exact line lists; 1.3e-4 with these slopes,
``benchmarks/bench_emulator.py``). On the cell :math:`[x_i, x_{i+1}]`,
:math:`h = x_{i+1} - x_i`:

.. math::
    v(t) = (2t^3 - 3t^2 + 1)\,v_i + (t^3 - 2t^2 + t)\,h m_i + (-2t^3 + 3t^2)\,v_{i+1}
           + (t^3 - t^2)\,h m_{i+1},

a 4-node stencil per axis, exact at the nodes and C¹ across them; axes of 2–3 nodes stay
linear. Two guards keep it safe for line parameters: the result is clipped into the
range of the stencil's node values (no overshoot beyond the nodes, so synthesis windows
planned from the nodes stay valid), and a line with an absent value (below
``ABSENT_BELOW``, the −1000 fill of blase3D) anywhere in its stencil is interpolated
linearly instead (no cubic swing towards −1000), its strength linearly in the amplitude
:math:`a = e^{\ln a}` with :math:`a = 0` where it is absent (column
``amplitude_column``), so that it fades smoothly to zero strength between a node that has
it and one that does not, instead of the −1000 cliff of linear interpolation in ln a
(half way, ln a would be ≈ −500: the line is gone).

The module is pure JAX: ``jit``, ``vmap`` and ``grad`` with respect to the parameters
and to the node values (the basis of :func:`jaxspec.refine.refine`).
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from jaxspec.lines import LineTable

__all__ = ["LineManifold", "axis_stencil"]

_OUT_OF_BOUNDS = ("error", "clamp")
METHODS = ("linear", "cubic")
#: A node value below this marks an absent line (blase3D's fill is ln a = −1000).
ABSENT_BELOW = LineTable.ABSENT / 2


def axis_stencil(axis, x, method: str = "linear"):
    r"""Interpolation stencil of one axis at ``x``: ``(start, linear, cubic)``.

    ``start`` (int32 scalar) is the first node of the stencil; ``linear`` and ``cubic``
    are weight vectors over the stencil's nodes (length 1 for a single-node axis, 2 for
    linear interpolation or an axis of < 4 nodes, else 4), so that the interpolated value
    is ``sum(w * v[start:start + len(w)])``. Linear weights are scipy's (the cell with
    ``x_i <= x``, clipped to the ends); cubic weights are those of the cubic Hermite
    polynomial with three-point slopes (module docstring); both are exact at the
    nodes.

    Args:
        axis: ``(n,)`` strictly increasing node positions (a JAX or numpy array).
        x: scalar position (traced is fine).
        method: ``"linear"`` or ``"cubic"``.
    """
    n = axis.shape[0]
    if n == 1:
        one = jnp.ones((1,), dtype=jnp.result_type(x, axis.dtype))
        return jnp.zeros((), jnp.int32), one, one
    i = jnp.clip(jnp.searchsorted(axis, x, side="right") - 1, 0, n - 2).astype(jnp.int32)
    x0, x1 = axis[i], axis[i + 1]
    h = x1 - x0
    t = (x - x0) / h
    if method != "cubic" or n < 4:
        w = jnp.stack([1.0 - t, t])
        return i, w, w
    start = jnp.clip(i - 1, 0, n - 4)
    p = i - start  # position of node i in the stencil: 0, 1 or 2
    pos = jnp.arange(4)

    def e(k):
        return (pos == k).astype(t.dtype)

    h00, h10 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t
    h01, h11 = -2 * t**3 + 3 * t**2, t**3 - t**2
    xs = axis[start + pos]  # the stencil's node positions

    def slope(q, triple):
        """Weights (over the stencil) of the slope at stencil node ``q``: the derivative
        at x_q of the parabola through the stencil nodes ``triple``."""
        xq = xs[q]
        w = 0.0
        for k in range(3):
            others = [triple[m] for m in range(3) if m != k]
            xa, xb = xs[others[0]], xs[others[1]]
            xk = xs[triple[k]]
            w = w + ((xq - xa) + (xq - xb)) / ((xk - xa) * (xk - xb)) * e(triple[k])
        return w

    # slope at node i: its neighbours on both sides, one-sided (i, i+1, i+2) at the first node
    left = i == 0
    d_i = slope(p, [jnp.where(left, p, p - 1), jnp.where(left, p + 1, p),
                    jnp.where(left, p + 2, p + 1)])
    # slope at node i + 1: both sides, one-sided (i-1, i, i+1) at the last node
    right = i + 1 == n - 1
    d_j = slope(p + 1, [jnp.where(right, p - 1, p), jnp.where(right, p, p + 1),
                        jnp.where(right, p + 1, p + 2)])
    cubic = h00 * e(p) + h01 * e(p + 1) + h * (h10 * d_i + h11 * d_j)
    linear = (1.0 - t) * e(p) + t * e(p + 1)
    return start, linear, cubic


class LineManifold(eqx.Module):
    r"""Per-line parameters on a rectilinear grid, interpolated multilinearly.

    Args:
        axes: ordered mapping ``{name: 1-D array}`` of the grid axes (strictly
            increasing, float64, any spacing), e.g. ``{"teff": ..., "logg": ...,
            "feh": ...}``. An axis of length 1 is allowed (its parameter must then equal
            that value).
        values: ``(n_lines, *grid_shape, n_out)`` node values (for the emulator ``n_out
            = 4``: μ' − μ in Å, ln a, ln σ, ln γ). Their dtype is kept (float32 halves
            memory; float64 when exact agreement with scipy matters). Absent lines carry
            ln a = −1000 (blase3D Sect. 3.1) and interpolate linearly like any value.
        method: ``"linear"`` (default: multilinear, blase3D, scipy-equal) or
            ``"cubic"`` (cubic Hermite along every axis of >= 4 nodes, with the guards of
            the module docstring).
        amplitude_column: the output column that holds ln a (default
            ``LineTable.LN_AMPLITUDE``, for the emulator's :class:`~jaxspec.lines.LineTable`
            columns (μ' − μ, ln a, ln σ, ln γ)); with ``method="cubic"`` a line absent at a
            stencil node fades linearly in a there (module docstring). None: no fade.
        out_of_bounds: what a parameter outside the axes does. ``"error"`` (default):
            :func:`equinox.error_if` raises (at run time, inside ``jit`` too) with the
            bounds in the message. ``"clamp"``: the parameter is clipped into the box
            (flat outside it, zero gradient there); use only where a caller keeps its own
            track of the bounds.

    Call ``manifold(params)`` with ``params (..., k)`` in the order of ``param_names``;
    returns ``(..., n_lines, n_out)``.

    Storage: node values live grid-first, ``table`` ``(*grid_shape, n_lines, n_out)``,
    so that each corner of a cell is one contiguous slab of all lines; ``values`` returns
    the lines-first view.
    """

    axes: tuple[Float[Array, " n_i"], ...]
    table: Float[Array, "*grid n_lines n_out"]
    names: tuple[str, ...] = eqx.field(static=True)
    out_of_bounds: str = eqx.field(static=True)
    _bounds_text: str = eqx.field(static=True)
    method: str = eqx.field(static=True, default="linear")
    amplitude_column: int | None = eqx.field(static=True, default=LineTable.LN_AMPLITUDE)

    def __init__(
        self,
        axes: Mapping[str, ArrayLike],
        values: ArrayLike | None = None,
        *,
        out_of_bounds: str = "error",
        table: ArrayLike | None = None,
        method: str = "linear",
        amplitude_column: int | None = LineTable.LN_AMPLITUDE,
    ):
        if not isinstance(axes, Mapping) or len(axes) == 0:
            raise ValueError(
                "LineManifold: axes must be a non-empty dict {name: 1-D array}, e.g. "
                "{'teff': [...], 'logg': [...]}"
            )
        if method not in METHODS:
            raise ValueError(f"LineManifold: method={method!r}; pass one of {METHODS}")
        if out_of_bounds not in _OUT_OF_BOUNDS:
            raise ValueError(
                f"LineManifold: out_of_bounds={out_of_bounds!r}; pass one of {_OUT_OF_BOUNDS}"
            )
        names, arrays = [], []
        for name, a in axes.items():
            a = np.asarray(a, dtype=np.float64)
            if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
                raise ValueError(
                    f"LineManifold: axis {name!r} must be a non-empty finite 1-D array, got "
                    f"shape {a.shape}"
                )
            if np.any(np.diff(a) <= 0):
                raise ValueError(
                    f"LineManifold: axis {name!r} is not strictly increasing; sort it (and "
                    "the values along it)"
                )
            names.append(str(name))
            arrays.append(a)
        shape = tuple(a.size for a in arrays)
        if (values is None) == (table is None):
            raise ValueError("LineManifold: pass exactly one of values= or table=")
        if values is not None:
            values = jnp.asarray(values)
            if values.ndim != len(shape) + 2 or values.shape[1:-1] != shape:
                raise ValueError(
                    f"LineManifold: values has shape {values.shape}, expected (n_lines, "
                    f"{', '.join(map(str, shape))}, n_out) for axes "
                    f"{dict(zip(names, shape))}"
                )
            table = jnp.moveaxis(values, 0, -2)
        else:
            table = jnp.asarray(table)
            if table.ndim != len(shape) + 2 or table.shape[:-2] != shape:
                raise ValueError(
                    f"LineManifold: table has shape {table.shape}, expected "
                    f"({', '.join(map(str, shape))}, n_lines, n_out)"
                )
        if not jnp.issubdtype(table.dtype, jnp.floating):
            table = table.astype(jnp.float64)
        self.axes = tuple(jnp.asarray(a) for a in arrays)
        self.table = table
        self.names = tuple(names)
        self.out_of_bounds = out_of_bounds
        self.method = method
        self.amplitude_column = (None if amplitude_column is None
                                 or int(amplitude_column) >= table.shape[-1]
                                 else int(amplitude_column))
        self._bounds_text = ", ".join(
            f"{n} in [{a[0]:g}, {a[-1]:g}]" for n, a in zip(names, arrays)
        )

    # ------------------------------------------------------------------ shape and views

    @property
    def param_names(self) -> tuple[str, ...]:
        return self.names

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(self.table.shape[:-2])

    @property
    def n_lines(self) -> int:
        return int(self.table.shape[-2])

    @property
    def n_out(self) -> int:
        return int(self.table.shape[-1])

    @property
    def values(self) -> Float[Array, "n_lines *grid n_out"]:
        """Node values, lines first: ``(n_lines, *grid_shape, n_out)``."""
        return jnp.moveaxis(self.table, -2, 0)

    @property
    def bounds(self) -> np.ndarray:
        """``(k, 2)`` float64 ``[low, high]`` of each axis."""
        return np.array([[float(a[0]), float(a[-1])] for a in self.axes])

    def axes_dict(self) -> dict[str, np.ndarray]:
        """The axes as ``{name: numpy float64 array}``."""
        return {n: np.asarray(a) for n, a in zip(self.names, self.axes)}

    def take_lines(self, index: ArrayLike) -> LineManifold:
        """A manifold with only the lines ``index`` (integer array or boolean mask)."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return eqx.tree_at(lambda m: m.table, self, self.table[..., index, :])

    # ------------------------------------------------------------------ evaluation

    def __call__(self, params: ArrayLike) -> Float[Array, "... n_lines n_out"]:
        r"""Interpolated line parameters at ``params``.

        Args:
            params: ``(..., k)`` stellar parameters in ``param_names`` order (units of
                the axes, e.g. K, dex, dex).

        Returns:
            ``(..., n_lines, n_out)``, multilinear in each cell (module docstring).

        Raises:
            equinox's runtime error (``XlaRuntimeError``/``EqxRuntimeError``) naming the
            bounds, when a parameter is outside the axes or NaN and ``out_of_bounds`` is
            ``"error"``.
        """
        params = jnp.asarray(params)
        if not jnp.issubdtype(params.dtype, jnp.floating):
            params = params.astype(jnp.float64)
        k = len(self.axes)
        if params.ndim == 0 or params.shape[-1] != k:
            raise ValueError(
                f"LineManifold: params has shape {params.shape}; the last axis must hold "
                f"the {k} parameters {self.names}"
            )
        params = self._check_bounds(params)
        lead = params.shape[:-1]
        flat = params.reshape(-1, k)
        out = jax.vmap(self._interpolate_one)(flat)
        return out.reshape(*lead, *out.shape[1:])

    def _check_bounds(self, params):
        lo = jnp.stack([a[0] for a in self.axes])
        hi = jnp.stack([a[-1] for a in self.axes])
        if self.out_of_bounds == "clamp":
            return jnp.clip(params, lo, hi)
        # A relative slack of 1e-9 lets values read back from text (5772.0000000001) in.
        slack = 1e-9 * jnp.maximum(1.0, jnp.maximum(jnp.abs(lo), jnp.abs(hi)))
        inside = (params >= lo - slack) & (params <= hi + slack)
        return eqx.error_if(
            params,
            ~jnp.all(inside),
            f"LineManifold: parameters outside the grid or NaN; the manifold covers "
            f"{self._bounds_text} ({', '.join(self.names)} is the order of the last axis "
            "of params). Keep inference inside these bounds or build with "
            "out_of_bounds='clamp'.",
        )

    def _interpolate_one(self, theta):
        starts, linear, cubic = [], [], []
        for d, axis in enumerate(self.axes):
            start, w_lin, w_cub = axis_stencil(axis, theta[d], self.method)
            starts.append(start)
            linear.append(w_lin)
            cubic.append(w_cub)
        sizes = [w.shape[0] for w in linear]
        zero = jnp.zeros((), jnp.int32)
        slab = jax.lax.dynamic_slice(
            self.table, (*starts, zero, zero), (*sizes, *self.table.shape[-2:])
        )

        def contract(weights, values=slab):
            # Contract the stencil axes one at a time: (s1, s2, s3, L, n_out) -> (L, n_out).
            out = values
            for w in weights:
                w = w.astype(jnp.result_type(w.dtype, out.dtype))
                out = jnp.tensordot(w, out, axes=(0, 0))
            return out

        lin = contract(linear)
        if self.method == "linear" or all(s <= 2 for s in sizes):
            return lin
        stencil = tuple(range(len(sizes)))
        cub = jnp.clip(contract(cubic), slab.min(axis=stencil), slab.max(axis=stencil))
        absent = jnp.any(slab < ABSENT_BELOW, axis=(*stencil, slab.ndim - 1))
        c = self.amplitude_column
        if c is not None:  # absent lines fade linearly in a = exp(ln a), a = 0 if absent
            ln_a = slab[..., c]
            a = jnp.where(ln_a < ABSENT_BELOW, 0.0, jnp.exp(jnp.maximum(ln_a, ABSENT_BELOW)))
            a_lin = contract(linear, a)
            tiny = jnp.asarray(1e-300 if a_lin.dtype == jnp.float64 else 1e-37, a_lin.dtype)
            faded = jnp.where(a_lin > tiny, jnp.log(jnp.maximum(a_lin, tiny)), lin[:, c])
            lin = lin.at[:, c].set(faded.astype(lin.dtype))
        return jnp.where(absent[:, None], lin, cub)
