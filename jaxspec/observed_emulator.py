r"""An emulator observed through the extrinsic chain, itself an emulator.

:class:`ObservedEmulator` wraps any :class:`~jaxspec.emulator.Emulator` with the effects
chain of :mod:`jaxspec.extrinsic` for one set of observed pixels; its parameters are the
base emulator's followed by the fitted ones among ``rv`` (km/s), ``vsini`` (km/s),
``resolution`` (R) and the continuum coefficients ``c0 … cK``, with bounds = their prior
boxes, so that :func:`jaxspec.infer.bayes_opt`, :func:`~jaxspec.infer.fit_map` and
:func:`~jaxspec.infer.sample_nuts` fit extrinsic parameters unchanged.
:func:`parse_fit` reads the ``"rv,vsini,resolution,continuum=3"`` strings of the CLI.
:func:`jaxspec.infer.initial_guess` gives such fits a start.
"""

from __future__ import annotations

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxspec.emulator import Emulator, register_emulator
from jaxspec.extrinsic.effects import ExtrinsicModel
from jaxspec.extrinsic.kernels import check_resolution, check_rv_range, check_vsini
from jaxspec.io.emulator_file import Contents, check_version, from_nested

__all__ = ["EXTRINSIC_PARAMS", "ObservedEmulator", "parse_fit"]

#: Names of the extrinsic parameters, in the order they follow the stellar ones.
EXTRINSIC_PARAMS = ("rv", "vsini", "resolution")


def parse_fit(fit) -> tuple[tuple[str, ...], int | None]:
    """``"rv,vsini,resolution,continuum=3"`` (or a sequence of such items) →
    ``(("rv", "vsini", "resolution"), 3)``: the fitted extrinsic parameters and the
    Chebyshev degree of a fitted continuum (None: none).

    Raises:
        ValueError: an unknown name, a repeated one, or a bad continuum degree.
    """
    if fit is None:
        return (), None
    items = fit.split(",") if isinstance(fit, str) else list(fit)
    names, degree = [], None
    for raw in items:
        item = str(raw).strip()
        if not item:
            continue
        if item.startswith("continuum"):
            _, eq, value = item.partition("=")
            try:
                degree = int(value) if eq else None
            except ValueError:
                degree = None
            if not eq or degree is None or degree < 0:
                raise ValueError(f"fit item {item!r}: write continuum=K with K >= 0 the "
                                 "Chebyshev degree (K + 1 coefficients c0 … cK), e.g. "
                                 "continuum=3")
            continue
        if item not in EXTRINSIC_PARAMS:
            raise ValueError(f"fit item {item!r} is not an extrinsic parameter; choose from "
                             f"{', '.join(EXTRINSIC_PARAMS)} and continuum=K")
        if item in names:
            raise ValueError(f"fit item {item!r} is given twice")
        names.append(item)
    return tuple(n for n in EXTRINSIC_PARAMS if n in names), degree


def _check_box(name, rng, *, low=None, positive=False) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in rng)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={rng!r}; pass (low, high)") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or not lo < hi:
        raise ValueError(f"{name}=({lo:g}, {hi:g}); pass finite (low, high) with low < high")
    if low is not None and lo < low:
        raise ValueError(f"{name}=({lo:g}, {hi:g}): v sin i is a speed; pass a range with "
                         f"low >= {low:g} km/s")
    if positive and lo <= 0:
        raise ValueError(f"{name}=({lo:g}, {hi:g}): the resolving power R must be > 0; pass "
                         "a range with low > 0 (e.g. 20000:120000)")
    return lo, hi


