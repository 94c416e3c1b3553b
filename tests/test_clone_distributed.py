"""clone_grid on Dask (issue 19): nodes spread over 2 workers, the client the one writer.

The tiny 2 × 2 × 2 grid of test_clone (one node missing) cloned with
``method="independent"`` on a local cluster of 2 worker processes gives the store that
one process gives, node for node and bit for bit; the CLI's --scheduler run stopped
after some nodes resumes to the same store; continuation on a cluster (a scheduler) is
refused with the fix.
"""

import numpy as np
import pytest
from test_clone import GRID_KW, grid  # noqa: F401  (the tiny grid fixture)

from jaxspec.cli import main
from jaxspec.clone import clone_grid
from jaxspec.io.clone_store import CloneStore

pytest.importorskip("dask.distributed")

FIELDS = ("line_id", "center", "ln_amplitude", "ln_sigma", "ln_gamma", "params")


@pytest.fixture(scope="module")
def scheduler():
    """Address of a local cluster of 2 worker processes (as workers=2 starts it)."""
    from jaxspec._dask import dask_client

    client, cluster = dask_client(2, None)
    yield cluster.scheduler_address
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def serial(grid, tmp_path_factory):  # noqa: F811
    """The store cloned in this process, and the grid's file."""
    d = tmp_path_factory.mktemp("clone_dask")
    grid_path = d / "grid.h5"
    grid.to_hdf5(grid_path)
    return clone_grid(grid_path, d / "serial.h5", **GRID_KW), grid_path


def same_store(a: CloneStore, b: CloneStore) -> None:
    assert a.mask.tolist() == b.mask.tolist() and a.n_done == b.n_done
    assert a.settings == b.settings
    for node in a.iter_nodes():
        other = b.read_node(node.index)
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(node, name), getattr(other, name),
                                          err_msg=f"{name} at {node.index}")
        assert node.residual_rms == other.residual_rms


def test_two_workers_give_the_store_of_one_process(grid, serial, scheduler, tmp_path):  # noqa: F811
    store, grid_path = serial
    assert store.n_done == 7
    seen = []
    dask_store = clone_grid(grid_path, tmp_path / "dask.h5", scheduler=scheduler,
                            callback=lambda done, total: seen.append((done, total)),
                            **GRID_KW)
    same_store(store, dask_store)
    # one callback per batch (4 + 3 nodes), in the order the workers finish them
    assert len(seen) == 2 and seen[0] in [(3, 7), (4, 7)] and seen[-1] == (7, 7)


def test_cli_scheduler_run_resumes_to_the_same_store(serial, scheduler, tmp_path, capsys):
    store, grid_path = serial
    out = tmp_path / "cli.h5"
    common = ["clone", str(grid_path), "--out", str(out), "--method", "independent",
              "--epochs", "60", "--passes", "1", "--batch-size", "4", "--quiet",
              "--scheduler", scheduler]
    assert main([*common, "--max-nodes", "4"]) == 0
    assert CloneStore(out).n_done == 4
    assert main(common) == 0  # resumed: only the 3 missing nodes are cloned
    assert "7/8 nodes cloned" in capsys.readouterr().out
    same_store(store, CloneStore(out))


def test_continuation_on_a_cluster_is_refused(serial, tmp_path, capsys):
    """Continuation spreads only its fits, over local processes (workers=N, tested in
    test_continuation.py); a Dask scheduler is refused with the fix."""
    _, grid_path = serial
    out = tmp_path / "cont.h5"
    with pytest.raises(ValueError, match="pass method='independent'"):
        clone_grid(grid_path, out, scheduler="tcp://x:1", epochs=60, passes=1,
                   progress=False)
    assert main(["clone", str(grid_path), "--out", str(out), "--scheduler", "tcp://x:1",
                 "--quiet"]) == 1
    assert "pass --method independent" in capsys.readouterr().err
    assert main(["clone", str(grid_path), "--out", str(out), "--method", "independent",
                 "--workers", "0", "--quiet"]) == 1
    assert "--workers 0: pass the number" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not both"):
        clone_grid(grid_path, out, workers=2, scheduler="tcp://x:1", **GRID_KW)
    assert not out.exists()
