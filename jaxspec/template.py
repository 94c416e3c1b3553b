r"""A fixed rest-frame spectrum as an emulator without parameters.

:class:`Template` is the template of blase-style fits: wrapped in an
:class:`~jaxspec.observed_emulator.ObservedEmulator`, only RV, v sin i, R and the
continuum are fitted. Build it from arrays or synthesise it from a line list.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxspec._checks import check_wavelength
from jaxspec.emulator import Emulator, register_emulator
from jaxspec.extrinsic.kernels import C_KMS
from jaxspec.io.emulator_file import Contents, check_version

__all__ = ["Template"]


@register_emulator("template")
class Template(Emulator):
    r"""A fixed rest-frame spectrum as an emulator without parameters.

    ``template(params)`` with ``params (..., 0)`` returns the flux ``(..., n_pix)``.
    Wrapped in an :class:`~jaxspec.observed_emulator.ObservedEmulator` it is the template of a blase-style fit
    (RV, v sin i, R and continuum only). Build from arrays or from a line list with
    :meth:`from_line_list`.

    Fields: ``wavelength_`` ``(n_pix,)`` float64 Å; ``flux`` ``(n_pix,)``; ``label``.
    """

    wavelength_: np.ndarray
    flux: Float[Array, " n_pix"]
    label: str = eqx.field(static=True, default="template")

    def __check_init__(self):
        wl = np.asarray(self.wavelength_)
        if np.shape(self.flux) != wl.shape or wl.ndim != 1:
            raise ValueError(f"Template: flux has shape {np.shape(self.flux)} but wavelength "
                             f"has {wl.shape}; pass one flux value per wavelength")

    @classmethod
    def from_arrays(cls, wavelength, flux, label: str = "template") -> Template:
        """Validated constructor: ``(n,)`` increasing Å and ``(n,)`` finite flux."""
        wl = check_wavelength(wavelength, label="template wavelength")
        f = np.asarray(flux, dtype=np.float64)
        if f.shape != wl.shape:
            raise ValueError(f"template flux has shape {f.shape} but wavelength {wl.shape}")
        if not np.all(np.isfinite(f)):
            raise ValueError(f"template flux has {int((~np.isfinite(f)).sum())} NaN/inf "
                             "values; pass a finite spectrum")
        return cls(wavelength_=wl, flux=jnp.asarray(f), label=str(label))

    @classmethod
    def from_line_list(cls, lines, wavelength_range, velocity_step: float = 0.3,
                       label: str = "template") -> Template:
        r"""Synthesise a line list (e.g. a blase clone) on a log-uniform grid.

        :math:`\lambda_i = \lambda_{lo} e^{i\,\Delta v / c}` covering ``wavelength_range``;
        flux from :meth:`jaxspec.lines.LineList.flux`.

        Args:
            lines: a :class:`~jaxspec.lines.LineList`.
            wavelength_range: ``(low, high)`` Å, e.g. :func:`jaxspec.extrinsic.required_model_range`.
            velocity_step: km/s per pixel (default 0.3, i.e. R = 10⁶ sampling).
            label: name.
        """
        lo, hi = (float(v) for v in wavelength_range)
        if not 0 < lo < hi:
            raise ValueError(f"wavelength_range=({lo}, {hi}); pass 0 < low < high in Å")
        if not velocity_step > 0:
            raise ValueError(f"velocity_step={velocity_step}; pass a positive step in km/s")
        n = math.ceil(math.log(hi / lo) * C_KMS / velocity_step) + 1
        wl = lo * np.exp(np.arange(n) * velocity_step / C_KMS)
        flux = np.asarray(lines.flux(wl), dtype=np.float64)
        return cls.from_arrays(wl, flux, label)

    @property
    def param_names(self) -> tuple[str, ...]:
        return ()

    @property
    def bounds(self) -> np.ndarray:
        return np.zeros((0, 2), dtype=np.float64)

    @property
    def wavelength(self) -> np.ndarray:
        return np.asarray(self.wavelength_, dtype=np.float64)

    def __call__(self, params) -> Float[Array, "... n_pix"]:
        """The flux, broadcast to ``params.shape[:-1] + (n_pix,)``."""
        params = jnp.asarray(params)
        if params.shape[-1:] != (0,):
            raise ValueError(f"params has shape {params.shape}; a Template has no parameters "
                             "(pass shape (..., 0))")
        return jnp.broadcast_to(self.flux, params.shape[:-1] + self.flux.shape)

    def to_contents(self):
        """File contents (``save`` / ``load`` through :mod:`jaxspec.io.emulator_file`):
        root attributes ``format``, ``kind = "template"``, ``version = 1``, ``label``;
        datasets ``wavelength`` (Å, float64) and ``flux``."""
        return Contents(kind="template", version=1, attrs={"label": self.label},
                        arrays={"wavelength": self.wavelength,
                                "flux": np.asarray(self.flux)})

    @classmethod
    def from_contents(cls, contents, path) -> Template:
        """The template from the contents of its file (:meth:`to_contents`)."""
        check_version(path, contents, 1)
        contents.require(path, "wavelength", "flux", fix="write it with Template.save")
        return cls.from_arrays(contents.arrays["wavelength"], contents.arrays["flux"],
                               str(contents.attrs.get("label", "template")))
