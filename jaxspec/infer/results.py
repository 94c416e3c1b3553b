"""Outcome flags of the inference methods and the one-row-per-spectrum results table.

Each method returns a result whose integer ``status`` is a sum of :class:`Status` flags
(0: all is well). Flags are computed inside jit (so batched results carry one per
spectrum); :func:`status_message` turns them into words. ``converged`` is False when any
flag of ``Status.FAILURES`` is set, so a failure is never silent: it is in the result, in
the message and in the ``converged`` column of :func:`results_table`.
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["Status", "results_table", "status_message"]


class Status(enum.IntFlag):
    OK = 0
    NONFINITE = 1  # loss or parameters NaN/inf
    NOT_CONVERGED = 2  # optimiser stopped away from a stationary point
    HESSIAN = 4  # Hessian not positive definite: Laplace errors unreliable
    WINDOW_EDGE = 8  # best Teff on a face of the Teff window: the answer may lie outside
    BOX_EDGE = 16  # a parameter on a face of the emulator's box (information only)
    RHAT = 32  # NUTS: split R-hat above the threshold
    DIVERGENT = 64  # NUTS: more divergent transitions than allowed
    LOW_ESS = 128  # NUTS: effective sample size below the threshold

    FAILURES = 1 | 2 | 4 | 8 | 32 | 64 | 128


_WORDS = {
    Status.NONFINITE: "loss or parameters are NaN/inf",
    Status.NOT_CONVERGED: "optimiser did not converge",
    Status.HESSIAN: "Hessian not positive definite (Laplace errors unreliable)",
    Status.WINDOW_EDGE: "best Teff on the edge of the Teff window (widen the window or "
    "improve the guess)",
    Status.BOX_EDGE: "a parameter is on the edge of the emulator's range",
    Status.RHAT: "R-hat too large (chains disagree; run longer)",
    Status.DIVERGENT: "divergent transitions",
    Status.LOW_ESS: "effective sample size too small (run longer)",
}


def is_converged(status) -> np.ndarray:
    """True where no failure flag is set."""
    return (np.asarray(status) & int(Status.FAILURES)) == 0


def status_message(status: int, details: str = "") -> str:
    """Words for a status (``"ok"`` when 0), with optional details appended."""
    status = int(status)
    words = [w for flag, w in _WORDS.items() if status & int(flag)]
    text = "; ".join(words) if words else "ok"
    return f"{text} ({details})" if details else text


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
