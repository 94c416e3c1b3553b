"""Nothing lost, nothing corrupted, no wrong fit called good (issue 17, part A).

`jaxspec infer` batches: rows survive a SIGKILL and a rerun fits each spectrum exactly
once; a second writer of one --out is refused; an unwritable --out fails before any fit;
a bad file becomes a row. Honest flags and input checks: pure noise, unnormalised flux,
bitmask masks, unsorted wavelengths, σ ≤ 0, parameters outside the box.

One small 2-parameter pixel emulator (101 px) serves every test; every MAP uses the
same shapes, so it compiles once in this process.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.table import Table

from jaxspec.cli import main
from jaxspec.emulator import load_emulator
from jaxspec.grid import SpectralGrid
from jaxspec.infer import Spectrum, Status, fit_map, gaussian_log_likelihood
from jaxspec.infer.results import plausibility_flags
from jaxspec.io.results_writer import ResultsInUseError, ResultsWriter
from jaxspec.io.spectrum import read_spectrum, write_spectrum
from jaxspec.pixel_emulator import PixelEmulator

SIGMA = 0.01
ROOT = Path(__file__).resolve().parents[1]


def small_grid() -> SpectralGrid:
    teff = np.arange(4000.0, 6001.0, 500.0)
    logg = np.arange(3.5, 5.01, 0.5)
    wl = np.linspace(5000.0, 5010.0, 101)
    t, g = np.meshgrid(teff, logg, indexing="ij")
    x, y = (t - 4000.0) / 2000.0, (g - 3.5) / 1.5
    flux = np.ones(t.shape + wl.shape)
    for c, d, w in ((5002.0, 0.6 * np.exp(-1.2 * x), 0.15 + 0.08 * y),
                    (5005.0, 0.2 + 0.4 * x**1.5, 0.2 + 0 * y),
                    (5008.0, 0.15 + 0.25 * y * (1 - 0.5 * x), 0.15 + 0 * y)):
        flux -= d[..., None] * np.exp(-0.5 * ((wl - c) / w[..., None]) ** 2)
    return SpectralGrid({"teff": teff, "logg": logg}, wl, flux, normalized=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(folder, emulator path, emulator, list of good spectrum paths)."""
    d = tmp_path_factory.mktemp("batch")
    em = PixelEmulator.from_grid(small_grid())
    em_path = em.save(d / "pixel.h5")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        theta = jnp.array([4300.0 + 250.0 * i, 3.8 + 0.15 * i])
        f = np.asarray(em(theta)) + SIGMA * rng.normal(size=em.n_pix)
        paths.append(write_spectrum(Spectrum(em.wavelength, f, np.full(em.n_pix, SIGMA)),
                                    d / f"star{i}.ecsv"))
    return d, em_path, em, paths


def infer(em_path, paths, out, *extra):
    return main(["infer", str(em_path), *map(str, paths), "--out", str(out), "--quiet",
                 *extra])


# ---------------------------------------------------------------- batches


def test_killed_batch_resumes_each_spectrum_exactly_once(setup, capsys):
    d, em_path, _, paths = setup
    out = d / "killed.ecsv"
    partial = Path(str(out) + ".partial")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-c", "import sys; from jaxspec.cli import main; "
           "sys.exit(main(sys.argv[1:]))", "infer", str(em_path), *map(str, paths),
           "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if partial.exists() and partial.read_text().count("\n") >= 2:  # header + 1 row
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the batch finished before it was killed"
    assert not out.exists()  # only the final table goes to --out
    lines = partial.read_text().splitlines()
    done = [json.loads(line) for line in lines[1:]]
    assert 1 <= len(done) < len(paths)
    # the dead run's lock is stale: taken over with a warning
    with pytest.warns(UserWarning, match="stale lock"):
        assert infer(em_path, paths, out) == 0
    assert "already done" in capsys.readouterr().err
    t = Table.read(out)
    assert sorted(t["file"]) == sorted(map(str, paths))  # every spectrum exactly once
    assert np.all(t["converged"]) and len(set(t["checksum"])) == len(paths)
    first = t[t["file"] == done[0]["file"]][0]
    assert first["seconds"] == pytest.approx(done[0]["seconds"])  # kept, not refitted
    assert not partial.exists() and not Path(str(out) + ".lock").exists()
    # a third run has nothing to do; a changed file is fitted again, once
    assert infer(em_path, paths, out) == 0
    assert len(Table.read(out)) == len(paths)
    changed = d / "star_changed.ecsv"
    spec = read_spectrum(paths[0])
    write_spectrum(spec, changed)
    assert infer(em_path, [changed], out) == 0
    write_spectrum(Spectrum(spec.wavelength, spec.flux * 0.999, spec.uncertainty), changed,
                   overwrite=True)
    assert infer(em_path, [changed], out) == 0
    t = Table.read(out)
    assert len(t) == len(paths) + 1 and list(t["file"]).count(str(changed)) == 1
    # other settings: refused, naming what differs
    assert infer(em_path, paths, out, "--starts", "2") == 1
    assert "starts=4 (now 2)" in capsys.readouterr().err


