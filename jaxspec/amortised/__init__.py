r"""Amortised inference: networks trained once that map spectra to labels or posteriors.

For surveys of millions of spectra, per-star optimisation (:mod:`jaxspec.infer`) is too
slow; these networks are trained on spectra simulated with any emulator and then
evaluate a spectrum in milliseconds.

* :class:`Simulator` (:mod:`~jaxspec.amortised.simulate`): parameters drawn uniformly in
  the emulator's box, spectra from the emulator, an optional extrinsic ``transform(flux,
  key)``, bin averaging onto the networks' pixels (:class:`Rebin`), white noise at a
  log-uniformly drawn S/N; streamed batch by batch, standardised by :class:`Standardizer`.
* :class:`CNNRegressor` / :func:`train_regressor` (:mod:`~jaxspec.amortised.regressor`):
  the BOSS Net 1-D residual CNN (Sizemore et al. 2024), MSE loss, Adamax, early
  stopping, uncertainties from 20 noise draws recalibrated on held-out simulations
  (:func:`calibrate_regressor`).
* :class:`FlowPosterior` / :func:`train_flow` (:mod:`~jaxspec.amortised.flow`): a
  conditional affine-coupling normalising flow (flowjax) on a dense embedding of the
  spectrum and its S/N (the cINN of Candebat et al.), trained by maximum likelihood;
  4,096 draws per spectrum, box rejection, MAP, median and 16 / 84 % quantiles, recentred
  and rescaled on held-out simulations (:func:`calibrate_flow`).
* Training checkpoints every epoch (``checkpoint=``, atomic) and resumes (``resume=True``).
* :func:`simulation_based_calibration`, :func:`rank_statistics`,
  :func:`plot_rank_histograms`, :func:`coverage_curve`, :func:`coverage_deviation`,
  :func:`gaussian_ranks` (:mod:`~jaxspec.amortised.calibration`): coverage, expected-
  coverage curves and rank histograms on held-out simulations.
* :func:`load_amortised`: read any model file (HDF5, ``format = "jaxspec-amortised"``).

Results are :class:`AmortisedResult` objects, which :func:`jaxspec.infer.results_table`
turns into the table of ``jaxspec infer``.
"""

from jaxspec.amortised._load import load_amortised
from jaxspec.amortised.calibration import (
    Recalibration,
    coverage_curve,
    coverage_deviation,
    gaussian_ranks,
    plot_rank_histograms,
    rank_statistics,
    simulation_based_calibration,
)
from jaxspec.amortised.flow import (
    FlowPosterior,
    calibrate_flow,
    default_flow_architecture,
    train_flow,
)
from jaxspec.amortised.regressor import (
    CNNRegressor,
    calibrate_regressor,
    default_architecture,
    train_regressor,
)
from jaxspec.amortised.result import AmortisedResult
from jaxspec.amortised.simulate import (
    BinnedEmulator,
    Rebin,
    Simulator,
    Standardizer,
    der_snr,
    fit_standardizer,
    network_grid,
    training_batch,
)

__all__ = [
    "AmortisedResult",
    "BinnedEmulator",
    "CNNRegressor",
    "FlowPosterior",
    "Rebin",
    "Recalibration",
    "Simulator",
    "Standardizer",
    "calibrate_flow",
    "calibrate_regressor",
    "coverage_curve",
    "coverage_deviation",
    "default_architecture",
    "default_flow_architecture",
    "der_snr",
    "fit_standardizer",
    "gaussian_ranks",
    "load_amortised",
    "network_grid",
    "plot_rank_histograms",
    "rank_statistics",
    "simulation_based_calibration",
    "train_flow",
    "train_regressor",
    "training_batch",
]
