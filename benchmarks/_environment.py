"""What a benchmark ran on, recorded beside its numbers in its JSON report.

A number measured earlier that no longer reproduces (README: *The default store,
re-measured*) can only be chased if the run says which versions made it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

_PACKAGES = ("jaxspec", "jax", "jaxlib", "numpy", "scipy", "equinox", "optax", "numpyro",
             "interpax", "h5py", "astropy")


def environment() -> dict:
    """``{"python", "machine", "cpus", "jax_backend", "devices", "git_commit", "packages"}``:
    the interpreter, the CPU count this process may use, JAX's backend and devices, the
    git commit of this checkout (None outside one; ``+dirty`` with uncommitted changes)
    and the installed versions of jaxspec's dependencies (None where one is missing)."""
    import jax

    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit = (commit + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"python": platform.python_version(), "machine": platform.platform(),
            "cpus": cpus, "jax_backend": jax.default_backend(),
            "devices": [d.device_kind for d in jax.devices()], "git_commit": commit,
            "packages": versions}
