"""What an amortised model returns for a batch of spectra, and its table rows.

:class:`AmortisedResult` has the fields that :func:`jaxspec.infer.results_table` reads
through ``rows()``: point estimate, 1σ, loss, evaluations, converged and a message, plus
extras (median, 16 / 84 % quantiles per parameter, rejected fraction, S/N).
"""

from __future__ import annotations

import equinox as eqx
import numpy as np
from jaxtyping import Array, Float, Int

from jaxspec.infer.results import Status, is_converged, status_message

__all__ = ["AmortisedResult"]

#: Above this fraction of posterior draws outside the box a flow result is flagged as an
#: extrapolation (not converged). The cINN paper (sect. 3.5) flags a large rejected
#: fraction as "treat with caution".
MAX_REJECTED = 0.5
#: Above this fraction of rejected draws the result carries the BOX_EDGE flag.
EDGE_REJECTED = 0.01


class AmortisedResult(eqx.Module):
    """Amortised estimates for ``n`` spectra (leading axis ``n``).

    params
        ``(n, k)`` point estimate, physical units: the regressor's prediction on the
        spectrum, or the flow's MAP (highest-density retained draw).
    sigma
        ``(n, k)`` 1σ: standard deviation over the regressor's noise draws, or half the
        16–84 % range of the flow's retained draws.
    median, q16, q84
        ``(n, k)`` median and 16 / 84 % quantiles of the draws.
    rejected_fraction
        ``(n,)`` fraction of flow draws outside the box (0 for the regressor).
    snr
        ``(n,)`` S/N the spectrum was taken to have (input of the flow).
    loss
        ``(n,)`` RMS residual between the spectrum and the emulator at ``params`` (blase3D
        eq. 4) when an emulator was given, else NaN.
    status
        ``(n,)`` :class:`~jaxspec.infer.Status` flags: NONFINITE (no finite estimate),
        BOX_EDGE (estimate outside the box, or > 1 % of the draws rejected).
    n_evaluations
        network evaluations per spectrum.
    samples
        ``(n, n_draws, k)`` draws (NaN where rejected) when asked for, else None.
    method
        ``"regressor"`` or ``"flow"``.
    """

    params: Float[Array, "n k"]
    sigma: Float[Array, "n k"]
    median: Float[Array, "n k"]
    q16: Float[Array, "n k"]
    q84: Float[Array, "n k"]
    rejected_fraction: Float[Array, " n"]
    snr: Float[Array, " n"]
    loss: Float[Array, " n"]
    status: Int[Array, " n"]
    n_evaluations: int = eqx.field(static=True)
    samples: Float[Array, "n d k"] | None = None
    method: str = eqx.field(static=True, default="")
    names: tuple[str, ...] = eqx.field(static=True, default=())

    @property
    def converged(self) -> np.ndarray:
        """``(n,)`` True where the estimate is usable (no failure flag, rejected fraction
        at most ``MAX_REJECTED``)."""
        return is_converged(self.status) & (np.asarray(self.rejected_fraction) <= MAX_REJECTED)

    def rows(self) -> list[dict]:
        """One dict per spectrum for :func:`jaxspec.infer.results_table`."""
        p, s = np.asarray(self.params), np.asarray(self.sigma)
        med, lo, hi = (np.asarray(a) for a in (self.median, self.q16, self.q84))
        rej, snr = np.asarray(self.rejected_fraction), np.asarray(self.snr)
        loss, status = np.asarray(self.loss), np.asarray(self.status)
        ok = self.converged
        rows = []
        for i in range(p.shape[0]):
            details = f"S/N {snr[i]:.3g}"
            if self.method == "flow":
                details += f", {100 * rej[i]:.1f} % of draws outside the box"
                if rej[i] > MAX_REJECTED:
                    details += " (extrapolating: treat with caution)"
            extra = {"snr": float(snr[i])}
            if self.method == "flow":
                extra["rejected_fraction"] = float(rej[i])
            for j, name in enumerate(self.names):
                extra[f"{name}_median"] = float(med[i, j])
                extra[f"{name}_q16"] = float(lo[i, j])
                extra[f"{name}_q84"] = float(hi[i, j])
            rows.append({
                "params": p[i],
                "sigma": s[i],
                "loss": float(loss[i]),
                "n_evaluations": int(self.n_evaluations),
                "converged": bool(ok[i]),
                "message": status_message(int(status[i]), details),
                "extra": extra,
            })
        return rows


def status_of(params, bounds, rejected=None) -> np.ndarray:
    """Status flags ``(n,)`` for estimates ``(n, k)`` against ``bounds`` ``(k, 2)``:
    NONFINITE for a non-finite estimate, BOX_EDGE for one outside the box or more than
    ``EDGE_REJECTED`` of the draws rejected (the posterior reaches a face of the box)."""
    params = np.asarray(params)
    b = np.asarray(bounds)
    status = np.where(np.all(np.isfinite(params), axis=-1), 0, int(Status.NONFINITE))
    outside = np.any((params < b[:, 0]) | (params > b[:, 1]), axis=-1)
    if rejected is not None:
        outside = outside | (np.asarray(rejected) > EDGE_REJECTED)
    status = status | np.where(outside, int(Status.BOX_EDGE), 0)
    return status.astype(np.int32)
