"""The settings of a clone (:class:`CloneSettings`), spelled once for :func:`clone`,
:func:`clone_grid`, the clone store and the ``jaxspec clone`` command line."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass

__all__ = ["METHODS", "CloneSettings", "resolve_settings"]

#: Grid cloning methods: each node warm-started from a cloned neighbour (the default),
#: or every node on its own (the blase3D paper's).
METHODS = ("continuation", "independent")


@dataclass(frozen=True)
class CloneSettings:
    """Everything that determines a clone; stored with a clone store and compared on resume.

    Attributes:
        prominence: minimum peak prominence in normalised flux (blase3D: 0.005).
        wing_cut: longest window, in pixels, over which a line is evaluated during
            fitting (blase3D: 6000; here 30000, see the module docstring). A cut shorter
            than a strong line's wings leaves a step of the wing's value at the window
            edge, which the clone absorbs and an emulator with other windows cannot
            reproduce: on the default grid 6000 px left the emulator at its own training
            nodes at 1.55e-3 RMS (hot nodes 2e-3) against 6.8e-4 with 30000.
        epochs: Adam steps per optimisation pass of a cold clone (blase3D: 100).
        learning_rate: Adam learning rate (blase3D: 0.05).
        max_shift: bound of the centre shift |μ' − μ|, Å.
        passes: 1 (the paper: detect, optimise) or 2 (then re-detect lines in the
            residual and optimise all again).
        deblend: multiplicative amplitude iterations at initialisation (0: none).
        amplitude_margin: ln a may grow at most this much above its initial value.
        width_margin: the total FWHM may grow to at most e^width_margin times the
            detected FWHM (σ and γ are scaled down together beyond it).
        tolerance: per-line truncation tolerance of the windowed synthesis (ln flux).
        method: ``"continuation"`` (the default: every node warm-started from a cloned
            neighbour, lines keep one identity across the grid) or ``"independent"``
            (every node cloned on its own, blase3D). :func:`clone` of one spectrum
            ignores it.
        warm_epochs: Adam steps per pass of a warm-started node (continuation).
        warm_learning_rate: Adam learning rate of warm-started passes (continuation).
        floor_depth: continuation: a line that fades keeps its identity with a peak
            depth of at least this (normalised flux), instead of vanishing.
        warm_width_anchor: continuation: weight λ of the anchor of a warm-started
            line's Gauss/Lorentz mix, ln σ − ln γ, to its parent's (dimensionless: λ
            times the squared-residual cost of a unit change; its FWHM stays free). The
            default 1e-5 only holds mixes the data do not constrain; 0: no anchor.
        chain_axis: continuation: the grid axis whose rows are parent chains. A node's
            path to the start node steps first along this axis, then along the others
            from the last to the first, so every row of nodes along ``chain_axis`` is
            cloned outwards from the start's column, each node warm-started from its
            neighbour in that row. The default -1 (the last axis) is the rule of stores
            written before this setting existed: only the start's row along the first
            axis is a chain. 0 (Teff rows as chains) is better for the full default
            grid's held-out nodes with linear manifolds but worse in the M dwarfs and
            for the demo's window (README, *Teff rows as chains*).
        warm_track_anchor: continuation: weight λ of the track anchor of a warm-started
            line's ln a, ln σ, ln γ to the values its track predicts (the parent's,
            continued along the secant through the grandparent where both lie on the
            node's grid line), dimensionless like ``warm_width_anchor``; 0 (default):
            off. Between nodes where a dense blend can be split among its lines in many
            ways (the TiO bands of M dwarfs), the fit otherwise trades absorption
            between neighbouring lines from node to node and the tracks zig-zag; the
            anchor picks the split that continues the track. Measured on the default
            grid's Teff row at log g 4.5, [Fe/H] 0, 3000–4400 K without 3500 K: the
            cubic emulator's error at 3500 K 3.34e-3 (off), 2.37e-3 (1e-3), 2.21e-3
            (3e-3), at the cost of the nodes' median residual RMS (5.6e-4, 6.7e-4,
            7.8e-4). On the whole grid with the default tree (where only the start's
            Teff row is a chain) 1e-3 was worse: held-out cubic 1.79e-3 against
            1.63e-3 (README, *Track anchor*); hence off.
        prime_broad: continuation: before the start node is cloned, the node at the top
            of the first axis in the start's row (the hottest star of a grid whose first
            axis is Teff) is cloned cold, and its lines at least ``prime_broad`` × 25
            pixels wide (hydrogen lines, the Ca II triplet's wings) join the start
            node's detected lines as initial lines, at their centres and widths there.
            A broad line is cloned best where it is strongest: at the start (6000 K on
            the default grid) a Paschen line is shallow with a metal line on its core,
            and detection there splits it into the metal line and offset broad lines
            that the sweep then carries and that trade depth from node to node. 0 (default):
            off (stores written before this setting read 0). Measured on the whole
            default grid with 1: held-out cubic hot 5.4e-4 (off: 8.9e-4), cool 2.16e-3
            (off: 1.90e-3), all 1.79e-3 (off: 1.63e-3); hence off (README, *Starting at
            the hot end*).
        relax_passes: continuation: relaxation passes over the whole grid after the
            back-fill. In each pass every node (in sweep order, ``batch_size`` at a time,
            each batch seeing the nodes relaxed before it) is refitted for
            ``relax_epochs`` Adam steps, starting from the values its grid neighbours
            interpolate to (per line and axis, linear interpolation between the nearest
            cloned nodes on either side, averaged over the axes where both carry the
            line), and the refit replaces the node's clone when its residual RMS is at
            most 1.1 times the node's. The sweep describes a blend the way the parent did;
            cousins in the sweep tree (Teff neighbours away from the start's row) drift
            apart, and relaxing pulls each node towards a decomposition its neighbours
            share. Measured on the default grid without its 108 held-out nodes (the
            back-fill stepping over them; README, *Relaxation*): held-out cubic RMS
            1.07e-3 after one pass (~600 s on 2 cores), 9.9e-4 after two (~650 s more),
            median residual RMS 2.44e-4 / 2.26e-4, roughness of ln γ 4.9 / 3.7 times the
            truth's. Default 2; 0: off (stores written before this setting read 0).
        relax_epochs: continuation: Adam steps of each node's refit in a relaxation
            pass; 0: ``warm_epochs`` (what stores written before this setting did).
        birth_epochs: continuation: Adam steps of the sweep's second fit of a node,
            after its births (the first takes ``warm_epochs``); 0: ``warm_epochs``
            (what stores written before this setting did). Both at 40 on the default
            grid: the clone 23 % faster, but its median residual RMS 6.1e-4 against
            2.3e-4 and the held-out cubic emulator 1.16e-3 against 9.8e-4 (README,
            *Fewer epochs, tried*); hence 0.
        parallel_batches: continuation: batches of ``batch_size`` nodes fitted as one
            *round* — in the sweep, ready nodes whose fits do not depend on each other;
            in a relaxation pass, consecutive batches whose refits start from the
            neighbours' values before the round (Jacobi within a round, Gauss–Seidel
            between rounds). Everything between fits runs batch after batch in a fixed
            order, so the store does not depend on where the fits run:
            ``clone_grid(..., workers=N)`` fits a round's batches side by side in N
            local processes (:mod:`jaxspec.clone._processes`), and any N gives the store
            of one process. 1: one batch at a time (stores written before this setting
            read 1). Default 2: on the default grid with ``workers=2`` on 2 cores the
            clone took 2,282 s against 2,674 s in one process (sweep 1.11×, relaxation
            1.24× faster), its store about as good (README, *Two processes*).
        warm_merge: continuation: after a node's first warm fit and its births,
            families of live lines that describe one feature (centres within half the
            broader FWHM, FWHMs within a factor 1/``warm_merge`` of each other: the
            cold clone's rule, ratio 0.25) are merged into their strongest line,
            which keeps its identity; an absorbed line fades to the floor (it keeps its
            identity), an absorbed birth is dropped. A node keeps its merges only where
            its refit fits at least as well as its first warm fit; elsewhere it is
            refitted without them. A line whose width changes along the grid is
            otherwise handed over to a birth in its core (Ca II 8542 on the default
            grid: 2.6 Å wide at 6000 K, 0.26 Å at 11000 K), and both are carried on.
            0 (default): off (stores written before this setting read 0). Measured at
            0.25 on the default grid (README, *Merging families in the sweep, tried*):
            clone 1,717 s against 1,913 s, 5,219 identities against 5,622, significant /
            truth 2.16 against 2.47, but held-out cubic RMS 1.93e-3 against 9.9e-4: a
            merged centre is held within ``max_shift`` of the strongest line's reference,
            and the node-wide guard let the coolest nodes lose a 0.78-deep line at
            8866.85 Å. With the local check at the clipped centre: cubic 1.84e-3, the
            worst error 0.44 at Ca II 8498 / Pa 16 (6500 K), where neighbouring nodes
            merged the feature into different identities. Hence off.
        top_root: continuation: 1 grows a second tree from the other end of the first
            axis. The node at the top of the first axis in the start's row (the hottest
            star of a grid whose first axis is Teff) is cloned cold too, and every node
            above the start on the first axis is swept from it (downwards) instead of from
            the start (upwards); the nodes at and below the start are swept from the start
            as before. Where the two trees meet (each node of the start's column and its
            nearest cloned node above), lines that both clones carry (centres within
            ``_MATCH_PIXELS`` pixels or ``_MATCH_FWHM`` of the FWHM, FWHMs within a factor
            2, mutual nearest) are given one identity before the back-fill
            (``_Sweep._stitch``). Why: a hydrogen line that grows along the sweep is
            built by the metal lines in its core widening to carry its wings (at 11000 K
            on the default grid each Paschen line became 10-25 lines, 2.4 times the true
            number of significant lines), while a sweep that starts where the line is
            strongest keeps it one line and lets the metal lines appear as it weakens.
            **Experimental, not working yet** (a warning says so): at the meeting
            columns the two trees describe 10-20 % of the live lines differently, and a
            line handed from one identity to another between two nodes vanishes in the
            interpolation between them. Measured on the default grid (README, *Two
            roots, tried*): significant lines / truth at most 1.69 (one tree: 2.45),
            held-out cubic 1.01e-3 (9.85e-4), but 8.7e-2 flux RMS at 6050 K, between the
            meeting columns (4.3e-4). 0 (default): one tree (stores written before this
            setting read 0).
    """

    prominence: float = 0.005
    wing_cut: int = 30000
    epochs: int = 100
    learning_rate: float = 0.05
    max_shift: float = 0.05
    passes: int = 2
    deblend: int = 8
    amplitude_margin: float = 1.0
    width_margin: float = 1.1
    tolerance: float = 1e-5
    method: str = "continuation"
    warm_epochs: int = 80
    warm_learning_rate: float = 0.05
    floor_depth: float = 1e-4
    warm_width_anchor: float = 1e-5
    chain_axis: int = -1
    warm_track_anchor: float = 0.0
    prime_broad: float = 0.0
    relax_passes: int = 2
    relax_epochs: int = 0
    birth_epochs: int = 0
    parallel_batches: int = 2
    warm_merge: float = 0.0
    top_root: int = 0

    def __post_init__(self):
        def integer(value, low):
            try:
                return int(value) == value and value >= low
            except (TypeError, ValueError):
                return False

        checks = [
            ("prominence", self.prominence > 0, "a positive normalised-flux depth, e.g. 0.005"),
            ("wing_cut", integer(self.wing_cut, 256),
             "an integer number of pixels >= 256, e.g. 6000"),
            ("epochs", integer(self.epochs, 1), "an integer >= 1, e.g. 100"),
            ("learning_rate", self.learning_rate > 0, "a positive number, e.g. 0.05"),
            ("max_shift", self.max_shift > 0, "a positive shift in Å, e.g. 0.05"),
            ("passes", self.passes in (1, 2), "1 or 2"),
            ("deblend", integer(self.deblend, 0), "an integer >= 0"),
            ("amplitude_margin", self.amplitude_margin > 0, "a positive ln factor"),
            ("width_margin", self.width_margin > 0, "a positive ln factor"),
            ("tolerance", 0 < self.tolerance < 1, "a small positive number, e.g. 1e-5"),
            ("method", self.method in METHODS, f"one of {METHODS}"),
            ("warm_epochs", integer(self.warm_epochs, 1), "an integer >= 1, e.g. 80"),
            ("warm_learning_rate", self.warm_learning_rate > 0,
             "a positive number, e.g. 0.05"),
            ("floor_depth", 0 < self.floor_depth < self.prominence,
             "a positive depth below prominence, e.g. 1e-4"),
            ("warm_width_anchor", self.warm_width_anchor >= 0,
             "a weight >= 0 (0: no anchor), e.g. 1e-5"),
            ("chain_axis", integer(self.chain_axis, -8),
             "an integer axis index (0: the first axis; -1: the last)"),
            ("warm_track_anchor", self.warm_track_anchor >= 0,
             "a weight >= 0 (0: no anchor), e.g. 1e-3"),
            ("prime_broad", self.prime_broad >= 0,
             "a width >= 0 in units of 25 pixels (0: off), e.g. 1"),
            ("relax_passes", integer(self.relax_passes, 0), "an integer >= 0, e.g. 2"),
            ("relax_epochs", integer(self.relax_epochs, 0),
             "an integer >= 0 (0: warm_epochs), e.g. 40"),
            ("birth_epochs", integer(self.birth_epochs, 0),
             "an integer >= 0 (0: warm_epochs), e.g. 40"),
            ("warm_merge", 0.0 <= self.warm_merge <= 1.0,
             "a FWHM ratio in [0, 1] (0: off), e.g. 0.25"),
            ("parallel_batches", integer(self.parallel_batches, 1),
             "an integer >= 1, e.g. 2"),
            ("top_root", self.top_root in (0, 1),
             "0 (one tree) or 1 (a second tree from the top of the first axis)"),
        ]
        for name, ok, fix in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; pass {fix}")
        for name in ("wing_cut", "epochs", "passes", "deblend", "warm_epochs", "chain_axis",
                     "relax_passes", "relax_epochs", "birth_epochs", "parallel_batches",
                     "top_root"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("prominence", "learning_rate", "max_shift", "amplitude_margin",
                     "width_margin", "tolerance", "warm_learning_rate", "floor_depth",
                     "warm_width_anchor", "warm_track_anchor", "prime_broad", "warm_merge"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "method", str(self.method))

    @property
    def relax_steps(self) -> int:
        """Adam steps of a relaxation refit (``relax_epochs``, or ``warm_epochs``)."""
        return self.relax_epochs or self.warm_epochs

    @property
    def birth_steps(self) -> int:
        """Adam steps of the refit after births (``birth_epochs``, or ``warm_epochs``)."""
        return self.birth_epochs or self.warm_epochs

    def as_dict(self) -> dict:
        """Settings as a plain dict (the clone store's root attributes)."""
        return asdict(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Names of all settings, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))


def resolve_settings(settings: CloneSettings | Mapping | None, options: Mapping,
                     where: str) -> CloneSettings:
    """``settings`` (a CloneSettings, a mapping or None for the defaults) with keyword
    ``options`` applied on top; an unknown option is a TypeError naming the valid ones."""
    if settings is None:
        settings = CloneSettings()
    elif isinstance(settings, Mapping):
        options = {**settings, **options}
        settings = CloneSettings()
    elif not isinstance(settings, CloneSettings):
        raise TypeError(
            f"{where}: settings is a {type(settings).__name__}; pass a "
            "jaxspec.clone.CloneSettings, a dict of its fields, or None"
        )
    unknown = sorted(set(options) - set(CloneSettings.names()))
    if unknown:
        raise TypeError(
            f"{where}: unknown clone setting(s) {unknown}; the settings are "
            f"{', '.join(CloneSettings.names())} (see jaxspec.clone.CloneSettings)"
        )
    return dataclasses.replace(settings, **options) if options else settings
