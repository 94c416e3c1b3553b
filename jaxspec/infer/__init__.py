r"""Stellar-parameter inference from spectra with any emulator.

The last stage of ``grid -> clones -> manifold -> emulator -> inference``. Every function
takes an :class:`~jaxspec.emulator.Emulator` and one spectrum or many, given as flux
arrays on the emulator's wavelengths, as :class:`Spectrum` objects (any wavelengths; see
:func:`observe` for the resampling), or as prepared :class:`Observation` objects.

* :func:`bayes_opt`: Gaussian-process Bayesian optimisation of the RMS loss, the blase3D
  paper's method (sect. 4.1; 100 random + 20 guided evaluations).
* :func:`fit_map`: gradient-based MAP with Laplace uncertainties.
* :func:`sample_nuts`: NUTS posterior samples (numpyro; arviz ``InferenceData``).
* Likelihoods: :func:`rms_loss` (eq. 4), :func:`chi2`, :func:`gaussian_log_likelihood`.
* :func:`gaussian_coverage`, :func:`sample_coverage`: calibration of intervals.
* :func:`results_table`: one row per spectrum, for ``jaxspec infer``.
* :func:`initial_guess`: a start for fits of an
  :class:`~jaxspec.observed_emulator.ObservedEmulator` (χ² scan over RV, continuum by
  linear least squares).

The search box is the emulator's bounds; ``guess=`` limits one parameter to
``guess ± window`` (``window_param=``, Teff by default, with ``window`` =
:data:`DEFAULT_TEFF_WINDOW` = 500 K; ``teff_guess=``/``teff_window=`` are the older names,
still accepted).
"""

from jaxspec.infer._box import DEFAULT_TEFF_WINDOW
from jaxspec.infer.bayes_opt import BayesOptResult, bayes_opt
from jaxspec.infer.calibration import (
    EmpiricalSystematics,
    add_systematics,
    gaussian_coverage,
    sample_coverage,
    systematic_floor,
)
from jaxspec.infer.likelihood import (
    chi2,
    gaussian_log_likelihood,
    model_flux,
    observation_loss,
    rms_loss,
)
from jaxspec.infer.map import MapResult, fit_map, neg_log_posterior
from jaxspec.infer.nuts import NutsResult, sample_nuts, spectrum_model
from jaxspec.infer.results import Status, results_table, status_message
from jaxspec.infer.rv_scan import InitialGuess, initial_guess
from jaxspec.infer.spectrum import Observation, Spectrum, observe, stack_observations

__all__ = [
    "DEFAULT_TEFF_WINDOW",
    "BayesOptResult",
    "EmpiricalSystematics",
    "InitialGuess",
    "add_systematics",
    "MapResult",
    "NutsResult",
    "Observation",
    "Spectrum",
    "Status",
    "bayes_opt",
    "chi2",
    "fit_map",
    "gaussian_coverage",
    "gaussian_log_likelihood",
    "initial_guess",
    "model_flux",
    "neg_log_posterior",
    "observation_loss",
    "observe",
    "results_table",
    "rms_loss",
    "sample_coverage",
    "sample_nuts",
    "spectrum_model",
    "stack_observations",
    "systematic_floor",
    "status_message",
]
