r"""The jaxspec-clones HDF5 store (version 2): line-list clones of every node of a grid.

Written incrementally by :func:`jaxspec.clone.clone_grid`, read by :class:`CloneStore`
(the manifold stage reads it node by node). Layout (a contract other tools rely on)::

    /                    attrs: format = "jaxspec-clones"   (str)
                                version = 2                 (int; 1 is still read)
                                param_names = [k str]       (axis order of the grid)
                                normalized = True
                                prominence, wing_cut, epochs, learning_rate,
                                max_shift, passes, deblend, amplitude_margin,
                                width_margin, tolerance, method, warm_epochs,
                                warm_learning_rate, floor_depth,
                                warm_width_anchor, chain_axis, warm_track_anchor,
                                prime_broad, relax_passes, relax_epochs,
                                birth_epochs,
                                parallel_batches,
                                warm_merge, top_root        (clone settings; version 1
                                                            stores lack the last fourteen
                                                            and read as
                                                            method="independent"; a
                                                            missing warm_width_anchor,
                                                            warm_track_anchor,
                                                            prime_broad, relax_passes,
                                                            relax_epochs or birth_epochs
                                                            reads as 0, a missing
                                                            chain_axis as -1, a missing
                                                            parallel_batches as 1, a
                                                            missing warm_merge or
                                                            top_root as 0)
                                start (int array, optional: the continuation sweep's
                                    start node)
                                backfilled (bool, optional: the continuation sweep's
                                    back-fill has run to its end)
                                relaxed (int, optional: batches of the relaxation
                                    passes done, counted over all passes)
                                grid_file (str, optional: the cloned grid's path)
                                grid_sha256 (str, optional: grid_checksum of the
                                    cloned grid's spectra; stores before it lack it)
                                jaxspec_version (str)
    /wavelength          (n_pix,) float64, Å: the cloned grid's wavelengths
    /axes/<name>         (n_i,) float64, one per name in param_names
    /identities/center   (n_id,) float64, Å (continuation stores only): the reference
                         centre μ₀ of every line identity, indexed by the nodes' identity
    /nodes/<i>_<j>_<k>   one group per cloned node (axis indices joined by "_")
        line_id          (n,) float64: pre-optimisation centre μ, Å, rounded to 0.01
                         (blase3D Sect. 3.1), unique and increasing within the node
        center           (n,) float64: fitted centre μ', Å
        ln_amplitude     (n,) float64: ln a (a in Å)
        ln_sigma         (n,) float64: ln σ (Å)
        ln_gamma         (n,) float64: ln γ (Å)
        identity         (n,) int64 (continuation stores only): the line's identity, an
                         index into /identities/center, unique within the node; the same
                         line has the same identity at every node
        attrs: index (int array), params (float64, param_names order),
               residual_rms (float), n_lines (int), complete = True (written last)

A node group whose ``complete`` attribute is missing or False was interrupted while being
written: readers treat it as not cloned (with a warning) and :func:`clone_grid` redoes it.
The file is opened, written and closed once per batch of nodes, so a killed job loses at
most the batch in progress.

One writer per store: :class:`CloneStoreWriter` holds the lock file ``<store>.lock``
(:class:`jaxspec.io.locking.WriterLock`: PID, host, start time) from construction to
:meth:`CloneStoreWriter.close`; a second writer fails at once naming the first, a lock left
by a dead process on this host is taken over with a warning. Readers (:class:`CloneStore`)
take no lock and open the file with HDF5 locking off, retrying briefly while a batch is
being written, so ``jaxspec clone info`` never stops a running clone; everything holds with
``HDF5_USE_FILE_LOCKING=FALSE``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Mapping
from os import PathLike
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from jaxspec.io.atomic import atomic_path
from jaxspec.io.locking import WriterLock, lock_holder, open_hdf5

__all__ = [
    "FORMAT",
    "SETTING_NAMES",
    "VERSION",
    "CloneStore",
    "CloneStoreWriter",
    "NodeClone",
    "read_clone_store",
]

FORMAT = "jaxspec-clones"
VERSION = 2
#: Versions this jaxspec reads.
READABLE_VERSIONS = (1, 2)
#: Root attributes that hold the clone settings (compared on resume).
SETTING_NAMES = (
    "prominence", "wing_cut", "epochs", "learning_rate", "max_shift", "passes", "deblend",
    "amplitude_margin", "width_margin", "tolerance", "method", "warm_epochs",
    "warm_learning_rate", "floor_depth", "warm_width_anchor", "chain_axis",
    "warm_track_anchor", "prime_broad", "relax_passes", "relax_epochs", "birth_epochs",
    "parallel_batches", "warm_merge", "top_root",
)
#: Settings that version-1 stores lack, and the values they mean there.
_V1_SETTINGS = {"method": "independent", "warm_epochs": 40, "warm_learning_rate": 0.05,
                "floor_depth": 1e-4, "warm_width_anchor": 0.0, "chain_axis": -1,
                "warm_track_anchor": 0.0, "prime_broad": 0.0, "relax_passes": 0,
                "relax_epochs": 0, "birth_epochs": 0, "parallel_batches": 1,
                "warm_merge": 0.0, "top_root": 0}
#: Settings added after version 2 was written, and the values that stores without them
#: were cloned with.
_LATER_SETTINGS = {"warm_width_anchor": 0.0, "chain_axis": -1, "warm_track_anchor": 0.0,
                   "prime_broad": 0.0, "relax_passes": 0, "relax_epochs": 0,
                   "birth_epochs": 0, "parallel_batches": 1, "warm_merge": 0.0,
                   "top_root": 0}
_INT_SETTINGS = ("wing_cut", "epochs", "passes", "deblend", "warm_epochs", "chain_axis",
                 "relax_passes", "relax_epochs", "birth_epochs", "parallel_batches",
                 "top_root")
_LINE_FIELDS = ("line_id", "center", "ln_amplitude", "ln_sigma", "ln_gamma")
_FIX = "; re-run jaxspec.clone.clone_grid (or `jaxspec clone`) to rebuild the store"
#: Seconds a reader keeps retrying a store that fails to read (a batch being written).
READ_RETRY_SECONDS = 3.0


class NodeClone(NamedTuple):
    """The clone of one grid node, as stored.

    ``index`` is the node's position on the grid axes, ``params`` its parameter values
    (``param_names`` order); the line arrays are (n,) and sorted by ``line_id``.
    """

    index: tuple[int, ...]
    params: np.ndarray
    line_id: np.ndarray
    center: np.ndarray
    ln_amplitude: np.ndarray
    ln_sigma: np.ndarray
    ln_gamma: np.ndarray
    residual_rms: float
    identity: np.ndarray | None = None

    @property
    def n_lines(self) -> int:
        return int(self.line_id.size)


def node_name(index) -> str:
    """Group name of a node: its axis indices joined by "_" (e.g. "12_3_1")."""
    return "_".join(str(int(i)) for i in index)


def _attr_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _settings_equal(a: Mapping, b: Mapping) -> list[str]:
    """Names of settings that differ between two settings dicts."""
    diff = []
    for name in SETTING_NAMES:
        x, y = a.get(name), b.get(name)
        if x is None or y is None:
            if x is not y:
                diff.append(name)
        elif isinstance(x, str) or isinstance(y, str):
            if _attr_str(x) != _attr_str(y):
                diff.append(name)
        elif not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=0.0):
            diff.append(name)
    return diff


class CloneStore:
    """Read-only view of a jaxspec-clones store, validated on open.

    Metadata (axes, wavelength, settings, which nodes are complete) is read at once;
    node line lists are read on demand (the file is opened per call, so a store can be
    read while :func:`~jaxspec.clone.clone_grid` is still adding nodes between batches).

    Attributes:
        path: the file.
        param_names: parameter names in axis order.
        axes: ``{name: (n_i,) float64}``.
        wavelength: (n_pix,) float64, Å.
        settings: clone settings (``prominence``, ``wing_cut``, ``epochs``,
            ``learning_rate``, ...).
        mask: bool array over the grid shape, True where the node's clone is complete.
        grid_file: path of the cloned grid file, or None.
        grid_checksum: SHA-256 of the cloned grid's spectra
            (:func:`jaxspec.io.grid_hdf5.grid_checksum`), or None for stores written
            before it was recorded (they cannot be checked against a grid).

    The store is read without taking its writer lock and with HDF5 file locking off, so
    it can be opened while ``clone`` writes it; a read that fails while a writer holds
    the store (a batch half-written at that instant) is retried for
    :data:`READ_RETRY_SECONDS`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable HDF5 file (truncated or corrupt: one line naming the
            file), not a jaxspec-clones file, an unsupported version, a missing attribute
            or dataset, or a complete node group whose arrays disagree in length (the
            message names the file, the field and the fix). Incomplete node groups only
            warn.
    """

    def __init__(self, path: str | PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such clone store")
        self._with_retry(self._read_metadata)

    def _with_retry(self, read):
        """``read(open file)``, retried while the file fails to open or read; a
        persistent failure is one ValueError naming the file."""
        deadline = time.monotonic() + READ_RETRY_SECONDS
        while True:
            try:
                with open_hdf5(self.path, "r") as f:
                    return read(f)
            except (OSError, RuntimeError, KeyError) as err:
                # only a store being written (its lock exists) is worth waiting for
                if time.monotonic() > deadline or lock_holder(self.path) is None:
                    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
                    raise ValueError(
                        f"{self.path}: not a readable HDF5 file ({detail}); it may be "
                        f"truncated by a crash while being written{_FIX}"
                    ) from None
            time.sleep(0.1)

    @classmethod
    def open(cls, path: str | PathLike) -> CloneStore:
        """Open and validate a store (same as ``CloneStore(path)``)."""
        return cls(path)

    # ------------------------------------------------------------------ metadata

    def _read_metadata(self, f: h5py.File) -> None:
        where = str(self.path)
        fmt = _attr_str(f.attrs.get("format", ""))
        if fmt != FORMAT:
            raise ValueError(
                f"{where}: root attribute format is {fmt!r}, not {FORMAT!r}: this is not a "
                "jaxspec clone store (a grid file? clone it with `jaxspec clone GRID --out "
                "clones.h5`)"
            )
        version = f.attrs.get("version")
        if version is None or int(version) not in READABLE_VERSIONS:
            raise ValueError(
                f"{where}: clone store version {version!r} is not supported (this jaxspec "
                f"reads versions {READABLE_VERSIONS}){_FIX}"
            )
        self.version = int(version)
        defaults = _V1_SETTINGS if self.version == 1 else _LATER_SETTINGS
        missing = [a for a in ("param_names", *SETTING_NAMES)
                   if a not in f.attrs and a not in defaults]
        if missing:
            raise ValueError(f"{where}: missing root attribute(s) {missing}{_FIX}")
        self.param_names = tuple(_attr_str(n) for n in np.atleast_1d(f.attrs["param_names"]))
        self.settings = {}
        for name in SETTING_NAMES:
            value = f.attrs[name] if name in f.attrs else defaults[name]
            if name == "method":
                self.settings[name] = _attr_str(value)
            else:
                self.settings[name] = int(value) if name in _INT_SETTINGS else float(value)
        start = f.attrs.get("start")
        self.start = None if start is None else tuple(int(i) for i in np.atleast_1d(start))
        #: continuation: the back-fill after the sweep has run to its end
        self.backfilled = bool(f.attrs.get("backfilled", False))
        #: continuation: batches of the relaxation passes done (over all passes)
        self.relaxed = int(f.attrs.get("relaxed", 0))
        self.identities = (np.asarray(f["identities/center"][()], dtype=np.float64)
                           if "identities/center" in f else None)
        grid_file = f.attrs.get("grid_file")
        self.grid_file = _attr_str(grid_file) if grid_file not in (None, "") else None
        checksum = f.attrs.get("grid_sha256")
        self.grid_checksum = _attr_str(checksum) if checksum not in (None, "") else None
        if "wavelength" not in f:
            raise ValueError(f"{where}: missing dataset /wavelength{_FIX}")
        self.wavelength = np.asarray(f["wavelength"][()], dtype=np.float64)
        self.axes = {}
        for name in self.param_names:
            if f"axes/{name}" not in f:
                raise ValueError(f"{where}: missing dataset /axes/{name}{_FIX}")
            self.axes[name] = np.asarray(f[f"axes/{name}"][()], dtype=np.float64)
        self.shape = tuple(a.size for a in self.axes.values())
        self.mask = np.zeros(self.shape, dtype=bool)
        self._n_lines = np.zeros(self.shape, dtype=np.int64)
        self._rms = np.full(self.shape, np.nan)
        incomplete = []
        nodes = f.get("nodes")
        for name in (nodes.keys() if nodes is not None else ()):
            group = nodes[name]
            index = self._parse_name(name)
            if not bool(group.attrs.get("complete", False)):
                incomplete.append(name)
                continue
            self._check_node(group, name)
            if self.identities is not None and "identity" not in group:
                raise ValueError(
                    f"{where}: node /nodes/{name} lacks the dataset identity that every "
                    f"node of a continuation store has{_FIX}")
            self.mask[index] = True
            self._n_lines[index] = group["line_id"].shape[0]
            self._rms[index] = float(group.attrs["residual_rms"])
        self.incomplete = tuple(incomplete)
        if incomplete:
            warnings.warn(
                f"{where}: {len(incomplete)} node group(s) were not completely written "
                f"(first: /nodes/{incomplete[0]}), probably by an interrupted run; they are "
                "treated as not cloned. Resume with clone_grid(..., resume=True) to redo "
                "them",
                stacklevel=3,
            )

    def _parse_name(self, name: str) -> tuple[int, ...]:
        try:
            index = tuple(int(p) for p in name.split("_"))
        except ValueError:
            index = ()
        if len(index) != len(self.shape) or not all(
            0 <= i < n for i, n in zip(index, self.shape)
        ):
            raise ValueError(
                f"{self.path}: node group /nodes/{name} does not name a node of the "
                f"{' x '.join(map(str, self.shape))} grid (expected indices joined by "
                f"'_'){_FIX}"
            )
        return index

    def _check_node(self, group: h5py.Group, name: str) -> None:
        where = f"{self.path}: node /nodes/{name}"
        missing = [k for k in _LINE_FIELDS if k not in group]
        if missing:
            raise ValueError(f"{where} is marked complete but lacks dataset(s) {missing}{_FIX}")
        lengths = {k: group[k].shape for k in _LINE_FIELDS}
        if len({s for s in lengths.values()}) != 1 or len(lengths["line_id"]) != 1:
            raise ValueError(
                f"{where}: line arrays have inconsistent shapes {lengths}; every field "
                f"needs one value per line{_FIX}"
            )
        for attr in ("params", "residual_rms"):
            if attr not in group.attrs:
                raise ValueError(f"{where}: missing attribute {attr!r}{_FIX}")

    # ------------------------------------------------------------------ access

    @property
    def n_done(self) -> int:
        """Number of complete nodes."""
        return int(self.mask.sum())

    @property
    def n_lines(self) -> np.ndarray:
        """Lines per node over the grid shape (0 where not cloned)."""
        return self._n_lines.copy()

    @property
    def residual_rms(self) -> np.ndarray:
        """Residual RMS per node over the grid shape (NaN where not cloned)."""
        return self._rms.copy()

    def node_params(self, index) -> np.ndarray:
        """Parameter values (param_names order) of the node at ``index``."""
        return np.array([a[i] for a, i in zip(self.axes.values(), index)], dtype=np.float64)

    def index(self, **params: float) -> tuple[int, ...]:
        """Axis indices of the node with exactly these parameter values."""
        from jaxspec._axes import node_index

        return node_index(self.axes, params)

    def read_node(self, index) -> NodeClone:
        """The stored clone of the node at ``index`` (a tuple of axis indices).

        Raises:
            ValueError: the index is outside the grid, or that node is not (completely)
                cloned.
        """
        index = tuple(int(i) for i in index)
        if len(index) != len(self.shape) or not all(0 <= i < n for i, n in zip(index, self.shape)):
            raise ValueError(
                f"index {index} is not a node of the {self.shape} grid of {self.path}"
            )
        if not self.mask[index]:
            raise ValueError(
                f"{self.path}: node {index} ("
                + ", ".join(f"{n}={v:g}" for n, v in zip(self.param_names,
                                                         self.node_params(index)))
                + ") is not cloned; see CloneStore.mask, or resume clone_grid"
            )

        def read(f):
            group = f["nodes"][node_name(index)]
            arrays = {k: np.asarray(group[k][()], dtype=np.float64) for k in _LINE_FIELDS}
            if "identity" in group:
                arrays["identity"] = np.asarray(group["identity"][()], dtype=np.int64)
            return arrays, float(group.attrs["residual_rms"]), np.asarray(
                group.attrs["params"], dtype=np.float64)

        arrays, rms, params = self._with_retry(read)
        return NodeClone(index=index, params=params, residual_rms=rms, **arrays)

    def check_grid(self, grid_path: str | PathLike) -> None:
        """Check that ``grid_path`` holds the spectra this store was cloned from.

        Compares the store's ``grid_sha256`` with
        :func:`~jaxspec.io.grid_hdf5.grid_file_checksum` of the grid over the store's
        wavelength range (so a store cloned from a wavelength cut matches its full grid).

        Raises:
            ValueError: the spectra differ (the message names both files).
        Warns:
            UserWarning: the store predates checksums and cannot be checked.
        """
        from jaxspec.io.grid_hdf5 import grid_file_checksum

        if self.grid_checksum is None:
            warnings.warn(
                f"{self.path} records no checksum of its grid (written by an older "
                f"jaxspec): cannot check that {grid_path} is the grid it was cloned from",
                stacklevel=2,
            )
            return
        wl = self.wavelength
        found = grid_file_checksum(grid_path, (float(wl[0]), float(wl[-1])))
        if found != self.grid_checksum:
            raise ValueError(
                f"{grid_path} is not the grid {self.path} was cloned from (recorded: "
                f"{self.grid_file or 'unknown file'}): its spectra differ (SHA-256 "
                f"{found[:12]}… vs {self.grid_checksum[:12]}…); pass the grid the clones "
                "came from, or clone this grid into a new store"
            )

    def iter_nodes(self) -> Iterator[NodeClone]:
        """Every complete node, in C (row-major) order of the grid axes."""
        for index in zip(*np.nonzero(self.mask)):
            yield self.read_node(tuple(int(i) for i in index))

    def lines(self, index):
        """The fitted :class:`~jaxspec.lines.LineList` (centres μ') of a node."""
        from jaxspec.lines import LineList

        node = self.read_node(index)
        return LineList(node.center, node.ln_amplitude, node.ln_sigma, node.ln_gamma)

    def __repr__(self) -> str:
        axes = ", ".join(f"{n}: {a.size}" for n, a in self.axes.items())
        return (f"CloneStore({self.path.name}: {axes}; {self.n_done}/{self.mask.size} nodes "
                f"cloned; {self.wavelength.size} px)")


def read_clone_store(path: str | PathLike) -> CloneStore:
    """Open and validate a jaxspec-clones store; see :class:`CloneStore`."""
    return CloneStore(path)


class CloneStoreWriter:
    """Create or resume a clone store and append node clones batch by batch.

    Args:
        path: the store (``.h5``).
        axes: ordered ``{name: values}`` of the cloned grid.
        wavelength: (n_pix,) Å of the cloned grid.
        settings: clone settings (a dict with every name in :data:`SETTING_NAMES`;
            ``method`` and the ``warm_*``/``floor_depth`` settings may be missing and then
            take their version-1 meaning, ``method="independent"``).
        resume: continue an existing store at ``path`` (its complete nodes are kept).
            Without it an existing file is an error.
        overwrite_settings: on resume, accept settings that differ from the store's and
            record the new ones (nodes already cloned keep theirs; a warning says how
            many). Without it differing settings are an error.
        grid_file: recorded as the root attribute ``grid_file`` (or None).
        grid_checksum: :func:`jaxspec.io.grid_hdf5.grid_checksum` of the grid being
            cloned, recorded as ``grid_sha256`` on creation and compared on resume (None:
            not recorded, not checked).

    The writer holds the store's lock file ``<path>.lock`` from construction until
    :meth:`close` (or the writer is garbage collected, or the process exits); use it as a
    context manager. Each :meth:`write` opens the file with HDF5 locking off (retrying a
    briefly busy file), writes, and closes it, so readers never block it.

    Raises:
        FileInUseError: another writer (a live process, or another writer in this one)
            holds the store; the message names its PID, host and start time.
        FileExistsError: ``path`` exists and ``resume`` is False.
        ValueError: on resume, a foreign or corrupt file, a store of another grid
            (different axes or wavelengths, or different spectra by checksum: the message
            names both grid files), or different settings without ``overwrite_settings``.
    """

    def __init__(
        self,
        path: str | PathLike,
        axes: Mapping[str, np.ndarray],
        wavelength: np.ndarray,
        settings: Mapping,
        *,
        resume: bool = True,
        overwrite_settings: bool = False,
        grid_file: str | None = None,
        grid_checksum: str | None = None,
        identities: bool = False,
        start: tuple[int, ...] | None = None,
    ):
        self.path = Path(path)
        self._with_identities = bool(identities)
        self._start = start
        self.identities = np.zeros(0)
        self.axes = {k: np.asarray(v, dtype=np.float64) for k, v in axes.items()}
        self.wavelength = np.asarray(wavelength, dtype=np.float64)
        # settings added in version 2 default to what a store without them means
        self.settings = {**_V1_SETTINGS, **dict(settings)}
        self.shape = tuple(a.size for a in self.axes.values())
        self.grid_checksum = grid_checksum
        if self.path.exists() and not resume:
            raise FileExistsError(
                f"{self.path} exists; pass resume=True (CLI: the default) to continue "
                "it, or delete it to start over"
            )
        self._lock = WriterLock(self.path, what="clone store").acquire()
        try:
            if self.path.exists():
                self._resume(overwrite_settings, grid_file)
            else:
                self._create(grid_file)
        except BaseException:
            self._lock.release()
            raise

    def close(self) -> None:
        """Release the store's writer lock (the file itself is closed after every
        write). Idempotent; the writer cannot write afterwards."""
        self._lock.release()

    def __enter__(self) -> CloneStoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _create(self, grid_file) -> None:
        from jaxspec import __version__

        # written whole under a partial name: a crash never leaves a half-made store
        with atomic_path(self.path) as tmp, h5py.File(tmp, "w", locking=False) as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["param_names"] = np.array(list(self.axes), dtype=h5py.string_dtype())
            f.attrs["normalized"] = True
            for name in SETTING_NAMES:
                f.attrs[name] = self.settings[name]
            f.attrs["grid_file"] = "" if grid_file is None else str(grid_file)
            if self.grid_checksum is not None:
                f.attrs["grid_sha256"] = str(self.grid_checksum)
            f.attrs["jaxspec_version"] = __version__
            if self._start is not None:
                f.attrs["start"] = np.asarray(self._start, dtype=np.int64)
            f.create_dataset("wavelength", data=self.wavelength)
            if self._with_identities:
                f.create_dataset("identities/center", data=np.zeros(0), maxshape=(None,))
            for name, values in self.axes.items():
                f.create_dataset(f"axes/{name}", data=values)
            f.create_group("nodes")
        self.done = np.zeros(self.shape, dtype=bool)

    def _resume(self, overwrite_settings: bool, grid_file) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            store = CloneStore(self.path)
        for w in caught:
            warnings.warn(str(w.message), stacklevel=4)
        same_axes = (tuple(store.axes) == tuple(self.axes) and all(
            a.shape == b.shape and np.allclose(a, b, rtol=1e-12, atol=0)
            for a, b in zip(store.axes.values(), self.axes.values())))
        if not same_axes:
            raise ValueError(
                f"{self.path} holds clones of another grid (axes "
                + ", ".join(f"{n}: {a.size}" for n, a in store.axes.items())
                + " vs " + ", ".join(f"{n}: {a.size}" for n, a in self.axes.items())
                + "); write to a new file with out=..."
            )
        if store.wavelength.shape != self.wavelength.shape or not np.allclose(
            store.wavelength, self.wavelength, rtol=0, atol=1e-9
        ):
            raise ValueError(
                f"{self.path}: the store's wavelengths ({store.wavelength.size} px) differ "
                f"from the grid's ({self.wavelength.size} px); write to a new file with "
                "out=..."
            )
        if self.grid_checksum is not None:
            if store.grid_checksum is None:
                warnings.warn(
                    f"{self.path} records no checksum of its grid (written by an older "
                    "jaxspec): cannot check that the grid being cloned is the one its "
                    f"{store.n_done} node(s) came from",
                    stacklevel=4,
                )
            elif store.grid_checksum != self.grid_checksum:
                raise ValueError(
                    f"{self.path} holds clones of another grid ("
                    f"{store.grid_file or 'file not recorded'}) with the same axes and "
                    f"wavelengths but different spectra (SHA-256 "
                    f"{store.grid_checksum[:12]}… vs {self.grid_checksum[:12]}… for "
                    f"{grid_file or 'the grid given'}); clone this grid into a new store "
                    "(--out NEW.h5), or resume with the original grid"
                )
        diff = _settings_equal(store.settings, self.settings)
        if diff and not overwrite_settings:
            pairs = ", ".join(f"{n}={store.settings[n]!r} (now {self.settings[n]!r})"
                              for n in diff)
            raise ValueError(
                f"{self.path} was cloned with different settings: {pairs}. Resume with the "
                "store's settings, write to a new file, or pass overwrite_settings=True "
                "(CLI: --overwrite-settings) to continue with the new ones"
            )
        with open_hdf5(self.path, "a") as f:
            for name in store.incomplete:
                del f["nodes"][name]
            if diff:
                warnings.warn(
                    f"{self.path}: continuing with new settings ({', '.join(diff)}); "
                    f"{store.n_done} node(s) were cloned with the earlier ones",
                    stacklevel=4,
                )
                for name in SETTING_NAMES:
                    f.attrs[name] = self.settings[name]
            if grid_file is not None:
                f.attrs["grid_file"] = str(grid_file)
        if self._with_identities and store.identities is None:
            raise ValueError(
                f"{self.path} is a store of independent clones (no line identities); "
                "continue it with method='independent' (CLI: --method independent) or "
                "write the continuation clones to a new file"
            )
        if store.identities is not None:
            self.identities = store.identities
        self.done = store.mask.copy()
        self._store = store

    @property
    def backfilled(self) -> bool:
        """True when the store records a finished back-fill (continuation cloning)."""
        store = getattr(self, "_store", None)
        return False if store is None else store.backfilled

    def mark_backfilled(self) -> None:
        """Record that the continuation sweep's back-fill has run to its end (a resumed
        complete sweep then does not back-fill again)."""
        with open_hdf5(self.path, "a") as f:
            f.attrs["backfilled"] = True

    @property
    def relaxed(self) -> int:
        """Batches of the continuation sweep's relaxation passes that the store records
        as done (over all passes; 0 for a new store)."""
        store = getattr(self, "_store", None)
        return 0 if store is None else store.relaxed

    def mark_relaxed(self, n_batches: int) -> None:
        """Record that ``n_batches`` batches of the relaxation passes are done (their
        nodes written): a resumed sweep goes on from the next one."""
        with open_hdf5(self.path, "a") as f:
            f.attrs["relaxed"] = int(n_batches)
        store = getattr(self, "_store", None)
        if store is not None:
            store.relaxed = int(n_batches)

    def read_done(self) -> Iterator[NodeClone]:
        """The clones already in the store (on resume; nothing for a new store)."""
        store = getattr(self, "_store", None)
        return iter(()) if store is None else store.iter_nodes()

    def write(self, nodes: list[NodeClone], identities: np.ndarray | None = None) -> None:
        """Append (or replace) node clones; each group is marked complete after all its
        data, and the file is closed (flushed) before returning.

        ``identities``: continuation stores: the whole catalogue of reference centres
        (Å), written before the nodes (it only grows, so a node never names an identity
        the file lacks).

        Raises:
            FileInUseError: the writer was closed, or its lock file was removed and taken
                by another writer (nothing is written then).
        """
        self._lock.check()
        with open_hdf5(self.path, "a") as f:
            if identities is not None:
                data = f["identities/center"]
                data.resize((len(identities),))
                data[...] = np.asarray(identities, dtype=np.float64)
                self.identities = np.asarray(identities, dtype=np.float64)
            root = f.require_group("nodes")
            for node in nodes:
                name = node_name(node.index)
                if name in root:
                    del root[name]
                group = root.create_group(name)
                order = np.argsort(node.line_id, kind="stable")
                for key in _LINE_FIELDS:
                    group.create_dataset(
                        key, data=np.asarray(getattr(node, key), dtype=np.float64)[order]
                    )
                if node.identity is not None:
                    group.create_dataset(
                        "identity", data=np.asarray(node.identity, dtype=np.int64)[order])
                group.attrs["index"] = np.asarray(node.index, dtype=np.int64)
                group.attrs["params"] = np.asarray(node.params, dtype=np.float64)
                group.attrs["residual_rms"] = float(node.residual_rms)
                group.attrs["n_lines"] = int(node.line_id.size)
                f.flush()
                group.attrs["complete"] = True
            f.flush()
        for node in nodes:
            self.done[tuple(node.index)] = True
