"""Emulator and amortised-model files: one HDF5 writer, one reader, one kind registry.

Every model jaxspec saves (the emulators: line, pixel, cannon, payne, autoencoder,
observed, template; the amortised models: regressor, flow; and training checkpoints) is an
HDF5 file written and read here. A model supplies only its contents, a :class:`Contents`
(its arrays and attributes), through two methods:

* ``model.to_contents() -> Contents`` and
* ``Model.from_contents(contents, path) -> Model`` (a classmethod; ``path`` for messages),

and registers its kind with :func:`register`. :func:`save` and :func:`load` do the rest:

::

    /                 attrs: format (a family, e.g. "jaxspec-emulator"), kind, version,
                             then the kind's own attributes
    /<name>           the kind's arrays; a name "a/b" is dataset b of group a
    /<group>          a nested model (e.g. the base emulator of an observed emulator):
                      a group with its own kind, version and attributes, laid out alike

Writes are atomic (:func:`jaxspec.io.atomic.atomic_path`): the file is written under a
partial name beside ``path``, flushed and renamed, so an existing file survives a failed
write, and it is replaced only with ``overwrite=True`` (FileExistsError otherwise, before
anything is written).

This module imports no model class: models register themselves when their module is
imported (:func:`jaxspec.emulator.load_emulator` and
:func:`jaxspec.amortised.load_amortised` import them before dispatching).
"""

from __future__ import annotations

import dataclasses
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["AMORTISED_FORMAT", "CHECKPOINT_FORMAT", "FORMAT", "REFINE_CHECKPOINT_FORMAT",
           "Contents", "check_kind",
           "check_version", "from_nested", "known_kinds", "load", "read", "read_header",
           "register", "save", "write"]

#: ``format`` of emulator files.
FORMAT = "jaxspec-emulator"
#: ``format`` of amortised-model files (regressor, flow).
AMORTISED_FORMAT = "jaxspec-amortised"
#: ``format`` of amortised training checkpoints (no kind).
CHECKPOINT_FORMAT = "jaxspec-amortised-checkpoint"
#: ``format`` of the checkpoints of :func:`jaxspec.refine.refine` (no kind).
REFINE_CHECKPOINT_FORMAT = "jaxspec-refine-checkpoint"


@dataclasses.dataclass(frozen=True)
class _Family:
    """What the messages of one file format say."""

    what: str  # "emulator file"
    fix: str  # how to get a file of this format
    loader: str  # the function that loads any kind


_FAMILIES = {
    FORMAT: _Family("emulator file", "build an emulator with `jaxspec build` or "
                    "`jaxspec train`", "jaxspec.emulator.load_emulator"),
    AMORTISED_FORMAT: _Family("model file", "train a model with `jaxspec train "
                              "regressor|flow`", "jaxspec.amortised.load_amortised"),
    CHECKPOINT_FORMAT: _Family("checkpoint", "delete it and train without --resume",
                               "jaxspec.amortised._io.read_checkpoint"),
    REFINE_CHECKPOINT_FORMAT: _Family("refine checkpoint", "delete it to start the fit afresh",
                                      "jaxspec.refine.refine"),
}


