"""File contents of amortised models and training checkpoints (written and read by
:mod:`jaxspec.io.emulator_file`). A leaf: it imports no model module.

Model layout (root attributes ``format = "jaxspec-amortised"``, ``kind`` =
``"regressor"`` or ``"flow"``, ``version``, ``param_names`` and ``config`` as JSON,
``history`` as JSON):

* ``bounds`` ``(k, 2)``, ``wavelength`` ``(m,)`` Å and ``edges`` ``(m + 1,)`` Å (the
  network's pixels), ``snr_range`` ``(2,)``;
* ``standardizer/<field>``;
* ``calibration`` ``(k, p)`` (optional; version >= 2): the model's calibration on held-out
  simulations (regressor: :func:`~jaxspec.amortised.regressor.calibrate_regressor`; flow:
  :func:`~jaxspec.amortised.flow.calibrate_flow`), its meaning in the ``calibration``
  dataset's ``description`` attribute and the held-out coverage in ``report`` (JSON);
* ``weights/leaf_NNNN``: the array leaves of the network (equinox tree leaves, in
  ``jax.tree.leaves`` order of ``eqx.filter(tree, eqx.is_array)``), rebuilt on load into
  a skeleton made from ``config``; the group's attribute ``n_leaves`` counts them.

Every file is written atomically (:func:`jaxspec.io.emulator_file.write`, through
:mod:`jaxspec.io.atomic`): into a partial file beside it, flushed to disk, then renamed
over ``path``, so an existing file stays intact until the new one is complete.
Training checkpoints (:func:`write_checkpoint`, :func:`read_checkpoint`) use the same
writer.
"""

from __future__ import annotations

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.io import emulator_file
from jaxspec.io.emulator_file import AMORTISED_FORMAT, CHECKPOINT_FORMAT, Contents

FORMAT = AMORTISED_FORMAT
VERSION = 2
_STANDARDIZER = ("label_mean", "label_scale", "flux_mean", "flux_scale", "snr_mean",
                 "snr_scale")


def _weights(tree) -> tuple[dict, dict]:
    """``(arrays, attrs)`` of the ``weights`` group: the array leaves of ``tree``."""
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_array))
    arrays = {f"weights/leaf_{i:04d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    return arrays, {"weights@n_leaves": len(leaves)}


def _leaves(found: Contents) -> list:
    """The array leaves of the ``weights`` group (KeyError if missing)."""
    n = int(found.attrs["weights@n_leaves"])
    return [found.arrays[f"weights/leaf_{i:04d}"] for i in range(n)]


def contents(model, tree) -> Contents:
    """The file contents of ``model`` (a flow or regressor: its ``kind``, names, box,
    pixels, S/N range, standardisation, config, history and calibration) with the array
    leaves of ``tree`` (layout in the module docstring)."""
    arrays = {
        "bounds": np.asarray(model.bounds, dtype=np.float64),
        "wavelength": np.asarray(model.wavelength, dtype=np.float64),
        "edges": np.asarray(model.edges, dtype=np.float64),
        "snr_range": np.asarray(model.snr_range, dtype=np.float64),
    }
    arrays.update({f"standardizer/{field}": np.asarray(getattr(model.standardizer, field))
                   for field in _STANDARDIZER})
    weights, weight_attrs = _weights(tree)
    arrays.update(weights)
    attrs = {"param_names": json.dumps(list(model.names)),
             "config": json.dumps(json.loads(model.config)),
             "history": json.dumps(json.loads(model.history) or {}), **weight_attrs}
    calibration = getattr(model, "calibration", None)
    if calibration is not None:
        arrays["calibration"] = np.asarray(calibration.values, dtype=np.float64)
        attrs["calibration@description"] = calibration.description
        attrs["calibration@report"] = calibration.report
    return Contents(kind=model.kind, version=VERSION, attrs=attrs, arrays=arrays,
                    format=FORMAT)


def read(found: Contents, path) -> dict:
    """Everything but the network, from a model file's contents: a dict with ``names``,
    ``bounds``, ``wavelength``, ``edges``, ``snr_range``, ``standardizer`` (dict of
    arrays), ``config``, ``history``, ``leaves`` (list of arrays) and ``calibration``
    (``(values, description, report)`` or None).

    Raises:
        ValueError: a dataset or attribute is missing (named).
    """
    a = found.arrays
    try:
        out = {
            "names": tuple(json.loads(found.attrs["param_names"])),
            "config": json.loads(found.attrs["config"]),
            "history": json.loads(found.attrs.get("history", "{}")),
            "bounds": a["bounds"],
            "wavelength": a["wavelength"],
            "edges": a["edges"],
            "snr_range": tuple(float(v) for v in a["snr_range"]),
            "standardizer": found.group("standardizer"),
            "leaves": _leaves(found),
            "calibration": None,
        }
    except KeyError as err:
        raise ValueError(f"{path}: model file lacks {err}; rewrite it with .save") from None
    if "calibration" in a:
        out["calibration"] = (a["calibration"],
                              str(found.attrs.get("calibration@description", "")),
                              str(found.attrs.get("calibration@report", "{}")))
    return out


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
    arrays, attrs = _weights(tree)
    found = Contents(kind=None, version=None, attrs={"meta": json.dumps(meta), **attrs},
                     arrays=arrays, format=CHECKPOINT_FORMAT)
    return emulator_file.write(path, found, overwrite=True)


def read_checkpoint(path, skeleton) -> tuple[object, dict]:
    """``(tree, meta)`` from a file of :func:`write_checkpoint`; ``tree`` is ``skeleton``
    (a tree of the same structure, e.g. the freshly initialised training state) with its
    array leaves replaced by the file's, shapes checked.

    Raises:
        ValueError: not a checkpoint, damaged, or made for a different network.
    """
    path = Path(path)
    try:
        found = emulator_file.read(path, format=CHECKPOINT_FORMAT)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable checkpoint ({err}); delete it and train "
                         "without --resume") from None
    try:
        meta = json.loads(found.attrs["meta"])
        leaves = _leaves(found)
    except KeyError as err:
        raise ValueError(f"{path}: checkpoint lacks {err}; delete it and train without "
                         "--resume") from None
    return restore(skeleton, leaves, path), meta
