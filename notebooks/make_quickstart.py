"""Write notebooks/quickstart.ipynb (unexecuted) from the cells below.

Run from the repository root: ``python notebooks/make_quickstart.py``. The test suite
executes the notebook (tests/test_notebook.py); edit the cells here, not the .ipynb.
"""

import nbformat as nbf

nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
md("""# jaxspec quick start: from a grid of synthetic spectra to stellar parameters

This notebook is `jaxspec demo` taken apart, step by step, on the embedded synthetic grid
(nothing is downloaded):

1. synthesise the grid of spectra over (Teff, log g, [Fe/H]);
2. clone one spectrum, then every spectrum, into pseudo-Voigt lines (the *blase* method);
3. identify the same line across the grid and build the **line emulator** (blase3D):
   parameters in, spectrum out, differentiable;
4. make test stars *between* grid nodes, with noise at S/N 100;
5. infer their parameters with Bayesian optimisation, gradient MAP and NUTS.

`SIZE = "tiny"` (16 spectra, 1,990 px) runs in a minute or two and is what the test suite
executes; set `SIZE = "default"` for the demo's real grid (1,098 spectra cut to the
Ca II 8498/8542 Å window, a few minutes on 2 CPU cores)."""),
code("""import os
import tempfile
import time
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxspec
from jaxspec.demo import CONFIGS, test_stars

SIZE = os.environ.get("JAXSPEC_QUICKSTART_SIZE", "tiny")   # "tiny" or "default"
cfg = CONFIGS[SIZE]
work = Path(tempfile.mkdtemp(prefix="jaxspec-quickstart-"))
print(f"jaxspec {jaxspec.__version__}, JAX on {jax.default_backend()}; size {SIZE!r}; files in {work}")"""),
md("""## 1. The grid

`synthetic_grid` builds a PHOENIX-like rectilinear grid of continuum-normalised spectra:
every spectrum is a product of pseudo-Voigt lines whose strengths and widths follow from a
one-layer LTE atmosphere. A PHOENIX grid read with `jaxspec.io.phoenix` or an HDF5 grid
(`SpectralGrid.from_hdf5`) is used the same way."""),
code("""grid = jaxspec.synthetic_grid(SIZE, progress=False)
if cfg.wavelength is not None:
    grid = grid.subset(wavelength=cfg.wavelength)
grid.to_hdf5(work / "grid.h5", overwrite=True)
print(grid)

fig, ax = plt.subplots(figsize=(10, 3.5))
teff_axis, logg_axis, feh_axis = (grid.axes[n] for n in grid.param_names)
logg, feh = logg_axis[np.argmin(np.abs(logg_axis - 4.5))], feh_axis[-1]   # a dwarf, solar-ish
for k, teff in enumerate(teff_axis[:: max(1, teff_axis.size // 4)]):
    ax.plot(grid.wavelength, grid.spectrum(teff=teff, logg=logg, feh=feh) - 0.3 * k, lw=0.6,
            label=f"Teff {teff:.0f} K")
ax.set_xlabel("wavelength [Å]"); ax.set_ylabel("normalised flux (offset)")
ax.legend(fontsize=8, loc="lower right"); ax.set_title(f"log g {logg:g}, [Fe/H] {feh:g}");"""),
md("""## 2. Cloning: spectra into line lists

`clone` detects lines by prominence (blase3D: 0.005), initialises a pseudo-Voigt per line
and fits centres, amplitudes and widths by Adam. Here one spectrum, then the whole grid
into a resumable clone store (`clone_grid`; an interrupted run continues where it
stopped)."""),
code("""from jaxspec.clone import clone, clone_grid

node = dict(teff=teff_axis[teff_axis.size // 2], logg=logg, feh=feh)
t = time.perf_counter()
one = clone(grid.wavelength, grid.spectrum(**node))
print(f"{node}: {one.lines.n_lines} lines, residual RMS {float(one.residual_rms):.2e} "
      f"({time.perf_counter() - t:.1f} s)")

fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(10, 4), sharex=True, height_ratios=[3, 1])
ax0.plot(grid.wavelength, grid.spectrum(**node), "k", lw=0.6, label="grid spectrum")
ax0.plot(grid.wavelength, one.model_flux, "C1", lw=0.6, label="clone")
ax0.legend(fontsize=8)
ax1.plot(grid.wavelength, grid.spectrum(**node) - one.model_flux, "k", lw=0.5)
ax1.set_ylabel("residual"); ax1.set_xlabel("wavelength [Å]");"""),
code("""from jaxspec.io.clone_store import CloneStore

t = time.perf_counter()
store = clone_grid(grid, out=work / "clones.h5", progress=False, grid_file=work / "grid.h5",
                   passes=cfg.clone_passes)
store = store if isinstance(store, CloneStore) else CloneStore.open(store)
rms = np.array([n.residual_rms for n in store.iter_nodes()])
print(f"cloned {rms.size} spectra in {time.perf_counter() - t:.0f} s; "
      f"median residual RMS {np.median(rms):.2e}")"""),
