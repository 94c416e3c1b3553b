"""HDF5 layout shared by the peer emulators' ``save`` / ``load``.

::

    /                 attrs: format = "jaxspec-emulator", kind, version = 1,
                             param_names (JSON list), info (JSON object)
    /wavelength       (n_pix,) float64, Å
    /bounds           (n_params, 2) float64 [low, high]
    /<name>           arrays of the kind (e.g. /coefficients)
    /<net>/<i>/W, b   layer i of network <net> (``W`` shaped (n_in, n_out))
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxspec.emulator import FORMAT

VERSION = 1


def write(path, kind: str, names, wavelength, bounds, info: str, arrays: dict,
          networks: dict, overwrite: bool) -> Path:
    """Write an emulator file (layout in the module docstring); returns the path.

    Atomic (:func:`jaxspec.io.atomic.atomic_path`): written under a partial name and
    renamed when complete, so an existing file survives a failed write. FileExistsError
    if ``path`` exists and ``overwrite`` is False."""
    import h5py

    from jaxspec.io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["kind"] = kind
        f.attrs["version"] = VERSION
        f.attrs["param_names"] = json.dumps(list(names))
        f.attrs["info"] = info
        f.create_dataset("wavelength", data=np.asarray(wavelength, dtype=np.float64))
        f.create_dataset("bounds", data=np.asarray(bounds, dtype=np.float64))
        for name, value in arrays.items():
            f.create_dataset(name, data=np.asarray(value))
        for net, layers in networks.items():
            g = f.create_group(net)
            for i, (w, b) in enumerate(layers):
                g.create_dataset(f"{i}/W", data=np.asarray(w))
                g.create_dataset(f"{i}/b", data=np.asarray(b))
    return path


def read(path: str | PathLike, kind: str, cls_name: str, arrays, networks) -> dict:
    """Read an emulator file of ``kind``: ``{"names", "wavelength", "bounds", "info",
    <array names>, <network names>}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another kind, a newer version, or a missing dataset (named).
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such emulator file")
    with h5py.File(path, "r") as f:
        found = f.attrs.get("kind")
        if found != kind:
            raise ValueError(
                f"{path}: emulator kind is {found!r}, not {kind!r}; load it with "
                "jaxspec.emulator.load_emulator"
            )
        version = int(f.attrs.get("version", 0))
        if version > VERSION:
            raise ValueError(
                f"{path}: {kind} emulator file version {version} is newer than this "
                f"jaxspec reads ({VERSION}); upgrade jaxspec"
            )
        try:
            out = {
                "names": tuple(json.loads(f.attrs["param_names"])),
                "info": str(f.attrs.get("info", "{}")),
                "wavelength": np.asarray(f["wavelength"][()], dtype=np.float64),
                "bounds": np.asarray(f["bounds"][()], dtype=np.float64),
            }
            for name in arrays:
                out[name] = jnp.asarray(f[name][()])
            for net in networks:
                g = f[net]
                out[net] = tuple(
                    (jnp.asarray(g[f"{i}/W"][()]), jnp.asarray(g[f"{i}/b"][()]))
                    for i in range(len(g))
                )
        except KeyError as err:
            raise ValueError(
                f"{path}: {kind} emulator file lacks {err}; rewrite it with "
                f"{cls_name}.save"
            ) from None
    return out
