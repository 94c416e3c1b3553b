"""Streaming, resumable one-row-per-spectrum results tables (``jaxspec infer`` and runners).

A batch of fits that runs overnight must lose nothing when it is killed and must not
repeat finished work when it is started again. :class:`ResultsWriter` writes each row
durably the moment it is known and builds the final table from those rows.

Files, for a results table ``OUT`` (e.g. ``results.ecsv``):

``OUT``
    the final table (ECSV), written once at :meth:`ResultsWriter.finish` with
    :func:`jaxspec.io.atomic.write_table` (to ``OUT.<pid>.partial``, fsync-ed and renamed
    over ``OUT``): an earlier ``OUT`` stays intact until the new one is complete. Its
    ``meta`` holds ``settings`` (what produced the rows, see below).
``OUT.partial``
    JSON Lines, one object per line, appended while the batch runs. The first line is the
    header ``{"format": "jaxspec-results-partial", "version": 1, "settings": {...}}``;
    every other line is one row ``{column: value}``. Each line is written with one
    ``write``, flushed and ``fsync``-ed before the next fit starts, so a ``SIGKILL`` loses
    at most the row being computed; a torn last line (killed inside ``write``) is
    dropped on the next open. Removed by :meth:`~ResultsWriter.finish`.
``OUT.lock``
    the writer lock of ``OUT`` (:class:`jaxspec.io.locking.WriterLock`, the lock every
    jaxspec writer takes): JSON ``{"pid", "host", "started" (ISO 8601, UTC), "command",
    "token"}`` of the process writing ``OUT``, created with ``O_CREAT | O_EXCL``. A second
    writer of the same ``OUT`` fails at once with
    :class:`~jaxspec.io.locking.FileInUseError` naming that process. A lock left by a
    process that died (same host, PID gone) is taken over with a warning; a lock from
    another host cannot be checked and is respected (delete it by hand if that job is
    dead). Each row and the final table are written only while the lock is still this
    writer's.

Rows and resume. Every row has a ``file`` (the spectrum's path as given) and a
``checksum`` (:func:`file_checksum`, SHA-256 of the file's bytes; ``""`` when it could
not be read). Opening a writer without ``overwrite`` loads the rows of an existing
``OUT`` and of ``OUT.partial`` (left by a killed run); :meth:`~ResultsWriter.done` then
says whether ``(file, checksum)`` already has a row, so a rerun fits only what is new or
changed. A later row for the same ``file`` replaces the earlier one, so the final table
holds every file exactly once. The ``settings`` (method, emulator, options: anything JSON
serialisable) must equal those recorded with the old rows, otherwise opening fails:
mixing fits made differently in one table would be wrong (rows that only report an
unusable input, :meth:`ResultsWriter.write_error`, are dropped instead when all the old
rows are such).

Final table. Rows in the order given to :meth:`ResultsWriter.finish` (else of writing);
columns in the order of the row with most columns, then any others; a value missing from
a row (e.g. the parameters of a row that reports an unreadable file) is NaN in float
columns and masked in the others.

The writer is the building block of batch runners (``jaxspec infer``; a Dask runner can
give each worker's rows to one writer in the client).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from os import PathLike
from pathlib import Path

import numpy as np

from jaxspec.io.atomic import write_table
from jaxspec.io.locking import FileInUseError, WriterLock

__all__ = ["ResultsInUseError", "ResultsWriter", "file_checksum"]

_FORMAT = "jaxspec-results-partial"
_ERROR_PREFIX = "input error: "
_VERSION = 1


#: Another live process (or another writer in this one) writes the same results table:
#: the one lock error of :mod:`jaxspec.io.locking`, under the name this module had for it.
ResultsInUseError = FileInUseError


def file_checksum(path: str | PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, or ``""`` when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return ""
    return digest.hexdigest()


def _plain(value):
    """A JSON-serialisable Python value (numpy scalars and 0-d arrays unwrapped)."""
    if isinstance(value, np.ndarray):
        value = value.tolist() if value.ndim else value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _same(a, b) -> bool:
    """Equality of JSON-like values, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


