"""SpectralGrid: construction checks, access, subsets, and the jaxspec-grid HDF5 format."""

import h5py
import numpy as np
import pytest

from jaxspec.grid import SpectralGrid
from jaxspec.io import GridWriter, read_grid_hdf5

N_PIX = 50
WL = np.linspace(8000.0, 8049.0, N_PIX)

AXES = {
    1: {"teff": [5000.0, 5100.0, 5200.0]},
    2: {"teff": [5000.0, 5100.0, 5200.0], "logg": [4.0, 4.5]},
    3: {"teff": [5000.0, 5100.0, 5200.0], "logg": [4.0, 4.5], "feh": [-0.5, 0.0, 0.5, 1.0]},
}


def make_flux(axes, dtype=np.float64):
    """Flux that encodes its node: value = sum_i (i+1) * param_i + wavelength / 1e4."""
    mesh = np.meshgrid(*[np.asarray(a) for a in axes.values()], indexing="ij")
    base = sum((i + 1) * m for i, m in enumerate(mesh))
    return (base[..., None] + WL / 1e4).astype(dtype)


def make_grid(k=3, dtype=np.float64, masked=True, normalized=False):
    axes = AXES[k]
    flux = make_flux(axes, dtype)
    mask = None
    if masked:
        mask = np.ones(flux.shape[:-1], dtype=bool)
        mask[(1,) * k] = False
        flux[(1,) * k] = np.nan
    return SpectralGrid(axes=axes, wavelength=WL, flux=flux, mask=mask, normalized=normalized)


def expected_spectrum(**params):
    return sum((i + 1) * v for i, v in enumerate(params.values())) + WL / 1e4


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize("k", [1, 2, 3])
def test_properties(k):
    grid = make_grid(k)
    assert grid.param_names == tuple(AXES[k])
    assert grid.shape == tuple(len(a) for a in AXES[k].values())
    assert grid.n_pix == N_PIX
    assert grid.n_nodes == np.prod(grid.shape) - 1
    assert grid.bounds == {n: (a[0], a[-1]) for n, a in AXES[k].items()}
    assert grid.wavelength.dtype == np.float64
    assert all(a.dtype == np.float64 for a in grid.axes.values())
    assert "SpectralGrid(" in repr(grid)


def test_mask_none_means_all_nodes_exist():
    grid = make_grid(2, masked=False)
    assert grid.mask.dtype == bool and grid.mask.all() and grid.mask.shape == (3, 2)


def test_float32_flux_kept_and_ints_promoted():
    assert make_grid(2, dtype=np.float32).flux.dtype == np.float32
    g = SpectralGrid(axes={"a": [1, 2]}, wavelength=[1, 2, 3], flux=np.ones((2, 3), int))
    assert g.flux.dtype == np.float64 and g.wavelength.dtype == np.float64


def test_axis_not_increasing():
    with pytest.raises(ValueError, match=r"axes\['logg'\] is not strictly increasing"):
        SpectralGrid(axes={"logg": [4.5, 4.0]}, wavelength=WL, flux=np.ones((2, N_PIX)))


def test_axis_duplicate_values():
    with pytest.raises(ValueError, match=r"axes\['logg'\] is not strictly increasing"):
        SpectralGrid(axes={"logg": [4.0, 4.0]}, wavelength=WL, flux=np.ones((2, N_PIX)))


def test_axis_not_1d():
    with pytest.raises(ValueError, match=r"axes\['teff'\] has shape \(2, 1\)"):
        SpectralGrid(axes={"teff": [[1.0], [2.0]]}, wavelength=WL, flux=np.ones((2, N_PIX)))


def test_axis_empty():
    with pytest.raises(ValueError, match=r"axes\['teff'\] is empty"):
        SpectralGrid(axes={"teff": []}, wavelength=WL, flux=np.ones((0, N_PIX)))


def test_no_axes():
    with pytest.raises(ValueError, match="axes is empty"):
        SpectralGrid(axes={}, wavelength=WL, flux=np.ones(N_PIX))