@register_emulator("observed")
class ObservedEmulator(Emulator):
    r"""An emulator observed through the extrinsic chain: itself an Emulator.

    ``emulator(params)`` with ``params (..., n_base + n_extrinsic)`` — the base emulator's
    parameters, then the fitted ones among ``rv`` (km/s), ``vsini`` (km/s),
    ``resolution`` (R) and the continuum coefficients ``c0 … cK`` — returns the observed
    flux ``(..., m)`` on ``wavelength`` (the observed pixels). Effects that are not fitted
    use fixed values (``rv``, ``vsini``, ``resolution`` fields; vsini 0 and resolution
    None switch the step off). ``bounds`` are the base emulator's followed by the
    extrinsic prior boxes, so the inference functions search and sample them like
    any parameter (uniform priors; pass ``priors={"rv": numpyro.distributions...}`` to
    :func:`~jaxspec.infer.fit_map` / :func:`~jaxspec.infer.sample_nuts` for others).
    Build with :meth:`build`; narrow a box with :meth:`with_bounds`.
    """

    base: Emulator
    model: ExtrinsicModel
    extrinsic_bounds: np.ndarray
    extrinsic_names: tuple[str, ...] = eqx.field(static=True)
    rv: float = eqx.field(static=True)
    vsini: float = eqx.field(static=True)
    resolution: float | None = eqx.field(static=True)

    kind = "observed"

    @classmethod
    def build(
        cls,
        base: Emulator,
        wavelength,
        *,
        fit=(),
        continuum: int | None = None,
        rv: float = 0.0,
        vsini: float = 0.0,
        resolution: float | None = None,
        rv_range=(-100.0, 100.0),
        vsini_range=(0.0, 50.0),
        resolution_range=(20_000.0, 120_000.0),
        continuum_range=((0.5, 1.5), (-0.5, 0.5)),
        epsilon: float = 0.6,
        lsf=None,
        velocity_step: float | None = None,
    ) -> ObservedEmulator:
        """Wrap ``base`` for observed pixels ``wavelength``.

        Args:
            base: any :class:`~jaxspec.emulator.Emulator` (rest-frame, normalised).
            wavelength: ``(m,)`` observed pixel centres, Å.
            fit: extrinsic parameters to fit: a sequence from ``rv``, ``vsini``,
                ``resolution`` or a string like ``"rv,vsini,resolution,continuum=3"``
                (:func:`parse_fit`).
            continuum: Chebyshev degree K of a fitted continuum (K + 1 coefficients);
                None: none (unless given in ``fit``).
            rv, vsini, resolution: fixed values of the effects not fitted (km/s, km/s,
                R; resolution None: no LSF).
            rv_range, vsini_range, resolution_range: ``(low, high)`` prior boxes of
                fitted parameters (km/s, km/s, R).
            continuum_range: ``((lo, hi) of c0, (lo, hi) of c1 … cK)``, or a
                ``(K + 1, 2)`` array of boxes.
            epsilon: linear limb darkening, [0, 1].
            lsf: ``(velocity km/s, profile)`` tabulated LSF (then ``resolution`` can be
                neither fixed nor fitted).
            velocity_step: internal step, km/s (default: the base grid's median spacing).

        Raises:
            ValueError / TypeError: unknown fit names, a name clash with the base's
                parameters, v sin i < 0, R <= 0, or observed pixels the base cannot cover
                at every RV of the box (see :meth:`jaxspec.extrinsic.ExtrinsicModel.build`).
        """
        if not isinstance(base, Emulator):
            raise TypeError(f"base is a {type(base).__name__}; pass a jaxspec Emulator "
                            "(or a Template for a fixed spectrum)")
        names, degree = parse_fit(fit)
        if continuum is not None:
            if degree is not None and degree != continuum:
                raise ValueError(f"continuum={continuum} but fit says continuum={degree}; "
                                 "give the degree once")
            degree = continuum
        clash = [n for n in base.param_names if n in EXTRINSIC_PARAMS or (
            degree is not None and n.startswith("c") and n[1:].isdigit())]
        if clash:
            raise ValueError(f"the base emulator already has parameters {clash}; rename them")
        boxes = []
        if "rv" in names:
            rv_box = _check_box("rv_range", rv_range)
            check_rv_range(rv_box)
            boxes.append(rv_box)
        else:
            rv = float(rv)
            check_rv_range((rv, rv))
            rv_box = (rv, rv)
        if "vsini" in names:
            vs_box = _check_box("vsini_range", vsini_range, low=0.0)
            boxes.append(vs_box)
            vsini_max = vs_box[1]
        else:
            vsini = check_vsini(vsini)
            vsini_max = vsini
        if "resolution" in names:
            if lsf is not None:
                raise ValueError("fit includes resolution but a tabulated lsf was given; fit "
                                 "R with the Gaussian LSF or drop resolution from fit")
            r_box = _check_box("resolution_range", resolution_range, positive=True)
            boxes.append(r_box)
            r_min = r_box[0]
        else:
            if resolution is not None:
                resolution = check_resolution(resolution)
            r_min = resolution
        ext_names = list(names)
        if degree is not None:
            cb = _continuum_boxes(continuum_range, degree)
            boxes.extend(map(tuple, cb))
            ext_names += [f"c{k}" for k in range(degree + 1)]
        model = ExtrinsicModel.build(
            base.wavelength, wavelength, rv_range=rv_box, vsini_max=vsini_max,
            resolution_min=r_min, lsf=lsf, epsilon=epsilon, continuum_degree=degree,
            velocity_step=velocity_step)
        return cls(
            base=base,
            model=model,
            extrinsic_bounds=np.asarray(boxes, dtype=np.float64).reshape(-1, 2),
            extrinsic_names=tuple(ext_names),
            rv=float(rv) if "rv" not in names else 0.0,
            vsini=float(vsini) if "vsini" not in names else 0.0,
            resolution=None if "resolution" in names else r_min,
        )

    # ------------------------------------------------------------------ interface

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.base.param_names) + self.extrinsic_names

    @property
    def bounds(self) -> np.ndarray:
        return np.concatenate([np.asarray(self.base.bounds, dtype=np.float64).reshape(-1, 2),
                               self.extrinsic_bounds])

    @property
    def wavelength(self) -> np.ndarray:
        return self.model.wavelength

    @property
    def continuum_degree(self) -> int | None:
        return self.model.continuum_degree

    def to_contents(self):
        """File contents (``save`` / ``load`` and :func:`~jaxspec.emulator.load_emulator`
        through :mod:`jaxspec.io.emulator_file`): the base emulator's file as the group
        ``base``; the extrinsic layout, every field of :class:`ExtrinsicModel` (arrays as
        datasets ``model/<field>``, the others as the JSON attribute ``model_settings``);
        ``extrinsic_bounds`` ``(n_extrinsic, 2)``; attributes ``extrinsic_names`` (JSON),
        ``rv``, ``vsini`` and ``resolution`` (JSON; null: none). The observed pixels are
        the model's ``wavelength``."""
        arrays = {"base": self.base.to_contents(),
                  "extrinsic_bounds": np.asarray(self.extrinsic_bounds, dtype=np.float64)}
        settings, host = {}, []
        for field in dataclasses.fields(self.model):
            value = getattr(self.model, field.name)
            if isinstance(value, (np.ndarray, jax.Array)):
                arrays[f"model/{field.name}"] = np.asarray(value)
                if isinstance(value, np.ndarray):
                    host.append(field.name)
            else:
                settings[field.name] = value
        attrs = {"extrinsic_names": json.dumps(list(self.extrinsic_names)),
                 "rv": float(self.rv), "vsini": float(self.vsini),
                 "resolution": json.dumps(self.resolution),
                 "model_settings": json.dumps(settings, default=lambda v: v.item()),
                 "model_host_arrays": json.dumps(host)}
        return Contents(kind="observed", version=1, attrs=attrs, arrays=arrays)

    @classmethod
    def from_contents(cls, contents, path) -> ObservedEmulator:
        """The emulator from the contents of its file (:meth:`to_contents`)."""
        check_version(path, contents, 1)
        contents.require(path, "base", "extrinsic_bounds", "@extrinsic_names",
                         "@model_settings", fix="rebuild it with ObservedEmulator.build "
                         "and save it again")
        a = contents.attrs
        host = set(json.loads(a.get("model_host_arrays", "[]")))
        fields = {k: tuple(v) if isinstance(v, list) else v
                  for k, v in json.loads(a["model_settings"]).items()}
        for name, value in contents.group("model").items():
            fields[name] = np.asarray(value) if name in host else jnp.asarray(value)
        return cls(
            base=from_nested(contents.arrays["base"], path),
            model=ExtrinsicModel(**fields),
            extrinsic_bounds=np.asarray(contents.arrays["extrinsic_bounds"],
                                        dtype=np.float64).reshape(-1, 2),
            extrinsic_names=tuple(json.loads(a["extrinsic_names"])),
            rv=float(a.get("rv", 0.0)),
            vsini=float(a.get("vsini", 0.0)),
            resolution=json.loads(a.get("resolution", "null")),
        )

    def with_bounds(self, **boxes) -> ObservedEmulator:
        """A copy with some extrinsic boxes narrowed, e.g. ``with_bounds(rv=(5, 25))``.

        Boxes of rv, vsini and resolution must stay within those the emulator was built
        with (the internal layout depends on them); continuum boxes may be any.
        """
        b = self.extrinsic_bounds.copy()
        built = {"rv": self.model.rv_range, "vsini": (0.0, self.model.vsini_max),
                 "resolution": (self.model.resolution_min or 0.0, np.inf)}
        for name, rng in boxes.items():
            if name not in self.extrinsic_names:
                raise ValueError(f"{name} is not a fitted extrinsic parameter of this "
                                 f"emulator ({', '.join(self.extrinsic_names) or 'none'})")
            lo, hi = _check_box(name, rng)
            if name in built:
                blo, bhi = built[name]
                if lo < blo - 1e-9 or hi > bhi + 1e-9:
                    raise ValueError(f"{name} box ({lo:g}, {hi:g}) leaves the range "
                                     f"({blo:g}, {bhi:g}) this emulator was built for; "
                                     "rebuild it with a wider range")
            b[self.extrinsic_names.index(name)] = (lo, hi)
        return eqx.tree_at(lambda e: e.extrinsic_bounds, self, b)

    def split(self, params):
        """``(base params (..., n_base), {name: (...) value} of every extrinsic input)``;
        fixed effects are returned as their fixed values, continuum as ``(..., K + 1)``."""
        params = jnp.asarray(params)
        nb = self.base.n_params
        ext = params[..., nb:]
        names = self.extrinsic_names

        def get(name, fixed):
            if name in names:
                return ext[..., names.index(name)]
            return fixed

        out = {
            "rv": get("rv", self.rv),
            "vsini": get("vsini", self.vsini) if self.model.rotation else None,
            "resolution": get("resolution", self.resolution) if self.model.gaussian_lsf
            else None,
            "continuum": None,
        }
        if self.model.continuum_degree is not None:
            i0 = names.index("c0")
            out["continuum"] = ext[..., i0: i0 + self.model.continuum_degree + 1]
        return params[..., :nb], out

    def __call__(self, params) -> Float[Array, "... m"]:
        """Observed flux ``(..., m)`` at ``params`` ``(..., n_params)``."""
        params = jnp.asarray(params)
        if params.shape[-1:] != (self.n_params,):
            raise ValueError(f"params has shape {params.shape}; the last axis must hold the "
                             f"{self.n_params} parameters {self.param_names}")
        if params.ndim > 1:
            lead = params.shape[:-1]
            out = jax.vmap(self)(params.reshape(-1, self.n_params))
            return out.reshape(lead + (self.n_pix,))
        base_params, ext = self.split(params)
        flux = self.base(base_params)
        return self.model(flux, ext["rv"], ext["vsini"], ext["resolution"], ext["continuum"])


def _continuum_boxes(continuum_range, degree: int) -> np.ndarray:
    arr = np.asarray(continuum_range, dtype=np.float64)
    if arr.shape == (2, 2):
        boxes = np.vstack([arr[0], np.repeat(arr[1][None], degree, axis=0)])
    elif arr.shape == (degree + 1, 2):
        boxes = arr
    else:
        raise ValueError(f"continuum_range has shape {arr.shape}; pass ((lo, hi) of c0, "
                         f"(lo, hi) of the others) or a ({degree + 1}, 2) array")
    if not np.all(np.isfinite(boxes)) or np.any(boxes[:, 0] >= boxes[:, 1]):
        raise ValueError(f"continuum_range {boxes.tolist()}: every box needs finite low < high")
    return boxes
