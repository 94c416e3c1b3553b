"""HDF5 files of amortised models.

Layout (root attributes ``format = "jaxspec-amortised"``, ``kind`` = ``"regressor"`` or
``"flow"``, ``version``, ``param_names`` and ``config`` as JSON, ``history`` as JSON):

* ``bounds`` ``(k, 2)``, ``wavelength`` ``(m,)`` Å and ``edges`` ``(m + 1,)`` Å (the
  network's pixels), ``snr_range`` ``(2,)``;
* ``standardizer/<field>``;
* ``calibration`` ``(k, p)`` (optional; version >= 2): the model's calibration on held-out
  simulations (regressor: :func:`~jaxspec.amortised.regressor.calibrate_regressor`; flow:
  :func:`~jaxspec.amortised.flow.calibrate_flow`), its meaning in the ``calibration``
  dataset's ``description`` attribute and the held-out coverage in ``report`` (JSON);
* ``weights/leaf_NNNN``: the array leaves of the network (equinox tree leaves, in
  ``jax.tree.leaves`` order of ``eqx.filter(tree, eqx.is_array)``), rebuilt on load into
  a skeleton made from ``config``.

Every file is written atomically (:func:`atomic_hdf5`, through :mod:`jaxspec.io.atomic`):
into a partial file beside it, flushed to disk, then renamed over ``path``, so an
existing file stays intact until the new one is complete.
Training checkpoints (:func:`write_checkpoint`, :func:`read_checkpoint`) use the same
writer.
"""

from __future__ import annotations

import contextlib
import json
from os import PathLike
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "jaxspec-amortised"
VERSION = 2
CHECKPOINT_FORMAT = "jaxspec-amortised-checkpoint"


@contextlib.contextmanager
def atomic_hdf5(path, *, overwrite: bool):
    """Context manager yielding an open, writable ``h5py.File`` whose contents replace
    ``path`` atomically when the block ends without an exception
    (:func:`jaxspec.io.atomic.atomic_path`: a partial file beside ``path``, fsync, rename;
    on an exception the partial file is removed and ``path`` is left as it was).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False (checked before
            anything is written).
    """
    import h5py

    from jaxspec.io.atomic import atomic_path

    with atomic_path(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            yield f
            f.flush()


def write(path, model, tree, *, overwrite: bool) -> Path:
    """Write ``model`` (a flow or regressor: its ``kind``, names, box, pixels, S/N range,
    standardisation, config, history and calibration) with the array leaves of ``tree``,
    atomically (:func:`atomic_hdf5`).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """

    kind, names, bounds = model.kind, model.names, model.bounds
    wavelength, edges, snr_range = model.wavelength, model.edges, model.snr_range
    standardizer = model.standardizer
    config, history = json.loads(model.config), json.loads(model.history)

    path = Path(path)
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_array))
    calibration = getattr(model, "calibration", None)
    with atomic_hdf5(path, overwrite=overwrite) as f:
        f.attrs["format"] = FORMAT
        f.attrs["kind"] = kind
        f.attrs["version"] = VERSION
        f.attrs["param_names"] = json.dumps(list(names))
        f.attrs["config"] = json.dumps(config)
        f.attrs["history"] = json.dumps(history or {})
        f.create_dataset("bounds", data=np.asarray(bounds, dtype=np.float64))
        f.create_dataset("wavelength", data=np.asarray(wavelength, dtype=np.float64))
        f.create_dataset("edges", data=np.asarray(edges, dtype=np.float64))
        f.create_dataset("snr_range", data=np.asarray(snr_range, dtype=np.float64))
        g = f.create_group("standardizer")
        for field in ("label_mean", "label_scale", "flux_mean", "flux_scale", "snr_mean",
                      "snr_scale"):
            g.create_dataset(field, data=np.asarray(getattr(standardizer, field)))
        w = f.create_group("weights")
        w.attrs["n_leaves"] = len(leaves)
        for i, leaf in enumerate(leaves):
            w.create_dataset(f"leaf_{i:04d}", data=np.asarray(leaf))
        if calibration is not None:
            c = f.create_dataset("calibration",
                                 data=np.asarray(calibration.values, dtype=np.float64))
            c.attrs["description"] = calibration.description
            c.attrs["report"] = calibration.report
    return path


def model_fields(d: dict) -> dict:
    """Constructor fields shared by the flow and the regressor, from :func:`read`'s dict."""
    from jaxspec.amortised.simulate import Standardizer

    return {
        "standardizer": Standardizer(**{k: jnp.asarray(v)
                                        for k, v in d["standardizer"].items()}),
        "wavelength": np.asarray(d["wavelength"]), "edges": np.asarray(d["edges"]),
        "box": tuple(map(tuple, np.asarray(d["bounds"]).tolist())), "names": d["names"],
        "snr_range": d["snr_range"], "config": json.dumps(d["config"]),
        "history": json.dumps(d["history"]),
    }


def calibration_of(d: dict, cls):
    """The model's calibration (``cls(values, description, report)``) from :func:`read`'s
    dict, or None for a file without one."""
    if d.get("calibration") is None:
        return None
    values, description, report = d["calibration"]
    return cls(values=jnp.asarray(values), description=description, report=report)


