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

import importlib

#: Where each public name lives. The modules are imported on first use (PEP 562), so that
#: importing one file format (e.g. :mod:`jaxspec.io.atomic` from the grid writer) does not
#: load every other one: the readers here belong to different stages of the data flow
#: (docs/architecture.md), and the package must not pull later stages into earlier ones.
_HOMES = {
    "GridWriter": "jaxspec.io.grid_hdf5",
    "write_grid_hdf5": "jaxspec.io.grid_hdf5",
    "read_grid_hdf5": "jaxspec.grid",
    "PhoenixSpectrum": "jaxspec.io.phoenix",
    "phoenix_filename": "jaxspec.io.phoenix",
    "read_phoenix_grid": "jaxspec.io.phoenix",
    "read_phoenix_spectrum": "jaxspec.io.phoenix",
    "read_phoenix_wavelength": "jaxspec.io.phoenix",
    "PosteriorWriter": "jaxspec.io.posterior",
    "read_posterior": "jaxspec.io.posterior",
    "read_spectrum": "jaxspec.io.spectrum",
    "write_spectrum": "jaxspec.io.spectrum",
}


def __getattr__(name: str):
    """``jaxspec.io.<name>`` for the names in ``__all__``, imported from their module."""
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxspec.io' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_HOMES))


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
