"""Load an amortised-model file of any kind."""

from __future__ import annotations

from os import PathLike

from jaxspec.amortised import flow, regressor  # noqa: F401  (they register their kinds)
from jaxspec.io import emulator_file
from jaxspec.io.emulator_file import AMORTISED_FORMAT


def load_amortised(path: str | PathLike):
    """Load a model file of any kind (:class:`~jaxspec.amortised.CNNRegressor` or
    :class:`~jaxspec.amortised.FlowPosterior`), dispatching on its ``kind`` attribute
    (:func:`jaxspec.io.emulator_file.load`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a jaxspec amortised-model file, or an unknown kind.
    """
    fmt, _ = emulator_file.read_header(path, AMORTISED_FORMAT)
    if fmt != AMORTISED_FORMAT:
        raise ValueError(
            f"{path}: root attribute format is {fmt!r}, expected {AMORTISED_FORMAT!r}; pass "
            "a model written by `jaxspec train regressor|flow` (emulators go to `jaxspec "
            "infer --method map|bo|nuts`)"
        )
    return emulator_file.load(path, format=AMORTISED_FORMAT)
