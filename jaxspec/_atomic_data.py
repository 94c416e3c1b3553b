r"""Atomic and molecular data behind the embedded synthetic grid (private).

Everything here is plain NumPy data: element properties, partition-function
approximations, a list of real strong lines in 8038–12849 Å, molecular band heads and
constants, and :func:`master_line_data`, which adds seeded weak atomic lines and
molecular band lines to the real ones. :mod:`jaxspec.synthetic` turns these into line
strengths and widths at each (Teff, log g, [Fe/H]); users meet the data through
:func:`jaxspec.synthetic.synthetic_line_data`.

Accuracy. Values are rounded from the standard compilations (ionisation energies and
level energies: NIST ASD, Kramida et al. 2023; solar abundances: Asplund et al. 2009,
ARA&A 47, 481; line data: NIST/VALD, Ryabchikova et al. 2015; molecular constants:
Huber & Herzberg 1979). Wavelengths of the real lines are good to ~0.05 Å (air), their
log gf to ~0.3 dex, the molecular band heads to a few Å. This is enough for a grid
whose lines behave like those of a real model grid (they appear, strengthen, saturate,
broaden and vanish for the right physical reasons); it is not a line list for abundance
work.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

# ---------------------------------------------------------------- physical constants (cgs)

K_B = 1.380649e-16  # erg/K
K_B_EV = 8.617333262e-5  # eV/K
H_PLANCK = 6.62607015e-27  # erg s
C_LIGHT = 2.99792458e10  # cm/s
M_U = 1.66053907e-24  # g (atomic mass unit)
M_E = 9.1093837e-28  # g
E_CHARGE = 4.80320471e-10  # esu
A_0 = 5.29177211e-9  # cm (Bohr radius)
SIGMA_THOMSON = 6.6524587e-25  # cm^2
HC_EV_ANGSTROM = 12398.419843  # eV Å: photon energy = HC_EV_ANGSTROM / λ
# (2π m_e k / h²)^{3/2}: Saha factor per K^{3/2}, cm^-3.
SAHA_CONST = (2.0 * math.pi * M_E * K_B / H_PLANCK**2) ** 1.5
# π e² / (m_e c²): integrated cross-section per unit oscillator strength per λ², cm.
LINE_CONST = math.pi * E_CHARGE**2 / (M_E * C_LIGHT**2)

# ---------------------------------------------------------------- elements


class Element(NamedTuple):
    """One chemical element.

    ``levels[s]`` lists ``(g, E)`` pairs (statistical weight, energy in eV) of the lowest
    terms of ionisation stage ``s + 1`` (I, II, III); the partition function is
    approximated by their Boltzmann sum (:func:`partition_function`).
    """

    z: int
    mass: float  # u
    log_eps: float  # solar A(X) = log10(N_X/N_H) + 12 (Asplund et al. 2009)
    chi_ion: tuple[float, float]  # first and second ionisation energies, eV (NIST)
    levels: tuple[tuple[tuple[float, float], ...], ...]


ELEMENTS: dict[str, Element] = {
    "H": Element(1, 1.008, 12.00, (13.598, 1e9), (((2, 0.0),), ((1, 0.0),), ((1, 0.0),))),
    "He": Element(
        2, 4.003, 10.93, (24.587, 54.418), (((1, 0.0),), ((2, 0.0),), ((1, 0.0),))
    ),
    "C": Element(
        6, 12.011, 8.43, (11.260, 24.383),
        (((9, 0.005), (5, 1.26), (1, 2.68)), ((6, 0.005),), ((1, 0.0),)),
    ),
    "N": Element(
        7, 14.007, 7.83, (14.534, 29.601),
        (((4, 0.0), (10, 2.38), (6, 3.58)), ((9, 0.01), (5, 1.90)), ((6, 0.0),)),
    ),
    "O": Element(
        8, 15.999, 8.69, (13.618, 35.121),
        (((9, 0.01), (5, 1.97), (1, 4.19)), ((4, 0.0), (10, 3.32)), ((9, 0.0),)),
    ),
    "Na": Element(
        11, 22.990, 6.24, (5.139, 47.286), (((2, 0.0), (6, 2.10)), ((1, 0.0),), ((6, 0.0),))
    ),
    "Mg": Element(
        12, 24.305, 7.60, (7.646, 15.035),
        (((1, 0.0), (9, 2.71)), ((2, 0.0), (6, 4.43)), ((1, 0.0),)),
    ),
    "Al": Element(
        13, 26.982, 6.45, (5.986, 18.829), (((6, 0.01), (2, 3.14)), ((1, 0.0),), ((2, 0.0),))
    ),
    "Si": Element(
        14, 28.086, 7.51, (8.152, 16.346),
        (((9, 0.02), (5, 0.78), (1, 1.91)), ((6, 0.02),), ((1, 0.0),)),
    ),
    "S": Element(
        16, 32.06, 7.12, (10.360, 23.338), (((9, 0.03), (5, 1.15)), ((4, 0.0),), ((9, 0.0),))
    ),
    "K": Element(
        19, 39.098, 5.03, (4.341, 31.63), (((2, 0.0), (6, 1.61)), ((1, 0.0),), ((6, 0.0),))
    ),
    "Ca": Element(
        20, 40.078, 6.34, (6.113, 11.872),
        (((1, 0.0), (9, 1.89), (15, 2.52)), ((2, 0.0), (10, 1.69)), ((1, 0.0),)),
    ),
    "Sc": Element(
        21, 44.956, 3.15, (6.561, 12.800),
        (((10, 0.01), (28, 1.43)), ((15, 0.01), (5, 0.30), (28, 0.60)), ((10, 0.0),)),
    ),
    "Ti": Element(
        22, 47.867, 4.95, (6.828, 13.576),
        (
            ((21, 0.02), (35, 0.82), (15, 1.50)),
            ((28, 0.05), (28, 0.12), (10, 0.58), (25, 1.10)),
            ((21, 0.0),),
        ),
    ),
    "V": Element(
        23, 50.942, 3.93, (6.746, 14.66),
        (((28, 0.03), (30, 0.26), (40, 1.10)), ((25, 0.02), (30, 0.35)), ((28, 0.0),)),
    ),
    "Cr": Element(
        24, 51.996, 5.64, (6.767, 16.486),
        (((7, 0.0), (5, 0.94), (25, 1.00)), ((6, 0.0), (30, 1.50)), ((25, 0.0),)),
    ),
    "Mn": Element(
        25, 54.938, 5.43, (7.434, 15.640),
        (((6, 0.0), (10, 2.11), (8, 2.15)), ((7, 0.0), (5, 1.17), (25, 1.80)), ((6, 0.0),)),
    ),
    "Fe": Element(
        26, 55.845, 7.50, (7.902, 16.199),
        (
            ((25, 0.05), (35, 0.90), (21, 1.50), (15, 2.20)),
            ((30, 0.05), (28, 0.30), (20, 1.00)),
            ((25, 0.0),),
        ),
    ),
    "Co": Element(
        27, 58.933, 4.99, (7.881, 17.084),
        (((28, 0.10), (28, 0.43)), ((21, 0.20), (25, 0.50)), ((28, 0.0),)),
    ),
    "Ni": Element(
        28, 58.693, 6.22, (7.640, 18.169),
        (((15, 0.03), (21, 0.10), (5, 0.42)), ((10, 0.0), (28, 1.10)), ((21, 0.0),)),
    ),
    "Sr": Element(
        38, 87.62, 2.87, (5.695, 11.030),
        (((1, 0.0), (9, 1.80)), ((2, 0.0), (10, 1.80)), ((1, 0.0),)),
    ),
}
ELEMENT_NAMES: tuple[str, ...] = tuple(ELEMENTS)
ROMAN = {1: "I", 2: "II", 3: "III"}
# Elements whose abundance does not follow [Fe/H].
UNSCALED = frozenset({"H", "He"})


def partition_function(element: str, stage: int, temperature: np.ndarray) -> np.ndarray:
    r"""Partition function :math:`U(T) = \sum_i g_i e^{-E_i/kT}` over the lowest terms.

    Args:
        element: symbol, e.g. ``"Fe"``.
        stage: 1 (neutral), 2 (singly ionised) or 3.
        temperature: K, any shape.

    Returns:
        ``U``, dimensionless, shape of ``temperature``. Truncating the sum at the lowest
        terms underestimates ``U`` by up to ~20 % for Fe I near 8000 K; for the
        line-strength ratios of a toy grid this is immaterial.
    """
    t = np.asarray(temperature, dtype=np.float64)
    total = np.zeros_like(t)
    for g, e in ELEMENTS[element].levels[stage - 1]:
        total = total + g * np.exp(-e / (K_B_EV * t))
    return total


# ---------------------------------------------------------------- molecules


class Molecule(NamedTuple):
    """A diatomic molecule ``metal + partner`` in dissociation equilibrium.

    ``d0`` dissociation energy (eV), ``b_rot`` and ``omega`` rotational and vibrational
    constants (cm⁻¹), ``g_el`` electronic ground-state degeneracy, ``mass`` (u).
    """

    metal: str
    partner: str  # "O" or "H"
    d0: float
    b_rot: float
    omega: float
    g_el: float
    mass: float


MOLECULES: dict[str, Molecule] = {
    "TiO": Molecule("Ti", "O", 6.87, 0.535, 1009.0, 6.0, 63.866),
    "VO": Molecule("V", "O", 6.44, 0.546, 1011.0, 4.0, 66.941),
    "FeH": Molecule("Fe", "H", 1.59, 6.39, 1826.0, 8.0, 56.853),
}

# Band heads (Å, air, approximate), Fortrat coefficient d (Å per J²; bands degrade to the
# red), number of rotational levels and branches, lower vibrational energy (eV) and
# log10 of the band oscillator strength per branch. Systems: TiO δ (8432-8452, 8859/8868),
# ε (9204), δ(0,1) (9728), φ (11035, 11160, 12222); VO A-X (10460); FeH Wing-Ford F-X
# (8692, 9896, 11939).
MOLECULAR_BANDS: tuple[tuple[str, float, float, int, int, float, float], ...] = (
    ("TiO", 8432.3, 0.0175, 70, 3, 0.127, -2.3),
    ("TiO", 8442.0, 0.0176, 70, 3, 0.127, -2.2),
    ("TiO", 8452.1, 0.0176, 70, 3, 0.127, -2.3),
    ("TiO", 8859.6, 0.0194, 70, 3, 0.0, -1.9),
    ("TiO", 8868.5, 0.0194, 70, 3, 0.0, -2.0),
    ("TiO", 9204.0, 0.0210, 70, 3, 0.0, -2.1),
    ("TiO", 9728.0, 0.0233, 70, 3, 0.125, -2.2),
    ("TiO", 11035.4, 0.0300, 70, 3, 0.0, -2.0),
    ("TiO", 11160.0, 0.0305, 70, 3, 0.125, -2.3),
    ("TiO", 12222.0, 0.0367, 70, 3, 0.125, -2.3),
    ("VO", 10460.0, 0.0270, 70, 3, 0.0, -1.9),
    ("FeH", 8692.0, 0.220, 30, 8, 0.22, -3.9),
    ("FeH", 9896.0, 0.285, 30, 8, 0.0, -3.5),
    ("FeH", 11939.0, 0.415, 30, 8, 0.22, -4.0),
)

# ---------------------------------------------------------------- real strong lines

# (species, wavelength Å (air), lower excitation χ (eV), log gf).
REFERENCE_LINES: tuple[tuple[str, float, float, float], ...] = (
    # He I 2³S - 2³P° (the 10830 triplet)
    ("He I", 10829.09, 19.820, -0.745),
    ("He I", 10830.25, 19.820, -0.268),
    ("He I", 10830.34, 19.820, -0.046),
    # C I
    ("C I", 9061.43, 7.483, -0.35),
    ("C I", 9078.28, 7.483, -0.58),
    ("C I", 9088.51, 7.483, -0.43),
    ("C I", 9094.83, 7.488, 0.15),
    ("C I", 9111.80, 7.488, -0.30),
    ("C I", 9405.73, 7.685, 0.29),
    ("C I", 10683.08, 7.483, 0.08),
    ("C I", 10685.34, 7.480, -0.27),
    ("C I", 10691.24, 7.488, 0.34),
    ("C I", 10707.32, 7.483, -0.41),
    ("C I", 10729.53, 7.488, -0.42),
    ("C I", 11617.66, 8.640, -0.20),
    # N I
    ("N I", 8629.24, 10.690, 0.08),
    ("N I", 8680.28, 10.336, 0.35),
    ("N I", 8683.40, 10.330, 0.09),
    ("N I", 8686.15, 10.326, -0.31),
    ("N I", 8703.25, 10.326, -0.32),
    ("N I", 8711.70, 10.330, -0.23),
    ("N I", 8718.84, 10.336, -0.34),
    # O I
    ("O I", 8446.25, 9.521, -0.46),
    ("O I", 8446.36, 9.521, 0.17),
    ("O I", 8446.76, 9.521, -0.05),
    ("O I", 9265.93, 10.740, 0.80),
    # Na I
    ("Na I", 8183.26, 2.102, 0.24),
    ("Na I", 8194.82, 2.104, 0.49),
    ("Na I", 11381.45, 2.102, -0.45),
    ("Na I", 11403.78, 2.104, -0.17),
    # Mg I / Mg II
    ("Mg I", 8717.83, 5.933, -0.93),
    ("Mg I", 8736.02, 5.946, -0.34),
    ("Mg I", 8806.76, 4.346, -0.14),
    ("Mg I", 10312.53, 6.118, -1.70),
    ("Mg I", 10811.08, 5.946, -0.13),
    ("Mg I", 11828.17, 4.346, -0.33),
    ("Mg I", 12083.65, 5.753, 0.41),
    ("Mg II", 9218.25, 8.655, 0.27),
    ("Mg II", 9244.27, 8.655, -0.03),
    ("Mg II", 10914.23, 8.864, 0.02),
    ("Mg II", 10951.77, 8.864, -0.20),
    # Al I
    ("Al I", 8772.87, 4.022, -0.32),
    ("Al I", 8773.90, 4.022, -0.16),
    # Si I
    ("Si I", 8502.22, 5.964, -1.40),
    ("Si I", 8556.78, 5.871, -1.80),
    ("Si I", 8728.01, 6.181, -0.36),
    ("Si I", 8742.45, 5.871, -0.51),
    ("Si I", 10288.94, 4.920, -1.65),
    ("Si I", 10371.26, 4.930, -0.71),
    ("Si I", 10585.14, 4.954, 0.01),
    ("Si I", 10603.43, 4.930, -0.34),
    ("Si I", 10660.97, 4.920, -0.27),
    ("Si I", 10749.38, 4.930, -0.20),
    ("Si I", 10784.56, 5.964, -0.62),
    ("Si I", 10827.09, 4.954, 0.30),
    ("Si I", 10979.30, 4.954, -0.52),
    ("Si I", 11984.20, 4.930, 0.24),
    ("Si I", 11991.57, 4.920, -0.11),
    ("Si I", 12031.50, 4.954, 0.48),
    ("Si I", 12103.53, 4.930, -0.35),
    ("Si I", 12270.69, 4.954, -0.40),
    # S I
    ("S I", 9212.86, 6.525, 0.42),
    ("S I", 9228.09, 6.525, 0.26),
    ("S I", 9237.54, 6.525, 0.04),
    ("S I", 10455.45, 6.860, 0.25),
    ("S I", 10459.41, 6.860, 0.45),
    # K I
    ("K I", 11690.22, 1.610, 0.25),
    ("K I", 11769.64, 1.617, -0.45),
    ("K I", 11772.84, 1.617, 0.51),
    ("K I", 12432.27, 1.561, -0.44),
    ("K I", 12522.13, 1.561, -0.14),
    # Ca I / Ca II
    ("Ca I", 10343.82, 2.932, -0.30),
    ("Ca I", 10838.97, 4.878, 0.24),
    ("Ca I", 10861.58, 4.878, -0.60),
    ("Ca I", 12816.05, 3.910, -0.77),
    ("Ca I", 12823.87, 3.910, -0.99),
    ("Ca II", 8498.02, 1.692, -1.31),
    ("Ca II", 8542.09, 1.700, -0.36),
    ("Ca II", 8662.14, 1.692, -0.62),
    ("Ca II", 8912.07, 7.047, 0.64),
    ("Ca II", 8927.36, 7.050, 0.81),
    # Ti I (a⁵F - z⁵F°, a⁵F - z⁵G° and neighbours)
    ("Ti I", 8412.36, 0.818, -1.40),
    ("Ti I", 8426.50, 0.826, -1.20),
    ("Ti I", 8434.96, 0.848, -0.88),
    ("Ti I", 8435.65, 0.836, -0.97),
    ("Ti I", 8518.35, 1.880, -1.00),
    ("Ti I", 9675.55, 0.836, -0.80),
    ("Ti I", 9705.66, 0.826, -1.01),
    ("Ti I", 9728.41, 0.818, -1.21),
    ("Ti I", 9743.61, 0.000, -1.31),
    ("Ti I", 9770.30, 0.848, -1.58),
    ("Ti I", 10396.80, 0.848, -1.54),
    ("Ti I", 10496.11, 0.836, -1.65),
    ("Ti I", 10661.62, 0.818, -1.92),
    ("Ti I", 11892.88, 1.430, -1.73),
    ("Ti I", 11949.55, 1.443, -1.57),
    ("Ti I", 12600.28, 1.443, -2.32),
    # Fe I / Fe II
    ("Fe I", 8327.06, 2.198, -1.53),
    ("Fe I", 8387.77, 2.176, -1.49),
    ("Fe I", 8468.41, 2.223, -2.07),
    ("Fe I", 8514.07, 2.198, -2.23),
    ("Fe I", 8526.67, 4.913, -0.76),
    ("Fe I", 8611.80, 2.845, -1.90),
    ("Fe I", 8621.60, 2.949, -2.32),
    ("Fe I", 8674.75, 2.831, -1.80),
    ("Fe I", 8688.62, 2.176, -1.21),
    ("Fe I", 8824.22, 2.198, -1.54),
    ("Fe I", 8838.43, 2.858, -1.98),
    ("Fe I", 10395.79, 2.176, -3.39),
    ("Fe I", 10469.65, 3.884, -1.18),
    ("Fe I", 10532.24, 3.929, -1.48),
    ("Fe I", 10577.14, 3.301, -3.14),
    ("Fe I", 10616.72, 3.267, -3.13),
    ("Fe I", 10783.05, 3.111, -2.57),
    ("Fe I", 10818.28, 3.960, -1.95),
    ("Fe I", 10863.52, 4.733, -0.90),
    ("Fe I", 10881.76, 2.845, -3.60),
    ("Fe I", 11422.32, 2.198, -2.70),
    ("Fe I", 11607.57, 2.198, -2.01),
    ("Fe I", 11638.26, 2.176, -2.21),
    ("Fe I", 11689.97, 2.223, -2.07),
    ("Fe I", 11783.27, 2.832, -1.57),
    ("Fe I", 11882.84, 2.198, -1.67),
    ("Fe I", 11973.05, 2.176, -1.48),
    ("Fe I", 12340.48, 2.279, -4.10),
    ("Fe I", 12807.15, 3.640, -2.45),
    ("Fe II", 9997.56, 5.484, -1.87),
    ("Fe II", 10501.50, 5.549, -2.09),
    # Sr II (the 1 µm analogue of the Ca II triplet)
    ("Sr II", 10036.65, 1.805, -1.31),
    ("Sr II", 10327.31, 1.839, -0.35),
    ("Sr II", 10914.87, 1.805, -0.64),
)

# ---------------------------------------------------------------- hydrogen

# Absorption oscillator strengths f(3 -> n) of the Paschen series (Wiese & Fuhr 2009).
_PASCHEN_F = {4: 0.8421, 5: 0.1506, 6: 0.05584, 7: 0.02768, 8: 0.01604, 9: 0.01023,
              10: 0.006980}
RYDBERG_H = 109677.5834  # cm⁻¹ (finite-mass Rydberg constant of hydrogen)
# Fine-structure (Dirac + Lamb) correction to the Paschen wavenumbers, cm⁻¹: the n = 3
# levels' weighted centroid lies this much below the Bohr value (fitted to NIST's Paβ
# and Pa16; upper levels contribute < 0.01 cm⁻¹).
PASCHEN_FS_SHIFT = 0.056
CHI_H_N3 = 13.598 * (1.0 - 1.0 / 9.0)  # eV, excitation of the n = 3 level: 12.087 eV


def air_from_vacuum(wavelength_vac: np.ndarray) -> np.ndarray:
    r"""Air wavelength (Å) from vacuum wavelength (Å), IAU standard (Morton 2000, eq. 3):
    :func:`jaxspec.medium.vacuum_to_air`, where the formula is written out."""
    from jaxspec.medium import vacuum_to_air

    return vacuum_to_air(wavelength_vac)


def paschen_lines(n_max: int = 30) -> list[tuple[str, float, float, float, int]]:
    r"""Hydrogen Paschen lines 3 → n, n = 5 … ``n_max``.

    Wavelengths from the Rydberg formula :math:`1/\lambda = R_H (1/9 - 1/n^2) + \delta`
    (δ = ``PASCHEN_FS_SHIFT``, the fine-structure correction), converted to air (NIST
    values to 0.01 Å: Paβ 12818.08, Pa16 8502.48); f values from Wiese & Fuhr (2009)
    to n = 10, beyond that Kramers' scaling :math:`f \propto n^{-3} (1/9 - 1/n^2)^{-3}`
    anchored at n = 10.
    ``g f = 18 f`` (the n = 3 level has g = 2 n² = 18).

    Returns:
        ``[(species, λ_air Å, χ eV, log gf, n_upper), ...]``.
    """
    out = []
    for n in range(5, n_max + 1):
        lam_vac = 1e8 / (RYDBERG_H * (1.0 / 9.0 - 1.0 / n**2) + PASCHEN_FS_SHIFT)
        if n in _PASCHEN_F:
            f = _PASCHEN_F[n]
        else:
            f = _PASCHEN_F[10] * (10.0 / n) ** 3 * (
                (1.0 / 9.0 - 1.0 / 100.0) / (1.0 / 9.0 - 1.0 / n**2)
            ) ** 3
        out.append(("H I", float(air_from_vacuum(lam_vac)), CHI_H_N3, math.log10(18 * f), n))
    return out


# ---------------------------------------------------------------- drawn weak lines

# (species, relative share of the drawn lines, lowest and highest lower-level
# excitation χ in eV). Shares follow roughly the species mix of VALD lines in the
# 0.8–1.3 µm band of a solar-type star.
DRAWN_SPECIES: tuple[tuple[str, float, float, float], ...] = (
    ("Fe I", 0.36, 0.0, 6.5),
    ("Ti I", 0.06, 0.0, 4.5),
    ("Cr I", 0.05, 0.9, 5.5),
    ("Ni I", 0.06, 0.0, 6.0),
    ("Si I", 0.06, 4.9, 7.0),
    ("Ca I", 0.03, 1.8, 5.5),
    ("Mg I", 0.02, 4.3, 6.5),
    ("V I", 0.03, 0.0, 3.5),
    ("Co I", 0.03, 0.0, 5.0),
    ("Mn I", 0.02, 2.1, 5.5),
    ("Sc I", 0.01, 0.0, 2.5),
    ("C I", 0.04, 7.5, 9.0),
    ("N I", 0.01, 10.3, 12.0),
    ("O I", 0.01, 9.1, 11.0),
    ("S I", 0.02, 6.5, 8.5),
    ("Al I", 0.01, 3.1, 5.0),
    ("Na I", 0.01, 2.1, 4.2),
    ("K I", 0.005, 1.6, 3.0),
    ("Fe II", 0.05, 2.5, 10.0),
    ("Ti II", 0.02, 0.5, 4.5),
    ("Cr II", 0.01, 2.5, 6.0),
    ("Ca II", 0.005, 1.7, 8.0),
    ("Mg II", 0.005, 8.6, 11.0),
    ("Si II", 0.01, 6.8, 12.0),
    ("Sc II", 0.01, 0.0, 2.0),
)
# log10 of the weak-line equivalent width (Å) a drawn line has in the Sun (5800 K, log g
# 4.5, [Fe/H] 0): log-uniform, so lines range from invisible to moderately strong.
DRAWN_LOG_W0_SUN = (-4.3, -1.2)

MASTER_BAND = (8038.0, 12849.0)  # Å
N_DRAWN_ATOMIC = 6800  # drawn weak atomic lines in MASTER_BAND


def split_species(species: str) -> tuple[str, int]:
    """``"Fe II" -> ("Fe", 2)``; molecules give ``(name, 1)``."""
    if species in MOLECULES:
        return species, 1
    element, roman = species.split()
    return element, {"I": 1, "II": 2, "III": 3}[roman]


def master_line_data(seed: int = 0) -> dict[str, np.ndarray]:
    """All lines of the synthetic grid over ``MASTER_BAND`` (about 10,000), sorted by λ.

    Real strong lines (:data:`REFERENCE_LINES`, Paschen lines from
    :func:`paschen_lines`) are fixed; ``N_DRAWN_ATOMIC`` weak atomic lines and the
    rotational lines of :data:`MOLECULAR_BANDS` are drawn with
    ``numpy.random.default_rng(seed)``:

    * atomic: species from :data:`DRAWN_SPECIES` by share; λ log-uniform over the band;
      χ uniform between the species' limits, capped so that the upper level stays
      0.3 eV below the ionisation limit; a solar weak-line equivalent width
      ``log_w0_sun`` log-uniform in :data:`DRAWN_LOG_W0_SUN` (Å), from which
      :mod:`jaxspec.synthetic` sets log gf (``log_gf`` here is NaN for these lines).
    * molecular: Fortrat parabola :math:`\\lambda = \\lambda_{head} + d (J + 1 + b/n_b)^2`
      for J = 0 … J_max − 1 and branch b (red-degraded bands), jittered by 0.01 Å;
      lower level energy :math:`\\chi = \\chi_v + h c B J (J + 1)`;
      :math:`g f = g_{el} (2J + 1) f_{band} 10^{N(0, 0.1)}`.

    Every line also gets ``priority``, uniform in [0, 1) (0 for the real lines): smaller
    sizes keep the lines of lowest priority, so they are random thinnings of this list.

    Returns:
        Dict of 1-D arrays of equal length: ``species`` (str), ``element`` (str; the
        metal for molecules), ``ion_stage`` (int, 1 = neutral), ``kind`` (str: "atom",
        "hydrogen", "molecule"), ``wavelength`` (Å, air, float64), ``chi`` (eV),
        ``log_gf``, ``mass`` (u), ``n_upper`` (hydrogen upper level, 0 otherwise),
        ``reference`` (bool: a real line), ``priority``, ``log_w0_sun`` (drawn atomic
        lines: log10 of their solar weak-line equivalent width in Å; NaN otherwise).
    """
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in (
        "species", "wavelength", "chi", "log_gf", "kind", "n_upper", "reference", "priority",
        "log_w0_sun",
    )}

    def add(species, lam, chi, log_gf, kind, n_upper, reference, priority, log_w0=np.nan):
        n = np.size(lam)
        rows["species"] += [species] * n if np.ndim(lam) else [species]
        rows["wavelength"] += list(np.atleast_1d(lam))
        rows["chi"] += list(np.broadcast_to(chi, (n,)))
        rows["log_gf"] += list(np.broadcast_to(log_gf, (n,)))
        rows["kind"] += [kind] * n
        rows["n_upper"] += [n_upper] * n
        rows["reference"] += [reference] * n
        rows["priority"] += list(np.broadcast_to(priority, (n,)))
        rows["log_w0_sun"] += list(np.broadcast_to(log_w0, (n,)))

    for species, lam, chi, log_gf in REFERENCE_LINES:
        add(species, lam, chi, log_gf, "atom", 0, True, 0.0)
    for species, lam, chi, log_gf, n_up in paschen_lines():
        add(species, lam, chi, log_gf, "hydrogen", n_up, True, 0.0)

    # Drawn atomic lines.
    names = [s[0] for s in DRAWN_SPECIES]
    share = np.array([s[1] for s in DRAWN_SPECIES])
    pick = rng.choice(len(names), size=N_DRAWN_ATOMIC, p=share / share.sum())
    lo_band, hi_band = MASTER_BAND
    lam = np.exp(rng.uniform(np.log(lo_band), np.log(hi_band), N_DRAWN_ATOMIC))
    u_chi = rng.uniform(0.0, 1.0, N_DRAWN_ATOMIC)
    log_w0 = rng.uniform(*DRAWN_LOG_W0_SUN, N_DRAWN_ATOMIC)
    priority = rng.uniform(0.0, 1.0, N_DRAWN_ATOMIC)
    for i in range(N_DRAWN_ATOMIC):
        species, _, chi_lo, chi_hi = DRAWN_SPECIES[pick[i]]
        element, stage = split_species(species)
        limit = ELEMENTS[element].chi_ion[stage - 1] - HC_EV_ANGSTROM / lam[i] - 0.3
        hi = min(chi_hi, limit)
        lo = min(chi_lo, hi)
        add(species, lam[i], lo + u_chi[i] * (hi - lo), np.nan, "atom", 0, False,
            priority[i], log_w0[i])

    # Molecular bands.
    for name, head, d, j_max, n_branch, chi_v, log_f in MOLECULAR_BANDS:
        mol = MOLECULES[name]
        j = np.arange(j_max, dtype=np.float64)
        for b in range(n_branch):
            n = j.size
            lam_b = head + d * (j + 1.0 + b / n_branch) ** 2 + rng.normal(0.0, 0.01, n)
            chi_b = chi_v + HC_EV_ANGSTROM * 1e-8 * mol.b_rot * j * (j + 1.0)
            gf = mol.g_el * (2.0 * j + 1.0) * 10.0 ** (log_f + rng.normal(0.0, 0.1, n))
            add(name, lam_b, chi_b, np.log10(gf), "molecule", 0, False,
                rng.uniform(0.0, 1.0, n))

    out = {k: np.asarray(v) for k, v in rows.items()}
    out["wavelength"] = out["wavelength"].astype(np.float64)
    split = [split_species(s) for s in out["species"]]
    out["element"] = np.array(
        [MOLECULES[e].metal if e in MOLECULES else e for e, _ in split]
    )
    out["ion_stage"] = np.array([st for _, st in split], dtype=np.int64)
    out["mass"] = np.array(
        [MOLECULES[s].mass if s in MOLECULES else ELEMENTS[e].mass
         for s, (e, _) in zip(out["species"], split)]
    )
    order = np.argsort(out["wavelength"], kind="stable")
    return {k: v[order] for k, v in out.items()}
