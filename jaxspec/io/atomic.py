"""Atomic file writes: a file appears under its final name only once it is complete.

Every jaxspec writer writes to a partial file beside the target (``<name>.<pid>.partial``,
same directory, so the rename never crosses a file system), flushes it to disk
(``fsync``) and moves it onto the final name with :func:`os.replace`, which is atomic on
POSIX and Windows. Until then an existing file of that name is untouched; if writing
fails (an exception, a full disk) the partial file is removed; if the process is killed,
the partial file is left behind under its ``.partial`` name and never mistaken for a
result. The process id in the partial name keeps two processes writing the same target
from writing into one file (the last to finish wins, each file whole).

- :func:`atomic_path`: a context manager yielding the partial path to write to.
- :class:`AtomicFile`: the same, for writers that stay open across calls
  (:class:`jaxspec.io.GridWriter`).
- :func:`write_table` and :func:`save_figure`: astropy tables and matplotlib figures.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

__all__ = ["AtomicFile", "atomic_path", "check_overwrite", "save_figure", "table_format",
           "write_table"]

#: astropy ``format=`` for each table suffix jaxspec writes.
_TABLE_FORMATS = {
    ".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".txt": "ascii", ".dat": "ascii",
    ".fits": "fits", ".fit": "fits", ".fts": "fits", ".h5": "hdf5", ".hdf5": "hdf5",
    ".vot": "votable", ".xml": "votable",
}


def check_overwrite(path: str | PathLike, overwrite: bool) -> Path:
    """``path`` as a Path; FileExistsError (naming it and the fix) if it exists and
    ``overwrite`` is False. Call it before the work, so nothing is computed in vain."""
    path = Path(path)
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(
            f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it, or "
            "choose another name"
        )
    return path


def _fsync_dir(folder: Path) -> None:
    """Flush a directory entry (the rename) to disk; a no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicFile:
    """A partial file that becomes ``path`` on :meth:`commit` and vanishes on :meth:`abort`.

    Args:
        path: the final file name.
        overwrite: replace an existing ``path`` (it stays intact until :meth:`commit`).
            Without it an existing ``path`` is a FileExistsError at construction.

    Attributes:
        path: the final name.
        partial: where to write meanwhile (``<name>.<pid>.partial``, same folder; the
            folder is created).
    """

    def __init__(self, path: str | PathLike, *, overwrite: bool = False):
        self.path = check_overwrite(path, overwrite)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.partial")
        self.partial.unlink(missing_ok=True)  # a leftover of this PID's earlier crash
        self.done = False

    def commit(self) -> Path:
        """fsync the partial file and rename it onto ``path``; returns ``path``.

        Raises:
            FileNotFoundError: nothing was written to the partial file.
        """
        if self.done:
            return self.path
        if not self.partial.exists():
            raise FileNotFoundError(
                f"{self.partial}: nothing was written; the writer of {self.path} failed "
                "before creating its file"
            )
        with open(self.partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.partial, self.path)
        _fsync_dir(self.path.parent)
        self.done = True
        return self.path

    def abort(self) -> None:
        """Remove the partial file (``path`` is left as it was). Idempotent."""
        if not self.done:
            self.partial.unlink(missing_ok=True)
            self.done = True


@contextlib.contextmanager
def atomic_path(path: str | PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a file atomically: yields the partial path to write; on a clean exit it is
    flushed and renamed onto ``path``, on an exception removed (``path`` untouched).

    Example:
        >>> with atomic_path("emulator.h5", overwrite=True) as tmp:
        ...     with h5py.File(tmp, "w") as f:
        ...         f["x"] = 1

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False (before anything is
            written).
    """
    target = AtomicFile(path, overwrite=overwrite)
    try:
        yield target.partial
    except BaseException:
        target.abort()
        raise
    target.commit()


def table_format(path: str | PathLike) -> str:
    """The astropy ``format=`` for a table file from its suffix (``.ecsv``, ``.csv``,
    ``.fits``, ...); ValueError naming the file and the known suffixes otherwise."""
    path = Path(path)
    fmt = _TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{path}: cannot tell the table format from the suffix {path.suffix!r}; use one "
            f"of {', '.join(sorted(_TABLE_FORMATS))}"
        )
    return fmt


def write_table(table, path: str | PathLike, *, overwrite: bool = False,
                format: str | None = None) -> Path:
    """Write an astropy Table atomically; the format comes from the suffix unless given.

    Args:
        table: astropy Table (or anything with ``write(path, format=, overwrite=)``).
        path: the output file.
        overwrite: replace an existing file (kept intact until the new one is complete).
        format: astropy format name (default: :func:`table_format` of ``path``).

    Returns:
        ``path`` as a Path.
    """
    fmt = format or table_format(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        table.write(tmp, format=fmt, overwrite=True)
    return Path(path)


def save_figure(fig, path: str | PathLike, *, overwrite: bool = False, **kwargs) -> Path:
    """Save a matplotlib figure atomically (format from the suffix: ``.png``, ``.pdf``,
    ``.svg``, ...); ``kwargs`` go to ``fig.savefig`` (e.g. ``dpi=130``). Returns the path.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format=fmt, **kwargs)
    return path
