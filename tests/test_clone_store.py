"""The jaxspec-clones HDF5 store: layout, reading, validation, resume rules (no fitting)."""

import h5py
import numpy as np
import pytest

from jaxspec.io.clone_store import (
    SETTING_NAMES,
    CloneStore,
    CloneStoreWriter,
    NodeClone,
    read_clone_store,
)
from jaxspec.lines import LineList

AXES = {"teff": np.array([4000.0, 5000.0, 6000.0]), "logg": np.array([4.0, 4.5]),
        "feh": np.array([-0.5, 0.0])}
WL = np.linspace(8500.0, 8520.0, 501)
SETTINGS = {"prominence": 0.005, "wing_cut": 6000, "epochs": 100, "learning_rate": 0.05,
            "max_shift": 0.05, "passes": 2, "deblend": 8, "amplitude_margin": 1.0,
            "width_margin": 1.1, "tolerance": 1e-5, "method": "independent",
            "warm_epochs": 40, "warm_learning_rate": 0.05, "floor_depth": 1e-4,
            "warm_width_anchor": 0.0, "chain_axis": -1, "warm_track_anchor": 0.0,
            "prime_broad": 0.0, "relax_passes": 0, "relax_epochs": 0, "birth_epochs": 0,
            "parallel_batches": 1, "warm_merge": 0.0, "top_root": 0}


def node(index, n=5, seed=0):
    rng = np.random.default_rng(seed + sum(index))
    ids = np.round(np.sort(rng.uniform(8501, 8519, n)), 2)
    params = np.array([a[i] for a, i in zip(AXES.values(), index)])
    return NodeClone(index=tuple(index), params=params, line_id=ids,
                     center=ids + rng.normal(0, 0.003, n),
                     ln_amplitude=rng.normal(-4, 1, n), ln_sigma=np.full(n, -3.5),
                     ln_gamma=np.full(n, -3.7), residual_rms=1e-3 * (1 + sum(index)))


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "clones.h5"
    writer = CloneStoreWriter(path, AXES, WL, SETTINGS, grid_file="grid.h5")
    writer.write([node((0, 0, 0)), node((1, 1, 0), n=7), node((2, 0, 1), n=0)])
    return path


def test_layout_is_the_documented_contract(store_path):
    with h5py.File(store_path, "r") as f:
        assert f.attrs["format"] == "jaxspec-clones"
        assert int(f.attrs["version"]) == 2
        assert [s.decode() if isinstance(s, bytes) else s for s in f.attrs["param_names"]] \
            == ["teff", "logg", "feh"]
        assert bool(f.attrs["normalized"])
        for name in SETTING_NAMES:
            assert f.attrs[name] == SETTINGS[name]
        assert f.attrs["grid_file"] == "grid.h5"
        assert f["wavelength"].dtype == np.float64 and f["wavelength"].shape == WL.shape
        for name, values in AXES.items():
            np.testing.assert_array_equal(f[f"axes/{name}"][()], values)
        group = f["nodes/1_1_0"]
        for key in ("line_id", "center", "ln_amplitude", "ln_sigma", "ln_gamma"):
            assert group[key].shape == (7,) and group[key].dtype == np.float64
        np.testing.assert_array_equal(group.attrs["index"], [1, 1, 0])
        np.testing.assert_array_equal(group.attrs["params"], [5000.0, 4.5, -0.5])
        assert bool(group.attrs["complete"])
        assert group.attrs["residual_rms"] == pytest.approx(3e-3)
        assert f["nodes/2_0_1/line_id"].shape == (0,)


def test_reader_api(store_path):
    store = CloneStore.open(store_path)
    assert store.param_names == ("teff", "logg", "feh")
    assert store.shape == (3, 2, 2)
    assert store.settings == SETTINGS
    assert store.grid_file == "grid.h5"
    assert store.mask.sum() == 3 and store.mask[1, 1, 0] and not store.mask[0, 1, 0]
    assert store.n_lines[1, 1, 0] == 7
    got = store.read_node((1, 1, 0))
    want = node((1, 1, 0), n=7)
    assert got.index == (1, 1, 0)
    np.testing.assert_array_equal(got.line_id, want.line_id)
    np.testing.assert_allclose(got.center, want.center)
    assert got.residual_rms == pytest.approx(want.residual_rms)
    assert [n.index for n in store.iter_nodes()] == [(0, 0, 0), (1, 1, 0), (2, 0, 1)]
    lines = store.lines((0, 0, 0))
    assert isinstance(lines, LineList) and lines.n_lines == 5
    assert store.index(teff=5000, logg=4.5, feh=-0.5) == (1, 1, 0)
    with pytest.raises(ValueError, match="not cloned"):
        store.read_node((0, 1, 0))
    assert read_clone_store(store_path).n_done == 3