md("""## 3. The line emulator

`identify_store` groups the clones' lines across the grid into one dense array
(n_lines, *grid_shape, 4) of (μ′ − μ, ln a, ln σ, ln γ); `LineManifold` interpolates it
multilinearly; `LineEmulator` = manifold + synthesis. It is an equinox Module: jit, vmap and
grad work on it."""),
code("""from jaxspec.identify import identify_store
from jaxspec.line_emulator import LineEmulator

ident = identify_store([store], matcher=cfg.matcher)
print(ident.summary())
emulator = LineEmulator.from_identification(ident)
emulator.save(work / "emulator.h5", overwrite=True)
print(emulator.param_names, emulator.bounds.tolist())

theta = np.array([node["teff"], node["logg"], node["feh"]])
dflux = jax.jacfwd(emulator)(theta)       # (n_pix, 3): d flux / d (Teff, log g, [Fe/H])
fig, ax = plt.subplots(figsize=(10, 3))
ax.plot(grid.wavelength, grid.spectrum(**node), "k", lw=0.6, label="grid")
ax.plot(grid.wavelength, emulator(theta), "C1", lw=0.6, label="emulator")
ax.plot(grid.wavelength, 1.0 + 100 * dflux[:, 0], "C2", lw=0.6, label="1 + 100 K × ∂F/∂Teff")
ax.legend(fontsize=8); ax.set_xlabel("wavelength [Å]");"""),
md("""## 4. Test stars between the nodes

The test stars sit strictly between grid nodes (never seen by the emulator); their spectra
come from the same physics (`synthetic_spectra`) and get Gaussian noise at S/N 100."""),
code("""from jaxspec.synthetic import synthetic_spectra

truth = test_stars(grid, cfg.n_stars, seed=0)
rng = np.random.default_rng(1)
clean = synthetic_spectra(truth, grid.wavelength, size=SIZE)
sigma = np.full_like(clean, 1.0 / cfg.snr)
noisy = clean + rng.normal(0.0, 1.0, clean.shape) * sigma
labels = [f"star{i:02d}" for i in range(cfg.n_stars)]
for label, p in zip(labels, truth):
    print(label, dict(zip(grid.param_names, np.round(p, 3))))"""),
md("""## 5. Inference

* `bayes_opt`: Gaussian-process Bayesian optimisation of the RMS loss (the blase3D
  paper's method; here with a reduced budget at `tiny`);
* `fit_map`: gradient MAP started from the BO result, with Laplace uncertainties (here
  from the Gauss–Newton Hessian, cheap through a line emulator);
* `sample_nuts`: NUTS posterior (numpyro), returned with arviz `InferenceData`."""),
code("""from astropy.table import vstack
from jaxspec.infer import bayes_opt, fit_map, results_table, sample_nuts

t = time.perf_counter()
bo = bayes_opt(emulator, noisy, sigma, n_random=cfg.n_random, n_guided=cfg.n_guided)
t_bo = (time.perf_counter() - t) / cfg.n_stars
t = time.perf_counter()
mp = fit_map(emulator, noisy, sigma, init=bo.params, n_search=cfg.map_search,
             n_starts=cfg.map_starts, steps=cfg.map_steps, hessian=cfg.map_hessian)
t_map = (time.perf_counter() - t) / cfg.n_stars
t = time.perf_counter()
post = sample_nuts(emulator, noisy[0], sigma[0], init=np.asarray(mp.params[0]),
                   num_warmup=cfg.num_warmup, num_samples=cfg.num_samples,
                   num_chains=cfg.num_chains, max_tree_depth=cfg.nuts_tree_depth,
                   key=jax.random.PRNGKey(0))
t_nuts = time.perf_counter() - t
print(f"seconds per star: BO {t_bo:.1f}, MAP {t_map:.1f}, NUTS {t_nuts:.1f}")
print(post.message, "R-hat max", np.max(post.rhat))

results = vstack([
    results_table(bo, emulator.param_names, files=labels, method="bo", seconds=t_bo),
    results_table(mp, emulator.param_names, files=labels, method="map", seconds=t_map),
    results_table([post], emulator.param_names, files=labels[:1], method="nuts", seconds=t_nuts),
], metadata_conflicts="silent")
truth_of = dict(zip(labels, truth))
for j, name in enumerate(emulator.param_names):
    results[f"{name}_true"] = [truth_of[f][j] for f in results["file"]]
    results[f"{name}_error"] = results[name] - results[f"{name}_true"]
results["file", "method", "teff", "teff_true", "logg", "logg_true", "feh", "feh_true",
        "converged"].pprint(max_width=-1)
results.write("quickstart_results.ecsv", overwrite=True)"""),
code("""best = np.asarray(mp.params[0])
fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(10, 4), sharex=True, height_ratios=[3, 1])
ax0.plot(grid.wavelength, noisy[0], "k", lw=0.5, label=f"{labels[0]} (S/N {cfg.snr:g})")
ax0.plot(grid.wavelength, emulator(best), "C1", lw=0.7, label="emulator at MAP")
ax0.legend(fontsize=8)
ax1.plot(grid.wavelength, noisy[0] - emulator(best), "k", lw=0.5)
ax1.set_ylabel("residual"); ax1.set_xlabel("wavelength [Å]")

import corner
draws = np.stack([np.ravel(post.samples[n]) for n in emulator.param_names], axis=1)
corner.corner(draws, labels=list(emulator.param_names), truths=list(truth[0]));"""),
md("""The same pipeline, with a results table per method and Teff regime, timings and plots,
is `jaxspec demo --size default --out demo-out`; `jaxspec infer emulator.h5 star.ecsv
--method map` fits your own spectra with a saved emulator."""),
]
nb["cells"] = cells
nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "notebooks/quickstart.ipynb")
