"""Cross-model line identification on hand-made clone stores (no JAX compilation)."""

from types import SimpleNamespace

import numpy as np
import pytest

from jaxspec.identify import check_settings, identify_lines, identify_store

AXES = {"teff": np.array([4000.0, 4500.0, 5000.0, 5500.0]), "logg": np.array([4.0, 4.5])}


def node(index, lines):
    """A NodeClone-like record from [(pre-optimisation centre, fitted centre, ln a), ...]."""
    pre, fit, ln_a = (np.array(v, dtype=float) for v in zip(*lines))
    return SimpleNamespace(
        index=index, params=None, line_id=np.round(pre, 2), center=fit, ln_amplitude=ln_a,
        ln_sigma=np.log(0.02) + 0.01 * ln_a, ln_gamma=np.log(0.03) + 0.01 * ln_a,
    )


def hand_made_nodes(skip=()):
    """4 x 2 nodes. A: everywhere; B: Teff >= 5000 only; C: drifts 0.012 Å per Teff step
    (its identifier changes: 8504.00, .01, .02, .04); D, E: a close pair 0.02 Å apart."""
    nodes = []
    for i in range(4):
        for j in range(2):
            if (i, j) in skip:
                continue
            lines = [(8500.0, 8500.003, -3.0 + 0.1 * i + 0.05 * j)]
            if i >= 2:
                lines.append((8502.5, 8502.501, -4.0 + 0.2 * i))
            c = 8504.0 + 0.012 * i
            lines.append((c, c + 0.001, -3.5))
            lines += [(8506.0, 8506.0, -4.0), (8506.02, 8506.02, -4.2)]
            nodes.append(node((i, j), lines))
    return nodes


def test_id_rule_groups_equal_identifiers_and_fills_absent():
    ident = identify_lines(hand_made_nodes(), AXES, matcher="id")
    assert ident.n_lines == 8  # A, B, C split into 4 identifiers, D, E
    np.testing.assert_array_equal(ident.lines_per_node, [[4, 4], [4, 4], [5, 5], [5, 5]])
    b = int(np.flatnonzero(np.isclose(ident.line_id, 8502.5))[0])
    assert ident.present[b].tolist() == [[False] * 2] * 2 + [[True] * 2] * 2
    # Absent: ln a = -1000; the other values from the nearest node along Teff (index 2).
    assert np.all(ident.values[b, :2, :, 1] == -1000.0)
    np.testing.assert_allclose(ident.values[b, 0, :, 2], ident.values[b, 2, :, 2])
    np.testing.assert_allclose(ident.values[b, 0, :, 0], 0.001, atol=1e-6)  # μ' − μ
    a = int(np.flatnonzero(np.isclose(ident.line_id, 8500.0))[0])
    np.testing.assert_allclose(ident.values[a, :, :, 0], 0.003, atol=1e-6)
    np.testing.assert_allclose(ident.values[a, 3, 1, 1], -3.0 + 0.3 + 0.05, atol=1e-6)
    assert ident.values.dtype == np.float32 and ident.observed.all()
    assert "8 unique lines" in ident.summary()


def test_tracking_follows_a_drifting_line_but_keeps_close_pairs_apart():
    ident = identify_lines(hand_made_nodes(), AXES, matcher="track", tolerance=0.03)
    assert ident.n_lines == 5  # C is one line again; D and E stay two
    np.testing.assert_array_equal(ident.lines_per_node, [[4, 4], [4, 4], [5, 5], [5, 5]])
    c = int(np.argmin(np.abs(ident.center - 8504.02)))
    assert ident.present[c].all()
    fitted = 8504.0 + 0.012 * np.arange(4) + 0.001
    np.testing.assert_allclose(ident.values[c, :, 0, 0] + ident.center[c], fitted, atol=1e-6)
    assert np.sum(np.abs(ident.center - 8506.01) < 0.015) == 2