def test_bad_axis_name():
    with pytest.raises(ValueError, match="'wavelength' is not a valid parameter name"):
        SpectralGrid(axes={"wavelength": [1.0]}, wavelength=WL, flux=np.ones((1, N_PIX)))


def test_wavelength_not_increasing():
    wl = WL.copy()
    wl[10] = wl[9]
    with pytest.raises(ValueError, match="wavelength is not strictly increasing.*pixels 9, 10"):
        SpectralGrid(axes={"teff": [1.0]}, wavelength=wl, flux=np.ones((1, N_PIX)))


def test_wavelength_not_1d():
    with pytest.raises(ValueError, match=r"wavelength has shape \(1, 50\)"):
        SpectralGrid(axes={"teff": [1.0]}, wavelength=WL[None], flux=np.ones((1, N_PIX)))


def test_wavelength_non_finite():
    wl = WL.copy()
    wl[3] = np.nan
    with pytest.raises(ValueError, match="wavelength has 1 NaN/inf values"):
        SpectralGrid(axes={"teff": [1.0]}, wavelength=wl, flux=np.ones((1, N_PIX)))


def test_flux_shape_mismatch():
    with pytest.raises(ValueError, match=r"flux has shape \(3, 50\) but axes \(teff=3 x logg=2\)"):
        SpectralGrid(axes=AXES[2], wavelength=WL, flux=np.ones((3, N_PIX)))


def test_flux_nan_at_existing_node():
    flux = make_flux(AXES[2])
    flux[2, 1, 7] = np.nan
    flux[0, 1, :] = np.inf
    with pytest.raises(ValueError, match=r"at 2 existing node\(s\); the first is teff=5000, logg=4.5"):
        SpectralGrid(axes=AXES[2], wavelength=WL, flux=flux)


def test_flux_nan_at_masked_node_is_fine():
    grid = make_grid(3)
    assert np.isnan(grid.flux[1, 1, 1]).all()


def test_mask_shape_mismatch():
    with pytest.raises(ValueError, match=r"mask has shape \(3,\) but axes give \(3, 2\)"):
        SpectralGrid(
            axes=AXES[2], wavelength=WL, flux=make_flux(AXES[2]), mask=np.ones(3, bool)
        )


def test_mask_dtype():
    with pytest.raises(ValueError, match="mask has dtype int64; pass a bool array"):
        SpectralGrid(
            axes=AXES[2], wavelength=WL, flux=make_flux(AXES[2]), mask=np.ones((3, 2), np.int64)
        )


# ---------------------------------------------------------------- access


@pytest.mark.parametrize("k", [1, 2, 3])
def test_spectrum_exact_node(k):
    grid = make_grid(k)
    params = {n: a[-1] for n, a in AXES[k].items()}
    np.testing.assert_allclose(grid.spectrum(**params), expected_spectrum(**params))
    # ints and 4.50-style spellings hit the same node
    assert grid.spectrum(**{n: int(v) if float(v).is_integer() else v for n, v in params.items()}).shape == (N_PIX,)


def test_spectrum_off_grid_lists_nearest():
    grid = make_grid(2)
    with pytest.raises(ValueError, match=r"teff=5150 is not a node.*nearest available teff values: 5000, 5100, 5200"):
        grid.spectrum(teff=5150, logg=4.0)


def test_spectrum_masked_node():
    grid = make_grid(2)
    with pytest.raises(ValueError, match=r"node teff=5100, logg=4.5 is missing from the grid"):
        grid.spectrum(teff=5100, logg=4.5)


def test_spectrum_missing_or_unknown_parameter():
    grid = make_grid(2)
    with pytest.raises(ValueError, match=r"missing \['logg'\]"):
        grid.spectrum(teff=5100)
    with pytest.raises(ValueError, match=r"unknown \['feh'\]"):
        grid.spectrum(teff=5100, logg=4.0, feh=0.0)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_node_params(k):
    grid = make_grid(k)
    params, flat = grid.node_params()
    assert params.shape == (grid.n_nodes, k) and flat.shape == (grid.n_nodes,)
    flux = grid.flux.reshape(-1, N_PIX)
    for p, j in zip(params, flat):
        np.testing.assert_allclose(flux[j], expected_spectrum(**dict(zip(grid.param_names, p))))
    all_params, all_flat = grid.node_params(include_missing=True)
    assert all_params.shape == (np.prod(grid.shape), k)
    np.testing.assert_array_equal(all_flat, np.arange(np.prod(grid.shape)))
    # C order: the last axis varies fastest
    np.testing.assert_array_equal(all_params[0], [a[0] for a in AXES[k].values()])
    np.testing.assert_array_equal(all_params[1, -1], list(AXES[k].values())[-1][1])


