r"""Extrinsic and instrumental effects: from a model spectrum to an observed one.

The blase3D paper (Shankar, Gully-Santiago & Morley, sect. 6, "Extrinsic Absence") lists
Doppler shift, rotational broadening, instrumental resolution and the continuum as
missing. This package adds them to any :class:`~jaxspec.emulator.Emulator`. The chain, in
the order applied to a normalised rest-frame model flux :math:`F(\lambda)`:

1. **Internal velocity grid.** :math:`F` is linearly interpolated onto a uniform grid
   in :math:`u = \ln\lambda`, :math:`u_i = u_0 + i h`, :math:`h = \Delta v / c`
   (default :math:`\Delta v` = the model grid's median spacing; a log-uniform model grid
   is used node for node, without interpolation). On it a velocity kernel is a fixed
   stencil, so broadening is correct on any input grid (uniform in λ, log-λ,
   non-uniform).
2. **Rotation** (v sin i, linear limb darkening ε, default 0.6): convolution with the
   classical rotation kernel of Gray (2005, *The Observation and Analysis of Stellar
   Photospheres*, 3rd ed., eq. 18.14), written in velocity,

   .. math:: G(v) = \frac{2(1-\varepsilon)\sqrt{1 - x^2} + \tfrac{\pi\varepsilon}{2}
        (1 - x^2)}{\pi\, v\sin i\,(1 - \varepsilon/3)}, \qquad x = \frac{v}{v \sin i},
        \ |x| \le 1.

3. **Line-spread function**: a Gaussian of FWHM :math:`\lambda / R` (resolving power
   R), i.e. :math:`\sigma_v = c / (2\sqrt{2\ln 2}\,R)`, or a tabulated user kernel in
   velocity. Rotation and LSF are velocity convolutions, so they commute with the
   Doppler shift (a translation in u) and are both applied on the internal grid.
4. **Doppler shift** by the radial velocity ``rv`` (relativistic, source receding for
   rv > 0; Rybicki & Lightman 1979, *Radiative Processes in Astrophysics*, sect. 4.1,
   the longitudinal Doppler effect):

   .. math:: \lambda_{obs} = \lambda_{rest} \sqrt{\frac{1 + \beta}{1 - \beta}},
        \quad \beta = \frac{v_r}{c}
        \quad\Longleftrightarrow\quad u_{obs} = u_{rest} + \operatorname{artanh}\beta.

   (The redshift convention :math:`cz` differs from this ``rv`` by
   :math:`c\beta^2/2`: 0.017 km/s at 100 km/s.)
5. **Pixel integration** onto the observed pixels: each observed pixel's flux is the
   mean of the model over the pixel, :math:`\bar F_j = \int_{e_j}^{e_{j+1}} F\,du /
   (e_{j+1} - e_j)` (edges :math:`e_j` half-way between pixel centres, in u;
   :func:`pixel_edges`), computed exactly for the piecewise-linear internal flux. This
   conserves flux (equivalent widths) whatever the two samplings, like SpectRes
   (Carnall 2017, arXiv:1705.05165); averaging in u instead of λ changes a pixel by a
   relative :math:`O((\Delta\lambda/\lambda)^2)`.
6. **Continuum**: multiplication by a Chebyshev series in the scaled observed wavelength,

   .. math:: C(\lambda) = \sum_{k=0}^{K} c_k T_k(x), \qquad
        x = \frac{2\lambda - (\lambda_{first} + \lambda_{last})}
        {\lambda_{last} - \lambda_{first}} \in [-1, 1],

   with :math:`\lambda_{first}, \lambda_{last}` the first and last observed pixel centres.

Discretisation. Convolutions multiply discrete Fourier transforms of the depth
:math:`F - 1` (zero padding = continuum beyond the grid) by the kernels' exact
transforms: :math:`\exp(-2\pi^2\sigma_v^2\nu^2)` for the Gaussian
(:func:`gaussian_transfer`) and Bessel functions for the rotation kernel
(:func:`rotation_transfer`; tabulated once with SciPy, interpolated by cubic Hermite
splines with exact slopes, error ~1e-8). This convolves the band-limited interpolant of
the samples exactly: normalised, with the kernels' exact variances, smooth in v sin i
and R down to 0 and ∞ (on a spectrum of 1.4 km/s lines sampled at 0.3 km/s it is
10–100 times closer to a 10× finer reference than bin-integrated kernels). A tabulated
LSF is integrated over the internal bins (:func:`tabulated_kernel`).

Modules
-------
* :mod:`jaxspec.extrinsic.kernels`: :func:`doppler_factor`, :func:`doppler_shift` (the
  relativistic Doppler factor); :func:`rotation_transfer`, :func:`gaussian_transfer`
  (the kernels' Fourier transforms), :func:`tabulated_kernel` (a user LSF integrated
  over velocity bins).
* :mod:`jaxspec.extrinsic.pixels`: :func:`pixel_edges`, :func:`chebyshev_continuum`,
  :func:`required_model_range`.
* :mod:`jaxspec.extrinsic.effects`: :class:`ExtrinsicModel`, the chain for one model
  grid and one set of observed pixels (static layout made once on the host, then a
  jit/grad/vmap-safe function of the parameters); :func:`broaden` (rotation and LSF on
  the input grid, point values); :func:`apply_effects` (``apply_effects(emulator,
  params, rv=…, vsini=…, resolution=…, continuum=…, wavelength=…)`` → observed flux).

Fitting the extrinsic parameters lives with the emulators and the inference:

* :class:`jaxspec.observed_emulator.ObservedEmulator`: an emulator plus the chain,
  itself an :class:`~jaxspec.emulator.Emulator` whose parameters are the stellar ones
  followed by ``rv`` (km/s), ``vsini`` (km/s), ``resolution`` and ``c0 … cK``, with
  bounds = their prior boxes and wavelength = the observed pixels, so that
  :func:`jaxspec.infer.bayes_opt`, :func:`~jaxspec.infer.fit_map` and
  :func:`~jaxspec.infer.sample_nuts` fit extrinsic parameters unchanged (with numpyro
  priors through their ``priors=``).
* :class:`jaxspec.template.Template`: a fixed spectrum (e.g. a line-list clone) as a
  parameterless emulator, for blase-style template fits of RV, v sin i, R and continuum.
* :func:`jaxspec.infer.initial_guess`: χ² scan over RV with the continuum solved by
  linear least squares: a start (and RV window) for the optimisers, whose RV likelihood
  is multimodal.

Units: wavelengths Å (float64), velocities km/s, R dimensionless.
"""

