r"""Outcome flags of the inference methods and the one-row-per-spectrum results table.

Each method returns a result whose integer ``status`` is a sum of :class:`Status` flags
(0: all is well). Flags are computed inside jit (so batched results carry one per
spectrum); :func:`status_message` turns them into words. ``converged`` is False when any
flag of ``Status.FAILURES`` is set, so a failure is never silent: it is in the result, in
the message and in the ``converged`` column of :func:`results_table`.

Implausible fits (:func:`plausibility_flags`). An optimiser or sampler can converge
perfectly to an answer that means nothing; these are failures too:

``POOR_FIT``
    with given uncertainties (and no fitted noise scale), :math:`\chi^2/\nu` above
    ``max(CHI2_NU_MAX, 1 + 10\sqrt{2/\nu})`` (``CHI2_NU_MAX`` = 5; ν = used pixels −
    parameters). For a model that describes the data, χ²/ν has mean 1 and standard
    deviation :math:`\sqrt{2/\nu}`, so the limit is at least 10 standard deviations out
    (for ν = 100, 28 of them): only a model that does not describe the spectrum
    (unnormalised flux, wrong emulator or range, pure noise) or uncertainties several
    times too small get there. Emulator errors of a good fit typically give 1–3.
``ALL_EDGES``
    every parameter on a face of the search box (within ``EDGE_TOL`` = 1e-3 of its
    width): a box corner is where a fit of data that the model cannot describe ends.
``PRIOR``
    every parameter's error at least ``PRIOR_WIDTH`` = 0.9 of its prior's standard
    deviation (uniform on the box: width/√12; a user prior's own, when narrower): the
    data did not constrain the answer (e.g. uncertainties of 1e30); a constrained
    posterior is far narrower than the prior.
``NO_ERRORS``
    no parameter has a finite error (MAP: every parameter pinned to a face or the
    Hessian singular).

``BOX_EDGE`` (one parameter on a face) stays information only: a star can lie at the
edge of a grid.
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["Status", "plausibility_flags", "result_row", "results_table", "status_message"]


class Status(enum.IntFlag):
    OK = 0
    NONFINITE = 1  # loss or parameters NaN/inf
    NOT_CONVERGED = 2  # optimiser stopped away from a stationary point
    HESSIAN = 4  # Hessian not positive definite: Laplace errors unreliable
    WINDOW_EDGE = 8  # best value on a face of a guess ± window: the answer may lie outside
    BOX_EDGE = 16  # a parameter on a face of the emulator's box (information only)
    RHAT = 32  # NUTS: split R-hat above the threshold
    DIVERGENT = 64  # NUTS: more divergent transitions than allowed
    LOW_ESS = 128  # NUTS: effective sample size below the threshold
    POOR_FIT = 256  # chi2/nu far above 1 with given uncertainties
    ALL_EDGES = 512  # every parameter on a face of the box
    PRIOR = 1024  # posterior as wide as the prior in every parameter
    NO_ERRORS = 2048  # no parameter has a finite error

    FAILURES = 1 | 2 | 4 | 8 | 32 | 64 | 128 | 256 | 512 | 1024 | 2048


#: χ²/ν above which (and above 1 + 10√(2/ν)) a fit with given uncertainties is POOR_FIT.
CHI2_NU_MAX = 5.0
#: Error / prior standard deviation from which on a parameter counts as unconstrained.
PRIOR_WIDTH = 0.9


_WORDS = {
    Status.NONFINITE: "loss or parameters are NaN/inf",
    Status.NOT_CONVERGED: "optimiser did not converge",
    Status.HESSIAN: "Hessian not positive definite (Laplace errors unreliable)",
    Status.WINDOW_EDGE: "best value of the windowed parameter on the edge of its window "
    "(by default: on the edge of the Teff window; widen the window or improve the guess)",
    Status.BOX_EDGE: "a parameter is on the edge of the emulator's range",
    Status.RHAT: "R-hat too large (chains disagree; run longer)",
    Status.DIVERGENT: "divergent transitions",
    Status.LOW_ESS: "effective sample size too small (run longer)",
    Status.POOR_FIT: "chi2/nu far above 1 with the given uncertainties: the model does not "
    "describe this spectrum (not normalised? wrong emulator or wavelength range? "
    "uncertainties too small: then pass --fit-noise)",
    Status.ALL_EDGES: "every parameter on a face of the box (a corner: the data are not "
    "described by any parameters in the box)",
    Status.PRIOR: "posterior as wide as the prior in every parameter: the data do not "
    "constrain the parameters (uncertainties too large?)",
    Status.NO_ERRORS: "no parameter has a finite error",
}


def chi2_nu_limit(nu):
    """The POOR_FIT limit ``max(CHI2_NU_MAX, 1 + 10 sqrt(2/nu))`` (module docstring)."""
    import jax.numpy as jnp

    return jnp.maximum(CHI2_NU_MAX, 1.0 + 10.0 * jnp.sqrt(2.0 / jnp.maximum(nu, 1)))


def plausibility_flags(u, *, chi2=None, nu=None, sigma_u=None, prior_std_u=None):
    """Status flags of an implausible answer (module docstring); jit- and vmap-safe.

    Args:
        u: ``(..., k)`` answer in unit coordinates of the search box (0, 1 at its faces).
        chi2, nu: ``(...)`` χ² with the given uncertainties and its degrees of freedom,
            or None (no uncertainties, or a fitted noise scale: no POOR_FIT test). A NaN
            χ² never flags.
        sigma_u: ``(..., k)`` 1σ errors in units of the box width, or None (no errors:
            no PRIOR / NO_ERRORS test).
        prior_std_u: ``(..., k)`` prior standard deviations in the same units (default:
            uniform on the box, 1/√12).

    Returns:
        ``(...)`` int32, a sum of POOR_FIT, ALL_EDGES, PRIOR, NO_ERRORS.
    """
    import jax.numpy as jnp

    from jaxspec.infer._box import EDGE_TOL

    u = jnp.asarray(u)
    flags = jnp.where(jnp.all((u < EDGE_TOL) | (u > 1 - EDGE_TOL), axis=-1),
                      int(Status.ALL_EDGES), 0)
    if chi2 is not None:
        poor = jnp.asarray(chi2) / jnp.maximum(nu, 1) > chi2_nu_limit(nu)
        flags |= jnp.where(poor, int(Status.POOR_FIT), 0)
    if sigma_u is not None:
        sigma_u = jnp.asarray(sigma_u)
        if prior_std_u is None:
            prior_std_u = jnp.full(u.shape, 1.0 / np.sqrt(12.0))
        wide = jnp.all(sigma_u >= PRIOR_WIDTH * jnp.asarray(prior_std_u), axis=-1)
        flags |= jnp.where(wide, int(Status.PRIOR), 0)
        flags |= jnp.where(jnp.all(~jnp.isfinite(sigma_u), axis=-1), int(Status.NO_ERRORS), 0)
    return jnp.asarray(flags, dtype=jnp.int32)


def prior_std(priors: dict | None, names, lower, upper) -> np.ndarray:
    """``(k,)`` prior standard deviations in units of the box width: uniform 1/√12, or a
    user prior's standard deviation when it has one and it is narrower."""
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    width = np.where(upper > lower, upper - lower, 1.0)
    out = np.full(np.broadcast_shapes(lower.shape, (len(names),)), 1.0 / np.sqrt(12.0))
    for j, name in enumerate(names):
        d = (priors or {}).get(name)
        if d is None:
            continue
        try:
            std = float(np.sqrt(np.asarray(d.variance)))
        except (AttributeError, NotImplementedError, TypeError, ValueError):
            continue
        if np.isfinite(std):
            out[..., j] = np.minimum(out[..., j], std / width[..., j])
    return out