def test_subset_params_and_wavelength():
    grid = make_grid(3)
    sub = grid.subset(wavelength=(8010.0, 8020.0), teff=(5100, 5200), feh=(0.0, 0.0))
    assert sub.shape == (2, 2, 1)
    np.testing.assert_array_equal(sub.axes["teff"], [5100.0, 5200.0])
    np.testing.assert_array_equal(sub.axes["logg"], AXES[3]["logg"])
    np.testing.assert_array_equal(sub.wavelength, WL[10:21])  # inclusive on both ends
    assert not sub.mask[0, 1, 0] and sub.n_nodes == 3
    np.testing.assert_allclose(
        sub.spectrum(teff=5200, logg=4.5, feh=0.0),
        expected_spectrum(teff=5200, logg=4.5, feh=0.0)[10:21],
    )
    assert not np.shares_memory(sub.flux, grid.flux)


def test_subset_selects_nothing():
    grid = make_grid(2)
    with pytest.raises(ValueError, match=r"teff=\(6000, 7000\) selects nothing; available teff values span 5000 to 5200"):
        grid.subset(teff=(6000, 7000))
    with pytest.raises(ValueError, match=r"wavelength=\(9000, 9100\) selects nothing.*8000 to 8049 Å"):
        grid.subset(wavelength=(9000, 9100))


def test_subset_bad_arguments():
    grid = make_grid(2)
    with pytest.raises(ValueError, match=r"unknown parameters \['vsini'\]"):
        grid.subset(vsini=(1, 2))
    with pytest.raises(ValueError, match="lo > hi"):
        grid.subset(teff=(5200, 5000))


# ---------------------------------------------------------------- HDF5


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hdf5_round_trip(tmp_path, k, dtype):
    grid = make_grid(k, dtype=dtype, normalized=(k == 2))
    path = tmp_path / "grid.h5"
    grid.to_hdf5(path)
    back = SpectralGrid.from_hdf5(path)
    assert back.param_names == grid.param_names
    assert back.normalized == grid.normalized
    assert back.flux.dtype == dtype and back.wavelength.dtype == np.float64
    np.testing.assert_array_equal(back.wavelength, grid.wavelength)
    for name in grid.param_names:
        np.testing.assert_array_equal(back.axes[name], grid.axes[name])
    np.testing.assert_array_equal(back.mask, grid.mask)
    np.testing.assert_array_equal(back.flux, grid.flux)  # NaN at the masked node too

    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "jaxspec-grid"
        assert f.attrs["version"] == 1
        assert list(f.attrs["param_names"]) == list(grid.param_names)
        assert bool(f.attrs["normalized"]) == grid.normalized
        assert f["wavelength"].dtype == np.float64
        assert f["flux"].dtype == dtype
        assert f["flux"].chunks == (*(1,) * k, N_PIX)
        assert f["mask"].dtype == bool and f["mask"].shape == grid.shape
        assert set(f["axes"]) == set(grid.param_names)
        assert all(f["axes"][n].dtype == np.float64 for n in grid.param_names)


def test_hdf5_without_mask_means_all_nodes(tmp_path):
    path = tmp_path / "g.h5"
    make_grid(2, masked=False).to_hdf5(path)
    with h5py.File(path, "r+") as f:
        del f["mask"]
    assert SpectralGrid.from_hdf5(path).mask.all()