def test_second_writer_is_refused_and_unwritable_out_fails_first(setup, capsys,
                                                                 monkeypatch):
    d, em_path, _, paths = setup
    out = d / "two.ecsv"
    with ResultsWriter(out, settings={"method": "map"}):
        assert infer(em_path, paths[:1], out) == 1
        err = capsys.readouterr().err
        assert f"{out}: in use by PID {os.getpid()}" in err and "another --out" in err
        with pytest.raises(ResultsInUseError):
            ResultsWriter(out, settings={}).open()
    assert not Path(str(out) + ".lock").exists()  # released

    import jaxspec.infer

    def no_fit(*args, **kwargs):
        raise AssertionError("a fit ran before the output was checked")

    monkeypatch.setattr(jaxspec.infer, "fit_map", no_fit)
    blocker = d / "a_file"
    blocker.write_text("not a folder")
    assert infer(em_path, paths, blocker / "res.ecsv") == 1
    assert "cannot create its folder" in capsys.readouterr().err
    # options are checked before any work too
    assert infer(em_path, paths, d / "n.ecsv", "--method", "nuts", "--samples", "0") == 1
    assert "--samples 0: pass an integer >= 2" in capsys.readouterr().err


def test_bad_files_become_rows_and_the_batch_goes_on(setup, capsys):
    d, em_path, em, paths = setup
    spec = read_spectrum(paths[1])
    neg = Table({"wavelength": spec.wavelength, "flux": spec.flux,
                 "uncertainty": np.where(np.arange(em.n_pix) == 7, -0.01, SIGMA)})
    neg.write(d / "neg.ecsv", overwrite=True)
    flux_cal = Table({"wavelength": spec.wavelength, "flux": spec.flux * 3e-15,
                      "uncertainty": np.full(em.n_pix, 3e-17)})
    flux_cal.write(d / "calibrated.ecsv", overwrite=True)
    out = d / "mixed.ecsv"
    files = [paths[0], d / "neg.ecsv", d / "missing.ecsv", d / "calibrated.ecsv"]
    assert infer(em_path, files, out) == 0
    err = capsys.readouterr().err
    assert "calibrated.ecsv: flux does not look continuum-normalised" in err
    assert "normalise it first" in err and "3 of 4 fit(s) did not converge" in err
    t = Table.read(out)
    assert list(t["file"]) == [str(f) for f in files]
    rows = {Path(r["file"]).name: r for r in t}
    assert rows["star0.ecsv"]["converged"] and np.isfinite(rows["star0.ecsv"]["teff"])
    assert "zero or negative" in rows["neg.ecsv"]["message"]
    assert "no such spectrum file" in rows["missing.ecsv"]["message"]
    for name in ("neg.ecsv", "missing.ecsv", "calibrated.ecsv"):
        assert not rows[name]["converged"] and np.isnan(rows[name]["teff"])
    # every input bad: the table says why and the exit code is 1
    assert infer(em_path, [d / "calibrated.ecsv"], d / "allbad.ecsv") == 1
    assert not Table.read(d / "allbad.ecsv")["converged"][0]


# ---------------------------------------------------------------- honest flags


def test_pure_noise_and_uninformative_data_are_not_converged(setup):
    _, _, em, _ = setup
    rng = np.random.default_rng(5)
    noise = 1.0 + 0.3 * rng.normal(size=em.n_pix)  # no stellar spectrum at all
    res = fit_map(em, noise, np.full(em.n_pix, SIGMA))
    row = res.rows()[0]
    assert not row["converged"] and res.status & Status.POOR_FIT
    assert "chi2/nu far above 1" in row["message"] and float(res.chi2_nu) > 100
    # uncertainties of 1e30: the data say nothing, the answer is the prior's
    flux = np.asarray(em(jnp.array([5000.0, 4.2])))
    vague = fit_map(em, flux, np.full(em.n_pix, 1e30))
    assert not bool(vague.converged)
    # the rules themselves (unit box coordinates)
    u = np.array([0.3, 0.6])
    assert plausibility_flags(u) == 0
    assert plausibility_flags(np.array([0.0, 1.0])) == Status.ALL_EDGES
    prior = np.full(2, 1 / np.sqrt(12))
    assert plausibility_flags(u, sigma_u=0.95 * prior) == Status.PRIOR  # NUTS = prior
    assert plausibility_flags(u, sigma_u=np.array([0.95, 0.1]) * prior) == 0
    assert plausibility_flags(u, sigma_u=np.full(2, np.nan)) == Status.NO_ERRORS
    assert plausibility_flags(u, chi2=600.0, nu=100) == Status.POOR_FIT
    assert plausibility_flags(u, chi2=120.0, nu=100) == 0
    assert plausibility_flags(u, chi2=12.0, nu=2) == 0  # few pixels: 1 + 10 sqrt(2/2)