@dataclasses.dataclass
class Contents:
    """What one model's file holds.

    Attributes:
        kind: the model kind (``"pixel"``, ``"flow"``, ...), the registry key; None for
            files without one (checkpoints).
        version: the kind's layout version (bump it when the layout changes and keep
            reading the old one); None: not written.
        attrs: root attributes of the kind (str, numbers, lists of str; JSON text for
            anything else); a key ``"name@attr"`` is attribute ``attr`` of the dataset or
            group ``name``.
        arrays: ``{name: array}``; a name ``"a/b"`` is dataset ``b`` of group ``a``; a
            :class:`Contents` value is a nested model, written as a group.
        options: ``{name: h5py create_dataset keywords}`` (chunks, compression) for some
            arrays.
        format: the file family (:data:`FORMAT`, :data:`AMORTISED_FORMAT`,
            :data:`CHECKPOINT_FORMAT`).
    """

    kind: str | None
    version: int | None
    attrs: dict = dataclasses.field(default_factory=dict)
    arrays: dict = dataclasses.field(default_factory=dict)
    options: dict = dataclasses.field(default_factory=dict)
    format: str = FORMAT

    def require(self, path, *names: str, fix: str) -> None:
        """ValueError ``"<path>: <kind> file lacks <name>; <fix>"`` for the first of
        ``names`` (array names, or attribute names prefixed with ``@``) not held."""
        for name in names:
            held = (name[1:] in self.attrs) if name.startswith("@") else name in self.arrays
            if not held:
                raise ValueError(f"{path}: {self.kind} {_family(self.format).what} lacks "
                                 f"{name.lstrip('@')!r}; {fix}")

    def group(self, prefix: str) -> dict:
        """``{rest: array}`` of the arrays named ``prefix/rest`` (one level of a group),
        e.g. ``group("axes")`` → ``{"teff": ..., "logg": ...}``."""
        head = prefix.rstrip("/") + "/"
        return {k[len(head):]: v for k, v in self.arrays.items() if k.startswith(head)}


# ------------------------------------------------------------------------- registry

_KINDS: dict[tuple[str, str], type] = {}


def register(kind: str, *, format: str = FORMAT):
    """Class decorator: record ``cls`` as the model of files of ``(format, kind)`` and set
    ``cls.kind``. ``cls`` provides ``to_contents()`` and ``from_contents(contents,
    path)`` (module docstring)."""

    def decorate(cls):
        _KINDS[(format, kind)] = cls
        cls.kind = kind
        return cls

    return decorate


def known_kinds(format: str = FORMAT) -> list[str]:
    """The registered kinds of ``format``, sorted."""
    return sorted(k for f, k in _KINDS if f == format)


# ------------------------------------------------------------------------- writing


def _write_group(g, contents: Contents) -> None:
    if contents.kind is not None:
        g.attrs["kind"] = contents.kind
    if contents.version is not None:
        g.attrs["version"] = int(contents.version)
    for name, value in contents.arrays.items():
        if isinstance(value, Contents):
            _write_group(g.create_group(name), value)
        else:
            g.create_dataset(name, data=np.asarray(value), **contents.options.get(name, {}))
    for key, value in contents.attrs.items():
        name, _, attr = key.rpartition("@")
        if not name:
            g.attrs[key] = value
        else:
            (g[name] if name in g else g.create_group(name)).attrs[attr] = value


def write(path: str | PathLike, contents: Contents, *, overwrite: bool = False) -> Path:
    """Write ``contents`` to ``path`` (layout in the module docstring), atomically.

    Returns:
        ``path`` as a Path.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False (before any work).
    """
    import h5py

    from jaxspec.io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = contents.format
        _write_group(f, contents)
        f.flush()
    return path


def save(model, path: str | PathLike, *, overwrite: bool = False) -> Path:
    """Write ``model.to_contents()`` to ``path`` (:func:`write`); returns the path.
    FileExistsError before any work if ``path`` exists and ``overwrite`` is False."""
    from jaxspec.io.atomic import check_overwrite

    check_overwrite(path, overwrite)
    return write(path, model.to_contents(), overwrite=overwrite)


# ------------------------------------------------------------------------- reading