def test_hdf5_partial_read(tmp_path):
    grid = make_grid(3)
    path = tmp_path / "grid.h5"
    grid.to_hdf5(path)
    part = SpectralGrid.from_hdf5(path, wavelength=(8010, 8020), teff=(5100, 5200), feh=(0, 0))
    ref = grid.subset(wavelength=(8010, 8020), teff=(5100, 5200), feh=(0, 0))
    np.testing.assert_array_equal(part.flux, ref.flux)
    np.testing.assert_array_equal(part.mask, ref.mask)
    with pytest.raises(ValueError, match=r"grid.h5: got ranges for unknown parameters \['vsini'\]"):
        read_grid_hdf5(path, vsini=(0, 1))


def test_hdf5_refuses_overwrite(tmp_path):
    path = tmp_path / "grid.h5"
    make_grid(1).to_hdf5(path)
    with pytest.raises(FileExistsError, match="grid.h5: file exists; pass overwrite=True"):
        make_grid(1).to_hdf5(path)
    make_grid(2).to_hdf5(path, overwrite=True)
    assert SpectralGrid.from_hdf5(path).param_names == ("teff", "logg")


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "grid.h5"
    make_grid(3).to_hdf5(path)
    return path


def test_read_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5: no such file"):
        SpectralGrid.from_hdf5(tmp_path / "nope.h5")


def test_read_not_hdf5(tmp_path):
    path = tmp_path / "grid.h5"
    path.write_text("teff,logg\n5000,4.5\n")
    with pytest.raises(ValueError, match="grid.h5: not an HDF5 file"):
        SpectralGrid.from_hdf5(path)


def test_read_other_format(good_file):
    with h5py.File(good_file, "r+") as f:
        f.attrs["format"] = "starfish-grid"
    with pytest.raises(ValueError, match=r"grid.h5: root attribute format='starfish-grid', expected 'jaxspec-grid'"):
        SpectralGrid.from_hdf5(good_file)


def test_read_unsupported_version(good_file):
    with h5py.File(good_file, "r+") as f:
        f.attrs["version"] = 2
    with pytest.raises(ValueError, match="grid.h5: root attribute version=2 is not supported.*reads version 1"):
        SpectralGrid.from_hdf5(good_file)


@pytest.mark.parametrize("attr", ["format", "version", "param_names", "normalized"])
def test_read_missing_attribute(good_file, attr):
    with h5py.File(good_file, "r+") as f:
        del f.attrs[attr]
    with pytest.raises(ValueError, match=f"grid.h5: root attribute '{attr}' is missing; rewrite"):
        SpectralGrid.from_hdf5(good_file)


@pytest.mark.parametrize("dataset", ["wavelength", "flux", "axes/logg"])
def test_read_missing_dataset(good_file, dataset):
    with h5py.File(good_file, "r+") as f:
        del f[dataset]
    with pytest.raises(ValueError, match=f"grid.h5: dataset /{dataset} is missing; rewrite"):
        SpectralGrid.from_hdf5(good_file)


def test_read_param_names_disagree_with_axes(good_file):
    with h5py.File(good_file, "r+") as f:
        f.attrs["param_names"] = ["teff", "logg"]
    with pytest.raises(ValueError, match=r"grid.h5: /axes holds \['feh'\], not listed in root attribute param_names"):
        SpectralGrid.from_hdf5(good_file)


def test_read_flux_shape_mismatch(good_file):
    with h5py.File(good_file, "r+") as f:
        del f["flux"]
        f["flux"] = np.ones((3, 4, 100))
    with pytest.raises(ValueError, match=r"grid.h5: dataset /flux has shape \(3, 4, 100\) but /axes give \(3, 2, 4\) nodes"):
        SpectralGrid.from_hdf5(good_file)


def test_read_flux_bad_dtype(good_file):
    with h5py.File(good_file, "r+") as f:
        del f["flux"]
        f["flux"] = np.ones((3, 2, 4, N_PIX), dtype=np.int32)
    with pytest.raises(ValueError, match="grid.h5: dataset /flux has dtype int32"):
        SpectralGrid.from_hdf5(good_file)


