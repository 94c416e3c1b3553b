"""Survey scale (issue 19): `jaxspec infer` on a Dask cluster, --normalize, --posterior.

A local cluster of 2 worker processes (started once for the module, through the same
code as --workers 2) gives the same rows and posteriors as one process; a client
interrupted mid-run, or killed with its cluster (SIGKILL), and run again fits every star
exactly once; bad files in a batch become rows with a message and the batch goes on. The tiny pixel emulator of
test_batch_safety serves every test, so each process compiles one MAP.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from test_batch_safety import SIGMA, small_grid

from jaxspec.cli import main
from jaxspec.infer import Spectrum
from jaxspec.io.posterior import read_posterior
from jaxspec.io.results_writer import ResultsWriter
from jaxspec.io.spectrum import write_spectrum

pytest.importorskip("dask.distributed")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(folder, emulator path, emulator, spectrum paths): 6 stars in spectra/."""
    import jax.numpy as jnp

    from jaxspec.pixel_emulator import PixelEmulator

    d = tmp_path_factory.mktemp("survey")
    em = PixelEmulator.from_grid(small_grid())
    em_path = em.save(d / "pixel.h5")
    (d / "spectra").mkdir()
    rng = np.random.default_rng(5)
    paths = []
    for i in range(6):
        f = np.asarray(em(jnp.array([4300.0 + 250.0 * i, 3.8 + 0.15 * i])))
        f = f + SIGMA * rng.normal(size=em.n_pix)
        paths.append(write_spectrum(Spectrum(em.wavelength, f, np.full(em.n_pix, SIGMA)),
                                    d / "spectra" / f"star{i}.ecsv"))
    return d, em_path, em, paths


@pytest.fixture(scope="module")
def scheduler():
    """Address of a local cluster of 2 worker processes (as --workers 2 starts it)."""
    from jaxspec.cli._survey import _dask_client

    client, cluster = _dask_client(2, None)
    assert len(client.nthreads()) == 2
    yield cluster.scheduler_address
    client.close()
    cluster.close()


def infer(em_path, spectra, out, *extra):
    return main(["infer", str(em_path), *map(str, spectra), "--out", str(out), "--quiet",
                 *map(str, extra)])


def same_rows(a: Table, b: Table) -> None:
    assert list(a["file"]) == list(b["file"]) and a.colnames == b.colnames
    for name in a.colnames:
        if name == "seconds":
            continue
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y, err_msg=name)  # bit for bit
        else:
            assert list(x) == list(y), name


def test_two_workers_give_the_results_of_one_process(files, scheduler, capsys):
    d, em_path, _, _ = files
    pattern = str(d / "spectra" / "star*.ecsv")  # quoted glob, expanded by jaxspec
    assert infer(em_path, [pattern], d / "one.ecsv", "--posterior", d / "one.nc") == 0
    assert infer(em_path, [pattern], d / "dask.ecsv", "--posterior", d / "dask.nc",
                 "--scheduler", scheduler) == 0
    one, two = Table.read(d / "one.ecsv"), Table.read(d / "dask.ecsv")
    assert len(one) == 6 and np.all(one["converged"])
    same_rows(one, two)
    p1, p2 = read_posterior(d / "one.nc").laplace, read_posterior(d / "dask.nc").laplace
    assert list(p1["star"].values) == list(one["file"])
    for var in ("mean", "covariance", "sigma"):
        np.testing.assert_array_equal(p1[var].values, p2[var].values)
    np.testing.assert_allclose(p1["mean"].sel(parameter="teff"), one["teff"], rtol=0, atol=0)
    # each worker loaded the emulator once and keeps it for the next run
    from dask.distributed import Client

    def kept():
        with Client(scheduler) as client:
            return client.run(lambda: [id(m) for m in __import__(
                "jaxspec.cli._survey", fromlist=["_MODELS"])._MODELS.values()])

    before = kept()
    assert len(before) == 2 and all(len(ids) <= 1 for ids in before.values())
    assert sum(map(len, before.values())) >= 1  # a worker that got stars holds one model
    assert infer(em_path, [pattern], d / "dask.ecsv", "--scheduler", scheduler,
                 "--overwrite") == 0
    assert kept() == before
    same_rows(one, Table.read(d / "dask.ecsv"))
    capsys.readouterr()


def test_interrupted_client_rerun_fits_every_star_once(files, scheduler, monkeypatch):
    d, em_path, _, paths = files
    out, post = d / "stop.ecsv", d / "stop.nc"
    real = ResultsWriter.write_row
    calls = {"n": 0}

    def interrupt_at_third(self, row):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C in the client, between two rows
        return real(self, row)

    monkeypatch.setattr(ResultsWriter, "write_row", interrupt_at_third)
    with pytest.raises(KeyboardInterrupt):
        infer(em_path, paths, out, "--posterior", post, "--scheduler", scheduler)
    monkeypatch.undo()
    partial = Path(str(out) + ".partial")
    done = [json.loads(line) for line in partial.read_text().splitlines()[1:]]
    assert len(done) == 2 and not out.exists()
    assert not Path(str(out) + ".lock").exists()  # released on the way out
    assert infer(em_path, paths, out, "--posterior", post, "--scheduler", scheduler) == 0
    t = Table.read(out)
    assert sorted(t["file"]) == sorted(map(str, paths))  # every star exactly once
    for row in done:  # the rows of the interrupted run are kept, not fitted again
        assert t[t["file"] == row["file"]]["seconds"][0] == pytest.approx(row["seconds"])
    stars = list(read_posterior(post).laplace["star"].values)
    assert sorted(stars) == sorted(map(str, paths))
    assert not partial.exists() and not Path(str(post) + ".parts").exists()


