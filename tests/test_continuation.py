"""Continuation cloning (jaxspec.clone.sweep): the sweep tree, line identities kept across
the grid, births and back-fill, resume, and reading version-1 stores.

A tiny 3 x 2 grid of 20 Å spectra keeps the compiles few and shared.
"""

import h5py
import numpy as np
import pytest

from jaxspec import LineList
from jaxspec.clone import clone_grid
from jaxspec.clone.detection import _fwhm_eta, _peak_value
from jaxspec.clone.sweep import _lines, _profile_products, sweep_parents, top_root_node
from jaxspec.grid import SpectralGrid
from jaxspec.identify import identify_store
from jaxspec.io.clone_store import CloneStore

WL = np.linspace(8500.0, 8520.0, 2001)
AXES = {"teff": np.array([4000.0, 4500.0, 5000.0]), "logg": np.array([4.0, 4.5])}
KW = {"epochs": 60, "passes": 1, "warm_epochs": 30, "batch_size": 2, "progress": False,
      "method": "continuation", "relax_passes": 0}
BORN = 8510.33  # a line that is absent at the coolest Teff and grows with Teff


def node_lines(i, j):
    """20 lines whose depths and widths change smoothly with (i, j); line BORN only
    from i = 1 on."""
    rng = np.random.default_rng(7)
    center = np.sort(8500.6 + 0.93 * np.arange(20) + rng.uniform(0, 0.2, 20))
    center = center[np.abs(center - BORN) > 0.3]
    depth = np.exp(rng.uniform(np.log(0.05), np.log(0.5), center.size)) * (1 - 0.15 * i)
    sigma = rng.uniform(0.02, 0.04, center.size) * (1 + 0.05 * j)
    gamma = rng.uniform(0.01, 0.03, center.size)
    if i >= 1:
        center, depth = np.r_[center, BORN], np.r_[depth, 0.12 * i]
        sigma, gamma = np.r_[sigma, 0.03], np.r_[gamma, 0.02]
    ln_s, ln_g = np.log(sigma), np.log(gamma)
    ln_a = np.log(depth) - np.log(_peak_value(ln_s, ln_g))
    return LineList(center, ln_a, ln_s, ln_g)


@pytest.fixture(scope="module")
def grid():
    flux = np.stack([np.stack([np.asarray(node_lines(i, j).flux_exact(WL))
                               for j in range(2)]) for i in range(3)])
    return SpectralGrid(AXES, WL, flux, normalized=True)


@pytest.fixture(scope="module")
def store(grid, tmp_path_factory):
    return clone_grid(grid, tmp_path_factory.mktemp("cont") / "c.h5", **KW)


def test_sweep_tree_steps_along_the_last_differing_axis():
    exists = np.ones((3, 3), dtype=bool)
    parents = sweep_parents((3, 3), exists, (1, 1))
    assert parents[(1, 1)] is None
    assert parents[(0, 1)] == (1, 1) and parents[(2, 1)] == (1, 1)
    assert parents[(0, 0)] == (0, 1) and parents[(2, 2)] == (2, 1)
    exists[0, 1] = False  # a missing node is stepped over
    parents = sweep_parents((3, 3), exists, (1, 1))
    assert (0, 1) not in parents
    assert parents[(0, 0)] == (1, 1) and parents[(0, 2)] == (1, 1)
    assert parents[(2, 0)] == (2, 1)


def test_sweep_tree_makes_every_row_along_the_chain_axis_a_parent_chain():
    exists = np.ones((5, 3, 2), dtype=bool)
    parents = sweep_parents(exists.shape, exists, (2, 1, 0), chain_axis=0)
    for j in range(3):  # every row along axis 0 is a chain out of the start's column
        for k in range(2):
            assert parents[(0, j, k)] == (1, j, k) and parents[(1, j, k)] == (2, j, k)
            assert parents[(4, j, k)] == (3, j, k) and parents[(3, j, k)] == (2, j, k)
    # the start's column: the last axis first, then the middle one
    assert parents[(2, 0, 1)] == (2, 0, 0) and parents[(2, 0, 0)] == (2, 1, 0)
    assert parents[(2, 1, 1)] == (2, 1, 0) and parents[(2, 1, 0)] is None
    # -1 is the rule of stores written before chain_axis: the last axis first
    old = sweep_parents(exists.shape, exists, (2, 1, 0), chain_axis=-1)
    assert old[(0, 0, 1)] == (0, 0, 0) and old[(0, 0, 0)] == (0, 1, 0)
    assert old == sweep_parents(exists.shape, exists, (2, 1, 0))
    with pytest.raises(ValueError, match="chain_axis=3 is not an axis"):
        sweep_parents(exists.shape, exists, (2, 1, 0), chain_axis=3)


