"""Every emulator kind and amortised model saves and loads through one module
(jaxspec.io.emulator_file): round trip through load_emulator / load_amortised, overwrite
refused and honoured. Tiny objects, built directly (no training)."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspec.amortised import CNNRegressor, FlowPosterior, Standardizer, load_amortised
from jaxspec.amortised.flow import _build
from jaxspec.amortised.regressor import _network
from jaxspec.emulator import load_emulator
from jaxspec.line_emulator import LineEmulator
from jaxspec.manifold import LineManifold
from jaxspec.observed_emulator import ObservedEmulator
from jaxspec.peers import AutoencoderEmulator, CannonEmulator, PayneEmulator
from jaxspec.pixel_emulator import PixelEmulator
from jaxspec.template import Template

NAMES = ("teff", "logg")
AXES = {"teff": np.array([5000.0, 5500.0, 6000.0]), "logg": np.array([4.0, 4.5])}
WL = 8500.0 + 0.05 * np.arange(64)
POINT = np.array([5200.0, 4.2])


def _layer(rng, n_in, n_out):
    return (jnp.asarray(rng.normal(size=(n_in, n_out)), jnp.float32),
            jnp.asarray(rng.normal(size=n_out), jnp.float32))


def emulators() -> dict:
    """One tiny emulator of every kind (parameters teff, logg; 64 pixels)."""
    rng = np.random.default_rng(1)
    n = WL.size
    lo, hi = jnp.array([5000.0, 4.0]), jnp.array([6000.0, 4.5])
    common = {"wavelength_": WL, "names": NAMES}
    values = np.zeros((2, 3, 2, 4))
    values[..., 1] = np.log(0.3)
    values[..., 2] = np.log(0.05)
    values[..., 3] = np.log(0.02)
    values[1, 2, :, 1] = -1000.0  # line 1 absent at 6000 K
    line = LineEmulator(LineManifold(AXES, values), np.array([8501.0, 8502.0]), WL)
    template = Template.from_arrays(WL, 1.0 - 0.5 * np.exp(-0.5 * ((WL - 8501.5) / 0.1) ** 2),
                                    "one line")
    return {
        "pixel": PixelEmulator(axes=tuple(jnp.asarray(a) for a in AXES.values()),
                               flux=jnp.asarray(rng.uniform(0.5, 1.0, (3, 2, n))),
                               wavelength_=WL, filled=np.zeros((3, 2), bool), names=NAMES),
        "line": line,
        "cannon": CannonEmulator(coefficients=jnp.asarray(rng.normal(size=(6, n))),
                                 scatter=jnp.full(n, 0.01), pivot=jnp.array([5500.0, 4.25]),
                                 scale=jnp.array([500.0, 0.25]),
                                 bounds_=np.stack([lo, hi], axis=-1), **common),
        "payne": PayneEmulator(layers=(_layer(rng, 2, 4), _layer(rng, 4, n)), label_min=lo,
                               label_max=hi, **common),
        "autoencoder": AutoencoderEmulator(encoder=(_layer(rng, n, 3),),
                                           decoder=(_layer(rng, 3, n),),
                                           dense=(_layer(rng, 2, 3),), label_min=lo,
                                           label_max=hi, **common),
        "template": template,
        "observed": ObservedEmulator.build(line, WL[10:50], fit="rv,continuum=1",
                                           rv_range=(-10.0, 10.0)),
    }


def amortised_models() -> dict:
    """A tiny regressor and flow (untrained networks) on 16 pixels."""
    m, k = 16, 2
    std = Standardizer(label_mean=jnp.array([5500.0, 4.25]), label_scale=jnp.array([300.0, 0.2]),
                       flux_mean=jnp.full(m, 0.9), flux_scale=jnp.full(m, 0.1),
                       snr_mean=jnp.array(1.5), snr_scale=jnp.array(0.5))
    wl = 8500.0 + np.arange(m, dtype=np.float64)
    common = {"standardizer": std, "wavelength": wl, "edges": np.append(wl - 0.5, wl[-1] + 0.5),
              "box": ((5000.0, 6000.0), (4.0, 4.5)), "names": NAMES, "snr_range": (10.0, 100.0)}
    reg_config = {"channels": 4, "stages": 1, "pool": 2, "head": [8]}
    network, state = _network(reg_config, m, k, jax.random.key(0))
    flow_config = {"hidden": [8], "features": 4, "flow_layers": 1, "nn_width": 8, "nn_depth": 1}
    embedding, flow = _build(flow_config, m, k, jax.random.key(1))
    return {
        "regressor": CNNRegressor(network=network, state=state,
                                  config=json.dumps(reg_config), **common),
        "flow": FlowPosterior(embedding=embedding, flow=flow, config=json.dumps(flow_config),
                              **common),
    }


def _same_arrays(a, b, what):
    """The array leaves of two models agree (the file keeps every array; line values are
    stored as float32)."""
    left = jax.tree.leaves(eqx.filter(a, eqx.is_array))
    right = jax.tree.leaves(eqx.filter(b, eqx.is_array))
    assert len(left) == len(right), what
    for x, y in zip(left, right):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6, atol=1e-6,
                                   err_msg=what)


def _check_overwrite(model, path):
    saved = model.save(path)
    assert saved == path and not list(path.parent.glob(f"{path.name}*.partial"))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(path)
    assert path.read_bytes() == before
    assert model.save(path, overwrite=True) == path


def test_every_emulator_kind_round_trips_through_load_emulator(tmp_path):
    for kind, emulator in emulators().items():
        path = tmp_path / f"{kind}.h5"
        _check_overwrite(emulator, path)
        back = load_emulator(path)
        assert type(back) is type(emulator) and back.kind == kind, kind
        assert type(emulator).load(path).kind == kind
        assert back.param_names == emulator.param_names
        np.testing.assert_array_equal(back.bounds, emulator.bounds)
        np.testing.assert_array_equal(back.wavelength, emulator.wavelength)
        _same_arrays(emulator, back, kind)
        if kind in ("pixel", "cannon", "template"):  # cheap to call eagerly
            point = np.mean(emulator.bounds, axis=1)
            np.testing.assert_allclose(np.asarray(back(point)), np.asarray(emulator(point)),
                                       rtol=1e-6, atol=1e-6, err_msg=kind)
    with pytest.raises(ValueError, match="kind is 'payne', not 'pixel'"):
        PixelEmulator.load(tmp_path / "payne.h5")
    clamped = load_emulator(tmp_path / "pixel.h5", out_of_box="clamp")
    assert clamped.out_of_box == "clamp"


def test_amortised_models_round_trip_through_load_amortised(tmp_path):
    for kind, model in amortised_models().items():
        path = tmp_path / f"{kind}.h5"
        _check_overwrite(model, path)
        back = load_amortised(path)
        assert type(back) is type(model) and back.kind == kind
        assert back.names == model.names and back.config == model.config
        _same_arrays(model, back, kind)
    emulators()["template"].save(tmp_path / "t.h5")
    with pytest.raises(ValueError, match="expected 'jaxspec-amortised'"):
        load_amortised(tmp_path / "t.h5")
    with pytest.raises(ValueError, match="expected 'jaxspec-emulator'"):
        load_emulator(tmp_path / "flow.h5")
