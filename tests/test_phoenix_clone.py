"""Cloning a real PHOENIX spectrum: the A0V (Teff 10,000 K) model over the HPF band at
PHOENIX's native sampling (``../shared/data/phoenix_10000K_HPF.npz``; skipped when the
file is absent, as on a user's machine).

After jaxspec's own continuum normalisation (blackbody division, then the polynomial
through the upper envelope) the clone must reproduce the spectrum to a residual RMS of
2e-3, and each resolved Paschen line must be one line of the clone, centred on the
line's laboratory (vacuum) wavelength, not a family of split lines of similar widths and
depths.
"""

from pathlib import Path

import numpy as np
import pytest

from jaxspec.clone import clone
from jaxspec.clone.detection import _fwhm_eta, _peak_value
from jaxspec.preprocess import continuum_normalize, divide_blackbody

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
A0V = DATA / "phoenix_10000K_HPF.npz"

#: Rydberg constant of hydrogen, cm⁻¹ (reduced-mass corrected).
R_H = 109677.58

#: Paschen lines that the spectrum resolves: Pa β (n = 5, 12,821.6 Å) to Pa 13
#: (8,667.4 Å). Above n = 13 the series overlaps within the lines' half widths and
#: merges into the Paschen-limit pseudo-continuum.
PASCHEN = range(5, 14)

#: Settings for a spectrum at PHOENIX's native sampling (0.01-0.02 Å): windows long
#: enough for the Paschen wings (±150 Å at 0.01 Å), room for a detected width to grow to
#: a Stark-broadened line's (e^2.5), and 200 Adam steps per pass.
NATIVE = {"wing_cut": 30_000, "width_margin": 2.5, "epochs": 200}


def paschen_vacuum(n: int) -> float:
    """Vacuum wavelength (Å) of the Paschen line from level n to 3 (Rydberg formula)."""
    return 1e8 / (R_H * (1.0 / 9.0 - 1.0 / n**2))


@pytest.fixture(scope="module")
def a_star():
    if not A0V.exists():
        pytest.skip(f"{A0V} is absent (real PHOENIX data ships in ../shared/data, not with "
                    "jaxspec)")
    data = np.load(A0V)
    wl = np.asarray(data["wavelength"], dtype=np.float64)
    flux = divide_blackbody(wl, np.asarray(data["flux"], dtype=np.float64),
                            float(data["teff"]))
    normalized, _ = continuum_normalize(wl, flux)
    return wl, normalized, clone(wl, normalized, **NATIVE)


def test_clone_of_a_real_phoenix_a_star_reaches_2e_3(a_star):
    wl, flux, result = a_star
    assert wl.size > 300_000  # native sampling, the whole HPF band
    residual = np.asarray(result.model_flux) - flux
    rms = float(np.sqrt(np.mean(residual**2)))
    assert rms == pytest.approx(float(result.residual_rms), rel=1e-3)
    assert rms <= 2e-3


def test_each_resolved_paschen_line_is_one_line(a_star):
    _, _, result = a_star
    lines = result.lines
    center = np.asarray(lines.center)
    ln_s, ln_g = np.asarray(lines.ln_sigma), np.asarray(lines.ln_gamma)
    fwhm = _fwhm_eta(ln_s, ln_g)[0]
    depth = np.exp(np.asarray(lines.ln_amplitude)) * _peak_value(ln_s, ln_g)
    for n in PASCHEN:
        lam = paschen_vacuum(n)
        near = np.flatnonzero(np.abs(center - lam) < 40.0)
        # the Paschen line: the strongest line (largest equivalent width) near λ
        main = near[np.argmax(np.asarray(lines.ln_amplitude)[near])]
        assert fwhm[main] > 10.0, f"Pa {n}: the strongest line near {lam:.2f} Å is narrow"
        assert depth[main] > 0.15, f"Pa {n}: the line carries {depth[main]:.3f} depth"
        assert abs(center[main] - lam) < 0.1 * fwhm[main], (
            f"Pa {n}: centred at {center[main]:.2f} Å, {lam:.2f} Å expected")
        # A split family: other lines of similar width (> 1/3 of its FWHM) and similar
        # depth (> 1/3 of its depth) inside the line. Narrower or weaker broad lines are
        # allowed: corrections of the profile's shape (Stark wings and cores are not a
        # pseudo-Voigt). The clone sharpens the core of Pa 8 with a line of 0.25 of its
        # FWHM and 0.27 of its depth, and Pa β's wings with two of 0.23 and 0.28; these
        # ratios move in the third digit with float32 rounding (0.246 with jnp.exp and
        # log1p, 0.250 with the engine's polynomial forms), so a bound of 1/4 would
        # decide by rounding. 1/3 separates them from a split of like lines.
        family = near[(np.abs(center[near] - center[main]) < 0.5 * fwhm[main])
                      & (fwhm[near] > fwhm[main] / 3.0)
                      & (depth[near] > depth[main] / 3.0)]
        assert family.tolist() == [main], (
            f"Pa {n} ({lam:.2f} Å) is split into lines at {np.round(center[family], 2)} Å "
            f"with FWHM {np.round(fwhm[family], 1)} Å")