def test_top_root_sweeps_the_nodes_above_the_start_from_the_top():
    exists = np.ones((5, 3, 2), dtype=bool)
    one = sweep_parents(exists.shape, exists, (2, 1, 0))
    two = sweep_parents(exists.shape, exists, (2, 1, 0), top_root=True)
    assert top_root_node(exists, (2, 1, 0)) == (4, 1, 0)
    assert two[(4, 1, 0)] is None and two[(2, 1, 0)] is None  # two roots
    assert two[(3, 1, 0)] == (4, 1, 0)  # the start's row: downwards from the top
    assert two[(3, 0, 1)] == (3, 0, 0) and two[(3, 0, 0)] == (3, 1, 0)  # same rule
    assert two[(4, 2, 0)] == (4, 1, 0)
    # at and below the start the tree is the one-root tree
    assert all(two[n] == one[n] for n in one if n[0] <= 2)
    exists[4, 1, 0] = False  # a missing top: the last existing node of the row
    assert top_root_node(exists, (2, 1, 0)) == (3, 1, 0)
    two = sweep_parents(exists.shape, exists, (2, 1, 0), top_root=True)
    assert two[(3, 1, 0)] is None and two[(4, 0, 0)] == (3, 1, 0)
    assert top_root_node(exists, (3, 1, 0)) is None  # the start is the top: one tree


def test_top_root_stitches_the_two_trees_into_one_identity_per_line(grid, store,
                                                                    tmp_path):
    """top_root=1 on the 3 x 2 grid: the start (1, 1) and the top (2, 1) are cloned
    cold, the nodes at Teff index 2 are swept from the top, and where the trees meet
    each true line gets one identity: as many identities as the one-tree store, every
    true line one identity across the grid."""
    with pytest.warns(UserWarning, match="top_root=1 is experimental"):
        two = clone_grid(grid, tmp_path / "two.h5", **KW, top_root=1)
    assert two.settings["top_root"] == 1 and store.settings["top_root"] == 0
    assert two.mask.all() and two.start == (1, 1)
    assert np.median(two.residual_rms) < 3e-3
    ident_of = {}
    for node in two.iter_nodes():
        assert np.unique(node.identity).size == node.n_lines
        depth = np.exp(node.ln_amplitude) * _peak_value(node.ln_sigma, node.ln_gamma)
        for c in np.asarray(node_lines(*node.index).center):
            k = np.argmin(np.abs(node.center - c) + 10.0 * (depth < 0.01))
            assert abs(node.center[k] - c) < 0.03
            ident_of.setdefault(round(float(c), 2), set()).add(int(node.identity[k]))
    assert all(len(ids) == 1 for ids in ident_of.values()), ident_of
    assert identify_store(two).n_lines <= identify_store(store).n_lines + 2
    with pytest.raises(ValueError, match="top_root=2 is invalid"):
        clone_grid(grid, tmp_path / "x.h5", top_root=2)


def test_seam_pairs_lines_by_centre_width_and_depth():
    """The stitch pairs each line with its twin across the seam, and a narrow line on a
    broad line's core (one centre) does not take the broad line's identity."""
    from jaxspec.clone import CloneSettings
    from jaxspec.clone.sweep import _seam_matches

    node = node_lines(1, 1)
    center = np.r_[node.center, node.center[0]]  # + a broad line on line 0's core
    values = (np.r_[node.ln_amplitude, 0.0], np.r_[node.ln_sigma, np.log(0.3)],
              np.r_[node.ln_gamma, np.log(0.3)])
    n = center.size
    lower = _lines(center, np.zeros(n), *values, np.arange(n))
    upper = _lines(center, np.zeros(n), *values, 100 + np.arange(n)[::-1])
    pairs = {(b, a) for b, a, _ in _seam_matches(upper, lower, WL, np.gradient(WL),
                                                  CloneSettings())}
    assert pairs == {(int(upper.ident[k]), k) for k in range(n)}


def test_every_line_keeps_one_identity_across_the_grid(grid, store):
    assert store.settings["method"] == "continuation" and store.version == 2
    assert store.mask.all() and store.start == (1, 1)
    assert np.median(store.residual_rms) < 3e-3
    truth = node_lines(2, 1)
    ident_of = {}
    for node in store.iter_nodes():
        assert node.identity is not None and np.unique(node.identity).size == node.n_lines
        lines = node_lines(*node.index)
        depth = np.exp(node.ln_amplitude) * _peak_value(node.ln_sigma, node.ln_gamma)
        for c in np.asarray(lines.center):
            k = np.argmin(np.abs(node.center - c) + 10.0 * (depth < 0.01))
            assert abs(node.center[k] - c) < 0.03
            ident_of.setdefault(round(float(c), 2), set()).add(int(node.identity[k]))
    # the same true line has the same identity at every node where it is present
    assert all(len(ids) == 1 for ids in ident_of.values()), ident_of
    assert len(ident_of) == truth.n_lines
    # identification by construction: no more lines than identities, and few of them
    ident = identify_store(store)
    assert ident.matcher == "identity"
    significant = max(int(np.sum(np.exp(n.ln_amplitude) * _peak_value(n.ln_sigma, n.ln_gamma)
                                 > 0.01)) for n in store.iter_nodes())
    assert ident.n_lines <= 1.5 * significant


def test_births_are_back_filled_to_cloned_neighbours(store):
    # line BORN is absent at Teff index 0; after the sweep every node carries its
    # identity (back-fill), at the coolest nodes at most a trace of it
    ids = []
    for node in store.iter_nodes():
        k = np.argmin(np.abs(node.center - BORN))
        assert abs(node.center[k] - BORN) < 0.05
        depth = np.exp(node.ln_amplitude[k]) * _peak_value(node.ln_sigma[k], node.ln_gamma[k])
        if node.index[0] == 0:
            assert depth < 0.02
        else:
            assert depth > 0.05
        ids.append(int(node.identity[k]))
    assert len(set(ids)) == 1


