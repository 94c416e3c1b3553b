"""File formats: everything in jaxspec that reads or writes files lives here.

- :mod:`jaxspec.io.grid_hdf5`: the jaxspec-grid HDF5 format (``read_grid_fields``,
  ``write_grid_hdf5``, the streaming ``GridWriter``); ``read_grid_hdf5`` (from
  :mod:`jaxspec.grid`) reads a file into a ``SpectralGrid``.
- :mod:`jaxspec.io.phoenix`: PHOENIX-ACES-AGSS-COND-2011 HiRes FITS import
  (``read_phoenix_grid``, ``read_phoenix_spectrum``).
- :mod:`jaxspec.io.emulator_file`: emulator and amortised-model files (every kind: one
  atomic HDF5 writer, one reader, one kind registry; a kind supplies only its arrays and
  attributes as a ``Contents``).
- :mod:`jaxspec.io.atomic`: atomic writes (partial file, fsync, rename) used by every
  writer (``atomic_path``, ``write_table``, ``save_figure``).
- :mod:`jaxspec.io.locking`: one writer per file (``WriterLock``, the ``<name>.lock``
  file) and lock-free HDF5 reads (``open_hdf5``).
- :mod:`jaxspec.io.results_writer`: streaming, resumable results tables of batch runs
  (``ResultsWriter``: rows fsync-ed to ``OUT.partial``, the ``WriterLock`` of ``OUT``,
  the final table through ``write_table``).
- :mod:`jaxspec.io.spectrum`: observed spectra (``read_spectrum``, ``write_spectrum``):
  tables, and through :mod:`jaxspec.io.fits_spectrum` APOGEE apStar/aspcapStar,
  multi-order echelle (HPF) files and 1-D FITS images with a wavelength WCS.
- :mod:`jaxspec.io.specutils`: ``specutils.Spectrum`` in and out (optional dependency).
- :mod:`jaxspec.io.posterior`: posteriors of a batch as one arviz NetCDF file
  (``PosteriorWriter``, ``read_posterior``).
"""

from jaxspec.grid import read_grid_hdf5
from jaxspec.io.grid_hdf5 import GridWriter, write_grid_hdf5
from jaxspec.io.phoenix import (
    PhoenixSpectrum,
    phoenix_filename,
    read_phoenix_grid,
    read_phoenix_spectrum,
    read_phoenix_wavelength,
)
from jaxspec.io.posterior import PosteriorWriter, read_posterior
from jaxspec.io.spectrum import read_spectrum, write_spectrum

__all__ = [
    "GridWriter",
    "PhoenixSpectrum",
    "PosteriorWriter",
    "phoenix_filename",
    "read_grid_hdf5",
    "read_phoenix_grid",
    "read_phoenix_spectrum",
    "read_phoenix_wavelength",
    "read_posterior",
    "read_spectrum",
    "write_grid_hdf5",
    "write_spectrum",
]
