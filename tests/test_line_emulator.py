"""LineEmulator: spectra at nodes, gradients (absent lines too), files, restrict, refine, CLI."""

from types import SimpleNamespace

import equinox as eqx
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspec import LineList
from jaxspec.emulator import load_emulator
from jaxspec.grid import SpectralGrid
from jaxspec.identify import identify_lines
from jaxspec.line_emulator import LineEmulator
from jaxspec.synthesis import useful_wing_cut

AXES = {"teff": np.array([5000.0, 5500.0, 6000.0]), "logg": np.array([4.0, 4.5]),
        "feh": np.array([-0.5, 0.0])}
WL = 8500.0 + 0.01 * np.arange(801)
BASE = np.array([8501.0, 8502.3, 8503.1, 8504.6, 8505.2, 8506.8, 8507.5])
LN_A0 = np.array([-3.5, -4.0, -3.0, -4.5, -3.8, -4.2, -3.2])
ABSENT = 2  # line 2 vanishes at Teff = 6000 K

evaluate = eqx.filter_jit(lambda e, p: e(p))


def node_lines(teff, logg, feh):
    x = (teff - 5000.0) / 500.0
    center = BASE + 0.002 * x
    ln_a = LN_A0 + 0.6 * feh - 0.2 * x + 0.1 * (logg - 4.0)
    ln_s = np.full(BASE.size, np.log(0.02)) + 0.05 * x
    ln_g = np.full(BASE.size, np.log(0.03)) + 0.2 * (logg - 4.0)
    keep = np.ones(BASE.size, bool)
    keep[ABSENT] = teff < 6000.0
    return center, ln_a, ln_s, ln_g, keep


def make_nodes_and_grid():
    shape = tuple(a.size for a in AXES.values())
    nodes, lists = [], []
    for index in np.ndindex(*shape):
        params = [AXES[n][i] for n, i in zip(AXES, index)]
        center, ln_a, ln_s, ln_g, keep = node_lines(*params)
        nodes.append(SimpleNamespace(
            index=index, params=params, line_id=np.round(BASE[keep], 2), center=center[keep],
            ln_amplitude=ln_a[keep], ln_sigma=ln_s[keep], ln_gamma=ln_g[keep]))
        lists.append((center, np.where(keep, ln_a, -1000.0), ln_s, ln_g))
    batch = LineList(*(np.stack(v) for v in zip(*lists)))
    flux = jax.jit(jax.vmap(lambda ll: ll.flux_exact(WL)))(batch)
    grid = SpectralGrid(AXES, WL, np.asarray(flux).reshape(*shape, WL.size), normalized=True)
    return nodes, grid


@pytest.fixture(scope="module")
def built():
    nodes, grid = make_nodes_and_grid()
    ident = identify_lines(nodes, AXES, meta={"wavelength": WL})
    return nodes, grid, LineEmulator.from_identification(ident)


def test_reproduces_clone_spectra_at_nodes(built):
    _, grid, emulator = built
    params, flat = grid.node_params()
    flux = np.asarray(evaluate(emulator, params.reshape(3, 4, 3)))
    assert flux.shape == (3, 4, WL.size)
    truth = grid.flux.reshape(-1, WL.size)[flat].reshape(3, 4, -1)
    assert np.max(np.abs(flux - truth)) < 5e-5
    assert truth.min() < 0.7  # lines are really there
    assert emulator.param_names == ("teff", "logg", "feh")
    np.testing.assert_allclose(emulator.bounds, [[5000, 6000], [4, 4.5], [-0.5, 0]])
    assert emulator.n_lines == BASE.size and emulator.n_pix == WL.size


def test_gradients_are_finite_including_absent_lines(built):
    _, _, emulator = built
    # Between Teff 5500 and 6000 line 2 interpolates towards ln a = -1000: dead nearly
    # everywhere in the cell, alive only at its 5500 K edge.
    theta = jnp.array([5800.0, 4.2, -0.2])
    loss = lambda ep: jnp.sum((ep[0](ep[1]) - 0.9) ** 2)
    gm, g = eqx.filter_jit(eqx.filter_grad(loss))((emulator, theta))
    assert np.all(np.isfinite(g)) and np.any(g != 0)
    table = np.asarray(gm.manifold.table)
    assert np.all(np.isfinite(table))
    assert np.all(table[..., ABSENT, :] == 0.0)  # dead at theta: exactly no gradient
    assert np.any(table[..., 0, :] != 0.0)
    assert np.all(np.isfinite(np.asarray(gm.center)))