def test_bad_files_become_rows_and_the_batch_goes_on(files, scheduler, capsys):
    d, em_path, em, paths = files
    bad_sigma = write_spectrum(Spectrum(em.wavelength, np.ones(em.n_pix),
                                        np.full(em.n_pix, SIGMA)), d / "neg.ecsv")
    text = bad_sigma.read_text().replace(f"{SIGMA}", f"-{SIGMA}", 1)
    bad_sigma.write_text(text)
    garbage = d / "garbage.fits"
    garbage.write_bytes(b"\x00" * 500)
    out = d / "mixed.ecsv"
    code = infer(em_path, [paths[0], bad_sigma, garbage, paths[1]], out,
                 "--scheduler", scheduler)
    assert code == 0
    err = capsys.readouterr().err
    assert "the batch goes on" in err
    t = Table.read(out)
    assert list(t["file"]) == list(map(str, [paths[0], bad_sigma, garbage, paths[1]]))
    msg = dict(zip(t["file"], t["message"]))
    assert msg[str(bad_sigma)].startswith("input error: ") and "zero or negative" in msg[
        str(bad_sigma)]
    assert msg[str(garbage)].startswith("input error: ") and "garbage.fits" in msg[str(garbage)]
    assert list(t["converged"]) == [True, False, False, True]


def test_normalize_fits_a_flux_calibrated_spectrum(files, capsys):
    d, em_path, em, _ = files
    import jax.numpy as jnp

    truth = np.array([5050.0, 4.3])
    x = (em.wavelength - em.wavelength.mean()) / np.ptp(em.wavelength)
    continuum = 3e-15 * (1.0 + 0.4 * x - 0.3 * x**2)  # erg/s/cm²/Å, smooth
    rng = np.random.default_rng(9)
    f = np.asarray(em(jnp.asarray(truth))) + SIGMA * rng.normal(size=em.n_pix)
    calibrated = write_spectrum(Spectrum(em.wavelength, f * continuum,
                                         np.full(em.n_pix, SIGMA) * continuum),
                                d / "calibrated.ecsv")
    out = d / "norm.ecsv"
    assert infer(em_path, [calibrated], out) == 1  # refused: not normalised
    assert "does not look continuum-normalised" in capsys.readouterr().err
    assert infer(em_path, [calibrated], out, "--normalize", "--normalize-order", "2",
                 "--overwrite") == 0
    row = Table.read(out)[0]
    assert row["converged"], row["message"]
    assert abs(row["teff"] - truth[0]) < 4 * row["teff_err"] + 30
    assert abs(row["logg"] - truth[1]) < 4 * row["logg_err"] + 0.05


def test_survey_options_are_checked_before_work(files, capsys):
    d, em_path, _, paths = files
    out = d / "opts.ecsv"
    assert infer(em_path, paths[:1], out, "--workers", "0") == 1
    assert "--workers 0: pass the number of worker processes" in capsys.readouterr().err
    assert infer(em_path, paths[:1], out, "--method", "bo", "--posterior", d / "x.nc") == 1
    assert "--posterior needs --method nuts" in capsys.readouterr().err
    assert infer(em_path, [str(d / "nothing*.fits")], out) == 1
    assert "no file matches this pattern" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not allowed together
        infer(em_path, paths[:1], out, "--workers", "2", "--scheduler", "tcp://x:1")
    assert not out.exists()


def test_killed_run_rerun_fits_every_star_once(files, scheduler, tmp_path):
    """A real kill: SIGKILL of `jaxspec infer --workers 2` (client, nannies and workers,
    one process group) once some rows are on disk; the rerun keeps those rows, takes
    over the dead run's lock and fits only the rest."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    _, em_path, _, paths = files
    many = []
    for i in range(24):  # copies of the 6 stars under new names: 24 rows to write
        many.append(tmp_path / f"copy{i:02d}.ecsv")
        shutil.copy(paths[i % len(paths)], many[-1])
    out = tmp_path / "killed.ecsv"
    partial = Path(str(out) + ".partial")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    child = subprocess.Popen(
        [sys.executable, "-c", ("import sys; from jaxspec.cli import main; "
                                "sys.exit(main(sys.argv[1:]))"), "infer", str(em_path), *map(str, many),
         "--out", str(out), "--quiet", "--workers", "2"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows_at_kill = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            if partial.exists():
                rows_at_kill = len(partial.read_text().splitlines()) - 1
                if rows_at_kill >= 2:
                    break
            time.sleep(0.01)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)  # the client and its cluster, mid-run
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    assert not out.exists(), "the run finished before the kill; give it more stars"
    done = [json.loads(line) for line in partial.read_text().splitlines()[1:]]
    assert 2 <= len(done) < len(many)
    assert Path(str(out) + ".lock").exists()  # left by the killed client
    with pytest.warns(UserWarning, match="lock"):
        assert infer(em_path, many, out, "--scheduler", scheduler) == 0
    t = Table.read(out)
    assert sorted(t["file"]) == sorted(map(str, many))  # every star exactly once
    assert len(set(t["file"])) == len(many)
    for row in done:  # rows written before the kill are kept, not fitted again
        assert t[t["file"] == row["file"]]["seconds"][0] == pytest.approx(row["seconds"])
    assert np.all(t["converged"])
    assert not partial.exists() and not Path(str(out) + ".lock").exists()