class ResultsWriter:
    """Durable, resumable writer of a one-row-per-spectrum table (module docstring).

    Args:
        out: the final table (``.ecsv``).
        settings: JSON-serialisable dict of what produces the rows (method, emulator,
            options); rows of an earlier run are reused only under equal settings.
        overwrite: ignore (and finally replace) rows of an earlier run.
        what: how messages call the table.

    Use as a context manager (or call :meth:`open`, then :meth:`finish` or
    :meth:`close`)::

        with ResultsWriter("res.ecsv", settings={"method": "map"}) as w:
            for path in paths:
                key = (path, file_checksum(path))
                if not w.done(*key):
                    w.write_row({"file": path, "checksum": key[1], ...})
            table = w.finish(meta={...})

    Leaving the block without :meth:`finish` (an exception, Ctrl-C) keeps
    ``OUT.partial`` for the next run and releases the lock.

    Raises (from :meth:`open`):
        ValueError: ``OUT``'s folder cannot be created or written (checked by creating
            ``OUT.partial``, before any work), an earlier run used other settings, or an
            existing ``OUT``/``OUT.partial`` is not a results table.
        FileInUseError: another live process (or another open writer in this one)
            writes ``OUT`` (``ResultsInUseError`` is the same class).
    """

    def __init__(self, out: str | PathLike, *, settings: dict, overwrite: bool = False,
                 what: str = "results table"):
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self._lock = WriterLock(self.out, what=what, alternative="pass another --out")
        self.lock = self._lock.lock  # OUT.lock
        self.settings = _plain(dict(settings))
        self.overwrite = bool(overwrite)
        self.what = what
        self._rows: dict[str, dict] = {}  # file -> row, in order of writing
        self._keys: set[tuple[str, str]] = set()
        self._fh = None
        self.n_resumed = 0

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ResultsWriter:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> ResultsWriter:
        """Check ``OUT`` is writable, take the lock, load an earlier run's rows."""
        if self.out.is_dir():
            raise ValueError(f"{self.out}: is a folder; pass a file name for the {self.what} "
                             "(e.g. results.ecsv)")
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"{self.out}: cannot create its folder ({err.strerror}); pass a "
                             f"writable --out for the {self.what}") from None
        if not os.access(self.out.parent, os.W_OK | os.X_OK) or (
                self.out.exists() and not os.access(self.out, os.W_OK)):
            raise ValueError(f"{self.out}: not writable (permission denied); pass a writable "
                             f"--out for the {self.what} or fix the permissions")
        try:
            self._lock.acquire()
        except FileInUseError:
            raise
        except OSError as err:
            raise ValueError(f"{self.lock}: cannot create the lock file ({err.strerror}); "
                             f"pass a writable --out for the {self.what}") from None
        try:
            if not self.overwrite:
                self._load_earlier()
            self._open_partial()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close ``OUT.partial`` (kept for a rerun) and release the lock."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._lock.release()

    # ------------------------------------------------------------------ rows

    def done(self, file: str, checksum: str) -> bool:
        """True when ``(file, checksum)`` already has a row (from this or an earlier run)."""
        return (str(file), str(checksum)) in self._keys

    @property
    def rows(self) -> list[dict]:
        """Every row the final table will hold, one per file, in order of writing."""
        return list(self._rows.values())

    def row(self, file: str) -> dict | None:
        """The row of ``file`` (from this or an earlier run), or None."""
        return self._rows.get(str(file))

    def write_row(self, row: dict) -> None:
        """Append one row (needs ``file`` and ``checksum``) durably to ``OUT.partial``."""
        if self._fh is None:
            raise ValueError(f"{self.out}: the {self.what} writer is not open; call open()")
        row = _plain(dict(row))
        if "file" not in row or "checksum" not in row:
            raise ValueError("a results row needs 'file' and 'checksum' entries")
        line = json.dumps(row, allow_nan=True) + "\n"
        self._lock.check()  # never two writers: stop if the lock was taken meanwhile
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._add(row)

    def write_error(self, file: str, checksum: str, error, **extra) -> None:
        """Append the row of an input that could not be used: ``converged`` False and
        ``message`` ``"input error: <error>"`` (plus ``extra`` columns). Such rows do not
        depend on the settings: an earlier run's rows that are all input errors are
        dropped, not refused, when the settings differ."""
        self.write_row({"file": str(file), **extra, "converged": False,
                        "message": f"{_ERROR_PREFIX}{error}", "checksum": str(checksum)})

    def finish(self, *, meta: dict | None = None, units: dict | None = None,
               descriptions: dict | None = None, order=None):
        """Write ``OUT`` atomically from every row, remove ``OUT.partial``, release the
        lock; returns the astropy Table.

        Args:
            meta: extra table metadata (``settings`` is added).
            units: ``{column: unit}`` for columns present.
            descriptions: ``{column: text}`` for columns present.
            order: files in the order their rows should appear (e.g. the input order);
                rows of other files come first, in order of writing.
        """
        table = self.table(meta=meta, units=units, descriptions=descriptions, order=order)
        self._lock.check()
        write_table(table, self.out, overwrite=True, format="ascii.ecsv")
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.partial.unlink(missing_ok=True)
        self._lock.release()
        return table

    def table(self, *, meta=None, units=None, descriptions=None, order=None):
        """The rows so far as an astropy Table (module docstring: missing values;
        arguments as :meth:`finish`)."""
        from astropy.table import MaskedColumn, Table

        rows = self.rows
        if order is not None:
            position = {str(f): i for i, f in enumerate(order)}
            rows = sorted(rows, key=lambda r: (str(r["file"]) in position,
                                               position.get(str(r["file"]), 0)))
        names: list[str] = []
        for r in sorted(rows, key=len, reverse=True):  # stable: the fullest row first
            names.extend(k for k in r if k not in names)
        table = Table()
        for name in names:
            values = [r.get(name) for r in rows]
            present = [v for v in values if v is not None]
            if present and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                               for v in present) and any(isinstance(v, float) for v in present):
                table[name] = np.array([np.nan if v is None else float(v) for v in values])
            elif len(present) == len(values):
                table[name] = values if values else []
            else:
                fill = present[0] if present else ""
                table[name] = MaskedColumn([fill if v is None else v for v in values],
                                           mask=[v is None for v in values])
        for name, unit in (units or {}).items():
            if name in table.colnames:
                table[name].unit = unit
        for name, text in (descriptions or {}).items():
            if name in table.colnames:
                table[name].description = text
        table.meta.update(meta or {})
        table.meta["settings"] = self.settings
        return table

    # ------------------------------------------------------------------ internals

    def _add(self, row: dict) -> None:
        file = str(row["file"])
        old = self._rows.pop(file, None)
        if old is not None:
            self._keys.discard((file, str(old.get("checksum", ""))))
        self._rows[file] = row
        self._keys.add((file, str(row.get("checksum", ""))))

    def _check_settings(self, found, source: Path, rows: list[dict]) -> list[dict]:
        """The earlier rows to keep: all under equal settings; none when every one is an
        input-error row (:meth:`write_error`, independent of the settings); otherwise a
        ValueError naming what differs."""
        if _same(_plain(found), self.settings):
            return rows
        if all(_is_error_row(r) for r in rows):
            if rows:
                warnings.warn(f"{source}: {len(rows)} input-error row(s) of an earlier run "
                              "with other settings are dropped (those files are tried again)",
                              stacklevel=4)
            return []
        diff = [f"{k}={found.get(k)!r} (now {self.settings.get(k)!r})"
                for k in sorted(set(found) | set(self.settings))
                if not _same(found.get(k), self.settings.get(k))]
        raise ValueError(
            f"{source}: its rows were made with other settings ({'; '.join(diff)}); pass "
            f"--overwrite to start the {self.what} again, or another --out"
        )

    def _load_earlier(self) -> None:
        if self.out.exists():
            from astropy.table import Table

            try:
                old = Table.read(self.out, format="ascii.ecsv")
            except Exception as err:  # astropy raises many kinds for a bad file
                raise ValueError(
                    f"{self.out}: exists but is not a readable ECSV {self.what} "
                    f"({type(err).__name__}); pass --overwrite to replace it, or another --out"
                ) from None
            settings = old.meta.get("settings")
            if settings is None or "file" not in old.colnames:
                raise ValueError(
                    f"{self.out}: exists but was not written by this version's streaming "
                    f"writer (no 'settings' in its header, or no 'file' column); pass "
                    "--overwrite to replace it, or another --out")
            rows = []
            for rec in old:
                row = {}
                for name in old.colnames:
                    value = rec[name]
                    if np.ma.is_masked(value):
                        continue
                    row[name] = _plain(value)
                row.setdefault("checksum", "")
                rows.append(row)
            for row in self._check_settings(settings, self.out, rows):
                self._add(row)
        if self.partial.exists():
            lines = self._read_partial()
            header = json.loads(lines[0]) if lines else None
            if header is not None:
                if header.get("format") != _FORMAT:
                    raise ValueError(f"{self.partial}: not a jaxspec partial results file; "
                                     "delete it or pass --overwrite")
            rows = [json.loads(line) for line in lines[1:]]
            if header is not None:
                rows = self._check_settings(header.get("settings", {}), self.partial, rows)
            for row in rows:
                self._add(row)
        self.n_resumed = len(self._rows)

    def _read_partial(self) -> list[str]:
        """Complete lines of ``OUT.partial``; a torn last line is cut off the file."""
        data = self.partial.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            with open(self.partial, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
            warnings.warn(f"{self.partial}: dropped an incomplete last row (the run was "
                          "killed while writing it)", stacklevel=3)
        lines = []
        for line in data[:end].decode("utf-8").splitlines():
            if not line.strip():
                continue
            try:
                json.loads(line)
            except ValueError:
                raise ValueError(f"{self.partial}: line {len(lines) + 1} is not JSON; delete "
                                 "the file or pass --overwrite") from None
            lines.append(line)
        return lines

    def _open_partial(self) -> None:
        header = {"format": _FORMAT, "version": _VERSION, "settings": self.settings}
        fresh = self.overwrite or not self.partial.exists() or self.partial.stat().st_size == 0
        try:
            self._fh = open(self.partial, "w" if fresh else "a", encoding="utf-8")
            if fresh:
                self._fh.write(json.dumps(header) + "\n")
            # rows loaded from OUT (not from the partial) must survive a kill too
            if fresh and not self.overwrite:
                for row in self._rows.values():
                    self._fh.write(json.dumps(row, allow_nan=True) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as err:
            raise ValueError(f"{self.partial}: cannot write ({err.strerror}); pass a writable "
                             f"--out for the {self.what}") from None


def _is_error_row(row: dict) -> bool:
    return row.get("converged") is False and str(row.get("message", "")).startswith(
        _ERROR_PREFIX)