def test_read_axis_not_increasing(good_file):
    with h5py.File(good_file, "r+") as f:
        f["axes/feh"][...] = [0.5, 0.0, -0.5, 1.0]
    with pytest.raises(ValueError, match="grid.h5: dataset /axes/feh is not strictly increasing.*rewrite the file"):
        SpectralGrid.from_hdf5(good_file)


def test_read_wavelength_not_increasing(good_file):
    with h5py.File(good_file, "r+") as f:
        f["wavelength"][5] = 0.0
    with pytest.raises(ValueError, match="grid.h5: dataset /wavelength is not strictly increasing"):
        SpectralGrid.from_hdf5(good_file)


def test_read_mask_shape_mismatch(good_file):
    with h5py.File(good_file, "r+") as f:
        del f["mask"]
        f["mask"] = np.ones((3, 2), dtype=bool)
    with pytest.raises(ValueError, match=r"grid.h5: dataset /mask has shape \(3, 2\) but /axes give \(3, 2, 4\)"):
        SpectralGrid.from_hdf5(good_file)


def test_read_mask_not_bool(good_file):
    with h5py.File(good_file, "r+") as f:
        del f["mask"]
        f["mask"] = np.ones((3, 2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="grid.h5: dataset /mask has dtype float32"):
        SpectralGrid.from_hdf5(good_file)


def test_read_nan_at_existing_node(good_file):
    with h5py.File(good_file, "r+") as f:
        f["mask"][1, 1, 1] = True  # that node's flux is NaN
    with pytest.raises(ValueError, match=r"grid.h5: flux is NaN or inf at 1 existing node\(s\); the first is teff=5100, logg=4.5, feh=0"):
        SpectralGrid.from_hdf5(good_file)


# ---------------------------------------------------------------- streaming writer


def test_grid_writer_streams_and_masks(tmp_path):
    path = tmp_path / "stream.h5"
    axes = AXES[2]
    with GridWriter(path, axes, WL, dtype=np.float32, normalized=True) as w:
        assert not path.exists()  # written under a temporary name until complete
        for teff in axes["teff"]:
            w.write(expected_spectrum(teff=teff, logg=4.0), teff=teff, logg=4.0)
        w.write_at((0, 1), expected_spectrum(teff=5000.0, logg=4.5))
    grid = SpectralGrid.from_hdf5(path)
    assert grid.normalized and grid.flux.dtype == np.float32
    np.testing.assert_array_equal(grid.mask, [[True, True], [True, False], [True, False]])
    assert np.isnan(grid.flux[1, 1]).all()
    np.testing.assert_allclose(
        grid.spectrum(teff=5000, logg=4.5), expected_spectrum(teff=5000.0, logg=4.5), rtol=1e-6
    )
    assert not (tmp_path / "stream.h5.partial").exists()


def test_grid_writer_aborts_on_error(tmp_path):
    path = tmp_path / "stream.h5"
    with pytest.raises(RuntimeError):
        with GridWriter(path, AXES[1], WL) as w:
            w.write(np.ones(N_PIX), teff=5000)
            raise RuntimeError("import failed")
    assert list(tmp_path.iterdir()) == []


def test_grid_writer_rejects_bad_spectra(tmp_path):
    with GridWriter(tmp_path / "s.h5", AXES[2], WL) as w:
        with pytest.raises(ValueError, match="teff=5150 is not a node"):
            w.write(np.ones(N_PIX), teff=5150, logg=4.0)
        with pytest.raises(ValueError, match=r"node teff=5000, logg=4 has shape \(49,\)"):
            w.write(np.ones(N_PIX - 1), teff=5000, logg=4.0)
        bad = np.ones(N_PIX)
        bad[3] = np.nan
        with pytest.raises(ValueError, match=r"node teff=5000, logg=4 has 1 NaN/inf pixel\(s\), first at 8003.000 Å"):
            w.write(bad, teff=5000, logg=4.0)
        with pytest.raises(ValueError, match=r"index \(3, 0\) is outside the grid"):
            w.write_at((3, 0), np.ones(N_PIX))
    assert SpectralGrid.from_hdf5(tmp_path / "s.h5").n_nodes == 0
