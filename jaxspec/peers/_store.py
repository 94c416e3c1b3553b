"""The file contents shared by the peer emulators (written and read by
:mod:`jaxspec.io.emulator_file`).

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

import jax.numpy as jnp
import numpy as np

from jaxspec.io.emulator_file import Contents, check_version

VERSION = 1


def contents(kind: str, names, wavelength, bounds, info: str, arrays: dict,
             networks: dict) -> Contents:
    """The file contents of a peer emulator (layout in the module docstring)."""
    out = {"wavelength": np.asarray(wavelength, dtype=np.float64),
           "bounds": np.asarray(bounds, dtype=np.float64)}
    out.update({name: np.asarray(value) for name, value in arrays.items()})
    for net, layers in networks.items():
        for i, (w, b) in enumerate(layers):
            out[f"{net}/{i}/W"] = np.asarray(w)
            out[f"{net}/{i}/b"] = np.asarray(b)
    return Contents(kind=kind, version=VERSION, arrays=out,
                    attrs={"param_names": json.dumps(list(names)), "info": info})


def fields(found: Contents, path, cls_name: str, arrays, networks) -> dict:
    """``{"names", "wavelength", "bounds", "info", <array names>, <network names>}`` of
    a peer emulator's file contents.

    Raises:
        ValueError: a newer version, or a missing dataset (named).
    """
    check_version(path, found, VERSION)
    fix = f"rewrite it with {cls_name}.save"
    found.require(path, "@param_names", "wavelength", "bounds", *arrays, fix=fix)
    out = {
        "names": tuple(json.loads(found.attrs["param_names"])),
        "info": str(found.attrs.get("info", "{}")),
        "wavelength": np.asarray(found.arrays["wavelength"], dtype=np.float64),
        "bounds": np.asarray(found.arrays["bounds"], dtype=np.float64),
    }
    for name in arrays:
        out[name] = jnp.asarray(found.arrays[name])
    for net in networks:
        layers = found.group(net)
        n = len({key.split("/")[0] for key in layers})
        found.require(path, *(f"{net}/{i}/{p}" for i in range(n) for p in "Wb"), fix=fix)
        if n == 0:
            found.require(path, net, fix=fix)
        out[net] = tuple((jnp.asarray(layers[f"{i}/W"]), jnp.asarray(layers[f"{i}/b"]))
                         for i in range(n))
    return out
