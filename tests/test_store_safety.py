"""Nothing lost, nothing corrupted: store locking, grid checksums, atomic writes,
--overwrite refusals, unique plot names and one-line errors for broken files.

Everything here is cheap (no cloning, no fitting): stores are filled with made-up node
clones, grids are a few nodes by a few dozen pixels. Concurrency is tested with a real
second process that holds the store while this one reads or writes it.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from jaxspec.cli import build_parser, main
from jaxspec.cli._common import plot_stem
from jaxspec.grid import SpectralGrid
from jaxspec.io.atomic import atomic_path, save_figure, write_table
from jaxspec.io.clone_store import CloneStore, CloneStoreWriter, NodeClone
from jaxspec.io.grid_hdf5 import GridWriter, grid_checksum, grid_file_checksum
from jaxspec.io.locking import FileInUseError, WriterLock, lock_holder, lock_path

ROOT = Path(__file__).resolve().parents[1]
AXES = {"teff": np.array([4000.0, 5000.0]), "logg": np.array([4.0, 4.5]),
        "feh": np.array([0.0])}
WL = np.linspace(8500.0, 8510.0, 64)
SETTINGS = {"prominence": 0.005, "wing_cut": 6000, "epochs": 100, "learning_rate": 0.05,
            "max_shift": 0.05, "passes": 2, "deblend": 8, "amplitude_margin": 1.0,
            "width_margin": 1.1, "tolerance": 1e-5}

_PRELUDE = """
import sys
import numpy as np
from jaxspec.io.clone_store import CloneStoreWriter, NodeClone
AXES = {"teff": np.array([4000.0, 5000.0]), "logg": np.array([4.0, 4.5]),
        "feh": np.array([0.0])}
WL = np.linspace(8500.0, 8510.0, 64)
SETTINGS = %r
def node(index):
    ids = np.array([8502.0, 8505.0])
    params = np.array([a[i] for a, i in zip(AXES.values(), index)])
    return NodeClone(index=tuple(index), params=params, line_id=ids, center=ids,
                     ln_amplitude=np.full(2, -4.0), ln_sigma=np.full(2, -3.5),
                     ln_gamma=np.full(2, -3.7), residual_rms=1e-3)