def read(path, kind: str) -> dict:
    """Everything but the network: a dict with ``names``, ``bounds``, ``wavelength``,
    ``edges``, ``snr_range``, ``standardizer`` (dict of arrays), ``config``, ``history``,
    ``leaves`` (list of arrays) and ``calibration`` (``(values, description, report)`` or
    None)."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not an HDF5 file ({err}); pass a model written by "
                         "`jaxspec train regressor|flow`") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(
                f"{path}: root attribute format is {f.attrs.get('format')!r}, expected "
                f"{FORMAT!r}; train a model with `jaxspec train regressor|flow`"
            )
        if f.attrs.get("kind") != kind:
            raise ValueError(
                f"{path}: model kind is {f.attrs.get('kind')!r}, not {kind!r}; load it with "
                "jaxspec.amortised.load_amortised"
            )
        try:
            out = {
                "names": tuple(json.loads(f.attrs["param_names"])),
                "config": json.loads(f.attrs["config"]),
                "history": json.loads(f.attrs.get("history", "{}")),
                "bounds": f["bounds"][()],
                "wavelength": f["wavelength"][()],
                "edges": f["edges"][()],
                "snr_range": tuple(float(v) for v in f["snr_range"][()]),
                "standardizer": {k: f["standardizer"][k][()] for k in f["standardizer"]},
                "leaves": [f["weights"][f"leaf_{i:04d}"][()]
                           for i in range(int(f["weights"].attrs["n_leaves"]))],
                "calibration": None,
            }
            if "calibration" in f:
                c = f["calibration"]
                out["calibration"] = (c[()], str(c.attrs.get("description", "")),
                                      str(c.attrs.get("report", "{}")))
        except KeyError as err:
            raise ValueError(f"{path}: model file lacks {err}; rewrite it with .save") from None
    return out


def restore(skeleton, leaves, path):
    """The skeleton (from ``eqx.filter_eval_shape``: shapes only) with its array leaves
    replaced by ``leaves`` (checked one by one)."""
    arrays, static = eqx.partition(
        skeleton, lambda x: eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct))
    old, treedef = jax.tree.flatten(arrays)
    if len(old) != len(leaves):
        raise ValueError(
            f"{path}: the file has {len(leaves)} weight arrays but its config builds a network "
            f"with {len(old)}; the file is damaged or from another jaxspec version"
        )
    new = []
    for i, (a, b) in enumerate(zip(old, leaves)):
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(
                f"{path}: weight {i} has shape {tuple(b.shape)}, the network expects "
                f"{tuple(a.shape)}; the file is damaged or from another jaxspec version"
            )
        new.append(jnp.asarray(b, dtype=a.dtype))
    return eqx.combine(jax.tree.unflatten(treedef, new), static)


def write_checkpoint(path, tree, meta: dict) -> Path:
    """Write a training checkpoint atomically (replacing an older one): the array leaves
    of ``tree`` (``weights/leaf_NNNN``, ``jax.tree.leaves`` order of ``eqx.filter(tree,
    eqx.is_array)``) and ``meta`` (JSON-serialisable dict) as the root attribute ``meta``,
    with ``format = "jaxspec-amortised-checkpoint"``."""
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_array))
    with atomic_hdf5(path, overwrite=True) as f:
        f.attrs["format"] = CHECKPOINT_FORMAT
        f.attrs["meta"] = json.dumps(meta)
        w = f.create_group("weights")
        w.attrs["n_leaves"] = len(leaves)
        for i, leaf in enumerate(leaves):
            w.create_dataset(f"leaf_{i:04d}", data=np.asarray(leaf))
    return Path(path)


def read_checkpoint(path, skeleton) -> tuple[object, dict]:
    """``(tree, meta)`` from a file of :func:`write_checkpoint`; ``tree`` is ``skeleton``
    (a tree of the same structure, e.g. the freshly initialised training state) with its
    array leaves replaced by the file's, shapes checked.

    Raises:
        ValueError: not a checkpoint, damaged, or made for a different network.
    """
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable checkpoint ({err}); delete it and train "
                         "without --resume") from None
    with f:
        if f.attrs.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: root attribute format is {f.attrs.get('format')!r}, "
                             f"not {CHECKPOINT_FORMAT!r}; pass a checkpoint written by "
                             "`jaxspec train regressor|flow` or delete it")
        try:
            meta = json.loads(f.attrs["meta"])
            leaves = [f["weights"][f"leaf_{i:04d}"][()]
                      for i in range(int(f["weights"].attrs["n_leaves"]))]
        except KeyError as err:
            raise ValueError(f"{path}: checkpoint lacks {err}; delete it and train without "
                             "--resume") from None
    return restore(skeleton, leaves, path), meta


def load_amortised(path: str | PathLike):
    """Load a model file of any kind (:class:`~jaxspec.amortised.CNNRegressor` or
    :class:`~jaxspec.amortised.FlowPosterior`), dispatching on its ``kind`` attribute.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a jaxspec amortised-model file, or an unknown kind.
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        with h5py.File(path, "r") as f:
            fmt, kind = f.attrs.get("format"), f.attrs.get("kind")
    except OSError as err:
        raise ValueError(f"{path}: not an HDF5 file ({err}); pass a model written by "
                         "`jaxspec train regressor|flow`") from None
    if fmt != FORMAT:
        raise ValueError(
            f"{path}: root attribute format is {fmt!r}, expected {FORMAT!r}; pass a model "
            "written by `jaxspec train regressor|flow` (emulators go to `jaxspec infer "
            "--method map|bo|nuts`)"
        )
    if kind == "regressor":
        from jaxspec.amortised.regressor import CNNRegressor

        return CNNRegressor.load(path)
    if kind == "flow":
        from jaxspec.amortised.flow import FlowPosterior

        return FlowPosterior.load(path)
    raise ValueError(f"{path}: model kind {kind!r} is unknown (known: regressor, flow)")