def test_resume_keeps_done_nodes_and_refuses_other_settings(store_path):
    with CloneStoreWriter(store_path, AXES, WL, SETTINGS) as writer:
        assert writer.done.sum() == 3
    changed = {**SETTINGS, "prominence": 0.01}
    with pytest.raises(ValueError, match="different settings: prominence=0.005"):
        CloneStoreWriter(store_path, AXES, WL, changed)
    with pytest.warns(UserWarning, match="continuing with new settings"):
        CloneStoreWriter(store_path, AXES, WL, changed, overwrite_settings=True)
    assert CloneStore(store_path).settings["prominence"] == 0.01
    with pytest.raises(FileExistsError, match="resume=True"):
        CloneStoreWriter(store_path, AXES, WL, SETTINGS, resume=False)


def test_resume_refuses_another_grid(store_path):
    other = {**AXES, "teff": np.array([4000.0, 5000.0])}
    with pytest.raises(ValueError, match="another grid"):
        CloneStoreWriter(store_path, other, WL, SETTINGS)
    with pytest.raises(ValueError, match="wavelengths"):
        CloneStoreWriter(store_path, AXES, WL[:-1], SETTINGS)


def test_incomplete_node_is_not_done_and_is_redone(store_path):
    with h5py.File(store_path, "a") as f:
        del f["nodes/1_1_0"].attrs["complete"]  # as if killed while writing this node
    with pytest.warns(UserWarning, match="1 node group.*not completely written.*1_1_0"):
        store = CloneStore(store_path)
    assert not store.mask[1, 1, 0] and store.n_done == 2
    with pytest.warns(UserWarning, match="not completely written"):
        writer = CloneStoreWriter(store_path, AXES, WL, SETTINGS)
    assert not writer.done[1, 1, 0]
    with h5py.File(store_path, "r") as f:
        assert "1_1_0" not in f["nodes"]  # removed, to be cloned again
    writer.write([node((1, 1, 0), n=7)])
    assert CloneStore(store_path).mask[1, 1, 0]


def test_inconsistent_node_names_file_and_node(store_path):
    with h5py.File(store_path, "a") as f:
        del f["nodes/0_0_0/ln_sigma"]
        f["nodes/0_0_0"].create_dataset("ln_sigma", data=np.zeros(4))
    with pytest.raises(ValueError, match=r"clones\.h5: node /nodes/0_0_0: .*inconsistent"):
        CloneStore(store_path)


def test_missing_dataset_and_attribute(store_path, tmp_path):
    with h5py.File(store_path, "a") as f:
        del f["nodes/0_0_0/center"]
    with pytest.raises(ValueError, match=r"0_0_0 .*lacks dataset.*center"):
        CloneStore(store_path)
    path = tmp_path / "b.h5"
    CloneStoreWriter(path, AXES, WL, SETTINGS)
    with h5py.File(path, "a") as f:
        del f.attrs["wing_cut"]
    with pytest.raises(ValueError, match=r"missing root attribute.*wing_cut"):
        CloneStore(path)
    with h5py.File(path, "a") as f:
        f.attrs["wing_cut"] = 6000
        del f["axes/logg"]
    with pytest.raises(ValueError, match="missing dataset /axes/logg"):
        CloneStore(path)


def test_foreign_and_corrupt_files(tmp_path):
    grid_like = tmp_path / "grid.h5"
    with h5py.File(grid_like, "w") as f:
        f.attrs["format"] = "jaxspec-grid"
    with pytest.raises(ValueError, match="not a jaxspec clone store"):
        CloneStore(grid_like)
    with pytest.raises(ValueError, match="not a jaxspec clone store"):
        CloneStoreWriter(grid_like, AXES, WL, SETTINGS)  # never resumes into a grid file
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)  # truncated HDF5 header
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        CloneStore(junk)
    with pytest.raises(FileNotFoundError):
        CloneStore(tmp_path / "missing.h5")