def is_converged(status) -> np.ndarray:
    """True where no failure flag is set."""
    return (np.asarray(status) & int(Status.FAILURES)) == 0


def status_message(status: int, details: str = "") -> str:
    """Words for a status (``"ok"`` when 0), with optional details appended."""
    status = int(status)
    words = [w for flag, w in _WORDS.items() if status & int(flag)]
    text = "; ".join(words) if words else "ok"
    return f"{text} ({details})" if details else text


def result_row(params, sigma, loss, n_evaluations, status, details: str = "",
               extra: dict | None = None) -> dict:
    """One spectrum's row for :func:`results_table` (what every result's ``rows()`` gives).

    Args:
        params: ``(n_params,)`` estimate, physical units.
        sigma: ``(n_params,)`` 1σ errors, or None (the method gives none).
        loss: RMS residual (blase3D eq. 4).
        n_evaluations: objective evaluations.
        status: :class:`Status` flags (int).
        details: appended to the status words in the message.
        extra: method-specific columns (e.g. ``noise_scale``), or None.
    """
    row = {
        "params": params,
        "sigma": sigma,
        "loss": loss,
        "n_evaluations": n_evaluations,
        "converged": bool(is_converged(status)),
        "message": status_message(status, details),
    }
    if extra is not None:
        row["extra"] = extra
    return row