def test_back_fill_crosses_a_hole_in_the_grid(grid, tmp_path):
    # the middle Teff column is missing (a hole, or held-out nodes): the sweep starts at
    # the cool end, where line BORN is absent, and finds it at the hot end; the back-fill
    # steps over the hole, so the cool nodes carry its identity too (at a trace)
    mask = np.ones(grid.shape, dtype=bool)
    mask[1] = False
    holed = SpectralGrid(AXES, WL, np.where(mask[..., None], grid.flux, np.nan), mask=mask,
                         normalized=True)
    st = clone_grid(holed, tmp_path / "holed.h5", start={"teff": 4000.0, "logg": 4.0}, **KW)
    ids = {}
    for node in st.iter_nodes():
        k = np.argmin(np.abs(node.center - BORN))
        assert abs(node.center[k] - BORN) < 0.05, node.index
        depth = np.exp(node.ln_amplitude[k]) * _peak_value(node.ln_sigma[k], node.ln_gamma[k])
        assert depth < 0.02 if node.index[0] == 0 else depth > 0.05
        ids[node.index] = int(node.identity[k])
    assert sorted(ids) == [(0, 0), (0, 1), (2, 0), (2, 1)]
    assert len(set(ids.values())) == 1


def test_models_of_resumed_nodes_match_the_exact_product(store):
    # the back-fill of a resumed sweep synthesises the nodes read back from the store
    # through one plan over the store's identities: each must be its exact product
    nodes = [store.read_node(index) for index in [(0, 0), (1, 1), (2, 1)]]
    sets = [_lines(n.center, np.zeros(n.center.size), n.ln_amplitude, n.ln_sigma,
                   n.ln_gamma, n.identity) for n in nodes]
    models = list(_profile_products(WL, sets, 0.05, store.identities.size))
    assert len(models) == 3
    for node, model in zip(nodes, models):
        exact = np.asarray(LineList(node.center, node.ln_amplitude, node.ln_sigma,
                                    node.ln_gamma).flux_exact(WL))
        assert model.shape == WL.shape
        assert np.max(np.abs(model - exact)) < 1e-4


def test_resume_after_interruption_loses_nothing(grid, store, tmp_path):
    path = tmp_path / "resumed.h5"

    def stop(done, total):
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        clone_grid(grid, path, callback=stop, **KW)
    partial = CloneStore(path)
    assert 3 <= partial.n_done < 6 and partial.identities.size > 0
    calls = []
    resumed = clone_grid(grid, path, callback=lambda d, t: calls.append(d), **KW)
    assert resumed.mask.all() and calls[-1] == 6 and len(calls) < 6
    assert abs(resumed.identities.size - store.identities.size) <= 2
    assert resumed.backfilled
    # resuming a finished sweep changes nothing (the back-fill is not run again)
    before = [(n.identity.tolist(), n.ln_amplitude.tolist()) for n in resumed.iter_nodes()]
    again = clone_grid(grid, path, **KW)
    assert [(n.identity.tolist(), n.ln_amplitude.tolist()) for n in again.iter_nodes()] == before
    with pytest.raises(ValueError, match="method"):
        clone_grid(grid, path, **{**KW, "method": "independent"})


def test_resume_continues_the_sweep_from_the_stores_start(grid, store, tmp_path):
    path = tmp_path / "cool.h5"
    start = {"teff": 4000.0, "logg": 4.0}
    clone_grid(grid, path, start=start, max_nodes=2, **KW)
    assert CloneStore(path).start == (0, 0)
    with pytest.raises(ValueError, match=r"swept from the node teff=4000, logg=4.*new file"):
        clone_grid(grid, path, start={"teff": 5000.0}, **KW)
    resumed = clone_grid(grid, path, **KW)  # no start given: the store's, not the middle
    assert resumed.start == (0, 0) and resumed.mask.all()
    # one tree: as many identities as a sweep run through from that start
    straight = clone_grid(grid, tmp_path / "straight.h5", start=start, **KW)
    assert abs(resumed.identities.size - straight.identities.size) <= 2
    assert store.start != (0, 0)  # (the default start is another node)


def test_version_1_stores_are_still_read(grid, tmp_path):
    path = tmp_path / "v1.h5"
    clone_grid(grid, path, max_nodes=2, **{**KW, "method": "independent"})
    with h5py.File(path, "a") as f:
        f.attrs["version"] = 1
        for name in ("method", "warm_epochs", "warm_learning_rate", "floor_depth",
                     "warm_width_anchor", "chain_axis", "warm_track_anchor", "prime_broad",
                     "relax_passes", "relax_epochs", "birth_epochs", "parallel_batches",
                     "top_root"):
            del f.attrs[name]
    old = CloneStore(path)
    assert old.version == 1 and old.settings["method"] == "independent"
    assert old.settings["warm_width_anchor"] == 0.0 and old.settings["chain_axis"] == -1
    assert old.settings["warm_track_anchor"] == 0.0 and old.settings["prime_broad"] == 0.0
    assert old.settings["relax_passes"] == 0
    assert old.settings["relax_epochs"] == 0 and old.settings["birth_epochs"] == 0
    assert old.settings["parallel_batches"] == 1  # one batch at a time, as they were
    assert old.settings["top_root"] == 0  # one tree
    assert old.identities is None and next(old.iter_nodes()).identity is None
    assert identify_store(old).matcher == "id"