def test_hessian_matches_finite_differences_of_the_gradient(built):
    _, grid, emulator = built
    target = jnp.asarray(grid.spectrum(teff=5500, logg=4.0, feh=-0.5))
    scale = jnp.array([100.0, 0.1, 0.1])  # the Hessian in well-scaled coordinates

    def loss(z):
        return jnp.sum((emulator(jnp.array([5600.0, 4.2, -0.3]) + scale * z) - target) ** 2)

    z0 = jnp.zeros(3)
    hess = np.asarray(jax.jit(jax.hessian(loss))(z0))
    grad = jax.jit(jax.grad(loss))
    eps = 1e-3
    fd = np.stack([(np.asarray(grad(z0 + eps * e)) - np.asarray(grad(z0 - eps * e))) / (2 * eps)
                   for e in np.eye(3)])
    assert np.all(np.isfinite(hess))
    np.testing.assert_allclose(hess, fd, rtol=2e-3, atol=2e-3 * np.abs(fd).max())
    np.testing.assert_allclose(hess, hess.T, rtol=1e-4, atol=1e-6 * np.abs(hess).max())


def test_out_of_bounds_parameters_raise_with_the_bounds(built):
    _, grid, emulator = built
    params, _ = grid.node_params()
    bad = params.reshape(3, 4, 3).copy()
    bad[0, 0, 0] = 6500.0
    with pytest.raises(Exception, match=r"teff in \[5000, 6000\]"):
        jax.block_until_ready(evaluate(emulator, bad))


def test_save_load_round_trip(built, tmp_path):
    _, grid, emulator = built
    path = emulator.save(tmp_path / "emu.h5")
    with h5py.File(path) as f:
        assert f.attrs["format"] == "jaxspec-emulator" and f.attrs["kind"] == "line"
        assert f["lines/values"].dtype == np.float32
        n_present = int(emulator.present().sum())
        assert f["lines/values"].shape == (n_present, 4)
    loaded = load_emulator(path)
    assert isinstance(loaded, LineEmulator)
    np.testing.assert_array_equal(loaded.center, emulator.center)
    np.testing.assert_allclose(loaded.manifold.table, emulator.manifold.table, atol=1e-6)
    params, _ = grid.node_params()
    a = evaluate(emulator, params.reshape(3, 4, 3))
    b = evaluate(loaded, params.reshape(3, 4, 3))
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) < 1e-6
    with pytest.raises(FileExistsError, match="overwrite"):
        emulator.save(path)


def test_restrict_keeps_lines_that_touch_the_range(built):
    _, _, emulator = built
    # At tolerance 1e-3 the windows reach ~1-3 Å: lines far from the range drop out (at
    # the default 1e-6 the Lorentz wings of these lines reach the whole 8 Å).
    emulator = emulator.replan(tolerance=1e-3)
    small = emulator.restrict((8504.0, 8505.5))
    assert 2 <= small.n_lines < emulator.n_lines
    assert np.asarray(small.center).min() > 8502.5  # the two bluest lines are gone
    assert small.wavelength[0] >= 8504.0 and small.wavelength[-1] <= 8505.5
    params, _ = built[1].node_params()
    full = np.asarray(evaluate(built[2], params.reshape(3, 4, 3)))  # compiled before
    keep = (WL >= 8504.0) & (WL <= 8505.5)
    part = np.asarray(evaluate(small, params.reshape(3, 4, 3)))
    assert np.max(np.abs(part - full[..., keep])) < 1e-3
    with pytest.raises(ValueError, match=r"covers 8500.00–8508.00 Å"):
        emulator.restrict((9000.0, 9100.0))
    with pytest.raises(ValueError, match="lo > hi"):
        emulator.restrict((8505.0, 8504.0))


def test_a_wing_cut_beyond_twice_the_spectrum_is_planned_as_twice_the_spectrum(built):
    # 801 px: any cut above 2 x 801 + 1024 = 2626 px already covers every pixel from a
    # line at either end, so it plans (and evaluates) exactly like 2626, as clones do.
    assert useful_wing_cut(30_000, WL.size) == 2626
    assert useful_wing_cut(100, WL.size) == 100 and useful_wing_cut(None, WL.size) is None
    _, _, emulator = built
    theta = np.array([5200.0, 4.1, -0.3])
    long, capped = (LineEmulator(emulator.manifold, np.asarray(emulator.center), WL,
                                 wing_cut=w) for w in (30_000, 2626))
    assert long.wing_cut == 30_000  # the setting is kept (saved in the file)
    assert long.synthesis_plan.layout() == capped.synthesis_plan.layout()
    np.testing.assert_array_equal(np.asarray(evaluate(long, theta)),
                                  np.asarray(evaluate(capped, theta)))


