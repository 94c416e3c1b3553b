"""The package's import graph: no circles, and no import against the data flow.

Every module of ``jaxspec`` is parsed with ``ast`` (nothing is imported) and every
``import`` / ``from ... import`` statement in it, at any depth (inside functions too,
relative ones resolved), is an arrow to the jaxspec module it names. ``from pkg import x``
points at ``pkg.x`` when that is a module, else at ``pkg``. Importing a submodule also runs
its parent packages' ``__init__``; those implicit arrows are not counted (they would make
every re-exporting ``__init__`` a circle). String imports
(``importlib.import_module("...")``) are a plugin registry and not counted either.

Stages, earliest first (``STAGES``, the data flow grid -> clones -> manifold -> emulator ->
inference, after the core helpers and the synthesis they all use): a module may import only
modules of its own stage or earlier.
To place a new module, add its name (relative to ``jaxspec``) to ``STAGE_OF``; an entry
names a module or a package and, unless a longer entry says otherwise, everything under
it.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

STAGES = ("core", "synthesis", "grid", "clone", "manifold", "emulator", "inference", "apps")

#: module or package (relative to ``jaxspec``; "" is the package's own ``__init__``) -> stage
STAGE_OF = {
    # 0 core: leaf helpers, the observed-spectrum type, generic file-format helpers
    "_checks": "core",
    "_axes": "core",
    "_atomic_data": "core",
    "_dask": "core",
    "_batching": "core",
    "_faddeeva": "core",
    "medium": "core",
    "profiles": "core",
    "spectrum": "core",
    "io.atomic": "core",
    "io.emulator_file": "core",  # every emulator kind's file, through one writer
    "io.locking": "core",
    "io.specutils": "core",
    # 1 synthesis: line lists and their synthesis
    "synthesis": "synthesis",
    "lines": "synthesis",
    "extrinsic": "synthesis",  # kernels, pixels, the effects chain
    # 2 grid: grids of spectra and their files
    "": "grid",  # jaxspec/__init__ re-exports SpectralGrid, LineList, synthetic_grid
    "grid": "grid",
    "synthetic": "grid",
    "preprocess": "grid",
    "io.grid_hdf5": "grid",
    "io.phoenix": "grid",
    # 3 clone
    "clone": "clone",
    "io.clone_store": "clone",
    # 4 manifold
    "identify": "manifold",
    "manifold": "manifold",
    # 5 emulator
    "emulator": "emulator",
    "line_emulator": "emulator",
    "pixel_emulator": "emulator",
    "refine": "emulator",
    "_track_smoothing": "emulator",
    "validate": "emulator",
    "peers": "emulator",
    "observed_emulator": "emulator",
    "template": "emulator",
    # 6 inference
    "infer": "inference",
    "amortised": "inference",
    "io": "core",  # jaxspec/io/__init__ names the readers; it imports them on first use
    "io.spectrum": "inference",
    "io.fits_spectrum": "inference",
    "io.posterior": "inference",
    "io.results_writer": "inference",
    # 7 apps
    "demo": "apps",
    "cli": "apps",
}

#: Circles another change is removing, tolerated until it lands (each entry: the sorted
#: modules of the circle). An entry that is no longer a circle fails the test: delete it.
PENDING_CIRCLES: list[list[str]] = []

ROOT = Path(__file__).resolve().parent.parent / "jaxspec"  # parsed, never imported


def _modules(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the package at ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


@functools.cache
def _import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``{module: modules it imports}``, within the package at ``root`` (jaxspec), from
    every import statement (cached: the tests only read it)."""
    modules = _modules(root)
    top = root.name

    def owner(name: str) -> str:  # the module that defines ``name`` (a module or attribute)
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(owner(a.name) for a in node.names
                               if a.name.split(".")[0] == top)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != top:
                    continue
                targets.update(owner(f"{source}.{a.name}") for a in node.names)
        targets.discard(name)
        graph[name] = targets
    return graph


def _stage(module: str) -> str | None:
    """The stage of ``module`` by its longest matching entry of STAGE_OF, or None."""
    relative = module.removeprefix("jaxspec").removeprefix(".")
    if relative == "":
        return STAGE_OF.get("")
    keys = [k for k in STAGE_OF if k and (relative == k or relative.startswith(k + "."))]
    return STAGE_OF[max(keys, key=len)] if keys else None


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _describe(component: list[str], graph: dict[str, set[str]]) -> str:
    inside = set(component)
    arrows = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & inside)]
    return "{" + ", ".join(component) + "}: " + "; ".join(arrows)


def test_every_module_has_a_stage():
    unplaced = [m for m in _modules() if _stage(m) is None]
    assert not unplaced, (
        f"modules without a stage: {unplaced}; place each in STAGE_OF of "
        "tests/test_architecture.py (stages: " + ", ".join(STAGES) + ")"
    )
    assert set(STAGE_OF.values()) <= set(STAGES)


def test_no_import_circles():
    graph = _import_graph()
    circles = _circles(graph)
    new = [c for c in circles if c not in PENDING_CIRCLES]
    assert not new, "import circles (imports inside functions count):\n" + "\n".join(
        _describe(c, graph) for c in new
    )
    gone = [c for c in PENDING_CIRCLES if c not in circles]
    assert not gone, f"no longer circles, delete them from PENDING_CIRCLES: {gone}"


def test_no_import_of_a_later_stage():
    graph = _import_graph()
    rank = {s: i for i, s in enumerate(STAGES)}
    against = []
    for a in sorted(graph):
        for b in sorted(graph[a]):
            sa, sb = _stage(a), _stage(b)
            if sa is not None and sb is not None and rank[sb] > rank[sa]:
                against.append(f"{a} ({sa}) -> {b} ({sb})")
    assert not against, "imports against the data flow:\n" + "\n".join(against)


def test_the_walker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    pkg = tmp_path / "jaxspec"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from jaxspec.a import f\n")
    (pkg / "a.py").write_text("import os\n\ndef f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from . import b\nfrom .. import a\n")
    (pkg / "sub" / "b.py").write_text(
        "import importlib\n\nclass C:\n    def m(self):\n        import jaxspec.a\n"
        "        importlib.import_module('jaxspec.sub')\n"
    )
    assert _import_graph(pkg) == {
        "jaxspec": {"jaxspec.a"},
        "jaxspec.a": {"jaxspec.sub.b"},
        "jaxspec.sub": {"jaxspec.sub.b", "jaxspec.a"},
        "jaxspec.sub.b": {"jaxspec.a"},
    }
    assert _circles(_import_graph(pkg)) == [["jaxspec.a", "jaxspec.sub.b"]]
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