def test_unknown_setting_names_the_valid_ones(grid, tmp_path):
    with pytest.raises(TypeError, match="unknown clone setting.*warm_epochs"):
        clone_grid(grid, tmp_path / "x.h5", warm_epoch=3)
    with pytest.raises(ValueError, match="method='sideways' is invalid"):
        clone_grid(grid, tmp_path / "x.h5", method="sideways")
    with pytest.raises(ValueError, match="warm_width_anchor=-0.1 is invalid"):
        clone_grid(grid, tmp_path / "x.h5", warm_width_anchor=-0.1)
    with pytest.raises(ValueError, match="warm_track_anchor=-1.0 is invalid"):
        clone_grid(grid, tmp_path / "x.h5", warm_track_anchor=-1.0)
    with pytest.raises(ValueError, match=r"warm_merge=2.0 is invalid; pass a FWHM ratio"):
        clone_grid(grid, tmp_path / "x.h5", warm_merge=2.0)


def test_warm_start_caps_a_line_wider_than_the_band():
    # Along a chain a line's FWHM box grows by e^0.5 per step; a warm start scales a
    # line wider than the band down to the band's width, keeping its peak depth.
    from jaxspec.clone import CloneSettings
    from jaxspec.clone.sweep import _fwhm, _Sweep

    sweep = _Sweep.__new__(_Sweep)
    sweep.settings, sweep.wl = CloneSettings(), WL
    ln_s, ln_g = np.log([0.03, 3e4]), np.log([0.02, 5e4])
    ln_a = np.log([0.2, 0.05]) - np.log(_peak_value(ln_s, ln_g))
    parent = _lines(np.array([8505.0, 8510.0]), np.zeros(2), ln_a, ln_s, ln_g,
                    np.arange(2))
    child = sweep._warm_start(parent)
    band = WL[-1] - WL[0]
    fwhm = _fwhm(child.ln_s, child.ln_g)
    assert fwhm[1] == pytest.approx(band, rel=1e-9) and np.all(child.hi_f <= np.log(band) + 1e-12)
    assert fwhm[0] == pytest.approx(_fwhm(ln_s, ln_g)[0])  # a narrow line is untouched
    np.testing.assert_allclose(np.exp(child.ln_a) * _peak_value(child.ln_s, child.ln_g),
                               [0.2, 0.05], rtol=1e-9)


def mix_steps(store):
    """|Δ (ln σ − ln γ)| of the lines deeper than 0.05 between nodes (i, 0) and (i, 1),
    one log g step apart (the start node is (1, 1); with the default chain_axis=0 each
    is held near the start's mix through its chain)."""
    steps = []
    for i in range(3):
        child, parent = (store.read_node((i, j)) for j in (0, 1))
        both, c, p = np.intersect1d(child.identity, parent.identity, return_indices=True)
        depth = np.exp(parent.ln_amplitude[p]) * _peak_value(parent.ln_sigma[p],
                                                             parent.ln_gamma[p])
        strong = depth > 0.05
        mix_c = child.ln_sigma[c] - child.ln_gamma[c]
        mix_p = parent.ln_sigma[p] - parent.ln_gamma[p]
        steps.append(np.abs(mix_c - mix_p)[strong])
    return np.concatenate(steps)


def test_width_anchor_holds_the_parents_line_shapes(grid, store, tmp_path):
    # The grid's σ changes by ln 1.05 = 0.049 from logg 4.0 to 4.5 at fixed γ: the warm
    # fit with the default, feeble anchor follows it; a heavy anchor holds the parent's
    # Gauss/Lorentz mix at the cost of the residual.
    assert store.settings["warm_width_anchor"] == 1e-5
    free = mix_steps(store)
    held = clone_grid(grid, tmp_path / "anchored.h5", warm_width_anchor=1e3, **KW)
    anchored = mix_steps(held)
    assert held.settings["warm_width_anchor"] == 1e3
    assert np.median(free) > 0.02
    assert np.median(anchored) < 0.25 * np.median(free)


def test_track_targets_continue_the_secant_through_the_grandparent():
    from jaxspec.clone import CloneSettings
    from jaxspec.clone.sweep import _Sweep

    sweep = _Sweep.__new__(_Sweep)
    sweep.settings = CloneSettings(warm_track_anchor=1e-3)
    # Teff column 0 is missing: node 0 steps 200 K from its parent (1), which is 100 K
    # from the grandparent (2); node (1, 1) steps along log g, its parent along Teff
    sweep.param_of = {(0, 0): (3400.0, 4.5), (1, 0): (3600.0, 4.5), (2, 0): (3700.0, 4.5),
                      (1, 1): (3600.0, 5.0)}
    sweep.parents = {(2, 0): None, (1, 0): (2, 0), (0, 0): (1, 0), (1, 1): (1, 0)}
    ln_s, ln_g = np.log([0.03, 0.03, 0.03]), np.log([0.02, 0.02, 0.02])
    grand = _lines(np.array([8505.0, 8507.0]), np.zeros(2), np.array([-4.0, -3.0]),
                   ln_s[:2], ln_g[:2], np.array([0, 1]))
    parent = _lines(np.array([8505.0, 8507.0, 8509.0]), np.zeros(3),
                    np.array([-3.8, -1.0, -5.0]), ln_s, ln_g + np.log(1.1), np.array([0, 1, 2]))
    sweep.state = {(2, 0): grand, (1, 0): parent}
    a_t, s_t, g_t = sweep._track_targets(parent.copy(), (0, 0))
    # twice the parent's step from the grandparent, each change at most 1 in ln; line 2
    # (born at the parent) keeps its parent's values
    np.testing.assert_allclose(a_t, [-3.8 + 0.4, -1.0 + 1.0, -5.0])
    np.testing.assert_allclose(s_t, ln_s)
    np.testing.assert_allclose(g_t, ln_g + np.log(1.1) * np.array([3.0, 3.0, 1.0]))
    # a step along another axis than the parent's: the parent's values
    a_t, s_t, g_t = sweep._track_targets(parent.copy(), (1, 1))
    np.testing.assert_allclose(a_t, parent.ln_a)
    np.testing.assert_allclose(g_t, parent.ln_g)


