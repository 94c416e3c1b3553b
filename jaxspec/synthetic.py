r"""The embedded synthetic spectral grid: jaxspec's default data set.

Nothing can be downloaded here, so jaxspec ships a generator for a PHOENIX-like grid of
continuum-normalised spectra over (Teff, log g, [Fe/H]). Its lines come from a physical
model, not from noise: a list of real strong lines plus seeded weak atomic lines and
molecular bands (:func:`synthetic_line_data`), whose strengths follow Boltzmann
excitation, Saha ionisation, molecular dissociation equilibrium, continuous opacity and
hydrostatic equilibrium in a one-layer atmosphere, saturate along a curve of growth, and
whose widths and shifts come from thermal, microturbulent and pressure broadening. So lines
appear, strengthen, saturate, broaden, shift and vanish across the grid for the same
reasons as in a real model grid. The physics is summarised in :func:`synthetic_grid`.

Public functions:

* :func:`synthetic_grid` — the grid, a :class:`jaxspec.grid.SpectralGrid`.
* :func:`synthetic_line_list` — the :class:`jaxspec.lines.LineList` at one parameter point.
* :func:`synthetic_line_data` — the atomic and molecular line data (an astropy Table).
* :func:`synthetic_wavelength` — the wavelength grid of a size.

The line physics runs in NumPy (float64) on the host: it is a data generator, not a model
to differentiate. Spectra are synthesised with :meth:`jaxspec.lines.LineList.flux`, vmapped
over nodes in batches.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxspec import _atomic_data as ad
from jaxspec.grid import SpectralGrid
from jaxspec.synthesis import ABSENT_LN_AMPLITUDE
from jaxspec.lines import LineList

__all__ = [
    "SIZES",
    "synthetic_grid",
    "synthetic_line_data",
    "synthetic_line_list",
    "synthetic_spectra",
    "synthetic_wavelength",
]

# ---------------------------------------------------------------- sizes


def _blase3d_axes() -> dict[str, np.ndarray]:
    """Teff 3000–11000 K (100 K steps below 7000 K, 200 K from 7000 K), log g 2–6 step
    0.5, [Fe/H] −0.5 and 0: 61 × 9 × 2 = 1098 nodes (the blase3D PHOENIX subset, Table 1
    of the blase3D paper, restricted to its 3000–11000 K test range)."""
    teff = np.concatenate([np.arange(3000.0, 7000.0, 100.0), np.arange(7000.0, 11001.0, 200.0)])
    return {
        "teff": teff,
        "logg": np.arange(2.0, 6.01, 0.5),
        "feh": np.array([-0.5, 0.0]),
    }


#: Grid sizes: wavelength band (Å, air), resolving power R = λ/Δλ of the log-uniform
#: sampling, the largest number of lines, and the parameter axes.
SIZES: dict[str, dict] = {
    "tiny": {
        "band": (8527.0, 8561.0),
        "resolution": 500_000.0,
        "max_lines": 100,
        "axes": {
            "teff": np.array([4000.0, 5000.0, 6000.0, 7000.0]),
            "logg": np.array([3.5, 4.5]),
            "feh": np.array([-0.5, 0.0]),
        },
    },
    "default": {
        "band": (8440.0, 8880.0),
        "resolution": 500_000.0,
        "max_lines": None,
        "axes": _blase3d_axes(),
    },
    "full": {
        "band": ad.MASTER_BAND,
        "resolution": 500_000.0,
        "max_lines": None,
        "axes": _blase3d_axes(),
    },
}

# ---------------------------------------------------------------- model constants

_TAU_LINE = 2.0 / 3.0  # continuum optical depth of the line-forming layer
# Grey-atmosphere temperature there: T = Teff [3/4 (τ + 2/3)]^{1/4}.
_T_RATIO = (0.75 * (_TAU_LINE + 2.0 / 3.0)) ** 0.25
_LAMBDA_REF = 10000.0  # Å, wavelength of the opacity used for hydrostatic equilibrium
_XI = 1.5e5  # cm/s, microturbulence
_C_FORMATION = 0.1  # weak-line depth per unit line/continuum opacity ratio (calibrated)
_D_MAX = 0.9  # largest central depth of a saturated line
_VDW_ENHANCEMENT = 2.0  # Unsöld C6 underestimates van der Waals widths by about 2
_GAMMA_RAD = 1.0e8  # s^-1, radiative damping (FWHM) of metal and molecular lines
_STARK_H = 0.25  # Holtsmark HWHM of a Paschen line per unit linear-Stark scale
_SHIFT_PER_GAMMA = 0.2  # pressure (red) shift per pressure HWHM, metal and molecular lines
_SHIFT_MAX = 0.015  # Å, where the shift saturates (tanh)
_MIN_DEPTH = 1e-4  # lines shallower than this are dropped (absent in the grid)
_C_ANGSTROM = ad.C_LIGHT * 1e8  # Å/s
_HC_OVER_K = ad.H_PLANCK * ad.C_LIGHT / ad.K_B  # cm K

def _check_size(size: str) -> dict:
    if size not in SIZES:
        raise ValueError(
            f"size={size!r} is not a synthetic grid size; pass one of {list(SIZES)}"
        )
    return SIZES[size]


def synthetic_wavelength(size: str = "default") -> np.ndarray:
    r"""Wavelength grid of a synthetic-grid size.

    Log-uniform: :math:`\lambda_i = \lambda_0 e^{i/R}`, ``i = 0 … n_pix − 1``, from the
    size's band start up to its end (``SIZES[size]``), so that :math:`\lambda/\Delta\lambda
    = R` (500,000, PHOENIX's native sampling in this band) at every pixel.

    Args:
        size: "tiny", "default" or "full".

    Returns:
        ``(n_pix,)`` float64, Å (air).
    """
    cfg = _check_size(size)
    lo, hi = cfg["band"]
    n_pix = int(math.floor(math.log(hi / lo) * cfg["resolution"])) + 1
    return lo * np.exp(np.arange(n_pix, dtype=np.float64) / cfg["resolution"])


# ---------------------------------------------------------------- line data


#: The node at which drawn lines' strengths are set: the Sun, roughly (Teff K, log g, [Fe/H]).
_REFERENCE_STAR = (5800.0, 4.5, 0.0)
_DRAWN_LOG_GF_RANGE = (-7.0, 1.0)


@functools.lru_cache(maxsize=4)
def _master(seed: int) -> dict[str, np.ndarray]:
    """:func:`jaxspec._atomic_data.master_line_data` with the drawn lines' log gf set so
    that their weak-line equivalent width at ``_REFERENCE_STAR`` is their drawn
    ``log_w0_sun`` (clipped to ``_DRAWN_LOG_GF_RANGE``)."""
    data = ad.master_line_data(seed)
    drawn = np.isnan(data["log_gf"])
    sub = {k: v[drawn] for k, v in data.items()}
    sub["log_gf"] = np.zeros(int(drawn.sum()))
    atm = _atmosphere(*(np.array([v]) for v in _REFERENCE_STAR))
    log_w0_unit = np.log10(_weak_line_ew(sub, atm)[0])
    data["log_gf"][drawn] = np.clip(
        data["log_w0_sun"][drawn] - log_w0_unit, *_DRAWN_LOG_GF_RANGE
    )
    for v in data.values():
        v.flags.writeable = False
    return data


@functools.lru_cache(maxsize=8)
def _line_data(size: str, seed: int) -> dict[str, np.ndarray]:
    """Lines of ``size`` (centre within the band ± margin), thinned to ``max_lines``."""
    cfg = _check_size(size)
    data = _master(seed)
    lo, hi = cfg["band"]
    # Strong lines outside the band still reach into it with their wings.
    lam = data["wavelength"]
    margin = np.where(data["kind"] == "hydrogen", 40.0, 3.0)
    keep = (lam > lo - margin) & (lam < hi + margin)
    idx = np.flatnonzero(keep)
    if cfg["max_lines"] is not None and idx.size > cfg["max_lines"]:
        order = np.argsort(data["priority"][idx], kind="stable")
        idx = np.sort(idx[order[: cfg["max_lines"]]])
    out = {k: v[idx] for k, v in data.items()}
    for v in out.values():
        v.flags.writeable = False
    return out


def synthetic_line_data(size: str = "default", seed: int = 0):
    r"""The atomic and molecular line data behind a synthetic grid.

    About 10,000 lines over 8038–12849 Å for ``size="full"`` (fewer for smaller sizes,
    which keep the lines in their band, thinned at random for "tiny"):

    * real strong lines (``reference`` True): H I Paschen 3→n (n = 5 … 30, e.g. Paβ
      12818.1, Paδ 10049.4, Pa15 8545.4 Å), He I 10830, the Ca II triplet 8498/8542/8662,
      the Sr II 1 µm lines, C I, N I, O I, Na I, Mg I/II, Al I, Si I, S I, K I, Ca I, Ti I
      and Fe I/II lines (values rounded from NIST/VALD; see :mod:`jaxspec._atomic_data`);
    * seeded weak atomic lines of 25 species (λ log-uniform, χ uniform within the species'
      range below its ionisation limit; log gf set so that the line's weak-line
      equivalent width in the Sun (5800 K, 4.5, 0) is log-uniform in 10^−4.3 … 10^−1.2 Å,
      i.e. from invisible to moderately strong, clipped to −7 … +1);
    * rotational lines of TiO, VO and FeH bands (Fortrat parabolae from approximate band
      heads, rotational energies from the molecules' B constants).

    Args:
        size: "tiny", "default" or "full".
        seed: seed of the drawn lines (the real lines do not depend on it).

    Returns:
        ``astropy.table.Table``, one row per line, sorted by wavelength, with columns
        ``species`` (e.g. "Fe I", "Ca II", "H I", "TiO"), ``element`` (the metal for
        molecules), ``ion_stage`` (1 = neutral, 2 = singly ionised), ``kind`` ("atom",
        "hydrogen", "molecule"), ``wavelength`` (Å, air), ``chi`` (lower-level
        excitation potential, eV), ``log_gf``, ``mass`` (u), ``n_upper`` (upper level of
        hydrogen lines, else 0), ``reference`` (a real line, not drawn).
    """
    from astropy import units as u
    from astropy.table import Table

    data = _line_data(size, int(seed))
    table = Table()
    for name in ("species", "element", "ion_stage", "kind"):
        table[name] = np.array(data[name])
    table["wavelength"] = np.array(data["wavelength"]) * u.AA
    table["chi"] = np.array(data["chi"]) * u.eV
    table["log_gf"] = np.array(data["log_gf"])
    table["mass"] = np.array(data["mass"]) * u.u
    table["n_upper"] = np.array(data["n_upper"])
    table["reference"] = np.array(data["reference"])
    table.meta["size"] = size
    table.meta["seed"] = int(seed)
    table.meta["wavelength_medium"] = "air"
    return table


# ---------------------------------------------------------------- continuous opacity

# Gray (2005), eq. 8.11: H⁻ bound-free cross-section, 1e-18 cm², λ in Å (< 16,419 Å).
_HMBF_COEFFS = (1.99654, -1.18267e-5, 2.64243e-6, -4.40524e-10, 3.23992e-14,
                -1.39568e-18, 2.78701e-23)


def _hminus_bf_cross_section(lam: np.ndarray) -> np.ndarray:
    alpha = np.zeros_like(lam)
    for k, c in enumerate(_HMBF_COEFFS):
        alpha = alpha + c * lam**k
    return np.where(lam < 16419.0, np.maximum(alpha, 0.0), 0.0) * 1e-18


def _hminus_ff_exponent(lam: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Gray (2005), eq. 8.13: log10 of the H⁻ free-free coefficient / (1e-26 P_e)."""
    x = np.log10(lam)
    f0 = -2.2763 - 1.6850 * x + 0.76661 * x**2 - 0.053346 * x**3
    f1 = 15.2827 - 9.2846 * x + 1.99381 * x**2 - 0.142631 * x**3
    f2 = -197.789 + 190.266 * x - 67.9775 * x**2 + 10.6913 * x**3 - 0.625151 * x**4
    lt = np.log10(theta)
    return f0 + f1 * lt + f2 * lt**2


def _continuum_opacity(lam, temperature, n_e, f_hi):
    r"""Continuous opacity per hydrogen nucleus, cm² (Gray 2005, ch. 8).

    .. math::
        \kappa_{abs} = f_{HI}\left[\kappa_{H^-,bf} + \kappa_{H^-,ff} + \kappa_{H,bf}
                 + \kappa_{H,ff}\right]

    :math:`\kappa_{H^-,bf} = 4.158\times10^{-10}\,\alpha_{bf}(\lambda) P_e
    \theta^{5/2} 10^{0.754\theta}` (eq. 8.12), the free-free term eq. 8.13, hydrogen
    bound-free from the Paschen/Brackett/... edges onwards with Kramers cross-sections
    (eq. 8.8) and free-free (eq. 8.10); bound terms carry the stimulated-emission factor
    :math:`1 - 10^{-\chi_\lambda\theta}`, :math:`\theta = 5040/T`. Callers add
    electron scattering, :math:`\sigma_T n_e / n_H`.

    Args:
        lam: Å, broadcastable.
        temperature: K. n_e: electrons per cm³. f_hi: neutral fraction of hydrogen.

    Returns:
        absorption opacity per hydrogen nucleus (cm²), broadcast shape.
    """
    theta = 5040.0 / temperature
    p_e = n_e * ad.K_B * temperature
    chi_lam = ad.HC_EV_ANGSTROM / lam
    stim = 1.0 - 10.0 ** (-chi_lam * theta)
    hm_bf = 4.158e-10 * _hminus_bf_cross_section(lam) * p_e * theta**2.5 * 10.0 ** (
        0.754 * theta
    )
    hm_ff = 1e-26 * p_e * 10.0 ** _hminus_ff_exponent(lam, theta)
    # Hydrogen bound-free: levels n0, n0+1, n0+2 explicitly (edge 911.3 n² Å), the rest
    # as Gray's integral approximation.
    ion = 13.598
    alpha0 = 1.0449e-26 * lam**3
    n0 = np.ceil(np.sqrt(lam / 911.267)).astype(np.float64)
    h_bf = np.zeros(np.broadcast(lam, theta).shape)
    for k in range(3):
        n = n0 + k
        h_bf = h_bf + 10.0 ** (-theta * ion * (1.0 - 1.0 / n**2)) / n**3
    n3 = n0 + 3
    loge = math.log10(math.e)
    h_bf = h_bf + loge / (2.0 * theta * ion) * (
        10.0 ** (-theta * ion * (1.0 - 1.0 / n3**2)) - 10.0 ** (-theta * ion)
    )
    h_bf = alpha0 * h_bf * stim
    h_ff = alpha0 * loge / (2.0 * theta * ion) * 10.0 ** (-theta * ion) * stim
    return f_hi * (hm_bf * stim + hm_ff + h_bf + h_ff)


# ---------------------------------------------------------------- atmosphere


@functools.lru_cache(maxsize=1)
def _element_arrays():
    names = ad.ELEMENT_NAMES
    log_eps = np.array([ad.ELEMENTS[e].log_eps for e in names])
    scaled = np.array([e not in ad.UNSCALED for e in names])
    mass = np.array([ad.ELEMENTS[e].mass for e in names])
    chi = np.array([ad.ELEMENTS[e].chi_ion for e in names])  # (E, 2)
    return names, log_eps, scaled, mass, chi


def _abundances(feh: np.ndarray) -> np.ndarray:
    """N_X / N_H, (N, E): solar (Asplund et al. 2009) times 10^[Fe/H] except H, He."""
    _, log_eps, scaled, _, _ = _element_arrays()
    return 10.0 ** (log_eps[None, :] - 12.0 + np.where(scaled, feh[:, None], 0.0))


def _saha_phi(temperature: np.ndarray) -> np.ndarray:
    r"""Saha factors :math:`\Phi_s = n_{s+1} n_e / n_s`, (N, E, 2), cm⁻³:

    .. math:: \Phi_s(T) = 2 \frac{U_{s+1}(T)}{U_s(T)}
        \left(\frac{2\pi m_e k T}{h^2}\right)^{3/2} e^{-\chi_s / kT}.
    """
    names, _, _, _, chi = _element_arrays()
    t = temperature[:, None]
    u = np.stack(
        [np.stack([ad.partition_function(e, s, temperature) for s in (1, 2, 3)], -1)
         for e in names], 1
    )  # (N, E, 3)
    pref = 2.0 * ad.SAHA_CONST * t**1.5
    phi1 = pref * u[..., 1] / u[..., 0] * np.exp(-chi[None, :, 0] / (ad.K_B_EV * t))
    phi2 = pref * u[..., 2] / u[..., 1] * np.exp(-chi[None, :, 1] / (ad.K_B_EV * t))
    return np.stack([phi1, phi2], -1), u


def _molecular_partition(name: str, temperature: np.ndarray) -> np.ndarray:
    """Rigid-rotor, harmonic-oscillator partition function g_el kT/(hcB) / (1 - e^{-hcω/kT})."""
    mol = ad.MOLECULES[name]
    q_rot = temperature / (_HC_OVER_K * mol.b_rot)
    q_vib = 1.0 / (-np.expm1(-_HC_OVER_K * mol.omega / temperature))
    return mol.g_el * q_rot * q_vib


def _dissociation_constant(name: str, temperature: np.ndarray) -> np.ndarray:
    r"""Dissociation constant :math:`K = n_A n_B / n_{AB}` (cm⁻³) of a diatomic molecule:

    .. math:: K(T) = \left(\frac{2\pi \mu k T}{h^2}\right)^{3/2}
        \frac{U_A U_B}{U_{AB}} e^{-D_0/kT}
    """
    mol = ad.MOLECULES[name]
    m_a = ad.ELEMENTS[mol.metal].mass
    m_b = ad.ELEMENTS[mol.partner].mass
    mu = m_a * m_b / (m_a + m_b) * ad.M_U
    trans = ad.SAHA_CONST * (mu / ad.M_E) ** 1.5 * temperature**1.5
    u_a = ad.partition_function(mol.metal, 1, temperature)
    u_b = ad.partition_function(mol.partner, 1, temperature)
    return trans * u_a * u_b / _molecular_partition(name, temperature) * np.exp(
        -mol.d0 / (ad.K_B_EV * temperature)
    )


def _fractions(phi, n_e, n_partner_over_k):
    """Stage fractions (N, E, 4): I, II, III and locked in molecules, of each element."""
    r1 = phi[..., 0] / n_e[:, None]
    r2 = phi[..., 1] / n_e[:, None]
    denom = 1.0 + r1 + r1 * r2 + n_partner_over_k
    x1 = 1.0 / denom
    return np.stack([x1, r1 * x1, r1 * r2 * x1, n_partner_over_k * x1], -1)


def _atmosphere(teff, logg, feh, n_iter: int = 32) -> dict[str, np.ndarray]:
    r"""One-layer model atmosphere at continuum optical depth ``_TAU_LINE``.

    Solves for the hydrogen density :math:`n_H` and electron density :math:`n_e` at
    :math:`T = T_{eff} [\tfrac34(\tau + \tfrac23)]^{1/4}` with

    * charge balance :math:`n_e = n_H \sum_X A_X (x_{II} + 2 x_{III})` (Saha for every
      element, two ionisation steps; Ti, V locked in TiO/VO and Fe in FeH by dissociation
      equilibrium);
    * hydrostatic equilibrium :math:`P_g = \tau g / \kappa_\rho`, :math:`P_g = (n_H
      \sum_X A_X + n_e) k T`, :math:`\kappa_\rho` the continuous opacity at
      ``_LAMBDA_REF`` per gram (H⁻, H bound-free/free-free, electron scattering),

    by nested bisection in :math:`\ln n_H` and :math:`\ln n_e` (both residuals are
    monotonic). Free oxygen for TiO/VO is :math:`A_O - A_C` (carbon locked in CO).

    Args:
        teff, logg, feh: 1-D arrays of equal length N (K, dex cgs, dex).

    Returns:
        Dict of (N,) arrays ``temperature``, ``n_h``, ``n_e``, ``p_gas``, ``p_e``, plus
        ``fractions`` (N, E, 4), ``partition`` (N, E, 3), ``abundance`` (N, E),
        ``mol_fraction`` {molecule: (N,) fraction of the metal in the molecule}.
    """
    teff = np.asarray(teff, dtype=np.float64)
    logg = np.asarray(logg, dtype=np.float64)
    feh = np.asarray(feh, dtype=np.float64)
    temperature = teff * _T_RATIO
    gravity = 10.0**logg
    names, _, _, mass, _ = _element_arrays()
    eidx = {e: i for i, e in enumerate(names)}
    abund = _abundances(feh)
    phi, part = _saha_phi(temperature)
    mu_mass = (abund * mass[None, :]).sum(1) * ad.M_U  # grams per H nucleus
    n_nuclei = abund.sum(1)  # nuclei per H nucleus
    free_o = np.maximum(abund[:, eidx["O"]] - abund[:, eidx["C"]], 0.0)
    k_mol = {m: _dissociation_constant(m, temperature) for m in ad.MOLECULES}

    def partner_over_k(n_h, f_hi):
        out = np.zeros_like(abund)
        for m, mol in ad.MOLECULES.items():
            n_b = free_o * n_h if mol.partner == "O" else f_hi * n_h
            out[:, eidx[mol.metal]] += n_b / k_mol[m]
        return out

    def solve_ne(n_h):
        lo = np.log(n_h * 1e-16)
        hi = np.log(n_h * 3.0)
        for _ in range(n_iter):
            mid = 0.5 * (lo + hi)
            n_e = np.exp(mid)
            f_hi = 1.0 / (1.0 + phi[:, eidx["H"], 0] / n_e)
            x = _fractions(phi, n_e, partner_over_k(n_h, f_hi))
            supply = n_h * (abund * (x[..., 1] + 2.0 * x[..., 2])).sum(1)
            too_high = n_e > supply
            hi = np.where(too_high, mid, hi)
            lo = np.where(too_high, lo, mid)
        n_e = np.exp(0.5 * (lo + hi))
        f_hi = 1.0 / (1.0 + phi[:, eidx["H"], 0] / n_e)
        return n_e, f_hi, _fractions(phi, n_e, partner_over_k(n_h, f_hi))

    def residual(n_h):
        n_e, f_hi, _ = solve_ne(n_h)
        kappa = _continuum_opacity(_LAMBDA_REF, temperature, n_e, f_hi) + (
            ad.SIGMA_THOMSON * n_e / n_h
        )
        p_gas = (n_h * n_nuclei + n_e) * ad.K_B * temperature
        return np.log(p_gas * kappa / mu_mass) - np.log(_TAU_LINE * gravity)

    lo = np.full_like(temperature, np.log(1e8))
    hi = np.full_like(temperature, np.log(1e24))
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        pos = residual(np.exp(mid)) > 0.0
        hi = np.where(pos, mid, hi)
        lo = np.where(pos, lo, mid)
    n_h = np.exp(0.5 * (lo + hi))
    n_e, f_hi, x = solve_ne(n_h)
    return {
        "temperature": temperature,
        "n_h": n_h,
        "n_e": n_e,
        "f_hi": f_hi,
        "p_gas": (n_h * n_nuclei + n_e) * ad.K_B * temperature,
        "p_e": n_e * ad.K_B * temperature,
        "fractions": x,
        "partition": part,
        "abundance": abund,
        "k_mol": k_mol,
    }


# ---------------------------------------------------------------- lines at nodes

_GL_X, _GL_W = np.polynomial.legendre.leggauss(64)
_COG_T_MAX = 3000.0  # quadrature reaches 3000 FWHM from the centre; beyond: analytic tail


def _pv_fwhm_eta(sigma, gamma):
    """Ida et al. (2000) total FWHM and Lorentzian fraction, as in jaxspec.profiles."""
    f_g = 2.0 * math.sqrt(2.0 * math.log(2.0)) * sigma
    f_l = 2.0 * gamma
    c = (1.0, 2.69269, 2.42843, 4.47163, 0.07842, 1.0)
    f = (c[0] * f_g**5 + c[1] * f_g**4 * f_l + c[2] * f_g**3 * f_l**2 + c[3] * f_g**2 * f_l**3
         + c[4] * f_g * f_l**4 + c[5] * f_l**5) ** 0.2
    r = f_l / f
    eta = r * (1.36603 + r * (-0.47719 + r * 0.11116))
    return f, eta


def _pv_unit(t, eta):
    """Pseudo-Voigt of unit FWHM at offset t (in FWHM), times the FWHM."""
    lor = 0.5 / (math.pi * (t * t + 0.25))
    s = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    gau = np.exp(-0.5 * (t / s) ** 2) / (s * math.sqrt(2.0 * math.pi))
    return eta * lor + (1.0 - eta) * gau


def _curve_of_growth(w0, sigma, gamma):
    r"""Saturated equivalent width and central depth of lines.

    Each line's depth profile is :math:`D(x) = D_{max}(1 - e^{-\tau(x)/D_{max}})`,
    :math:`\tau(x) = W_0 V(x; \sigma, \gamma)`: linear for weak lines, flat at
    :math:`D_{max}` in saturated cores, and still :math:`\propto W_0` in damping wings.
    :math:`W = \int D\,dx` (64-point Gauss–Legendre in :math:`u = \mathrm{asinh}(x/f)`,
    plus the Lorentzian tail beyond 3000 f, normalised so that the weak limit is exactly
    :math:`W_0`) traces the curve of growth: :math:`W \propto W_0` (linear),
    :math:`\propto \sigma\sqrt{\ln W_0}` (flat), :math:`\propto \sqrt{W_0 \gamma}`
    (damping).

    Args:
        w0: weak-line equivalent width, Å, (N, L). sigma, gamma: physical widths, Å.

    Returns:
        ``(W, D0)``: equivalent width (Å) and central depth :math:`D(0)`.
    """
    f, eta = _pv_fwhm_eta(sigma, gamma)
    u_max = math.asinh(_COG_T_MAX)
    u = 0.5 * u_max * (_GL_X + 1.0)
    wq = 0.5 * u_max * _GL_W * np.cosh(u)
    t = np.sinh(u)
    v = _pv_unit(t, eta[..., None])  # profile × f
    tau = (w0 / f)[..., None] * v
    depth = -_D_MAX * np.expm1(-tau / _D_MAX)
    tail = eta / (math.pi * _COG_T_MAX)  # ∫ beyond T_MAX of both wings, unit area
    q_lin = 2.0 * (v * wq).sum(-1) + tail
    q_sat = 2.0 * (depth / (w0 / f)[..., None] * wq).sum(-1) + tail
    w = w0 * q_sat / q_lin
    d0 = -_D_MAX * np.expm1(-w0 * _pv_unit(0.0, eta) / f / _D_MAX)
    return w, d0


def _bisect(fun, lo, hi, n_iter=36):
    """Root of an increasing function on [lo, hi], elementwise."""
    lo = np.broadcast_to(lo, np.shape(fun(lo))).copy()
    hi = np.broadcast_to(hi, lo.shape).copy()
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        pos = fun(mid) > 0.0
        hi = np.where(pos, mid, hi)
        lo = np.where(pos, lo, mid)
    return 0.5 * (lo + hi)


_C0_L = 2.0 / math.pi  # peak × FWHM of a unit-area Lorentzian
_C0_G = 2.0 * math.sqrt(math.log(2.0) / math.pi)  # ... and of a Gaussian


def _effective_widths(w, d0, w0, sigma, gamma):
    r"""Widths (σ', γ') of the pseudo-Voigt that stands for a saturated line.

    The pseudo-Voigt :math:`W\,V(x; \sigma', \gamma')` gets the line's area W, its
    central depth :math:`W V'(0) = D_0` and its far damping wing
    :math:`W \eta' f' = W_0 \eta f` (the wings :math:`\propto \eta f/\pi x^2` are
    unsaturated). With :math:`V'(0) = c_0(\eta')/f'`,
    :math:`c_0(\eta) = \tfrac{2}{\pi}\eta + 2\sqrt{\ln 2/\pi}(1 - \eta)`:

    .. math:: \eta' c_0(\eta') = \frac{W_0 \eta f D_0}{W^2}, \qquad
        f' = \frac{W c_0(\eta')}{D_0},

    then :math:`\eta'` is inverted to :math:`f_L/f` (Ida et al. 2000, eq. 4) and
    :math:`f_G` follows from eq. 3. Weak lines keep their physical widths; saturated
    lines broaden, damped ones turn Lorentzian (their γ' grows with pressure).

    Returns:
        ``(sigma_eff, gamma_eff)``, Å.
    """
    f, eta = _pv_fwhm_eta(sigma, gamma)
    q = w0 * eta * f * d0 / w**2
    # η' c0(η') = q: a quadratic, increasing in η' on [0, 1].
    a_q = _C0_G - _C0_L
    eta_max = 0.98  # keep a Gaussian part: σ' > 0
    q = np.minimum(q, eta_max * (_C0_G - a_q * eta_max))
    eta_e = (_C0_G - np.sqrt(_C0_G**2 - 4.0 * a_q * q)) / (2.0 * a_q)
    f_e = w * (_C0_L * eta_e + _C0_G * (1.0 - eta_e)) / d0
    rho = _bisect(lambda r: r * (1.36603 + r * (-0.47719 + r * 0.11116)) - eta_e, 0.0, 1.0)
    c = (1.0, 2.69269, 2.42843, 4.47163, 0.07842, 1.0)
    g = _bisect(
        lambda x: sum(c[k] * x ** (5 - k) * rho**k for k in range(6)) - 1.0, 0.0, 1.0
    )
    sigma_e = g * f_e / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    gamma_e = 0.5 * rho * f_e
    return sigma_e, gamma_e


def _weak_line_ew(data: dict, atm: dict) -> np.ndarray:
    r"""Weak-line (linear curve-of-growth) equivalent widths, Å, (N, L):

    .. math:: W_0 = C\,\frac{\pi e^2}{m_e c^2}\,\lambda^2\,g f\,\frac{n_s}{n_H}\,
        \frac{e^{-\chi/kT}}{U_s(T)}\,\left(1 - e^{-hc/\lambda k T}\right)
        \Big/\kappa_c(\lambda),

    :math:`n_s/n_H` the abundance times the fraction in the line's ionisation stage (or
    molecule), :math:`\kappa_c` the continuous opacity per H nucleus including electron
    scattering, C = ``_C_FORMATION``.
    """
    names = _element_arrays()[0]
    eidx = {e: i for i, e in enumerate(names)}
    t = atm["temperature"][:, None]
    lam = np.asarray(data["wavelength"])[None, :]
    is_mol = (np.asarray(data["kind"]) == "molecule")[None, :]
    el = np.array([eidx[e] for e in data["element"]], dtype=np.int64)
    stage = np.asarray(data["ion_stage"])
    chi = np.asarray(data["chi"])[None, :]
    n_nodes = t.shape[0]
    # Number of absorbers of the line's species per H nucleus, and their partition function.
    abund = atm["abundance"][:, el]
    x = atm["fractions"][:, el, :]  # (N, L, 4)
    pop = np.where(is_mol, x[..., 3], np.take_along_axis(
        x, (stage - 1)[None, :, None].repeat(n_nodes, 0), -1)[..., 0]) * abund
    u_atom = np.take_along_axis(
        atm["partition"][:, el, :], (stage - 1)[None, :, None].repeat(n_nodes, 0), -1
    )[..., 0]
    u_mol = np.ones_like(u_atom)
    for m in ad.MOLECULES:
        sel = np.asarray(data["species"]) == m
        if sel.any():
            u_mol[:, sel] = _molecular_partition(m, atm["temperature"])[:, None]
    u = np.where(is_mol, u_mol, u_atom)

    # Weak-line equivalent width: (π e²/m_e c²) λ² gf n_i / κ_c, Boltzmann + stimulated.
    gf = 10.0 ** np.asarray(data["log_gf"])[None, :]
    boltz = np.exp(-chi / (ad.K_B_EV * t)) / u
    stim = -np.expm1(-_HC_OVER_K / (lam * 1e-8 * t))
    n_e = atm["n_e"][:, None]
    kappa = _continuum_opacity(lam, t, n_e, atm["f_hi"][:, None]) + (
        ad.SIGMA_THOMSON * n_e / atm["n_h"][:, None]
    )
    w0 = _C_FORMATION * ad.LINE_CONST * (lam * 1e-8) ** 2 * 1e8 * gf * pop * boltz * stim / kappa
    return np.maximum(w0, 1e-200)


def _node_lines(data: dict, teff, logg, feh) -> dict[str, np.ndarray]:
    r"""Line parameters at N nodes: arrays (N, L) (see :func:`synthetic_grid` for the
    physics). Keys: ``center``, ``ew`` (W, Å), ``w0`` (weak-line EW, Å), ``depth``,
    ``sigma``, ``gamma`` (physical, Å), ``sigma_eff``, ``gamma_eff`` (the pseudo-Voigt
    of the saturated line, Å), ``shift`` (Å)."""
    atm = _atmosphere(np.atleast_1d(teff), np.atleast_1d(logg), np.atleast_1d(feh))
    names, _, _, _, chi_ion = _element_arrays()
    eidx = {e: i for i, e in enumerate(names)}
    t = atm["temperature"][:, None]
    lam = np.asarray(data["wavelength"])[None, :]
    kind = np.asarray(data["kind"])
    is_h = (kind == "hydrogen")[None, :]
    el = np.array([eidx[e] for e in data["element"]])
    stage = np.asarray(data["ion_stage"])
    chi = np.asarray(data["chi"])[None, :]
    n_e = atm["n_e"][:, None]
    w0 = _weak_line_ew(data, atm)

    # Doppler width: σ = λ/c sqrt(kT/m + ξ²/2).
    mass = np.asarray(data["mass"])[None, :] * ad.M_U
    sigma = lam / ad.C_LIGHT * np.sqrt(ad.K_B * t / mass + 0.5 * _XI**2)

    # Pressure widths (FWHM Γ, rad/s; HWHM in Å is λ² Γ / (4π c)).
    log_t = np.log10(t)
    ion_e = chi_ion[el, np.minimum(stage, 2) - 1][None, :]
    chi_lam = ad.HC_EV_ANGSTROM / lam
    # Upper levels closer than 1 eV to the limit would make Unsöld's C6 diverge.
    e_up = np.maximum(ion_e - chi - chi_lam, 1.0)
    e_lo = np.maximum(ion_e - chi, 1.0 + chi_lam)
    z2 = (stage**2)[None, :]
    c6 = 0.3e-30 * z2 * np.maximum(1.0 / e_up**2 - 1.0 / e_lo**2, 1e-4)
    gamma6 = _VDW_ENHANCEMENT * 10.0 ** (
        19.6 + 0.4 * np.log10(c6) + np.log10(atm["p_gas"][:, None]) - 0.7 * log_t
    )
    n_star = np.sqrt(13.598 * z2 / e_up)
    log_c4 = np.clip(-15.2 + 6.0 * np.log10(n_star / 2.12), -16.0, -12.0)
    gamma4 = 10.0 ** (
        19.4 + (2.0 / 3.0) * log_c4 + np.log10(atm["p_e"][:, None]) - (5.0 / 6.0) * log_t
    )
    to_angstrom = lam**2 / (4.0 * math.pi * _C_ANGSTROM)
    gamma_press = (gamma6 + gamma4) * to_angstrom
    gamma_metal = _GAMMA_RAD * to_angstrom + gamma_press
    # Hydrogen: linear Stark effect in the Holtsmark field F0 = 2.603 e n_e^{2/3}.
    n_up = np.asarray(data["n_upper"])[None, :].astype(np.float64)
    f0 = 2.603 * ad.E_CHARGE * n_e ** (2.0 / 3.0)
    gamma_h = (
        _STARK_H * (n_up**2 - 9.0) * (lam * 1e-8) ** 2 * ad.E_CHARGE * ad.A_0 * f0
        / (ad.H_PLANCK * ad.C_LIGHT) * 1e8
    )
    gamma = np.where(is_h, np.maximum(gamma_h, 1e-6), gamma_metal)
    shift = np.where(
        is_h, 0.0, _SHIFT_MAX * np.tanh(_SHIFT_PER_GAMMA * gamma_press / _SHIFT_MAX)
    )

    ew, depth = _curve_of_growth(w0, sigma, gamma)
    sigma_eff, gamma_eff = _effective_widths(ew, depth, w0, sigma, gamma)
    return {
        "center": lam + shift,
        "ew": ew,
        "w0": w0,
        "depth": depth,
        "sigma": sigma,
        "gamma": gamma,
        "sigma_eff": sigma_eff,
        "gamma_eff": gamma_eff,
        "shift": shift,
    }


def _check_params(teff, logg, feh):
    for name, value, lo, hi in (("teff", teff, 2000.0, 15000.0), ("logg", logg, 0.0, 7.0),
                                ("feh", feh, -3.0, 1.0)):
        v = float(value)
        if not (lo <= v <= hi):
            raise ValueError(
                f"{name}={value!r} is outside the range the synthetic model supports "
                f"[{lo:g}, {hi:g}]; pass a value inside it"
            )


def synthetic_line_list(
    teff: float,
    logg: float,
    feh: float,
    size: str = "default",
    seed: int = 0,
    min_depth: float = _MIN_DEPTH,
) -> LineList:
    r"""The lines of the synthetic model at one parameter point.

    Same physics and line data as :func:`synthetic_grid` (see there); at a node of the
    grid, ``synthetic_line_list(...).flux(synthetic_wavelength(size))`` is the grid's
    spectrum there (to the ~1e-5 accuracy of the windowed float32 synthesis).

    Args:
        teff: effective temperature, K, in [2000, 15000] (the grids span 3000–11000).
        logg: surface gravity, log10(g / cm s⁻²), in [0, 7].
        feh: metallicity [Fe/H], dex, in [−3, 1]; scales every element but H and He.
        size: "tiny", "default" or "full": which line data (band and thinning).
        seed: seed of the drawn lines.
        min_depth: lines with central depth below this are left out (default 1e-4);
            pass 0 to keep every line of :func:`synthetic_line_data` in its order.

    Returns:
        :class:`jaxspec.lines.LineList` with ``center`` (Å, pressure-shifted),
        ``ln_amplitude`` (ln of the saturated equivalent width, Å), ``ln_sigma`` and
        ``ln_gamma`` (ln Å; the widths of the pseudo-Voigt that has the saturated line's
        area and central depth: the physical widths for weak lines, broader for
        saturated ones).

    Raises:
        ValueError: a parameter is outside its range, or size is unknown.
    """
    _check_params(teff, logg, feh)
    data = _line_data(size, int(seed))
    p = _node_lines(data, float(teff), float(logg), float(feh))
    keep = p["depth"][0] >= min_depth
    return LineList(
        p["center"][0, keep],
        np.log(p["ew"][0, keep]),
        np.log(p["sigma_eff"][0, keep]),
        np.log(p["gamma_eff"][0, keep]),
    )


def synthetic_spectra(params, wavelength=None, size: str = "default", seed: int = 0) -> np.ndarray:
    r"""Spectra of the synthetic model at arbitrary parameter points (e.g. between nodes).

    :math:`F(\lambda) = \exp\sum_j \ln[1 - a_j V(\lambda - \mu_j)]` with every line
    of :func:`synthetic_line_list` evaluated at every pixel
    (:meth:`jaxspec.lines.LineList.flux_exact`). The line lists are padded with inert
    lines (a = 0) to a common length, so one compiled function serves all points; this
    is how test spectra that no grid node holds are made (demo, benchmarks).

    Args:
        params: ``(n, 3)`` (Teff K, log g dex, [Fe/H] dex) or one ``(3,)`` point.
        wavelength: ``(n_pix,)`` Å, float64; default :func:`synthetic_wavelength` of
            ``size``.
        size, seed: which line data (as :func:`synthetic_line_list`).

    Returns:
        ``(n, n_pix)`` (or ``(n_pix,)`` for one point) normalised flux, float64.

    Raises:
        ValueError: ``params`` is not ``(..., 3)`` or a point is outside the model's range.
    """
    pts = np.asarray(params, dtype=np.float64)
    one = pts.ndim == 1
    pts = np.atleast_2d(pts)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"synthetic_spectra: params has shape {np.shape(params)}; pass "
                         "(n, 3) rows of (teff, logg, feh)")
    wl = synthetic_wavelength(size) if wavelength is None else wavelength
    wl = jnp.asarray(np.asarray(wl, dtype=np.float64))
    lists = [synthetic_line_list(t, g, f, size=size, seed=seed) for t, g, f in pts]
    width = 256 * -(-max(ll.n_lines for ll in lists) // 256)
    exact = jax.jit(lambda ll: ll.flux_exact(wl))

    def padded(ll):
        extra = width - ll.n_lines
        return LineList(*(np.concatenate([np.asarray(v), np.full(extra, x)]) for v, x in (
            (ll.center, float(wl[0])), (ll.ln_amplitude, ABSENT_LN_AMPLITUDE), (ll.ln_sigma, 0.0),
            (ll.ln_gamma, 0.0))))

    out = np.stack([np.asarray(exact(padded(ll)), dtype=np.float64) for ll in lists])
    return out[0] if one else out


# ---------------------------------------------------------------- grid


@eqx.filter_jit
def _flux_batch(lines: LineList, wavelength: jax.Array, plan) -> jax.Array:
    return eqx.filter_vmap(lambda ll: ll.flux(wavelength, plan=plan))(lines)


def synthetic_grid(
    size: str = "default",
    seed: int = 0,
    progress: bool = True,
    batch_size: int | None = None,
) -> SpectralGrid:
    r"""Build the embedded synthetic spectral grid (jaxspec's default data set).

    A PHOENIX-like grid of continuum-normalised spectra
    :math:`F(\lambda) = \prod_j [1 - a_j V(\lambda - \mu_j; \sigma_j, \gamma_j)]`
    (the :class:`jaxspec.lines.LineList` model) whose line parameters follow from a
    one-layer LTE atmosphere at each (Teff, log g, [Fe/H]). Physics (Gray 2005, *The
    Observation and Analysis of Stellar Photospheres*, 3rd ed., chs. 1, 8, 11, 16):

    * **Layer.** Grey temperature :math:`T = T_{eff}[\tfrac34(\tau + \tfrac23)]^{1/4}`
      at :math:`\tau = 2/3`, i.e. :math:`T = T_{eff}`; gas and electron pressure from
      hydrostatic equilibrium :math:`P_g = \tau g/\kappa_\rho` solved with charge
      balance, so :math:`P_e` rises with g (about :math:`g^{1/3}` in cool,
      :math:`g^{1/2}` in hot stars) and steeply with T.
    * **Abundances.** Solar (Asplund et al. 2009) times :math:`10^{[Fe/H]}` for every
      element but H and He.
    * **Saha.** :math:`n_{s+1} n_e / n_s = 2 (U_{s+1}/U_s)(2\pi m_e kT/h^2)^{3/2}
      e^{-\chi_s/kT}` for two ionisation steps of 21 elements, partition functions
      :math:`U = \sum g_i e^{-E_i/kT}` over their lowest terms, NIST ionisation energies.
    * **Molecules.** :math:`n_A n_B / n_{AB} = (2\pi\mu kT/h^2)^{3/2} (U_A U_B/U_{AB})
      e^{-D_0/kT}` for TiO, VO (free O = O − C) and FeH, rigid-rotor harmonic-oscillator
      :math:`U_{AB}`, rotational Boltzmann factors within each band: the forests are
      strong below ~4000 K and gone (peak depth < 0.002) above ~4500 K.
    * **Boltzmann.** Lower-level population :math:`n_i/n_s = g_i e^{-\chi/kT}/U_s`.
    * **Continuum.** H⁻ bound-free and free-free, H bound-free (Kramers, Paschen and
      higher edges) and free-free, electron scattering, per H nucleus (Gray ch. 8).
    * **Weak-line strength.** :math:`W_0 = C\,\frac{\pi e^2}{m_e c^2}\lambda^2 g f
      \frac{n_s}{n_H}\frac{e^{-\chi/kT}}{U_s}(1 - e^{-hc/\lambda kT})/\kappa_c(\lambda)`
      with C = 0.1 (calibrated on the solar Ca II 8542 and Fe I 8688 lines). Hydrogen
      (lower level n = 3, χ = 12.09 eV): n = 3 population × neutral fraction against
      the H⁻ + H bound-free continuum; Paschen lines peak at 8000 K (log g 2),
      9100 K (log g 4) and 10,400 K (log g 6).
    * **Curve of growth.** Depth :math:`D = D_{max}(1 - e^{-W_0 V/D_{max}})`,
      :math:`D_{max} = 0.9`: the equivalent width :math:`W = \int D` grows as
      :math:`W_0`, then :math:`\sigma\sqrt{\ln W_0}`, then :math:`\sqrt{W_0\gamma}`.
      The LineList line has area ``a = W``, central depth :math:`a V(0) = D(0) \le 0.9`
      and the unsaturated damping wing :math:`W_0 \eta f` of the true profile
      (:func:`_effective_widths`): weak lines keep their physical σ, γ; saturated lines
      broaden; damped ones become Lorentzian.
    * **Gaussian width.** :math:`\sigma_\lambda = (\lambda/c)\sqrt{kT/m + \xi^2/2}`,
      ξ = 1.5 km/s, m the species' mass (≥ 2 pixels at R = 500,000).
    * **Lorentzian width.** Radiative (:math:`\Gamma = 10^8` s⁻¹), van der Waals
      (Unsöld :math:`C_6` × 2: :math:`\log\Gamma_6 = 19.6 + 0.4\log C_6 + \log P_g
      - 0.7\log T`) and quadratic Stark (:math:`\log\Gamma_4 = 19.4 + \tfrac23\log C_4
      + \log P_e - \tfrac56\log T`), HWHM :math:`\gamma = \lambda^2\Gamma/4\pi c`
      (Gray eqs. 11.27-11.30). It grows with log g; at fixed g it falls with Teff
      where van der Waals dominates (the rising opacity lowers :math:`P_g`) and the
      Stark part, :math:`\propto P_e`, grows with Teff. Hydrogen: linear Stark,
      :math:`\gamma = 0.25\,(n_u^2 - 9)\lambda^2 e a_0 F_0/hc` in the Holtsmark field
      :math:`F_0 = 2.603\,e\,n_e^{2/3}` (≈ 1 Å for Pa12 at 9000 K).
    * **Shift.** Metal and molecular lines shift red by
      :math:`\delta = 0.015\,\text{Å} \tanh(0.2\,\gamma_{pressure}/0.015\,\text{Å})`
      (proportional to the pressure width, a few mÅ; saturating at 15 mÅ for the
      extreme widths of high-excitation lines in cool dwarfs); hydrogen is unshifted.
    * Lines shallower than 1e-4 at a node are absent there (``ln a = -1000``).

    Sizes (wavelengths in air, log-uniform at R = λ/Δλ = 500,000, PHOENIX's native
    sampling in this band; flux float32):

    ========  ===============  =======  ========  ======================================
    size      band (Å)         n_pix    n_lines   axes (teff × logg × feh)
    ========  ===============  =======  ========  ======================================
    tiny      8527–8561        1,990    100       4 (4000–7000) × 2 (3.5, 4.5) × 2 = 16
    default   8440–8880        25,410   1,743     61 (3000–11000) × 9 (2–6) × 2 = 1,098
    full      8038–12849       234,543  9,987     61 × 9 × 2 = 1,098
    ========  ===============  =======  ========  ======================================

    (n_lines for seed 0; "default" has the Ca II triplet, Paschen 11–18, Mg I 8807, Fe I
    lines, the TiO 8432–8452 and 8860 bands and the FeH 8692 band.) Axes of default and
    full: Teff in 100 K steps below 7000 K and 200 K steps from 7000 K, log g in steps
    of 0.5, [Fe/H] −0.5 and 0 (the blase3D PHOENIX subset in its 3000–11000 K range).

    Synthesis: all nodes' line parameters first (NumPy, float64), then one window plan
    (:meth:`jaxspec.lines.LineList.plan`) for the whole grid, then
    :meth:`~jaxspec.lines.LineList.flux` vmapped over batches of nodes, compiled once.

    Args:
        size: "tiny", "default" or "full".
        seed: seed of the drawn lines; the same seed gives bitwise-identical flux.
        progress: show tqdm progress bars (line parameters, then spectra).
        batch_size: nodes per batch (default: about 2e6 / n_pix pixels' worth).

    Returns:
        :class:`jaxspec.grid.SpectralGrid` with axes ``teff`` (K), ``logg`` (dex, cgs),
        ``feh`` (dex) in that order, ``normalized=True``, float32 flux ``(*shape, n_pix)``.

    Raises:
        ValueError: unknown size, or batch_size < 1.
    """
    cfg = _check_size(size)
    wavelength = synthetic_wavelength(size)
    data = _line_data(size, int(seed))
    axes = {k: np.asarray(v, dtype=np.float64) for k, v in cfg["axes"].items()}
    mesh = np.meshgrid(*axes.values(), indexing="ij")
    nodes = np.stack([m.ravel() for m in mesh], -1)  # (N, 3) in C order
    n_nodes, n_lines = nodes.shape[0], len(data["wavelength"])
    if batch_size is None:
        batch_size = max(1, min(n_nodes, 2_000_000 // wavelength.size))
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1; pass e.g. batch_size=8")
    batches = [np.arange(i, min(i + batch_size, n_nodes)) for i in range(0, n_nodes, batch_size)]

    # Pass 1: line parameters at every node (float64 centres, float32 logs).
    center = np.empty((n_nodes, n_lines), np.float64)
    logs = np.empty((3, n_nodes, n_lines), np.float32)
    for idx in tqdm(batches, desc=f"synthetic {size}: lines", disable=not progress,
                    unit="batch"):
        p = _node_lines(data, nodes[idx, 0], nodes[idx, 1], nodes[idx, 2])
        center[idx] = p["center"]
        logs[0, idx] = np.where(p["depth"] >= _MIN_DEPTH, np.log(p["ew"]), ABSENT_LN_AMPLITUDE)
        logs[1, idx] = np.log(p["sigma_eff"])
        logs[2, idx] = np.log(p["gamma_eff"])

    # One plan for the whole grid (windows fit each line's strongest, widest version and
    # its full range of centres), so the synthesis compiles once.
    top = logs.max(axis=1)
    envelope = LineList(
        np.stack([center.min(0), center.max(0)]), np.stack([top[0]] * 2),
        np.stack([top[1]] * 2), np.stack([top[2]] * 2),
    )
    plan = envelope.plan(wavelength)

    # Pass 2: spectra, batch by batch (the last batch padded to the same shape).
    flux = np.empty((n_nodes, wavelength.size), dtype=np.float32)
    wl = jnp.asarray(wavelength)
    for idx in tqdm(batches, desc=f"synthetic {size}: spectra", disable=not progress,
                    unit="batch"):
        pad = np.concatenate([idx, np.full(batch_size - idx.size, idx[-1])])
        lines = LineList(
            center[pad], logs[0, pad].astype(np.float64), logs[1, pad].astype(np.float64),
            logs[2, pad].astype(np.float64),
        )
        flux[idx] = np.asarray(_flux_batch(lines, wl, plan))[: idx.size]
    shape = tuple(a.size for a in axes.values())
    return SpectralGrid(
        axes=axes,
        wavelength=wavelength,
        flux=flux.reshape(*shape, wavelength.size),
        normalized=True,
    )