""" % (SETTINGS,)


def node(index):
    ids = np.array([8502.0, 8505.0])
    params = np.array([a[i] for a, i in zip(AXES.values(), index)])
    return NodeClone(index=tuple(index), params=params, line_id=ids, center=ids,
                     ln_amplitude=np.full(2, -4.0), ln_sigma=np.full(2, -3.5),
                     ln_gamma=np.full(2, -3.7), residual_rms=1e-3)


def tiny_grid(seed: int) -> SpectralGrid:
    rng = np.random.default_rng(seed)
    flux = 1.0 - rng.uniform(0.0, 0.3, (2, 2, 1, WL.size))
    return SpectralGrid(axes=AXES, wavelength=WL, flux=flux, normalized=True)


class Holder:
    """A second process running ``script`` (after the prelude); it prints "ready" when
    it holds what it should and then waits for a line on stdin before going on."""

    def __init__(self, script: str, env: dict | None = None):
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PRELUDE + textwrap.dedent(script)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=full_env,
        )
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise AssertionError(f"holder did not start: {line!r} {self.proc.stderr.read()}")

    def go_on(self, timeout: float = 60) -> tuple[int, str, str]:
        out, err = self.proc.communicate("go\n", timeout=timeout)
        return self.proc.returncode, out, err


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "clones.h5"
    with CloneStoreWriter(path, AXES, WL, SETTINGS) as writer:
        writer.write([node((0, 0, 0))])
    return path


# ----------------------------------------------------------------------------- locking


def test_second_writer_fails_at_once_naming_the_first(store, tmp_path, capsys):
    holder = Holder(f"""
        w = CloneStoreWriter({str(store)!r}, AXES, WL, SETTINGS)
        print("ready", flush=True)
        sys.stdin.readline()
        w.write([node((1, 1, 0))])
        w.close()
    """)
    pid = holder.proc.pid
    info = lock_holder(store)
    assert info["pid"] == pid and info["host"] == socket.gethostname()
    with pytest.raises(FileInUseError, match=rf"clones.h5 is in use by PID {pid} on host "
                       rf".* since .*; wait for it, or remove the lock file"):
        CloneStoreWriter(store, AXES, WL, SETTINGS)
    # the CLI: one line on stderr, exit 1, nothing cloned
    grid_path = tmp_path / "grid.h5"
    tiny_grid(0).to_hdf5(grid_path)
    assert main(["clone", str(grid_path), "--out", str(store), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"in use by PID {pid}" in err and len(err.strip().splitlines()) == 1
    code, _, err = holder.go_on()
    assert code == 0, err
    assert not lock_path(store).exists()
    assert CloneStore(store).n_done == 2  # the first writer finished undisturbed


def test_two_writers_in_one_process_and_writer_after_close(store):
    writer = CloneStoreWriter(store, AXES, WL, SETTINGS)
    with pytest.raises(FileInUseError, match="already open for writing in this process"):
        CloneStoreWriter(store, AXES, WL, SETTINGS)
    writer.close()
    with pytest.raises(FileInUseError, match="no longer holds the lock"):
        writer.write([node((1, 0, 0))])
    with CloneStoreWriter(store, AXES, WL, SETTINGS) as again:
        again.write([node((1, 0, 0))])
    assert CloneStore(store).n_done == 2


def test_stale_lock_of_a_killed_writer_is_taken_over(store):
    holder = Holder(f"""
        w = CloneStoreWriter({str(store)!r}, AXES, WL, SETTINGS)
        print("ready", flush=True)
        sys.stdin.readline()
    """)
    os.kill(holder.proc.pid, signal.SIGKILL)
    holder.proc.wait(timeout=30)
    assert lock_holder(store)["pid"] == holder.proc.pid  # left behind by SIGKILL
    with pytest.warns(UserWarning, match=rf"stale lock .* PID {holder.proc.pid} "
                      r"\(no longer running\)"):
        writer = CloneStoreWriter(store, AXES, WL, SETTINGS)
    assert lock_holder(store)["pid"] == os.getpid()
    writer.write([node((1, 1, 0))])
    writer.close()
    assert not lock_path(store).exists() and CloneStore(store).n_done == 2


def test_lock_of_another_host_is_respected(tmp_path):
    target = tmp_path / "x.h5"
    lock_path(target).write_text(json.dumps(
        {"pid": 1, "host": "elsewhere", "started": "2030-01-01T00:00:00+00:00",
         "command": "jaxspec clone", "token": "t"}))
    with pytest.raises(FileInUseError, match="in use by PID 1 on host elsewhere since "
                       "2030-01-01"):
        WriterLock(target).acquire()


def test_grid_writer_is_locked(tmp_path):
    path = tmp_path / "g.h5"
    first = GridWriter(path, AXES, WL)
    with pytest.raises(FileInUseError):
        GridWriter(path, AXES, WL)
    first.close()
    assert path.exists() and not lock_path(path).exists()
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("hdf5_locking", [None, "FALSE"])
def test_readers_never_break_the_writer(store, monkeypatch, capsys, hdf5_locking):
    # None: HDF5's default (locking on, where jaxspec opens with locking=False); FALSE:
    # as on NFS/Lustre. (HDF5_USE_FILE_LOCKING=TRUE forces HDF5 locks on, overriding
    # locking=False: a writer then retries a busy file for a while, no more.)
    if hdf5_locking is None:
        monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)
    else:
        monkeypatch.setenv("HDF5_USE_FILE_LOCKING", hdf5_locking)
    env = {}
    # 1. The writer holds the file open mid-batch; readers open it meanwhile.
    holder = Holder(f"""
        from jaxspec.io.locking import open_hdf5
        w = CloneStoreWriter({str(store)!r}, AXES, WL, SETTINGS)
        f = open_hdf5({str(store)!r}, "a")
        print("ready", flush=True)
        sys.stdin.readline()
        f.close()
        w.write([node((1, 0, 0))])
        w.close()
    """, env)
    assert CloneStore(store).n_done == 1
    assert main(["clone", "info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "nodes: 1/4 cloned" in out and f"being written by PID {holder.proc.pid}" in out
    code, _, err = holder.go_on()
    assert code == 0, err
    # 2. A reader (plain h5py, HDF5 locking as configured) holds the file open while the
    #    writer writes a batch: before, this raised BlockingIOError in the writer.
    with h5py.File(store, "r"):
        holder = Holder(f"""
            print("ready", flush=True)
            sys.stdin.readline()
            with CloneStoreWriter({str(store)!r}, AXES, WL, SETTINGS) as w:
                w.write([node((1, 1, 0))])
        """, env)
        code, _, err = holder.go_on()
        assert code == 0, err
    assert CloneStore(store).n_done == 3


# ----------------------------------------------------------------------------- checksums


def test_grid_checksum_of_memory_and_file_agree(tmp_path):
    grid = tiny_grid(0)
    grid.to_hdf5(tmp_path / "a.h5")
    assert grid_checksum(grid) == grid_file_checksum(tmp_path / "a.h5")
    part = grid.subset(wavelength=(8502.0, 8506.0))
    assert grid_checksum(part) == grid_file_checksum(tmp_path / "a.h5", (8502.0, 8506.0))
    assert grid_checksum(tiny_grid(1)) != grid_checksum(grid)


def test_another_grid_is_refused_on_resume_and_build(tmp_path, capsys):
    from jaxspec.clone import clone_grid

    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    tiny_grid(0).to_hdf5(a)
    tiny_grid(1).to_hdf5(b)  # same axes and wavelengths, other spectra
    out = tmp_path / "clones.h5"
    store = clone_grid(a, out, max_nodes=0, progress=False)  # creates, clones nothing
    assert store.grid_checksum == grid_file_checksum(a)
    with pytest.raises(ValueError, match=r"another grid \(.*a\.h5\) .* different spectra.*"
                       r"b\.h5"):
        clone_grid(b, out, max_nodes=0, progress=False)
    assert not lock_path(out).exists()  # the refused writer let go of the lock
    assert main(["clone", str(b), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "a.h5" in err and "b.h5" in err and len(err.strip().splitlines()) == 1
    # build --grid: the right grid passes the check, another is refused
    store.check_grid(a)
    emulator = tmp_path / "emulator.h5"
    assert main(["build", str(out), "--grid", str(b), "--out", str(emulator)]) == 1
    err = capsys.readouterr().err
    assert "b.h5 is not the grid" in err and "a.h5" in err and not emulator.exists()


def test_store_without_checksum_opens_and_warns(store, tmp_path):
    grid_path = tmp_path / "grid.h5"
    tiny_grid(0).to_hdf5(grid_path)
    old = CloneStore(store)  # made without a checksum, like stores before it existed
    assert old.grid_checksum is None
    with pytest.warns(UserWarning, match="cannot check"):
        old.check_grid(grid_path)
    with pytest.warns(UserWarning, match="records no checksum"):
        CloneStoreWriter(store, AXES, WL, SETTINGS,
                         grid_checksum=grid_checksum(tiny_grid(0))).close()


# ----------------------------------------------------------------------------- atomic


def test_failed_write_keeps_the_old_file(tmp_path):
    from jaxspec.io import emulator_file
    from jaxspec.peers import _store

    path = tmp_path / "emu.h5"
    path.write_bytes(b"the old emulator")
    with pytest.raises(TypeError):  # h5py cannot store an object: fails midway
        emulator_file.write(path, _store.contents(
            "cannon", ["teff"], WL, [[4000, 5000]], "{}",
            {"coefficients": np.ones(3), "bad": object()}, {}), overwrite=True)
    assert path.read_bytes() == b"the old emulator"
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(RuntimeError), atomic_path(path, overwrite=True) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed midway")
    assert path.read_bytes() == b"the old emulator"
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and not list(tmp_path.glob("*.partial"))


def test_overwrite_is_refused_without_the_flag(tmp_path, capsys):
    from astropy.table import Table

    from jaxspec.template import Template

    existing = tmp_path / "taken"
    existing.write_text("keep me")
    template = Template.from_arrays(WL, np.ones(WL.size), "flat")
    with pytest.raises(FileExistsError, match="overwrite"):
        template.save(existing)
    assert template.save(existing, overwrite=True) == existing
    assert Template.load(existing).label == "flat"

    table = tmp_path / "t.ecsv"
    write_table(Table({"a": [1]}), table)
    with pytest.raises(FileExistsError):
        write_table(Table({"a": [2]}), table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    png = save_figure(fig, tmp_path / "f.png")
    with pytest.raises(FileExistsError):
        save_figure(fig, png)
    plt.close(fig)

    grid_path = tmp_path / "grid.h5"
    tiny_grid(0).to_hdf5(grid_path)
    args = ["grid", "plot", str(grid_path), "--teff", "4000", "--logg", "4", "--feh", "0",
            "--out", str(png)]
    assert main(args) == 1 and "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0

    run = tmp_path / "run"
    run.mkdir()
    (run / "results.ecsv").write_text("earlier run")
    assert main(["demo", "--size", "tiny", "--out", str(run), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err
    assert (run / "results.ecsv").read_text() == "earlier run"


def test_progress_flags_are_accepted():
    parser = build_parser()
    for argv in (["clone", "g.h5", "--out", "c.h5", "--quiet"],
                 ["build", "c.h5", "--out", "e.h5", "--quiet"],
                 ["grid", "synth", "--out", "g.h5", "--quiet"],
                 ["grid", "phoenix", "dir", "--out", "g.h5", "--quiet"],
                 ["demo", "--quiet"], ["demo", "--no-progress"]):
        assert parser.parse_args(argv).quiet is True, argv
    assert parser.parse_args(["demo"]).quiet is False


# ----------------------------------------------------------------------------- names


def test_plot_names_are_unique_per_spectrum(tmp_path):
    spectra = ["a/star.ecsv", "b/star.ecsv", "c/other.fits"]
    stems = [plot_stem(tmp_path / "res.ecsv", s, spectra) for s in spectra]
    assert len(set(stems)) == 3
    assert stems[0].endswith("res_a_star") and stems[1].endswith("res_b_star")
    assert plot_stem("res.ecsv", "x/star.ecsv", ["x/star.ecsv", "y/galaxy.ecsv"]) \
        == "res_star"  # unique stems stay short


# ----------------------------------------------------------------------------- broken files


def test_truncated_grid_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "grid.h5"
    tiny_grid(0).to_hdf5(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert main(["grid", "info", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "truncated" in err
    assert main(["clone", str(path), "--out", str(tmp_path / "c.h5"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err


def test_empty_spectrum_file_is_one_line(tmp_path):
    from jaxspec.io.spectrum import read_spectrum

    for name in ("star.ecsv", "star.fits"):
        path = tmp_path / name
        path.write_bytes(b"")
        with pytest.raises(ValueError) as err:
            read_spectrum(path)
        text = str(err.value)
        assert "\n" not in text and str(path) in text and "empty (0 bytes)" in text
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError) as err:
        read_spectrum(junk)
    assert "\n" not in str(err.value) and str(junk) in str(err.value)


def test_demo_overwrite_resumes_only_a_store_of_the_same_grid(tmp_path, capsys):
    from jaxspec.clone import clone_grid
    from jaxspec.demo import _prepare_clone_store

    path = tmp_path / "clones.h5"
    clone_grid(tiny_grid(0), path, max_nodes=0, progress=False)
    _prepare_clone_store(path, tiny_grid(0))
    assert path.exists() and "resuming" in capsys.readouterr().out
    _prepare_clone_store(path, tiny_grid(1))
    assert not path.exists() and "replacing" in capsys.readouterr().out