def test_track_anchor_holds_the_lines_on_their_tracks(grid, store, tmp_path):
    # The grid's depths fall by 15 % per Teff step (ln a by ~0.16): the warm fit without
    # the track anchor follows them; a heavy one holds each line at its parent's values
    # (no grandparent on the same grid line in a 3 x 2 grid) at the cost of the fit.
    def amplitude_steps(s):
        steps = []
        for i in (0, 2):
            child, parent = s.read_node((i, 1)), s.read_node((1, 1))
            _, c, p = np.intersect1d(child.identity, parent.identity, return_indices=True)
            depth = np.exp(parent.ln_amplitude[p]) * _peak_value(parent.ln_sigma[p],
                                                                 parent.ln_gamma[p])
            strong = depth > 0.05
            steps.append(np.abs(child.ln_amplitude[c] - parent.ln_amplitude[p])[strong])
        return np.concatenate(steps)

    assert store.settings["warm_track_anchor"] == 0.0
    # (the shape anchor off: the track anchor acts on its own)
    held = clone_grid(grid, tmp_path / "tracked.h5", warm_track_anchor=1e3,
                      warm_width_anchor=0.0, **KW)
    assert held.settings["warm_track_anchor"] == 1e3
    free, anchored = amplitude_steps(store), amplitude_steps(held)
    assert np.median(free) > 0.08
    assert np.median(anchored) < 0.25 * np.median(free)


def test_build_with_grid_runs_the_joint_fit_by_default(grid, store, tmp_path, capsys):
    from jaxspec.cli import main
    from jaxspec.emulator import load_emulator

    grid_path = tmp_path / "grid.h5"
    grid.to_hdf5(grid_path)
    out = tmp_path / "emulator.h5"
    assert main(["build", str(store.path), "--grid", str(grid_path), "--out", str(out),
                 "--refine-epochs", "2", "--smoothness", "0.01", "--quiet"]) == 0
    info = load_emulator(out).info["refine"]
    assert info["epochs"] == 2 and info["smoothness"] == 0.01 and info["n_train"] == 6
    assert info["presmooth"] == 0.003  # the smoothing solve runs by default with --grid
    assert info["rms_train_after"] <= info["rms_train_before"] * 1.01
    assert not (tmp_path / "emulator.h5.refine-checkpoint.h5").exists()  # done: removed
    # one weight per column (μ', ln a, ln σ, ln γ); two or three are refused at once
    columns = tmp_path / "columns.h5"
    assert main(["build", str(store.path), "--grid", str(grid_path), "--out", str(columns),
                 "--refine-epochs", "1", "--smoothness", "0", "0", "0.1", "0.1",
                 "--presmooth", "0", "--quiet"]) == 0
    info = load_emulator(columns).info["refine"]
    assert info["smoothness"] == [0.0, 0.0, 0.1, 0.1] and info["presmooth"] == 0.0
    assert main(["build", str(store.path), "--out", str(tmp_path / "bad.h5"),
                 "--presmooth", "0.003", "--quiet"]) == 1
    assert "--presmooth needs --grid" in capsys.readouterr().err
    for values in (["0.1", "0.2"], ["0.1", "0.2", "0.3"]):
        assert main(["build", str(store.path), "--grid", str(grid_path), "--out",
                     str(tmp_path / "bad.h5"), "--smoothness", *values, "--quiet"]) == 1
        assert f"--smoothness got {len(values)} values" in capsys.readouterr().err
    assert not (tmp_path / "bad.h5").exists()
    # Without --grid nothing is fitted; with it and no --refine-epochs, the default runs.
    plain = tmp_path / "plain.h5"
    assert main(["build", str(store.path), "--out", str(plain), "--quiet"]) == 0
    assert "refine" not in load_emulator(plain).info