def results_table(results, param_names, *, files=None, method: str = "", seconds=None):
    """One row per spectrum, as an astropy Table.

    Args:
        results: a result of :func:`~jaxspec.infer.bayes_opt`,
            :func:`~jaxspec.infer.fit_map` or :func:`~jaxspec.infer.sample_nuts`
            (batched or not), or a list of them.
        param_names: the emulator's parameter names.
        files: one label per spectrum (file names), or None.
        method: "bo", "map" or "nuts".
        seconds: per-spectrum wall-clock seconds (scalar or sequence), or None.

    Returns:
        Table with columns ``file, method, <name>..., <name>_err... (when the method gives
        errors), loss, n_evaluations, seconds, converged, message`` (plus method-specific
        extras such as ``noise_scale``, ``rhat_max``, ``ess_min``, ``n_divergent``).
    """
    from astropy.table import Table

    if not isinstance(results, (list, tuple)):
        results = [results]
    rows = [row for r in results for row in r.rows()]
    n = len(rows)
    files = [f"spectrum_{i}" for i in range(n)] if files is None else [str(f) for f in files]
    if len(files) != n:
        raise ValueError(f"{len(files)} file labels for {n} results")
    sec = np.broadcast_to(np.nan if seconds is None else np.asarray(seconds, float), (n,))
    names = list(param_names)
    has_err = all(r.get("sigma") is not None for r in rows)
    cols = {"file": files, "method": [method] * n}
    for j, name in enumerate(names):
        cols[name] = [float(r["params"][j]) for r in rows]
    if has_err:
        for j, name in enumerate(names):
            cols[f"{name}_err"] = [float(r["sigma"][j]) for r in rows]
    cols["loss"] = [float(r["loss"]) for r in rows]
    cols["n_evaluations"] = [int(r["n_evaluations"]) for r in rows]
    cols["seconds"] = [float(s) for s in sec]
    cols["converged"] = [bool(r["converged"]) for r in rows]
    cols["message"] = [str(r["message"]) for r in rows]
    extras = [k for k in rows[0].get("extra", {}) if all(k in r.get("extra", {}) for r in rows)]
    for k in extras:
        cols[k] = [r["extra"][k] for r in rows]
    table = Table(cols)
    units = {"teff": "K", "teff_err": "K"}
    for name, unit in units.items():
        if name in table.colnames:
            table[name].unit = unit
    table["loss"].description = "RMS residual, blase3D eq. (4)"
    table.meta["method"] = method
    return table
