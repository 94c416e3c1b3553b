"""One writer per file, readers never in the way.

HDF5's own file locking is no help to a long job: it is off on many cluster file systems
(``HDF5_USE_FILE_LOCKING=FALSE`` on NFS/Lustre), where two writers then corrupt a file,
and where it is on, a reader that merely opens the file (``jaxspec clone info``) makes the
writer's next open fail with ``BlockingIOError``. jaxspec therefore

- serialises writers with its own lock file beside the target (:class:`WriterLock`):
  ``<name>.lock``, created atomically (``O_CREAT | O_EXCL``), holding the writer's PID,
  host, start time and command line. A second writer fails at once with
  :class:`FileInUseError` saying who holds the file; a lock left by a process that died
  (same host, PID gone) is taken over with a warning;
- opens HDF5 files with HDF5 locking off (:func:`open_hdf5`, ``locking=False``), retrying
  briefly when a file is busy, so readers and the writer never block each other. Readers
  see the file as of the writer's last close: the clone-store writer closes the file
  after every batch.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import secrets
import socket
import sys
import threading
import time
import warnings
import weakref
from os import PathLike
from pathlib import Path

__all__ = ["FileInUseError", "WriterLock", "lock_holder", "lock_path", "open_hdf5"]

_HELD: dict[str, tuple[weakref.ref, str]] = {}  # lock file -> (holder, token), this process
_HELD_GUARD = threading.Lock()


class FileInUseError(FileExistsError):
    """Another live process (or another writer in this one) holds the file's lock.

    A FileExistsError (the lock file exists), so the CLI reports it in one line.
    """


def lock_path(path: str | PathLike) -> Path:
    """The lock file of ``path``: ``<name>.lock`` in the same folder."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def lock_holder(path: str | PathLike) -> dict | None:
    """Who holds the writer lock of ``path``: the lock record ``{"pid", "host",
    "started", "command", ...}``, or None when no lock file exists (``{}`` when it
    exists but cannot be read)."""
    return _read_lock(lock_path(path))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _read_lock(path: Path) -> dict | None:
    """The lock file's record, or None when it is gone; ``{}`` when unreadable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _release(lock: str, token: str) -> None:
    """Remove ``lock`` if it still holds ``token`` (used by finalizers: never raises)."""
    info = _read_lock(Path(lock))
    if info and info.get("token") == token:
        try:
            os.unlink(lock)
        except OSError:
            pass
    with _HELD_GUARD:
        held = _HELD.get(lock)
        if held is not None and held[1] == token:
            del _HELD[lock]


class WriterLock:
    """Exclusive writer lock on a file, held through a lock file beside it.

    The lock file ``<name>.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on local
    and NFSv3+ file systems) and holds JSON ``{"pid", "host", "started" (ISO 8601, UTC),
    "command", "token"}``. It is removed by :meth:`release`, when the lock is garbage
    collected, and at interpreter exit; a process killed with SIGKILL leaves it behind,
    and the next writer on the same host sees the PID is gone and takes it over (with a
    warning). A lock from another host cannot be checked and is always respected.

    Args:
        path: the file to guard (need not exist).
        what: how messages call it, e.g. ``"clone store"``.
        alternative: another way out offered when the file is in use, e.g. ``"pass
            another --out"`` (the message already says to wait or remove a dead
            writer's lock).

    Example:
        >>> with WriterLock("clones.h5", what="clone store"):
        ...     ...  # write clones.h5

    Raises (from :meth:`acquire`):
        FileInUseError: a live process holds the lock; the message names the file, the
            PID, host, start time and command, and says what to do.
    """

    def __init__(self, path: str | PathLike, *, what: str = "file", alternative: str = ""):
        self.path = Path(path)
        self.lock = lock_path(self.path)
        self.what = what
        self.alternative = alternative
        self._token: str | None = None
        self._finalizer = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._token is not None

    def acquire(self) -> WriterLock:
        """Take the lock or raise :class:`FileInUseError` at once (no waiting)."""
        if self.held:
            return self
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "command": " ".join(sys.argv) or "python",
            "token": token,
        }
        for _ in range(20):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing()
                continue
            try:
                os.write(fd, json.dumps(record).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._token = token
            key = os.path.abspath(self.lock)
            with _HELD_GUARD:
                _HELD[key] = (weakref.ref(self), token)
            self._finalizer = weakref.finalize(self, _release, key, token)
            return self
        raise FileInUseError(
            f"{self.path}: could not take the writer lock {self.lock} (it keeps changing "
            "hands); retry, or remove the lock file if no jaxspec process uses the "
            f"{self.what}"
        )

    def _handle_existing(self) -> None:
        """The lock file exists: raise if its holder is alive, else remove it (stale)."""
        info = _read_lock(self.lock)
        if info is None:
            return  # released meanwhile: try again
        if not info:
            # being written by its creator, or garbage: give the creator a moment
            time.sleep(0.2)
            again = _read_lock(self.lock)
            if again != {}:
                return
            try:
                age = time.time() - self.lock.stat().st_mtime
            except FileNotFoundError:
                return
            if age < 5.0:
                time.sleep(0.5)
                return
            self._take_over(info, reason="its content is unreadable")
            return
        pid, host = info.get("pid"), info.get("host")
        here = host == socket.gethostname()
        if here and pid == os.getpid():
            with _HELD_GUARD:
                holder, token = _HELD.get(os.path.abspath(self.lock), (lambda: None, None))
            holder = holder()
            if holder is not None and holder.held and token == info.get("token"):
                other = f", or {self.alternative}" if self.alternative else ""
                raise FileInUseError(
                    f"{self.path}: in use by PID {pid} (this process) since "
                    f"{info.get('started')}: the {self.what} is already open for writing "
                    f"in this process; close that writer first{other}"
                )
            self._take_over(info, reason="it was left by this process")
            return
        if here and isinstance(pid, int) and not _pid_alive(pid):
            warnings.warn(
                f"{self.path}: taking over a stale lock {self.lock} left by PID {pid} "
                f"(no longer running) on this host since {info.get('started')}",
                stacklevel=4,
            )
            self._take_over(info, reason="stale")
            return
        other = f", {self.alternative}" if self.alternative else ""
        raise FileInUseError(
            f"{self.what} {self.path} is in use by PID {pid} on host {host} since "
            f"{info.get('started')} ({info.get('command', '?')}); wait for it{other}, or "
            f"remove the lock file {self.lock} if that process is gone"
        )

    def _take_over(self, info: dict, *, reason: str) -> None:
        """Remove a lock judged stale, unless it changed hands meanwhile."""
        aside = self.lock.with_name(f"{self.lock.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            os.rename(self.lock, aside)
        except FileNotFoundError:
            return
        moved = _read_lock(aside)
        if moved != info and moved is not None:
            # Another writer replaced the stale lock between our read and the rename:
            # put its live lock back (link fails if yet another lock appeared).
            try:
                os.link(aside, self.lock)
            except OSError:
                pass
        try:
            os.unlink(aside)
        except OSError:
            pass

    def check(self) -> None:
        """Raise :class:`FileInUseError` unless this object still holds the lock (its
        lock file may have been removed by hand and taken by another writer)."""
        info = _read_lock(self.lock)
        if self._token is None or not info or info.get("token") != self._token:
            who = (f"PID {info.get('pid')} on host {info.get('host')}" if info
                   else "nobody (the lock file was removed)")
            raise FileInUseError(
                f"{self.path}: this writer no longer holds the lock {self.lock} (now held "
                f"by {who}); stopping so two writers never write the {self.what}"
            )

    def release(self) -> None:
        """Remove the lock file (only if it is still ours). Idempotent."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._token = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _busy(err: OSError) -> bool:
    if isinstance(err, BlockingIOError) or getattr(err, "errno", None) in (
        errno.EAGAIN, errno.EWOULDBLOCK,
    ):
        return True
    text = str(err).lower()
    return "unable to lock" in text or "temporarily unavailable" in text


def open_hdf5(path: str | PathLike, mode: str = "r", *, wait: float = 10.0, **kwargs):
    """``h5py.File(path, mode, locking=False)``, retrying a busy file for ``wait`` s.

    HDF5 locking is off (jaxspec's :class:`WriterLock` serialises writers), so a reader
    never blocks the writer nor the writer a reader, with or without
    ``HDF5_USE_FILE_LOCKING``. Should the file still be busy (another program holding an
    HDF5 lock on a file system that enforces it), the open is retried with a growing
    pause for up to ``wait`` seconds before the error is raised.

    Args:
        path: the HDF5 file.
        mode: h5py mode (``"r"``, ``"a"``, ``"w"``, ...).
        wait: seconds to keep retrying a busy file.
        **kwargs: passed to ``h5py.File``.
    """
    import h5py

    deadline = time.monotonic() + wait
    pause = 0.05
    while True:
        try:
            return h5py.File(path, mode, locking=False, **kwargs)
        except OSError as err:
            if not _busy(err) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