def test_broad_lines_are_primed_from_the_top_of_the_first_axis(tmp_path):
    """prime_broad: the hottest node's broad line joins the start node's initial lines;
    the sweep keeps it one line, with one identity, across the row. (The split it
    prevents needs the default grid's blends: README, *Starting at the hot end*.)"""
    axes = {"teff": np.array([4000.0, 4500.0, 5000.0]), "logg": np.array([4.0])}
    narrow = 8500.6 + 1.7 * np.arange(11)
    narrow = narrow[np.abs(narrow - 8510.0) > 1.0]

    def lines(i):
        center = np.r_[narrow, 8510.0, 8510.3]
        depth = np.r_[np.full(narrow.size, 0.2), 0.04 + 0.15 * i, 0.08]
        sigma = np.r_[np.full(narrow.size, 0.03), 0.25 + 0.1 * i, 0.03]
        gamma = np.r_[np.full(narrow.size, 0.02), 0.5 + 0.2 * i, 0.02]
        ln_s, ln_g = np.log(sigma), np.log(gamma)
        return LineList(center, np.log(depth) - np.log(_peak_value(ln_s, ln_g)), ln_s, ln_g)

    flux = np.stack([np.asarray(lines(i).flux_exact(WL))[None] for i in range(3)])
    grid = SpectralGrid(axes, WL, flux, normalized=True)
    store = clone_grid(grid, tmp_path / "primed.h5", **{**KW, "passes": 2}, prime_broad=1.0)
    assert store.settings["prime_broad"] == 1.0 and store.start == (1, 0)
    ident = set()
    for node in store.iter_nodes():
        i = node.index[0]
        fwhm = _fwhm_eta(node.ln_sigma, node.ln_gamma)[0]
        depth = np.exp(node.ln_amplitude) * _peak_value(node.ln_sigma, node.ln_gamma)
        broad = np.flatnonzero((fwhm > 0.5) & (depth > 0.005))  # the broad line alone
        assert broad.size == 1, (node.index, node.center[broad], fwhm[broad])
        k = broad[0]
        assert abs(node.center[k] - 8510.0) < (0.01 if i == 1 else 0.05)
        if i >= 1:  # (the coolest node's line is shallow: depth 0.04)
            truth = _fwhm_eta(np.log(0.25 + 0.1 * i), np.log(0.5 + 0.2 * i))[0]
            assert abs(fwhm[k] / truth - 1) < 0.1
        ident.add(int(node.identity[k]))
    assert len(ident) == 1
    assert store.residual_rms[1, 0] < 3e-4
    with pytest.raises(ValueError, match="prime_broad=-1.0 is invalid"):
        clone_grid(grid, tmp_path / "x.h5", prime_broad=-1.0)


def test_relaxation_targets_interpolate_the_neighbours_along_every_axis():
    """Each line's target at a node is the linear interpolation between its nearest
    cloned neighbours on either side (non-uniform steps, a missing node stepped over),
    averaged over the axes where both carry it; others keep their value."""
    from jaxspec.clone import CloneSettings
    from jaxspec.clone.sweep import _Sweep

    sweep = _Sweep.__new__(_Sweep)
    sweep.settings = CloneSettings()
    sweep.grid = SpectralGrid({"teff": np.array([3000.0, 3100.0, 3200.0, 3500.0]),
                               "logg": np.array([4.0, 4.5, 5.0])}, WL,
                              np.ones((4, 3, WL.size)), normalized=True)
    values = {  # node: (identities, ln a); ln σ = ln a - 1, ln γ = ln a - 2
        (1, 1): ([0, 1, 2], [0.0, 0.0, 0.0]),
        (0, 1): ([0, 1, 2], [1.0, 4.0, 2.0]),
        (3, 1): ([0, 1], [5.0, 6.0]),  # (2, 1) missing: stepped over
        (1, 0): ([0, 2], [2.0, 1.0]),
        (1, 2): ([0], [4.0]),
    }
    sweep.state, sweep.param_of = {}, {}
    for idx, (ident, ln_a) in values.items():
        a = np.array(ln_a)
        sweep.state[idx] = _lines(8505.0 + np.array(ident, float), np.zeros(a.size), a,
                                  a - 1.0, a - 2.0, np.array(ident))
        sweep.param_of[idx] = np.array([sweep.grid.axes["teff"][idx[0]],
                                        sweep.grid.axes["logg"][idx[1]]])
    target = sweep._relax_targets((1, 1))
    # line 0: teff 1 + (5 - 1) * 100/500 = 1.8; logg (2 + 4) / 2 = 3; mean 2.4
    # line 1: teff only 4 + (6 - 4) / 5 = 4.4; line 2: neither axis carries it twice
    np.testing.assert_allclose(target[0], [2.4, 4.4, 0.0])
    np.testing.assert_allclose(target[1], target[0] - 1.0)
    np.testing.assert_allclose(target[2], target[0] - 2.0)


def test_relaxation_passes_keep_the_fit_and_resume_batch_by_batch(grid, store, tmp_path,
                                                                   capsys):
    """relax_passes: every node refitted from its neighbours' interpolation, kept only
    when its residual is at most 1.1x the node's; the store counts the batches done, and
    a run stopped after one batch resumes to the store of a straight run."""
    straight = clone_grid(grid, tmp_path / "relaxed.h5", **{**KW, "relax_passes": 1})
    n_batches = 3  # 6 nodes, batch_size 2
    assert straight.settings["relax_passes"] == 1 and straight.relaxed == n_batches
    assert np.all(straight.residual_rms <= 1.1 * store.residual_rms + 1e-12)
    moved = 0
    for node in straight.iter_nodes():  # identities are those of the sweep
        plain = store.read_node(node.index)
        assert set(node.identity.tolist()) == set(plain.identity.tolist())
        moved += not np.allclose(node.ln_amplitude, plain.ln_amplitude, atol=1e-3)
    assert moved >= 3  # refits were kept
    # stopped after the first round (parallel_batches = 2 batches of 2 nodes)
    part = clone_grid(grid, tmp_path / "part.h5", **{**KW, "relax_passes": 1}, max_nodes=6 + 4)
    assert part.relaxed == 2
    resumed = clone_grid(grid, tmp_path / "part.h5", **{**KW, "relax_passes": 1})
    assert resumed.relaxed == n_batches
    # (the resumed run reads its nodes back from the store: centres -> offsets, float32)
    np.testing.assert_allclose(resumed.residual_rms, straight.residual_rms, rtol=1e-5)
    from jaxspec.cli import main

    assert main(["clone", "info", str(resumed.path)]) == 0
    assert "back-fill: done; relaxation: 3 batch(es) done of 1 pass(es)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="relax_passes=-1 is invalid"):
        clone_grid(grid, tmp_path / "x.h5", relax_passes=-1)


