r"""Clone spectra into pseudo-Voigt line lists (the blase method).

A *clone* of a continuum-normalised spectrum :math:`\bar S(\lambda)` is a
:class:`~jaxspec.lines.LineList` whose model

.. math::
    F(\lambda) = \prod_j \left[1 - a_j V(\lambda - \mu'_j; \sigma_j, \gamma_j)\right]

(pseudo-Voigt :math:`V`, blase3D paper eq. 2) reproduces it: the blase step of the blase3D
paper (Shankar, Gully-Santiago & Morley), Sect. 2.3. :func:`clone` clones one spectrum;
:func:`clone_grid` clones every node of a :class:`~jaxspec.grid.SpectralGrid` into an HDF5
clone store (:mod:`jaxspec.io.clone_store`), batched and resumable.

The package has one file per part: :mod:`~jaxspec.clone.settings` (:class:`CloneSettings`,
every setting spelled once), :mod:`~jaxspec.clone.detection` (steps 1-3 below),
:mod:`~jaxspec.clone.model` (the fitting model on :mod:`jaxspec.synthesis`),
:mod:`~jaxspec.clone.fit` (steps 4-5 and :func:`clone`) and :mod:`~jaxspec.clone.sweep`
(:func:`clone_grid`: the grid sweep, continuation or independent).

Method (the paper's settings are the defaults: Adam, learning rate 0.05, 100 epochs,
prominence 0.005; except the wing cut, 30000 pixels against the paper's 6000, see below):

1. **Detection.** Lines are the peaks of :math:`1 - \bar S` with at least ``prominence``
   (``scipy.signal.find_peaks``), plus *shoulders*: maxima of the curvature
   :math:`-\Delta^2(1 - \bar S)` at least 3 pixels from every peak, at least
   ``prominence`` deep and curved like a line of that depth (blended lines that make no
   minimum of their own; curvature separates lines about twice as close as minima).
   The pre-optimisation centre :math:`\mu_j` is the vertex of the parabola through the
   peak pixel and its neighbours (in pixel index: any monotonic sampling works).
2. **Widths.** The full width at half prominence (``scipy.signal.peak_widths``) is the
   FWHM :math:`f_0`, unless the *local width*, 1.47 × the distance between the curvature
   zeros (or valleys) around the peak, is smaller but at least 0.4 × it: then the peak is
   taken as blended and the local width used (1.47 is FWHM / inflection distance of the
   pseudo-Voigt below). Shoulders take their local width. Floored at one pixel.
   :math:`f_0` is split so that the Gaussian and Lorentzian FWHMs are equal,
   :math:`2\sqrt{2\ln 2}\,\sigma = 2\gamma = f_0 / 11.67117^{1/5}` (Ida et al. 2000
   eq. 3 with equal components; Lorentz fraction :math:`\eta = 0.68`).
3. **Amplitude.** An isolated line has depth :math:`D = 1 - \bar S(\mu) = a V(0)`, so
   :math:`a_0 = D / V(0; \sigma, \gamma)` (D capped at 0.95). Blended lines share depth:
   ``deblend`` multiplicative iterations :math:`a_j \leftarrow a_j \min(1, \tau^{obs}_j /
   \tau^{mod}_j)`, :math:`\tau = -\ln F` at each line's peak pixel, make the initial model
   as deep as the spectrum at every detected line (a Richardson–Lucy-like fixed point).
4. **Optimisation.** Adam on the squared residual over valid pixels (NaN pixels and
   ``mask`` are left out), all four parameters of every line: :math:`\ln a`,
   :math:`\ln\sigma`, :math:`\ln\gamma`, and the centre
   :math:`\mu'_j = \mu_j + s \tanh u_j` (the paper's shifted centre, bounded to
   :math:`\pm s`, ``max_shift`` = 0.05 Å; :math:`\mu_j` stays the line's identifier).
   After every step amplitudes and widths are projected into a box: total FWHM
   :math:`\le f_{max} = \max(e^{1.1} f_0, w_{1/2})` (``width_margin``; σ and γ are
   scaled down together beyond it), :math:`w_{1/2}` the peak's width at half its depth
   below the continuum (which lets broad lines, whose f0 overlapping wings cut short,
   grow), and :math:`\ln a \le \ln a_0 + 1 + \ln(f_{max} / e^{1.1} f_0)`
   (``amplitude_margin``). The synthesis windows are planned once for the box's edges,
   so the whole loop (``lax.scan`` over epochs) is one compiled program. The sum of
   squared residuals is minimised (Adam is scale-invariant except for its ε = 1e-8,
   which would throttle the tiny gradients of a mean over 10⁵–10⁶ pixels);
   ``loss_history`` records the mean.
5. **Refinement** (``passes=2``, the default; ``passes=1`` is the paper's single pass):
   the residual :math:`1 - \bar S / F` is searched for further lines as in 1–3 (blends
   the first detection missed) and all lines are optimised again for ``epochs``.
6. **Redundant lines** (:func:`~jaxspec.clone.detection._merge_redundant`). Before the
   refinement pass and after it (then refitted, kept where the RMS stays within 2 %),
   *families* (centres within half the broader FWHM, FWHMs within a factor 4) are merged
   into their strongest line. :func:`clone` keeps a blend's lines apart: it merges a
   family only where the merged line changes the model by at most 0.2 × ``prominence``
   (RMS over its centre ± 4 FWHM), or where the family is concentric or broad (a line
   30 median FWHMs wide); a line that ended the first pass at its box's edge gets a fresh
   box; a residual feature inside a broad fitted line, of at least a quarter of its
   width, is its shape's misfit, not a line. A grid's cold clones (:func:`clone_grid`:
   the continuation start node, independent cloning) merge every family and take lines
   of 25 px as broad, so that one feature is one identity across the grid.

``wing_cut`` (pixels) is blase's wing cut, the longest window over which a line is
evaluated during fitting: each line's profile is evaluated where it exceeds ``tolerance``
(1e-5 in ln flux), but never beyond ``wing_cut`` pixels (the Lorentzian wing of a strong
line is cut there). Cloned lines are ordinary line lists: :meth:`LineList.flux` evaluates
them with full wings. The default, 30000 pixels (never more than twice the spectrum),
reaches the whole band of a typical grid: a cut inside a strong line's wings leaves a
step of the wing's value (7e-4 for a Paschen line 52 Å out) that the clone absorbs with
other lines, and that an emulator synthesising with its own windows cannot reproduce (on
the default grid, 6000 px left the line emulator at 1.55e-3 RMS at its own training
nodes, 2e-3 at the hot ones, against 6.8e-4 with 30000 px).

Line identifiers: ``line_id`` is :math:`\mu_j` rounded to 0.01 Å (blase3D Sect. 3.1),
unique within a clone (a second line with the same identifier is not added).

Numerics: the clones are fitted through the one synthesis engine,
:mod:`jaxspec.synthesis` (:mod:`~jaxspec.clone.model`: a batch of spectra laid end to end,
windows fixed for the optimisation box and cut into chunks of 64 pixels, the engine's
hand-written derivative rules); float32 profile arithmetic on offsets from the line
centres taken in float64; agrees with :meth:`LineList.flux_exact` to about 1e-5 where the
wing cut does not act.
"""

from jaxspec.clone.fit import CloneResult, clone
from jaxspec.clone.settings import METHODS, CloneSettings
from jaxspec.clone.sweep import clone_grid
from jaxspec.synthesis import ABSENT_LN_AMPLITUDE

__all__ = ["ABSENT_LN_AMPLITUDE", "METHODS", "CloneResult", "CloneSettings", "clone",
           "clone_grid"]