def test_wing_cut_limits_each_line_to_its_window(built):
    _, _, emulator = built
    one = emulator.manifold.take_lines([0])  # the line at 8501.0 Å, pixel 100
    theta = np.array([5200.0, 4.1, -0.3])
    full = LineEmulator(one, np.asarray(emulator.center)[:1], WL)
    cut = LineEmulator(one, np.asarray(emulator.center)[:1], WL, wing_cut=64)
    wide = LineEmulator(one, np.asarray(emulator.center)[:1], WL, wing_cut=100_000)
    assert cut.synthesis_plan.n_evaluations() < full.synthesis_plan.n_evaluations()
    f_full, f_cut, f_wide = (np.asarray(evaluate(e, theta)) for e in (full, cut, wide))
    np.testing.assert_array_equal(f_wide, f_full)  # a cut beyond every window: no change
    assert np.all(f_cut[400:] == 1.0) and np.all(f_full[400:] < 1.0)
    assert np.max(np.abs(f_cut[80:121] - f_full[80:121])) < 1e-4  # the core is kept
    with pytest.raises(ValueError, match="wing_cut"):
        LineEmulator(one, np.asarray(emulator.center)[:1], WL, wing_cut=3)


def test_refine_lowers_the_loss(built):
    from jaxspec.refine import RefineHistory, refine

    _, grid, emulator = built
    rng = np.random.default_rng(0)
    table = np.array(emulator.manifold.table)
    present = np.moveaxis(emulator.present(), 0, -1)
    table[..., 1] += np.where(present, rng.normal(0.0, 0.15, present.shape), 0.0)
    noisy = emulator.with_table(table)
    held = np.zeros(grid.shape, bool)
    held[1, 0, 1] = True  # Teff 5500: interpolated from 5000 and 6000 while training
    refined, history = refine(noisy, grid, epochs=4, batch_size=4, learning_rate=0.02,
                              holdout=held, progress=False)
    assert history.n_train == 11 and history.n_holdout == 1
    assert history.rms_train_after < 0.6 * history.rms_train_before
    assert history.loss[-1] < history.loss[0]
    assert np.isfinite(history.rms_holdout_after)
    assert "at 1 held-out nodes" in history.summary()
    none = RefineHistory(n_train=3, rms_train_before=1e-3, rms_train_after=5e-4)
    assert "nan" not in none.summary() and "no held-out node" in none.summary()
    assert not bool(refined.observed[1, 0, 1])
    assert refined.info["refine"]["epochs"] == 4
    # Absent entries stay absent.
    assert np.all(np.asarray(refined.manifold.table)[2, :, :, ABSENT, 1] == -1000.0)


def test_axis_triples_bridge_untrained_nodes_with_non_uniform_differences():
    from jaxspec.refine import axis_triples

    axes = {"teff": np.array([3000.0, 3100.0, 3200.0, 3400.0, 3500.0]), "logg": np.array([4.0, 4.5])}
    trained = np.ones((5, 2), bool)
    trained[1, 1] = False  # a held-out node: its fibre's triples step over it
    index, coef = axis_triples(axes, trained)
    # teff fibres: 3 triples at logg 4.0, 2 at 4.5; the logg axis is too short.
    assert index.shape == (5, 3) and coef.shape == (5, 3)
    np.testing.assert_array_equal(index[0], [0, 2, 4])  # flat C order (teff, logg)
    np.testing.assert_allclose(coef[0], [1.0, -2.0, 1.0])  # uniform steps of the median 100 K
    # Any quadratic has the same second difference at every triple, spaced or not:
    # coef · v = h² v'' with h the median step.
    teff = np.repeat(axes["teff"], 2)
    v = 3.0 + 0.01 * teff + 2e-5 * teff**2
    np.testing.assert_allclose(np.sum(coef * v[index], axis=1),
                               100.0**2 * 4e-5, rtol=1e-9)
    assert np.all(np.isin(index, np.flatnonzero(trained.reshape(-1))))