def test_relax_and_birth_epochs_set_the_refits_adam_steps(grid, tmp_path, monkeypatch):
    """relax_epochs / birth_epochs: the Adam steps of the relaxation refits and of the
    sweep's refit after births (0: warm_epochs, as stores written before them)."""
    import jaxspec.clone.fit as fit_module

    calls = []
    fit = fit_module._fit

    def spy(*args, **kw):
        calls.append(kw.get("epochs"))
        return fit(*args, **kw)

    monkeypatch.setattr(fit_module, "_fit", spy)
    store = clone_grid(grid, tmp_path / "e.h5",
                       **{**KW, "relax_passes": 1, "relax_epochs": 7, "birth_epochs": 11})
    assert store.settings["relax_epochs"] == 7 and store.settings["birth_epochs"] == 11
    # the sweep: warm_epochs first, birth_epochs after births; then one pass of 3 batches
    assert calls.count(7) == 3 and KW["warm_epochs"] in calls
    assert set(calls) <= {None, KW["warm_epochs"], 7, 11}
    calls.clear()
    clone_grid(grid, tmp_path / "d.h5", **{**KW, "relax_passes": 1, "max_nodes": 6 + 1})
    assert calls[-1] == KW["warm_epochs"]  # 0: the relaxation refits take warm_epochs
    with pytest.raises(ValueError, match="relax_epochs=-1 is invalid"):
        clone_grid(grid, tmp_path / "x.h5", relax_epochs=-1)


def test_two_processes_write_the_store_of_one(grid, tmp_path):
    """workers=2: each round's batches (parallel_batches) are fitted side by side in two
    local processes, everything between the fits runs here in a fixed order, so the
    sweep and the relaxation write the store of one process, to the last bit."""
    kw = {**KW, "relax_passes": 1, "parallel_batches": 2}
    one = clone_grid(grid, tmp_path / "one.h5", **kw)
    two = clone_grid(grid, tmp_path / "two.h5", workers=2, **kw)
    assert two.settings["parallel_batches"] == 2 and one.relaxed == two.relaxed == 3
    assert two.n_done == one.n_done == 6
    for node in one.iter_nodes():
        other = two.read_node(node.index)
        np.testing.assert_array_equal(other.identity, node.identity)
        for name in ("center", "ln_amplitude", "ln_sigma", "ln_gamma"):
            np.testing.assert_array_equal(getattr(other, name), getattr(node, name))
        assert other.residual_rms == node.residual_rms
    # one batch a round (stores made before parallel_batches) is another, valid sweep
    serial = clone_grid(grid, tmp_path / "serial.h5", **{**kw, "parallel_batches": 1})
    assert serial.settings["parallel_batches"] == 1 and serial.n_done == 6
    assert np.all(serial.residual_rms[serial.mask] < 5e-3)
    with pytest.raises(ValueError, match="workers=0: pass the number of local processes"):
        clone_grid(grid, tmp_path / "x.h5", workers=0, **kw)
    with pytest.raises(ValueError, match="parallel_batches=0 is invalid"):
        clone_grid(grid, tmp_path / "x.h5", **{**kw, "parallel_batches": 0})
    assert not (tmp_path / "x.h5").exists()


