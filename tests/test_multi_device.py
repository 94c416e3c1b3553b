"""Batched MAP split over several devices (``fit_map(devices=...)``, issue 19).

On CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (set before jax is
imported, so in a child process) makes two devices; the tiny pixel emulator of
test_batch_safety keeps the child's compile short. The fits split over both devices
equal those on one device.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import jax, jax.numpy as jnp, numpy as np
    import jaxspec  # noqa: F401  (x64)
    from jaxspec.infer import fit_map
    from jaxspec.pixel_emulator import PixelEmulator
    from test_batch_safety import SIGMA, small_grid

    assert len(jax.devices()) == 2, jax.devices()
    em = PixelEmulator.from_grid(small_grid())
    truth = np.array([[4300.0, 3.8], [4700.0, 4.1], [5200.0, 4.4], [5650.0, 4.7],
                      [4900.0, 3.9]])
    rng = np.random.default_rng(3)
    flux = np.stack([np.asarray(em(jnp.asarray(t))) for t in truth])
    flux = flux + SIGMA * rng.normal(size=flux.shape)
    kw = dict(uncertainty=np.full(flux.shape, SIGMA), batch_size=4, key=1)
    one = fit_map(em, flux, **kw)
    two = fit_map(em, flux, devices="all", **kw)
    np.testing.assert_allclose(np.asarray(two.params), np.asarray(one.params), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(two.sigma), np.asarray(one.sigma), rtol=1e-6)
    assert np.all(np.asarray(two.converged)), two.message
    assert np.all(np.abs(np.asarray(two.params) - truth) < 5 * np.asarray(two.sigma) + 1e-6)
    # the batch was split: each compiled call got and gave arrays over both devices
    from jaxspec.infer import map as map_module
    seen, real = [], map_module._map_batch
    def spy(*args):
        out = real(*args)
        seen.append((args[1].flux.sharding.device_set, out.params.sharding.device_set))
        return out
    map_module._map_batch = spy
    fit_map(em, flux, devices=2, **kw)
    map_module._map_batch = real
    assert len(seen) == 2 and all(a == b == set(jax.devices()) for a, b in seen), seen
    try:
        fit_map(em, flux, devices=3, **kw)
    except ValueError as err:
        assert "2 device(s) available" in str(err), err
    else:
        raise AssertionError("devices=3 accepted with 2 devices")
    print("OK", two.params.sharding)
""")


def test_fit_map_splits_a_batch_over_two_cpu_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    code = CHILD.format(tests=str(ROOT / "tests"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout


def test_devices_option_is_checked():
    from jaxspec.infer._prepare import star_sharding

    assert star_sharding(None) is None and star_sharding(1) is None
    with pytest.raises(ValueError, match="device\\(s\\) available"):
        star_sharding(10_000)
    with pytest.raises(ValueError, match="pass 'all'"):
        star_sharding("every")
    with pytest.raises(TypeError, match="devices=2.5"):
        star_sharding(2.5)