def test_smooth_refine_lowers_curvature_and_resumes_from_its_checkpoint(built, tmp_path):
    from jaxspec.refine import curvature_penalty, refine

    _, grid, emulator = built
    rng = np.random.default_rng(1)
    table = np.array(emulator.manifold.table)
    present = np.moveaxis(emulator.present(), 0, -1)
    for k, s in ((1, 0.1), (2, 0.1), (3, 0.1)):
        table[..., k] += np.where(present, rng.normal(0.0, s, present.shape), 0.0)
    noisy = emulator.with_table(table)
    shape = grid.shape
    flat_present = present.reshape(-1, emulator.n_lines)
    penalty = curvature_penalty(table.reshape(-1, emulator.n_lines, 4), flat_present,
                                emulator.axes, np.ones(shape, bool), emulator.wavelength)
    assert penalty.n_triples == 4  # 3 Teff nodes: one triple per (logg, feh) fibre

    def curvature(e):
        return float(penalty(jnp.asarray(np.asarray(e.manifold.table).reshape(-1, emulator.n_lines, 4))))

    kwargs = dict(batch_size=4, learning_rate=0.02, progress=False)
    plain, _ = refine(noisy, grid, epochs=4, **kwargs)
    ck = tmp_path / "refine.h5"
    with pytest.raises(ValueError, match="smoothness=-1.0: pass one weight >= 0"):
        refine(noisy, grid, epochs=4, smoothness=-1.0, **kwargs)
    with pytest.raises(ValueError, match="batch_size=0.*need epochs >= 0, batch_size >= 1"):
        refine(noisy, grid, epochs=4, batch_size=0, progress=False)
    refine(noisy, grid, epochs=2, smoothness=30.0, checkpoint=ck, **kwargs)
    smooth, history = refine(noisy, grid, epochs=4, smoothness=30.0, checkpoint=ck, **kwargs)
    straight, h2 = refine(noisy, grid, epochs=4, smoothness=30.0, **kwargs)
    # Resumed after epoch 2: the same four steps as a fit that never stopped.
    assert len(history.loss) == 4
    np.testing.assert_allclose(history.loss, h2.loss, rtol=1e-5)
    np.testing.assert_allclose(smooth.manifold.table, straight.manifold.table, atol=1e-6)
    assert curvature(smooth) < 0.7 * curvature(plain) < 0.7 * curvature(noisy)
    assert history.rms_train_after < history.rms_train_before
    assert smooth.info["refine"]["smoothness"] == 30.0
    with pytest.raises(ValueError, match="another fit"):
        refine(noisy, grid, epochs=4, smoothness=3.0, checkpoint=ck, **kwargs)
    # One weight per column: four equal weights are the scalar; weights on the widths
    # alone smooth the widths and leave ln a as the plain fit moves it.
    same, h3 = refine(noisy, grid, epochs=4, smoothness=[30.0] * 4, **kwargs)
    np.testing.assert_allclose(same.manifold.table, straight.manifold.table, atol=1e-6)
    np.testing.assert_allclose(h3.loss, h2.loss, rtol=1e-5)
    widths, _ = refine(noisy, grid, epochs=4, smoothness=[0.0, 0.0, 30.0, 30.0], **kwargs)
    assert widths.info["refine"]["smoothness"] == [0.0, 0.0, 30.0, 30.0]

    def column_curvature(e, k):
        weight = np.zeros(4)
        weight[k] = 1.0
        one = eqx.tree_at(lambda p: p.weight, penalty,
                          penalty.weight * jnp.asarray(weight, penalty.weight.dtype))
        table = np.asarray(e.manifold.table).reshape(-1, emulator.n_lines, 4)
        return float(one(jnp.asarray(table)))

    for k in (2, 3):
        assert column_curvature(widths, k) < 0.7 * column_curvature(plain, k)
    assert column_curvature(widths, 1) == pytest.approx(column_curvature(plain, 1), rel=0.1)
    with pytest.raises(ValueError, match="one per column"):
        refine(noisy, grid, epochs=1, smoothness=[1.0, 2.0], **kwargs)


