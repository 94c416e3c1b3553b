"""jaxspec: end-to-end differentiable stellar spectroscopy in JAX.

Importing jaxspec enables JAX's 64-bit mode (``jax_enable_x64``): wavelengths and line
centres must keep 0.001 Å precision at 10,000 Å, beyond float32. Profile arithmetic that
does not need it runs in float32 where speed matters (see :mod:`jaxspec.lines`).
"""

import jax

jax.config.update("jax_enable_x64", True)

from jaxspec import profiles  # noqa: E402
from jaxspec.grid import SpectralGrid  # noqa: E402
from jaxspec.lines import LineList  # noqa: E402
from jaxspec.synthetic import synthetic_grid, synthetic_line_list  # noqa: E402

__all__ = ["LineList", "SpectralGrid", "profiles", "synthetic_grid", "synthetic_line_list"]
__version__ = "0.1.0"
