r"""Cross-model line identification: one line, one row, across every clone of a grid.

Each node of a grid is cloned independently (:mod:`jaxspec.clone`): a list of pseudo-Voigt
lines whose fitted centres :math:`\mu'` drift from node to node. To interpolate a line's
parameters over the grid (:mod:`jaxspec.manifold`) the occurrences of the same line must
be grouped. blase3D (Shankar et al., Sect. 3.1) groups by the *identifier*: the
pre-optimisation centre :math:`\mu`, recorded to 0.01 Å; occurrences with equal identifier
are one line. That is ``matcher="id"`` here.

Identifiers come from peak finding on each node's spectrum, so a line that shifts (pressure
shifts, blends) may change identifier between neighbouring nodes; the id rule then splits it
into several lines, each absent where the others are present, and the line vanishes
between those nodes (the "missing chunk" of the paper's fig. 3). ``matcher="track"``
follows the drifting centre instead: two occurrences at *neighbouring* nodes (adjacent along
one axis, skipping unobserved nodes) are candidates when their fitted centres are mutual
nearest neighbours within ``tolerance`` (default 0.03 Å); equal identifiers anywhere are
candidates too. Candidates are accepted greedily, closest first (identifier links last),
unless the link would give one line two occurrences at the same node (constrained single
linkage; such links are counted as ``refused``). Lines are the resulting groups, so a
chain through a dense line forest cannot swallow its neighbours.

The result is dense: ``values`` ``(n_lines, *grid_shape, 4)`` holding, per line and node,
``(μ' − μ [Å], ln a, ln σ, ln γ)`` with μ the line's reference centre (its identifier for
the id rule; the median identifier of its occurrences for tracking). Where a line is absent
(:func:`complete_values`):

* ln a = −1000 (the paper's fill: the line is nullified one e-fold per 0.1 % of a cell
  away from a node where it exists);
* μ' − μ, ln σ and ln γ take the value of the *nearest node that has the line*, searched
  along the first axis (Teff) first, then along the next axes for rows that lack it; so
  interpolation near a detection never drags widths or shifts towards arbitrary values
  (heat maps stay readable, gradients stay tame).

Nodes without a clone (held out, or missing from the grid) are *unobserved*: their values
are the linear interpolation along the first axis with observed nodes on both sides
(else the next axis; else the nearest observed node), i.e. exactly what the manifold would
give if the node were not on the grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from jaxspec.lines import DEAD_LN_AMPLITUDE, LineTable
from jaxspec.synthesis import ABSENT_LN_AMPLITUDE

__all__ = [
    "ABSENT_LN_AMPLITUDE",
    "DEAD_LN_AMPLITUDE",
    "Identification",
    "check_settings",
    "complete_values",
    "identify_lines",
    "identify_store",
]

#: Identifier precision of the blase3D rule, Å.
ID_STEP = 0.01
_MATCHERS = ("id", "track", "identity")
_BLOCK = 4096  # lines per block in complete_values (bounds temporary memory)


@dataclass(frozen=True, eq=False)
class Identification:
    """Lines grouped across the nodes of a grid (the output of :func:`identify_lines`).

    Attributes:
        axes: ``{name: 1-D float64}`` grid axes, in parameter order.
        line_id: ``(n_lines,)`` float64 identifier, Å, a multiple of 0.01 Å.
        center: ``(n_lines,)`` float64 reference centre μ, Å.
        values: ``(n_lines, *grid_shape, 4)`` float (μ' − μ [Å], ln a, ln σ, ln γ),
            completed at absent and unobserved entries (module docstring).
        present: ``(n_lines, *grid_shape)`` bool, the line was detected at that node.
        observed: ``(*grid_shape)`` bool, the node had a clone.
        matcher: "id" or "track".
        duplicates: occurrences dropped because their line already had an occurrence at
            that node (id rule: two fitted lines rounding to one identifier; the one with
            the larger ln a is kept).
        refused: tracker links refused because they would give a line two occurrences
            at one node.
        meta: anything passed through (wavelength, clone settings, store paths).
    """

    axes: dict[str, np.ndarray]
    line_id: np.ndarray
    center: np.ndarray
    values: np.ndarray
    present: np.ndarray
    observed: np.ndarray
    matcher: str
    duplicates: int = 0
    refused: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def n_lines(self) -> int:
        return int(self.line_id.size)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(self.observed.shape)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.axes)

    @property
    def lines_per_node(self) -> np.ndarray:
        """``(*grid_shape)`` int, detected lines at each node (0 where unobserved)."""
        return self.present.sum(axis=0)

    def summary(self) -> str:
        """One paragraph: unique lines, lines per node (mean, min, max), drops."""
        per = self.lines_per_node[self.observed]
        text = (
            f"matcher={self.matcher}: {self.n_lines:,} unique lines over "
            f"{int(self.observed.sum())} observed nodes "
            f"({self.observed.size - int(self.observed.sum())} unobserved); lines per node "
            f"mean {per.mean():,.0f}, min {per.min():,}, max {per.max():,}"
            if per.size else f"matcher={self.matcher}: no observed node"
        )
        if self.duplicates:
            text += f"; {self.duplicates} duplicate occurrence(s) dropped"
        if self.refused:
            text += f"; {self.refused:,} tracking link(s) refused (two occurrences at a node)"
        return text


# ---------------------------------------------------------------------------- inputs


def _node_index(node, shape: tuple[int, ...]) -> int:
    index = np.asarray(node.index).reshape(-1)
    if index.size == 1 and len(shape) != 1:
        flat = int(index[0])
    else:
        if index.size != len(shape):
            raise ValueError(
                f"node index {tuple(index)} has {index.size} entries but the grid has "
                f"{len(shape)} axes"
            )
        if np.any(index < 0) or np.any(index >= np.asarray(shape)):
            raise ValueError(f"node index {tuple(index)} is outside the grid shape {shape}")
        flat = int(np.ravel_multi_index(tuple(int(i) for i in index), shape))
    if not 0 <= flat < math.prod(shape):
        raise ValueError(f"node index {flat} is outside the grid shape {shape}")
    return flat


def _gather(nodes: Iterable, shape: tuple[int, ...]):
    """Concatenate the occurrences of every node: dict of (n_occ,) arrays + observed."""
    cols = {k: [] for k in ("node", "line_id", "center", "ln_amplitude", "ln_sigma", "ln_gamma",
                            "identity")}
    observed = np.zeros(shape, dtype=bool)
    for node in nodes:
        flat = _node_index(node, shape)
        if observed.flat[flat]:
            raise ValueError(
                f"node {np.unravel_index(flat, shape)} appears twice among the clones; "
                "combine stores that clone disjoint sets of nodes"
            )
        observed.flat[flat] = True
        arrays = [np.asarray(getattr(node, k), dtype=np.float64).reshape(-1)
                  for k in ("line_id", "center", "ln_amplitude", "ln_sigma", "ln_gamma")]
        n = arrays[0].size
        if any(a.size != n for a in arrays):
            raise ValueError(
                f"node {np.unravel_index(flat, shape)}: line_id, center, ln_amplitude, "
                "ln_sigma and ln_gamma differ in length; the clone is corrupt"
            )
        bad = ~np.all([np.isfinite(a) for a in arrays], axis=0)
        if bad.any():
            raise ValueError(
                f"node {np.unravel_index(flat, shape)}: {int(bad.sum())} line(s) with "
                "NaN/inf parameters; re-clone that node"
            )
        identity = getattr(node, "identity", None)
        if identity is None:
            identity = np.full(n, -1, dtype=np.int64)
        identity = np.asarray(identity, dtype=np.int64).reshape(-1)
        if identity.size != n:
            raise ValueError(
                f"node {np.unravel_index(flat, shape)}: identity has {identity.size} "
                f"entries for {n} lines; the clone is corrupt"
            )
        cols["identity"].append(identity)
        cols["node"].append(np.full(n, flat, dtype=np.int64))
        for k, a in zip(list(cols)[1:6], arrays):
            cols[k].append(a)
    occ = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}
    occ["node"] = occ["node"].astype(np.int64)
    occ["identity"] = occ["identity"].astype(np.int64)
    return occ, observed


# ---------------------------------------------------------------------------- matchers


def _id_keys(line_id: np.ndarray) -> np.ndarray:
    return np.round(line_id / ID_STEP).astype(np.int64)


def _match_identity(occ) -> np.ndarray:
    """Line label of each occurrence from the identities a continuation clone recorded."""
    if np.any(occ["identity"] < 0):
        raise ValueError(
            "matcher='identity' needs clones with line identities (a continuation clone "
            "store, jaxspec.clone.clone_grid's default); these clones have none: use "
            "matcher='id' or 'track'"
        )
    _, label = np.unique(occ["identity"], return_inverse=True)
    return label.reshape(-1)


def _match_id(occ) -> np.ndarray:
    """Line label of each occurrence under the blase3D rule (equal 0.01 Å identifiers)."""
    _, label = np.unique(_id_keys(occ["line_id"]), return_inverse=True)
    return label.reshape(-1)


def _neighbour_pairs(observed: np.ndarray):
    """(a, b) flat indices of observed nodes adjacent along one axis (skipping gaps)."""
    shape = observed.shape
    flat = np.arange(observed.size).reshape(shape)
    pairs = []
    for d in range(observed.ndim):
        moved = np.moveaxis(flat, d, -1).reshape(-1, shape[d])
        seen = np.moveaxis(observed, d, -1).reshape(-1, shape[d])
        for row, ok in zip(moved, seen):
            idx = row[ok]
            pairs.extend(zip(idx[:-1].tolist(), idx[1:].tolist()))
    return pairs


def _best_match(ca, pa, ka, cb, pb, kb, tolerance, reach=3):
    """For each occurrence of node a (centres ca, (n, 3) ln a, ln σ, ln γ pa, identifier
    keys ka; sorted by centre) the index of its best partner in node b and the cost;
    cost = |Δμ'|/tol + Σ|Δ ln(a, σ, γ)| + (0.5 unless the identifiers are equal); inf
    beyond the tolerance."""
    pos = np.searchsorted(cb, ca)
    best = np.zeros(ca.size, np.int64)
    cost = np.full(ca.size, np.inf)
    for k in range(-reach, reach):
        j = np.clip(pos + k, 0, cb.size - 1)
        gap = np.abs(cb[j] - ca)
        c = (gap / tolerance + np.abs(pb[j] - pa).sum(axis=1)
             + np.where(kb[j] == ka, 0.0, 0.5))
        c = np.where(gap <= tolerance, c, np.inf)
        better = c < cost
        best = np.where(better, j, best)
        cost = np.where(better, c, cost)
    return best, cost


def _match_track(occ, observed: np.ndarray, tolerance: float):
    """Labels under tracking; returns (label, n_refused).

    Candidate links join occurrences at neighbouring nodes that are each other's best
    partner by the cost |Δμ'|/tolerance + Σ|Δ ln(a, σ, γ)| + 0.5 [identifiers differ], within
    ``tolerance`` in centre (ordered by cost), then equal identifiers anywhere (last).
    Links are accepted greedily in that order unless they would put two occurrences of
    one line at the same node (constrained single linkage), so no line ever holds two
    occurrences at a node and dense line forests do not chain into one."""
    n = occ["node"].size
    order = np.lexsort((occ["center"], occ["node"]))
    node_sorted = occ["node"][order]
    starts = np.searchsorted(node_sorted, np.arange(observed.size + 1))
    keys = _id_keys(occ["line_id"])
    shape_params = np.stack([occ["ln_amplitude"], occ["ln_sigma"], occ["ln_gamma"]], axis=1)
    rows, cols, dist = [], [], []
    for a, b in _neighbour_pairs(observed):
        ia = order[starts[a]:starts[a + 1]]
        ib = order[starts[b]:starts[b + 1]]
        if ia.size == 0 or ib.size == 0:
            continue
        fa = (occ["center"][ia], shape_params[ia], keys[ia])
        fb = (occ["center"][ib], shape_params[ib], keys[ib])
        nab, cost = _best_match(*fa, *fb, tolerance)
        nba, _ = _best_match(*fb, *fa, tolerance)
        keep = (nba[nab] == np.arange(ia.size)) & np.isfinite(cost)
        rows.append(ia[keep])
        cols.append(ib[nab[keep]])
        dist.append(cost[keep])
    # Equal identifiers, after every neighbour link, in grid order.
    by_id = np.lexsort((occ["node"], keys))
    same = keys[by_id[1:]] == keys[by_id[:-1]]
    rows.append(by_id[:-1][same])
    cols.append(by_id[1:][same])
    dist.append(np.full(int(same.sum()), np.inf))
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    d = np.concatenate(dist)
    first = np.argsort(d, kind="stable")  # inf (identifier links) last, in grid order
    r, c = r[first].tolist(), c[first].tolist()
    node = occ["node"].tolist()
    parent = list(range(n))
    members: dict[int, set] = {}  # root -> nodes it holds (singletons implicit)

    def find(x):
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    refused = 0
    for x, y in zip(r, c):
        rx, ry = find(x), find(y)
        if rx == ry:
            continue
        sx = members.get(rx) or {node[rx]}
        sy = members.get(ry) or {node[ry]}
        if not sx.isdisjoint(sy):
            refused += 1
            continue
        if len(sx) < len(sy):
            rx, ry, sx, sy = ry, rx, sy, sx
        parent[ry] = rx
        sx |= sy
        members[rx] = sx
        members.pop(ry, None)
    roots = np.array([find(x) for x in range(n)], dtype=np.int64)
    _, label = np.unique(roots, return_inverse=True)
    return label.reshape(-1), refused


# ---------------------------------------------------------------------------- completion


def _fill_nearest_along(values, known, coords, axis):
    """Fill unknown entries of ``values`` (n, *shape, c) from the nearest known entry
    along ``axis`` (of the (n, *shape) mask ``known``); updates ``known`` in place."""
    size = known.shape[axis]
    if size == 1 or known.all():
        return
    k = np.moveaxis(known, axis, -1)  # a view: writing k writes known
    idx = np.arange(size, dtype=np.int32)
    prev = np.where(k, idx, np.int32(-1))
    np.maximum.accumulate(prev, axis=-1, out=prev)
    nxt = np.where(k, idx, np.int32(size))[..., ::-1]
    nxt = np.minimum.accumulate(nxt, axis=-1)[..., ::-1]
    found = ~k & ((prev >= 0) | (nxt < size))
    pos = np.nonzero(found)
    if not pos[0].size:
        return
    p, q = prev[pos], nxt[pos]
    x = coords[pos[-1]]
    # Nearer neighbour in coordinate units; ties go to the lower one.
    use_prev = (p >= 0) & ((q >= size) | (x - coords[np.maximum(p, 0)]
                                          <= coords[np.minimum(q, size - 1)] - x))
    src = np.where(use_prev, p, q)
    moved = np.moveaxis(values, axis, -2)  # (n, ..., size, c) view
    moved[pos] = moved[pos[:-1] + (src,)]
    k[pos] = True


def complete_values(
    values: np.ndarray,
    present: np.ndarray,
    observed: np.ndarray,
    axes: Mapping[str, np.ndarray] | Sequence[np.ndarray],
) -> np.ndarray:
    """Fill absent and unobserved entries of dense node values, in place.

    Args:
        values: ``(n_lines, *grid_shape, 4)`` (μ' − μ, ln a, ln σ, ln γ); entries where
            ``present`` is True are kept, all others are overwritten.
        present: ``(n_lines, *grid_shape)`` bool, line detected at an observed node.
        observed: ``(*grid_shape)`` bool, node cloned.
        axes: the grid axes (for nearest distances and linear interpolation).

    Returns:
        ``values`` (the same array): absent entries at observed nodes get ln a = −1000 and
        the nearest detection's other three values (first axis first); unobserved nodes
        get the linear interpolation of observed neighbours (module docstring).

    Raises:
        ValueError: shapes disagree, no node is observed, or a line is never present.
    """
    coords = [np.asarray(a, dtype=np.float64)
              for a in (axes.values() if isinstance(axes, Mapping) else axes)]
    shape = tuple(a.size for a in coords)
    observed = np.asarray(observed, dtype=bool)
    if observed.shape != shape or values.shape[1:-1] != shape or present.shape != values.shape[:-1]:
        raise ValueError(
            f"complete_values: values {values.shape}, present {present.shape} and observed "
            f"{observed.shape} do not fit the grid shape {shape}"
        )
    if not observed.any():
        raise ValueError("complete_values: no observed node; clone at least one node")
    present = present & observed
    never = ~present.reshape(present.shape[0], -1).any(axis=1)
    if never.any():
        raise ValueError(
            f"complete_values: {int(never.sum())} line(s) are present at no observed node "
            f"(first: row {int(np.flatnonzero(never)[0])}); drop them before completing"
        )
    for start in range(0, values.shape[0], _BLOCK):
        block = values[start:start + _BLOCK]
        known = present[start:start + _BLOCK].copy()
        amp = np.where(known, block[..., LineTable.LN_AMPLITUDE], LineTable.ABSENT)
        for d in range(len(shape)):
            _fill_nearest_along(block, known, coords[d], d + 1)
        block[..., LineTable.LN_AMPLITUDE] = amp
        values[start:start + _BLOCK] = block
    _fill_unobserved(values, observed, coords)
    return values


def _moved(index: tuple, axis: int, position: int) -> tuple:
    """``index`` with its entry on ``axis`` replaced by ``position``."""
    return tuple(position if e == axis else i for e, i in enumerate(index))


def _fill_unobserved(values, observed, coords):
    shape = observed.shape
    for flat in np.flatnonzero(~observed.reshape(-1)):
        index = np.unravel_index(flat, shape)
        single = None
        for d, axis in enumerate(coords):
            row = list(index)
            row[d] = slice(None)
            seen = observed[tuple(row)]
            i = index[d]
            below = np.flatnonzero(seen[:i])
            above = np.flatnonzero(seen[i + 1:]) + i + 1
            if below.size and above.size:
                lo, hi = below[-1], above[0]
                t = (axis[i] - axis[lo]) / (axis[hi] - axis[lo])
                values[(slice(None), *index)] = (
                    (1.0 - t) * values[(slice(None), *_moved(index, d, lo))]
                    + t * values[(slice(None), *_moved(index, d, hi))]
                )
                single = None
                break
            if single is None and (below.size or above.size):
                j = below[-1] if (below.size and (not above.size or
                                                  i - below[-1] <= above[0] - i)) else above[0]
                single = _moved(index, d, j)
        else:
            if single is None:
                raise ValueError(
                    f"complete_values: unobserved node {index} has no observed node on any "
                    "axis through it; clone more nodes"
                )
            values[(slice(None), *index)] = values[(slice(None), *single)]


# ---------------------------------------------------------------------------- entry points


def identify_lines(
    nodes: Iterable,
    axes: Mapping[str, np.ndarray],
    *,
    matcher: str = "id",
    tolerance: float = 0.03,
    dtype=np.float32,
    meta: dict | None = None,
) -> Identification:
    """Group the lines of per-node clones into one dense array over the grid.

    Args:
        nodes: iterable of clones, each with ``index`` (grid index tuple, or flat C-order
            int), ``line_id`` (pre-optimisation centre, Å, 0.01 Å steps), ``center``
            (fitted μ', Å), ``ln_amplitude``, ``ln_sigma``, ``ln_gamma`` (1-D arrays),
            e.g. the ``NodeClone`` records of ``CloneStore.iter_nodes()``.
        axes: ``{name: 1-D array}`` grid axes, parameter order.
        matcher: ``"id"`` (blase3D: equal identifiers), ``"track"`` (follow the fitted
            centre across neighbouring nodes; module docstring) or ``"identity"`` (the
            line identities recorded by continuation cloning: identification by
            construction; the nodes need an ``identity`` array).
        tolerance: largest |Δμ'| (Å) linked by the tracker between neighbouring nodes.
        dtype: float dtype of ``values`` (float32 default; offsets μ' − μ are small so
            float32 keeps them to 1e-9 Å).
        meta: passed through to the result.

    Returns:
        :class:`Identification`.

    Raises:
        ValueError: unknown matcher, a node index outside the grid or given twice, NaN
            line parameters, or no line at all.
    """
    if matcher not in _MATCHERS:
        raise ValueError(f"matcher={matcher!r}; pass one of {_MATCHERS}")
    if not tolerance > 0:
        raise ValueError(f"tolerance={tolerance!r} Å must be positive (e.g. 0.03)")
    axes = {str(k): np.asarray(v, dtype=np.float64) for k, v in axes.items()}
    shape = tuple(a.size for a in axes.values())
    occ, observed = _gather(nodes, shape)
    if occ["node"].size == 0:
        raise ValueError("identify_lines: the clones hold no line at all; nothing to identify")
    refused = 0
    if matcher == "id":
        label = _match_id(occ)
    elif matcher == "identity":
        label = _match_identity(occ)
    else:
        label, refused = _match_track(occ, observed, tolerance)
    n_lines = int(label.max()) + 1
    # Reference centre: the identifier (id rule) or the median identifier (tracking,
    # identities).
    if matcher == "id":
        line_id = np.zeros(n_lines)
        line_id[label] = _id_keys(occ["line_id"]) * ID_STEP
        center = line_id.copy()
    else:
        order = np.argsort(label, kind="stable")
        bounds = np.flatnonzero(np.diff(label[order])) + 1
        center = np.array([np.median(occ["line_id"][g]) for g in np.split(order, bounds)])
        line_id = np.round(center / ID_STEP) * ID_STEP
    # Sort lines by centre (readable files, local restrict).
    by_center = np.argsort(center, kind="stable")
    rank = np.empty(n_lines, np.int64)
    rank[by_center] = np.arange(n_lines)
    label = rank[label]
    center, line_id = center[by_center], line_id[by_center]
    # One occurrence per (line, node): keep the strongest.
    n_nodes = observed.size
    cell = label * n_nodes + occ["node"]
    order = np.lexsort((-occ["ln_amplitude"], cell))
    first = np.ones(order.size, dtype=bool)
    first[1:] = cell[order][1:] != cell[order][:-1]
    keep = order[first]
    duplicates = int(order.size - keep.size)
    values = np.zeros((n_lines, n_nodes, LineTable.N_COLUMNS), dtype=dtype)
    present = np.zeros((n_lines, n_nodes), dtype=bool)
    lab, nod = label[keep], occ["node"][keep]
    present[lab, nod] = True
    values[lab, nod, LineTable.SHIFT] = occ["center"][keep] - center[lab]
    values[lab, nod, LineTable.LN_AMPLITUDE] = occ["ln_amplitude"][keep]
    values[lab, nod, LineTable.LN_SIGMA] = occ["ln_sigma"][keep]
    values[lab, nod, LineTable.LN_GAMMA] = occ["ln_gamma"][keep]
    values = values.reshape(n_lines, *shape, LineTable.N_COLUMNS)
    present = present.reshape(n_lines, *shape)
    complete_values(values, present, observed, axes)
    return Identification(
        axes=axes, line_id=line_id, center=center, values=values, present=present,
        observed=observed, matcher=matcher, duplicates=duplicates, refused=refused,
        meta=dict(meta or {}),
    )


def check_settings(settings: Mapping, expected: Mapping, source: str = "clone store") -> None:
    """Raise ValueError unless every ``expected`` setting equals the one in ``settings``.

    Numbers compare to a relative 1e-9; a missing setting is an error too.
    """
    wrong = []
    for key, want in expected.items():
        if key not in settings:
            wrong.append(f"{key} is not recorded (expected {want!r})")
            continue
        have = settings[key]
        try:
            same = math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=0.0)
        except (TypeError, ValueError):
            same = str(have) == str(want)
        if not same:
            wrong.append(f"{key}={have!r} (expected {want!r})")
    if wrong:
        raise ValueError(
            f"{source} was cloned with other settings than expected: {'; '.join(wrong)}. "
            "Re-clone with the expected settings or drop the expectation."
        )


def identify_store(
    stores,
    *,
    matcher: str | None = None,
    tolerance: float = 0.03,
    expect_settings: Mapping | None = None,
    dtype=np.float32,
) -> Identification:
    """:func:`identify_lines` on one or more opened clone stores (``CloneStore``).

    Several stores (e.g. parts of a grid cloned on different machines) are combined when
    they agree on parameter names, axes, wavelength grid and clone settings; each node may
    appear in one store only.

    Args:
        stores: a store or a sequence of stores with ``param_names``, ``axes``,
            ``wavelength``, ``settings`` and ``iter_nodes()``.
        matcher, tolerance, dtype: see :func:`identify_lines`. ``matcher=None`` (the
            default) is ``"identity"`` for continuation stores (their lines carry
            identities) and ``"id"`` otherwise.
        expect_settings: ``{name: value}`` that every store's settings must match (e.g.
            ``{"prominence": 0.005, "wing_cut": 6000}``).

    Returns:
        :class:`Identification`; ``meta`` holds ``wavelength``, ``settings`` and
        ``sources``.

    Raises:
        ValueError: stores disagree (naming both files and the differing item), settings
            differ from ``expect_settings``, or a node appears in two stores.
    """
    if not isinstance(stores, (list, tuple)):
        stores = [stores]
    if not stores:
        raise ValueError("identify_store: no clone store given")
    names = [str(getattr(s, "path", f"store #{i}")) for i, s in enumerate(stores)]
    first = stores[0]
    axes = {k: np.asarray(v, dtype=np.float64) for k, v in first.axes.items()}
    wl = np.asarray(first.wavelength, dtype=np.float64)
    settings = dict(first.settings)
    for name, store in zip(names, stores):
        if expect_settings:
            check_settings(store.settings, expect_settings, source=name)
    for name, store in zip(names[1:], stores[1:]):
        if tuple(store.param_names) != tuple(first.param_names):
            raise ValueError(
                f"{name} has parameters {tuple(store.param_names)} but {names[0]} has "
                f"{tuple(first.param_names)}; combine stores of one grid only"
            )
        for k, a in axes.items():
            b = np.asarray(store.axes[k], dtype=np.float64)
            if b.shape != a.shape or not np.allclose(a, b, rtol=1e-12, atol=0):
                raise ValueError(
                    f"{name} and {names[0]} have different {k} axes; combine stores of "
                    "one grid only"
                )
        w = np.asarray(store.wavelength, dtype=np.float64)
        if w.shape != wl.shape or not np.allclose(w, wl, rtol=0, atol=1e-9):
            raise ValueError(
                f"{name} and {names[0]} were cloned on different wavelength grids "
                f"({w.size} vs {wl.size} px); combine stores of one grid only"
            )
        check_settings(store.settings, settings, source=f"{name} (against {names[0]})")

    if matcher is None:
        matcher = ("identity" if all(getattr(s, "identities", None) is not None
                                     for s in stores) else "id")
    if matcher == "identity" and len(stores) > 1:
        raise ValueError(
            "matcher='identity' reads the identities of one continuation store; "
            f"{len(stores)} stores were given (their identities are not shared)"
        )

    def all_nodes():
        for store in stores:
            yield from store.iter_nodes()

    return identify_lines(
        all_nodes(), axes, matcher=matcher, tolerance=tolerance, dtype=dtype,
        meta={"wavelength": wl, "settings": settings, "sources": names},
    )