def test_unobserved_node_is_the_interpolation_of_its_neighbours():
    ident = identify_lines(hand_made_nodes(skip={(1, 0)}), AXES, matcher="id")
    assert not ident.observed[1, 0] and ident.observed.sum() == 7
    assert not ident.present[:, 1, 0].any()
    a = int(np.flatnonzero(np.isclose(ident.line_id, 8500.0))[0])
    np.testing.assert_allclose(
        ident.values[a, 1, 0], 0.5 * (ident.values[a, 0, 0] + ident.values[a, 2, 0]), atol=1e-5
    )
    b = int(np.flatnonzero(np.isclose(ident.line_id, 8502.5))[0])
    assert ident.values[b, 1, 0, 1] < -100  # half-way to an absent node: dead


def test_duplicate_identifiers_keep_the_strongest():
    nodes = [node((0,), [(8500.0, 8500.0, -3.0), (8500.004, 8500.006, -2.0)]),
             node((1,), [(8500.0, 8500.0, -3.0)])]
    ident = identify_lines(nodes, {"teff": [4000.0, 4100.0]}, matcher="id")
    assert ident.n_lines == 1 and ident.duplicates == 1
    np.testing.assert_allclose(ident.values[0, 0, 1], -2.0)
    assert "1 duplicate" in ident.summary()


def test_tracking_refuses_links_that_give_a_line_two_occurrences_at_a_node():
    axes = {"teff": [4000.0, 4100.0, 4200.0]}
    nodes = [node((0,), [(8508.0, 8508.0, -3.0)]),
             node((1,), [(8508.02, 8508.02, -3.0)]),
             node((2,), [(8508.045, 8508.045, -3.0), (8508.0, 8507.99, -3.0)])]
    ident = identify_lines(nodes, axes, matcher="track")
    assert ident.refused == 1 and ident.n_lines == 2
    assert ident.present.sum(axis=0).tolist() == [1, 1, 2]


def test_bad_inputs_have_clear_messages():
    with pytest.raises(ValueError, match="matcher"):
        identify_lines(hand_made_nodes(), AXES, matcher="nearest")
    nodes = hand_made_nodes()
    with pytest.raises(ValueError, match="appears twice"):
        identify_lines(nodes + nodes[:1], AXES)
    with pytest.raises(ValueError, match="outside the grid"):
        identify_lines([node((7, 0), [(8500.0, 8500.0, -3.0)])], AXES)
    bad = node((0, 0), [(8500.0, 8500.0, -3.0)])
    bad.ln_sigma[:] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        identify_lines([bad], AXES)


def fake_store(path, nodes, **settings):
    base = {"prominence": 0.005, "wing_cut": 6000, "epochs": 100, "learning_rate": 0.05}
    base.update(settings)
    return SimpleNamespace(
        path=path, param_names=tuple(AXES), axes=AXES, settings=base,
        wavelength=np.linspace(8499.0, 8507.0, 801), iter_nodes=lambda: iter(nodes),
    )


def test_stores_combine_only_with_equal_settings():
    nodes = hand_made_nodes()
    a, b = fake_store("a.h5", nodes[:4]), fake_store("b.h5", nodes[4:])
    ident = identify_store([a, b])
    assert ident.observed.all() and ident.meta["sources"] == ["a.h5", "b.h5"]
    other = fake_store("c.h5", nodes[4:], prominence=0.01)
    with pytest.raises(ValueError, match=r"c.h5.*prominence=0.01 \(expected 0.005\)"):
        identify_store([a, other])
    with pytest.raises(ValueError, match=r"a.h5.*wing_cut=6000 \(expected 3000\)"):
        identify_store(a, expect_settings={"wing_cut": 3000})
    with pytest.raises(ValueError, match="appears twice"):
        identify_store([a, fake_store("d.h5", nodes[:2])])
    with pytest.raises(ValueError, match="tolerance is not recorded"):
        check_settings({"prominence": 0.005}, {"tolerance": 1e-6})