from jaxspec.extrinsic.effects import ExtrinsicModel, apply_effects, broaden
from jaxspec.extrinsic.kernels import (
    C_KMS,
    doppler_factor,
    doppler_shift,
    gaussian_transfer,
    rotation_transfer,
    tabulated_kernel,
)
from jaxspec.extrinsic.pixels import (
    chebyshev_continuum,
    pixel_edges,
    required_model_range,
)

__all__ = [
    "C_KMS",
    "ExtrinsicModel",
    "apply_effects",
    "broaden",
    "chebyshev_continuum",
    "doppler_factor",
    "doppler_shift",
    "gaussian_transfer",
    "pixel_edges",
    "required_model_range",
    "rotation_transfer",
    "tabulated_kernel",
]

#: Names that left this package (issue 18), and where they are now: said on import.
_MOVED = {
    "observe": "jaxspec.extrinsic.apply_effects",
    "ObservedEmulator": "jaxspec.observed_emulator.ObservedEmulator",
    "parse_fit": "jaxspec.observed_emulator.parse_fit",
    "EXTRINSIC_PARAMS": "jaxspec.observed_emulator.EXTRINSIC_PARAMS",
    "Template": "jaxspec.template.Template",
    "initial_guess": "jaxspec.infer.initial_guess",
    "InitialGuess": "jaxspec.infer.InitialGuess",
}


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module 'jaxspec.extrinsic' has no attribute {name!r}")
    note = (" (jaxspec.infer.observe is another function: a Spectrum onto an emulator's "
            "pixels)" if name == "observe" else "")
    raise ImportError(f"jaxspec.extrinsic.{name} is now {_MOVED[name]}; import it from "
                      f"there{note}")
