r"""Air and vacuum wavelengths.

Spectrographs and line lists quote wavelengths either in vacuum (PHOENIX, APOGEE, HPF,
SDSS) or in standard air (most optical line lists, the synthetic grid of
:mod:`jaxspec.synthetic`). At 10,000 Å the two differ by 2.7 Å, some 80 km/s: a spectrum
must be on the emulator's convention before it is compared with it.

Vacuum to air, the IAU standard (Morton 2000, ApJS 130, 403, eq. 3; Birch & Downs 1994's
fit to Edlén's formula for dry air at 15 °C, 101 325 Pa, 450 ppm CO₂, as used by the
VALD; ``specutils``' ``vac_to_air(method="Morton2000")``):

.. math::
    \lambda_{air} = \frac{\lambda_{vac}}{n(s)},\qquad
    n - 1 = 8.34254\times10^{-5} + \frac{2.406147\times10^{-2}}{130 - s^2}
        + \frac{1.5998\times10^{-4}}{38.9 - s^2},\qquad s = 10^4 / \lambda_{vac}\ [\mu m^{-1}].

Air to vacuum, the inverse fitted by N. Piskunov for the VALD3 (``specutils``'
``air_to_vac(scheme="piskunov")``; equal to it to 1e-11 Å):

.. math::
    \lambda_{vac} = n(s)\,\lambda_{air},\qquad
    n - 1 = 8.336624212083\times10^{-5}
        + \frac{2.408926869968\times10^{-2}}{130.1065924522 - s^2}
        + \frac{1.599740894897\times10^{-4}}{38.92568793293 - s^2},
        \qquad s = 10^4 / \lambda_{air}.

The round trip vacuum → air → vacuum is exact to 1e-8 Å over 2,000–25,000 Å (tested);
the formulas hold above 2,000 Å (below, air absorbs and "air wavelengths" are not used).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MEDIA", "air_to_vacuum", "check_medium", "convert_medium", "vacuum_to_air"]

#: The wavelength media jaxspec knows (None: not recorded).
MEDIA = ("air", "vacuum")
_ALIASES = {"air": "air", "vac": "vacuum", "vacuum": "vacuum"}


def check_medium(medium, *, where: str = "medium") -> str | None:
    """``"air"``, ``"vacuum"`` (also ``"vac"``, any case) or None; ValueError otherwise,
    naming ``where``."""
    if medium is None:
        return None
    key = str(medium).strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"{where}={medium!r}; pass 'air', 'vacuum' or None (not recorded)")
    return _ALIASES[key]


def vacuum_to_air(wavelength) -> np.ndarray:
    """Air wavelengths, Å (float64, shape of the input), from vacuum ones, Å, by the IAU
    formula of Morton (2000), eq. 3 (module docstring)."""
    lam = np.asarray(wavelength, dtype=np.float64)
    s2 = (1e4 / lam) ** 2
    n = 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)
    return lam / n


def air_to_vacuum(wavelength) -> np.ndarray:
    """Vacuum wavelengths, Å (float64, shape of the input), from air ones, Å, by
    Piskunov's inverse of the IAU formula (VALD3; module docstring)."""
    lam = np.asarray(wavelength, dtype=np.float64)
    s2 = (1e4 / lam) ** 2
    n = (1.0 + 8.336624212083e-5 + 2.408926869968e-2 / (130.1065924522 - s2)
         + 1.599740894897e-4 / (38.92568793293 - s2))
    return lam * n


def convert_medium(wavelength, source: str, target: str) -> np.ndarray:
    """``wavelength`` (Å) in medium ``source`` expressed in medium ``target`` (each
    ``"air"`` or ``"vacuum"``); a copy when they are equal."""
    source = check_medium(source, where="source")
    target = check_medium(target, where="target")
    if source is None or target is None:
        raise ValueError("convert_medium needs both media ('air' or 'vacuum'); one is None")
    if source == target:
        return np.array(wavelength, dtype=np.float64)
    return vacuum_to_air(wavelength) if target == "air" else air_to_vacuum(wavelength)