def _attr(value):
    """An HDF5 attribute as a Python value (numpy scalars as numbers, bytes as str)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_group(g, fmt: str) -> Contents:
    import h5py

    attrs = {k: _attr(v) for k, v in g.attrs.items() if k not in ("format", "kind",
                                                                   "version")}
    kind = g.attrs.get("kind")
    version = g.attrs.get("version")
    out = Contents(kind=None if kind is None else str(_attr(kind)),
                   version=None if version is None else int(version), attrs=attrs,
                   format=fmt)

    def visit(name, obj):
        out.attrs.update({f"{name}@{k}": _attr(v) for k, v in obj.attrs.items()})
        if isinstance(obj, h5py.Dataset):
            out.arrays[name] = obj[()]

    for name, obj in g.items():
        if isinstance(obj, h5py.Group) and "kind" in obj.attrs:
            out.arrays[name] = _read_group(obj, fmt)
            continue
        visit(name, obj)
        if isinstance(obj, h5py.Group):
            obj.visititems(lambda sub, o, top=name: visit(f"{top}/{sub}", o))
    return out


def _family(fmt: str) -> _Family:
    return _FAMILIES.get(fmt, _FAMILIES[FORMAT])


def _open(path, fmt: str):
    import h5py

    path = Path(path)
    family = _family(fmt)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such {family.what}")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not an HDF5 file ({err}); {family.fix}") from None


def read_header(path: str | PathLike, format: str = FORMAT) -> tuple[str | None, str | None]:
    """``(format, kind)`` root attributes of ``path`` (None where absent).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an HDF5 file (the message says how to get a file of ``format``).
    """
    with _open(path, format) as f:
        fmt, kind = f.attrs.get("format"), f.attrs.get("kind")
    return (None if fmt is None else str(_attr(fmt)),
            None if kind is None else str(_attr(kind)))


def read(path: str | PathLike, *, format: str = FORMAT, kind: str | None = None) -> Contents:
    """The :class:`Contents` of ``path``, every array read into memory.

    Args:
        path: the file.
        format: the family the file must be (its root ``format`` attribute).
        kind: the kind it must be (None: any).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an HDF5 file, another format or another kind (the message says
            which loader reads it).
    """
    path = Path(path)
    with _open(path, format) as f:
        found = f.attrs.get("format")
        found = None if found is None else str(_attr(found))
        if found != format:
            raise ValueError(f"{path}: root attribute format is {found!r}, expected "
                             f"{format!r}; {_family(format).fix}")
        contents = _read_group(f, format)
    if kind is not None:
        check_kind(path, contents, kind)
    return contents


def check_kind(path, contents: Contents, kind: str) -> None:
    """ValueError if ``contents`` is not of ``kind`` (naming the loader of any kind)."""
    if contents.kind != kind:
        family = _family(contents.format)
        noun = "emulator" if contents.format == FORMAT else "model"
        raise ValueError(f"{path}: {noun} kind is {contents.kind!r}, not {kind!r}; load it "
                         f"with {family.loader}")


def check_version(path, contents: Contents, newest: int, *, fix: str = "upgrade jaxspec"
                  ) -> int:
    """The file's layout version (0 when absent); ValueError if newer than ``newest``."""
    version = 0 if contents.version is None else int(contents.version)
    if version > newest:
        raise ValueError(f"{path}: {contents.kind} {_family(contents.format).what} version "
                         f"{version} is newer than this jaxspec reads ({newest}); {fix}")
    return version


def load(path: str | PathLike, *, format: str = FORMAT, cls: type | None = None):
    """The model in ``path``, built by the class registered for its kind (or by ``cls``,
    whose kind the file must have).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a file of ``format``, an unknown kind, or one the class rejects.
    """
    path = Path(path)
    contents = read(path, format=format)
    if cls is not None:
        check_kind(path, contents, cls.kind)
    else:
        cls = _KINDS.get((format, contents.kind))
        if cls is None:
            raise ValueError(
                f"{path}: {'emulator' if format == FORMAT else 'model'} kind "
                f"{contents.kind!r} is unknown to this jaxspec (known: "
                f"{', '.join(known_kinds(format))}); upgrade jaxspec or rebuild the file")
    return cls.from_contents(contents, path)


def from_nested(contents: Contents, path):
    """The nested model ``contents`` (a group of a file) built by its registered class."""
    cls = _KINDS.get((contents.format, contents.kind))
    if cls is None:
        raise ValueError(f"{path}: nested kind {contents.kind!r} is unknown (known: "
                         f"{', '.join(known_kinds(contents.format))})")
    return cls.from_contents(contents, path)