def test_sweep_merge_keeps_identities_and_fades_the_absorbed_lines():
    """``warm_merge``: a family of lines describing one feature is merged into its
    strongest line (identity kept, total a conserved, centre within max_shift of the
    identity's reference); an absorbed line the node carried fades to the floor with
    its identity, an absorbed birth is dropped; a merge that would change the model by
    more than twice the node's residual RMS is not made."""
    from jaxspec.clone import CloneSettings
    from jaxspec.clone.sweep import _fwhm, _Sweep

    sweep = _Sweep.__new__(_Sweep)
    sweep.settings, sweep.wl = CloneSettings(warm_merge=0.25), WL
    mu0 = np.array([8505.00, 8505.02, 8510.00, 8510.01, 8515.00])
    fwhm = np.array([0.30, 0.15, 0.20, 0.25, 0.20])
    depth = np.array([0.5, 0.2, 0.3, 0.4, 0.3])
    ln_s, ln_g = np.log(fwhm / 2.3548 * 0.7), np.log(fwhm / 2.0 * 0.7)
    ln_a = np.log(depth) - np.log(_peak_value(ln_s, ln_g))
    x = _lines(mu0, np.zeros(5), ln_a, ln_s, ln_g, np.array([0, 1, 7, 3, 4]))
    born = np.array([False, False, True, False, False])
    anchor = {k: np.ones(5) for k in ("w", "w_t", "ln_a", "ln_s", "ln_g")}

    y, born_y, anchor_y, n = sweep._merge(x.copy(), born, anchor, rms=1.0)
    assert n == 2
    np.testing.assert_array_equal(y.ident, [0, 1, 3, 4])  # the birth (7) was absorbed
    np.testing.assert_array_equal(born_y, [False] * 4)
    a = np.exp(ln_a)
    np.testing.assert_allclose(np.exp(y.ln_a[[0, 2]]), [a[0] + a[1], a[2] + a[3]], rtol=1e-9)
    center = y.mu0 + sweep.settings.max_shift * np.tanh(y.u)
    np.testing.assert_allclose(y.mu0, mu0[[0, 1, 3, 4]])  # identities' references kept
    mean = (a[0] * mu0[0] + a[1] * mu0[1]) / (a[0] + a[1])
    assert center[0] == pytest.approx(mean, abs=1e-9)
    peak = np.exp(y.ln_a) * _peak_value(y.ln_s, y.ln_g)
    assert peak[1] == pytest.approx(sweep.settings.floor_depth)  # faded, identity kept
    assert y.lo_a[1] == pytest.approx(y.ln_a[1])
    assert _fwhm(y.ln_s, y.ln_g)[0] > fwhm[0]  # the second moment of the family
    assert y.ln_a[3] == ln_a[4] and y.ident[3] == 4  # an isolated line is untouched
    np.testing.assert_array_equal(anchor_y["w"], [0.0, 1.0, 0.0, 1.0])

    none = sweep._merge(x.copy(), born, anchor, rms=1e-6)
    assert none[3] == 0 and none[0].n == 5


def test_refits_hold_dormant_lines_and_fit_the_others_to_the_flux_over_them():
    """A refit (``"hold": True``) leaves lines at most ``_DORMANT`` × the floor depth
    and at least ``_HOLD_PIXELS`` wide out of the fit: they keep their values, the other lines are fitted to the flux over
    the held lines' product, and the model returned includes that product. A first warm
    fit (no ``hold``) fits every line."""
    from jaxspec.clone import CloneSettings
    from jaxspec.clone._processes import FitPool
    from jaxspec.clone.detection import _centers
    from jaxspec.clone.sweep import _DORMANT, _apply_lines, _Sweep

    settings = CloneSettings()
    sweep = _Sweep.__new__(_Sweep)
    sweep.settings, sweep.wl = settings, WL
    sweep.pool = FitPool(WL, settings)
    true = node_lines(1, 0)
    # a broad line dead at the floor: its 1e-4 depth over the band is ~0.5 x the
    # residual a fit of this spectrum reaches, so fitting the others to the flux
    # itself would leave it in their residual
    ln_s, ln_g = np.log([3.0]), np.log([4.0])  # FWHM ~13 Å: broad
    dead_a = np.log(settings.floor_depth) - np.log(_peak_value(ln_s, ln_g))
    n = true.n_lines
    mu0 = np.r_[np.asarray(true.center), 8510.0]
    truth = _lines(mu0, np.zeros(n + 1), np.r_[np.asarray(true.ln_amplitude), dead_a],
                   np.r_[np.asarray(true.ln_sigma), ln_s], np.r_[np.asarray(true.ln_gamma), ln_g],
                   np.arange(n + 1))
    dead = _apply_lines(WL, np.ones(WL.size), truth.select(np.array([n])), settings.max_shift)
    flux = (np.asarray(true.flux_exact(WL)) * dead)[None]
    good = np.ones_like(flux)
    start = truth.copy()
    start.ln_a[:n] -= 0.2  # the live lines start 18 % too shallow
    start = sweep._warm_start(start)
    anchor = [{k: np.zeros(n + 1) for k in ("w", "w_t", "ln_a", "ln_s", "ln_g")}]
    options = {"epochs": 60, "learning_rate": 0.05, "anchor": anchor}
    depth = np.exp(start.ln_a) * _peak_value(start.ln_s, start.ln_g)
    assert depth[-1] <= _DORMANT * settings.floor_depth < depth[:n].min()

    held = start.copy()
    ((lines,), _, model, _), = sweep._fit([(flux, good, [held], {**options, "hold": True})])
    assert lines is held and lines.n == n + 1  # updated in place, whole, in order
    for name in ("u", "ln_a", "ln_s", "ln_g"):
        assert getattr(lines, name)[-1] == getattr(start, name)[-1]
    assert np.sqrt(np.mean((model[0] - flux[0]) ** 2)) < 2e-4
    center = _centers(lines, settings.max_shift)
    live = LineList(center[:n], lines.ln_a[:n], lines.ln_s[:n], lines.ln_g[:n])
    # the held line is in the model (the engine cuts the wings at 1e-5)
    np.testing.assert_allclose(model[0], np.asarray(live.flux_exact(WL)) * dead, atol=5e-5)

    fitted = start.copy()
    ((lines,), _, model, _), = sweep._fit([(flux, good, [fitted], options)])
    assert lines.ln_s[-1] != start.ln_s[-1] or lines.u[-1] != start.u[-1]
    assert np.sqrt(np.mean((model[0] - flux[0]) ** 2)) < 2e-4