def test_presmooth_solves_for_smooth_tracks_at_once_and_resumes(built, tmp_path):
    from jaxspec.refine import curvature_penalty, refine

    _, grid, emulator = built
    rng = np.random.default_rng(1)
    table = np.array(emulator.manifold.table)
    present = np.moveaxis(emulator.present(), 0, -1)
    for k in (1, 2, 3):
        table[..., k] += np.where(present, rng.normal(0.0, 0.1, present.shape), 0.0)
    noisy = emulator.with_table(table)
    penalty = curvature_penalty(table.reshape(-1, emulator.n_lines, 4),
                                present.reshape(-1, emulator.n_lines), emulator.axes,
                                np.ones(grid.shape, bool), emulator.wavelength)

    def curvature(e, k):
        weight = np.zeros(4)
        weight[k] = 1.0
        one = eqx.tree_at(lambda p: p.weight, penalty,
                          penalty.weight * jnp.asarray(weight, penalty.weight.dtype))
        return float(one(jnp.asarray(np.asarray(e.manifold.table).reshape(
            -1, emulator.n_lines, 4))))

    kwargs = dict(batch_size=4, progress=False)
    smooth, h = refine(noisy, grid, epochs=0, presmooth=1.0, **kwargs)
    # No Adam step: the solve alone removes >= 90 % of the curvature of every column the
    # noise made rough, and (the noise being random) fits the spectra better, not worse.
    assert h.presmooth["moved"] == int(present.sum()) and h.presmooth["residual"] < 1e-4
    for k in (1, 2, 3):
        assert curvature(smooth, k) < 0.1 * curvature(noisy, k)
    assert h.rms_train_after < h.rms_train_before
    # Weights on the widths alone: the widths smooth, ln a changes only through its
    # coupling to them in each line's block.
    widths, _ = refine(noisy, grid, epochs=0, presmooth=[0.0, 0.0, 30.0, 30.0], **kwargs)
    assert curvature(widths, 2) < 1e-3 * curvature(noisy, 2)
    assert curvature(widths, 1) == pytest.approx(curvature(noisy, 1), rel=0.5)
    # Resumable: the solve runs once, before the first epoch.
    ck = tmp_path / "presmooth.h5"
    refine(noisy, grid, epochs=1, presmooth=1.0, checkpoint=ck, **kwargs)
    resumed, h1 = refine(noisy, grid, epochs=2, presmooth=1.0, checkpoint=ck, **kwargs)
    straight, h2 = refine(noisy, grid, epochs=2, presmooth=1.0, **kwargs)
    np.testing.assert_allclose(h1.loss, h2.loss, rtol=1e-6)
    np.testing.assert_allclose(resumed.manifold.table, straight.manifold.table, atol=1e-6)
    assert straight.info["refine"]["presmooth"] == 1.0
    for other in (3.0, 0.0):  # another weight, or none, is another fit
        with pytest.raises(ValueError, match="another fit"):
            refine(noisy, grid, epochs=2, presmooth=other, checkpoint=ck, **kwargs)
    with pytest.raises(ValueError, match="presmooth"):
        refine(noisy, grid, epochs=0, presmooth=-1.0, **kwargs)


# ---------------------------------------------------------------------- CLI


def fake_store(nodes, path="clones.h5", **settings):
    base = {"prominence": 0.005, "wing_cut": 6000, "epochs": 100, "learning_rate": 0.05}
    base.update(settings)
    return SimpleNamespace(path=path, param_names=tuple(AXES), axes=AXES, settings=base,
                           wavelength=WL, iter_nodes=lambda: iter(nodes))