def test_mask_column_bitmask_and_mask_bits(setup, capsys):
    d, em_path, em, paths = setup
    spec = read_spectrum(paths[2])
    flags = np.zeros(em.n_pix, dtype=np.int32)
    flags[10:14] = 4
    flags[40] = 512
    t = Table({"wavelength": spec.wavelength, "flux": spec.flux,
               "uncertainty": spec.uncertainty, "mask": flags})
    t.write(d / "bits.ecsv", overwrite=True)
    with pytest.raises(ValueError, match=r"bits.ecsv: column mask holds values other than "
                       r"0/1 \(4, 512\): it looks like a bitmask.*--mask-bits"):
        read_spectrum(d / "bits.ecsv")
    s = read_spectrum(d / "bits.ecsv", mask_bits=4)
    assert s.mask.sum() == em.n_pix - 4 and not s.mask[10:14].any() and s.mask[40]
    assert read_spectrum(d / "bits.ecsv", mask_bits=516).mask.sum() == em.n_pix - 5
    out = d / "bits_res.ecsv"
    assert infer(em_path, [d / "bits.ecsv"], out) == 1
    assert "--mask-bits N" in capsys.readouterr().err
    assert infer(em_path, [d / "bits.ecsv"], out, "--mask-bits", "516", "--overwrite") == 0
    assert Table.read(out)["converged"][0]


def test_unsorted_wavelengths_warn_and_are_sorted(setup):
    d, _, em, paths = setup
    spec = read_spectrum(paths[3])
    order = np.random.default_rng(1).permutation(em.n_pix)
    Table({"wavelength": spec.wavelength[order], "flux": spec.flux[order],
           "uncertainty": spec.uncertainty[order]}).write(d / "shuffled.ecsv", overwrite=True)
    with pytest.warns(UserWarning, match="shuffled.ecsv: wavelengths are not sorted"):
        s = read_spectrum(d / "shuffled.ecsv")
    np.testing.assert_array_equal(s.wavelength, spec.wavelength)
    np.testing.assert_array_equal(s.flux, spec.flux)


def test_non_positive_sigma_is_an_error_at_every_level(setup):
    d, _, em, paths = setup
    spec = read_spectrum(paths[4])
    bad = spec.uncertainty.copy()
    bad[3] = -0.01
    Table({"wavelength": spec.wavelength, "flux": spec.flux, "uncertainty": bad}).write(
        d / "negsig.ecsv", overwrite=True)
    with pytest.raises(ValueError, match="negsig.ecsv: uncertainty is zero or negative"):
        read_spectrum(d / "negsig.ecsv")
    with pytest.raises(ValueError, match="zero or negative"):
        Spectrum(spec.wavelength, spec.flux, bad)
    model = jnp.asarray(spec.flux)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        gaussian_log_likelihood(model, spec.flux, bad)
    with pytest.raises(Exception, match="sigma must be > 0"):
        jax.block_until_ready(jax.jit(gaussian_log_likelihood)(model, spec.flux, bad))
    with pytest.raises(ValueError, match="noise_scale"):
        gaussian_log_likelihood(model, spec.flux, spec.uncertainty, noise_scale=-1.0)
    # a negative σ at a masked pixel is fine (it is not used)
    mask = np.arange(em.n_pix) != 3
    assert np.isfinite(gaussian_log_likelihood(model, spec.flux, bad, mask))


def test_out_of_box_is_one_line_error_or_clamped(setup):
    _, em_path, em, _ = setup
    with pytest.raises(ValueError) as err:
        em(np.array([7000.0, 4.0]))
    text = str(err.value)
    assert "\n" not in text and "teff=7000 outside the emulator's box" in text
    assert "teff in [4000, 6000], logg in [3.5, 5]" in text and "clamped()" in text
    clamped = load_emulator(em_path, out_of_box="clamp")
    np.testing.assert_allclose(clamped(np.array([7000.0, 4.0])), em(np.array([6000.0, 4.0])))
    g = jax.grad(lambda t: clamped(t).sum())(jnp.array([7000.0, 4.0]))
    assert g[0] == 0.0 and np.isfinite(g[1])  # flat outside the box
