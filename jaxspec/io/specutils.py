"""specutils spectra in and out (optional dependency: ``pip install 'jaxspec[specutils]'``).

:func:`from_specutils` turns a ``specutils.Spectrum`` (specutils >= 2.0; the deprecated
``Spectrum1D`` too) into a :class:`jaxspec.spectrum.Spectrum` (also
``jaxspec.infer.Spectrum``); :func:`to_specutils` (:meth:`Spectrum.to_specutils`) goes back;
:func:`is_specutils` tells one apart without importing specutils. They live beside the
Spectrum type in :mod:`jaxspec.spectrum` (whose docstring gives the correspondence of the
fields), so that the type does not depend on the readers; this module keeps their
``jaxspec.io.specutils`` names.
"""

from __future__ import annotations

from jaxspec.spectrum import from_specutils, is_specutils, to_specutils

__all__ = ["from_specutils", "is_specutils", "to_specutils"]