def test_cli_build_synth_info_plot(built, tmp_path, monkeypatch, capsys):
    from astropy.table import Table

    from jaxspec.cli import build, main

    nodes, _, _ = built
    monkeypatch.setattr(build, "_open_stores", lambda paths: [fake_store(nodes)])
    out = tmp_path / "emu.h5"
    assert main(["build", "clones.h5", "--out", str(out), "--matcher", "track",
                 "--expect-settings", "prominence=0.005"]) == 0
    assert "unique lines" in capsys.readouterr().out
    linear = tmp_path / "linear.h5"
    assert main(["build", "clones.h5", "--out", str(linear), "--interpolation", "linear"]) == 0
    assert load_emulator(linear).manifold.method == "linear"
    assert load_emulator(out).manifold.method == "cubic"  # the default
    # Settings other than expected: a clear error, no file.
    assert main(["build", "clones.h5", "--out", str(tmp_path / "x.h5"),
                 "--expect-settings", "wing_cut=3000"]) == 1
    assert "wing_cut=6000 (expected 3000.0)" in capsys.readouterr().err
    assert main(["build", "clones.h5", "--out", str(tmp_path / "x.h5"),
                 "--refine-epochs", "2"]) == 1
    assert "--grid" in capsys.readouterr().err

    spec = tmp_path / "spec.ecsv"
    assert main(["synth", str(out), "--teff", "5772", "--logg", "4.44", "--feh", "0",
                 "--out", str(spec)]) == 0
    table = Table.read(spec)
    assert str(table["wavelength"].unit) == "Angstrom" and len(table) == WL.size
    assert table["flux"].min() < 0.9
    assert main(["synth", str(out), "--teff", "7000", "--logg", "4.44", "--feh", "0",
                 "--out", str(tmp_path / "y.ecsv")]) == 1
    err = capsys.readouterr().err
    assert "teff=7000 outside" in err and "teff in [5000, 6000]" in err
    assert main(["synth", str(out), "--teff", "5500", "--out", str(tmp_path / "y.ecsv")]) == 1
    assert "missing --logg, --feh" in capsys.readouterr().err

    assert main(["emulator", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "matcher=track" in info and "7 unique" in info
    fig = tmp_path / "fig.png"
    assert main(["emulator", "plot", str(out), "--line", "8503.1", "--feh", "0",
                 "--out", str(fig)]) == 0
    assert fig.stat().st_size > 10_000
    assert main(["emulator", "plot", str(out), "--line", "8600", "--out", str(fig)]) == 1
    assert "nearest lines" in capsys.readouterr().err


def write_clone_store(path, nodes):
    """A clone store in the documented jaxspec-clones layout (version 1)."""
    from jaxspec.io.clone_store import SETTING_NAMES

    settings = {"prominence": 0.005, "wing_cut": 6000, "epochs": 100, "learning_rate": 0.05,
                "max_shift": 0.05, "passes": 2, "deblend": 8, "amplitude_margin": 1.0,
                "width_margin": 1.0, "tolerance": 1e-6}
    with h5py.File(path, "w") as f:
        f.attrs.update(format="jaxspec-clones", version=1, param_names=list(AXES),
                       normalized=True,
                       **{k: settings[k] for k in SETTING_NAMES if k in settings})
        f["wavelength"] = WL
        for name, axis in AXES.items():
            f[f"axes/{name}"] = axis
        for n in nodes:
            g = f.create_group("nodes/" + "_".join(map(str, n.index)))
            for key in ("line_id", "center", "ln_amplitude", "ln_sigma", "ln_gamma"):
                g[key] = getattr(n, key)
            g.attrs.update(index=list(n.index), params=list(n.params), residual_rms=0.0,
                           n_lines=len(n.line_id), complete=True)


def test_cli_build_reads_a_real_clone_store(built, tmp_path, capsys):
    pytest.importorskip("jaxspec.io.clone_store", reason="clone store reader not in this version")
    from jaxspec.cli import main

    nodes, _, emulator = built
    store = tmp_path / "clones.h5"
    write_clone_store(store, nodes)
    out = tmp_path / "emu.h5"
    assert main(["build", str(store), "--out", str(out), "--expect-settings",
                 "wing_cut=6000"]) == 0
    loaded = LineEmulator.load(out)
    np.testing.assert_allclose(loaded.center, emulator.center)
    assert loaded.info["clone_settings"]["prominence"] == 0.005
    assert loaded.wing_cut == 6000  # the clones' wing cut, kept in the file
    # Two stores cloned with different settings are not combined.
    other = tmp_path / "other.h5"
    write_clone_store(other, nodes[:0])
    with h5py.File(other, "a") as f:
        f.attrs["prominence"] = 0.01
    assert main(["build", str(store), str(other), "--out", str(tmp_path / "x.h5")]) == 1
    assert "prominence=0.01 (expected 0.005)" in capsys.readouterr().err


def test_cubic_manifold_reproduces_nodes_and_round_trips(built, tmp_path):
    nodes, grid, linear = built
    ident = identify_lines(nodes, AXES, meta={"wavelength": WL})
    cubic = LineEmulator.from_identification(ident)  # cubic by default
    assert cubic.manifold.method == "cubic"
    linear = LineEmulator.from_identification(ident, interpolation="linear")
    assert linear.manifold.method == "linear"
    params, flat = grid.node_params()
    truth = grid.flux.reshape(-1, WL.size)[flat]
    at_nodes = np.asarray(evaluate(cubic, params))
    assert np.max(np.abs(at_nodes - truth)) < 5e-5
    between = np.array([[5250.0, 4.2, -0.2], [5750.0, 4.4, -0.3]])
    loaded = load_emulator(cubic.save(tmp_path / "cubic.h5"))
    assert loaded.manifold.method == "cubic"
    np.testing.assert_allclose(np.asarray(evaluate(loaded, between)),
                               np.asarray(evaluate(cubic, between)), atol=1e-6)
    # every axis here has < 4 nodes, where "cubic" is linear (tests/test_manifold.py
    # covers longer axes)
    np.testing.assert_allclose(np.asarray(evaluate(cubic, between)),
                               np.asarray(evaluate(linear, between)), atol=1e-6)


def test_local_is_the_same_model_inside_its_box_with_fewer_lines():
    # 8 Teff nodes (cubic along Teff), 2 log g nodes; line 2 exists only above 7200 K,
    # line 3 only below 5200 K: a box at 6000-6400 K meets neither (the cubic stencils
    # there, nodes 5500-7000 K, hold no node where they are alive).
    from jaxspec.manifold import LineManifold

    teff = 5000.0 + 500.0 * np.arange(8)
    axes = {"teff": teff, "logg": np.array([4.0, 4.5])}
    x = (teff[:, None] - 5000.0) / 500.0 + np.zeros((1, 2))
    center = BASE[:5]
    table = np.zeros((8, 2, 5, 4))
    table[..., 0] = 0.003 * x[..., None]
    table[..., 1] = LN_A0[:5] - 0.2 * x[..., None] + 0.1 * np.sin(x[..., None] + np.arange(5))
    table[..., 2] = np.log(0.02) + 0.05 * x[..., None]
    table[..., 3] = np.log(0.03)
    table[teff < 7200, :, 2, 1] = -1000.0
    table[teff > 5200, :, 3, 1] = -1000.0
    full = LineEmulator(LineManifold(axes, table=table, method="cubic"), center, WL)
    local = full.local({"teff": (6000.0, 6400.0)}, depth=0.0)
    assert local.n_lines == 3 and sorted(np.asarray(local.center)) == sorted(center[[0, 1, 4]])
    assert local.manifold.grid_shape == (4, 2)  # nodes 5500-7000 K: the cubic stencils
    assert local.bounds[0, 0] <= 6000.0 and local.bounds[0, 1] >= 6400.0
    assert local.info["local"] == {"box": [[6000.0, 6400.0], [4.0, 4.5]], "depth": 0.0,
                                   "lines": [3, 5]}
    rng = np.random.default_rng(3)
    theta = np.column_stack([rng.uniform(6000.0, 6400.0, 6), rng.uniform(4.0, 4.5, 6)])
    np.testing.assert_allclose(np.asarray(evaluate(local, theta)),
                               np.asarray(evaluate(full, theta)), atol=1e-6)
    # a box as an array; a depth above every line's keeps none (refused); bad boxes
    assert full.local(np.array([[6000.0, 6400.0], [4.0, 4.5]])).n_lines == 3
    with pytest.raises(ValueError, match="no line reaches depth 1"):
        full.local({"teff": (6000.0, 6400.0)}, depth=1.0)
    # sample_nuts samples through it where its prior boxes (all stars together) are
    # narrower than the grid, e.g. with a Teff window; not otherwise
    from jaxspec.infer.nuts import _local_emulator

    lo, hi = np.array([[6000.0, 4.0], [6100.0, 4.0]]), np.array([[6300.0, 4.5], [6400.0, 4.5]])
    assert _local_emulator(full, lo, hi, 1e-5).n_lines == 3
    assert _local_emulator(full, lo, hi, None) is full
    bounds = np.asarray(full.bounds)
    assert _local_emulator(full, bounds[None, :, 0], bounds[None, :, 1], 1e-5) is full
    with pytest.raises(ValueError, match=r"unknown parameters \['feh'\]"):
        full.local({"feh": (0.0, 0.1)})
    with pytest.raises(ValueError, match=r"teff range \(4000, 6000\) leaves"):
        full.local({"teff": (4000.0, 6000.0)})
    with pytest.raises(ValueError, match="depth"):
        full.local({"teff": (6000.0, 6400.0)}, depth=-1.0)
