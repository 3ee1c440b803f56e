"""The package's layers (README "Layout"): imports point down, never in a circle, never hidden.

Every module of ``coserve_jax`` is parsed with ``ast`` (nothing is imported). Its imports of
other ``coserve_jax`` modules, at module level and inside functions, must

- point to a lower layer of ``LAYERS`` (or stay inside the module's own unit: ``engine.loop``
  may import ``engine.events``);
- form no circle among modules (a circle hidden by an import inside a function still is one);
- stand at module level: an import inside a function hides an edge of the graph from its reader.
  An exception goes in ``FUNCTION_IMPORTS`` with its reason (there is none).

Imports of other packages are not checked (an optional dependency may be imported where it is
used; configuring JAX before it starts needs no hidden import: ``runner/devices.py``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "coserve_jax"

# Bottom first. A unit is a top-level module or subpackage of coserve_jax; it may import units of
# lower layers (any of them) and itself, never a unit of its own layer or above.
LAYERS: list[tuple[str, ...]] = [
    # value types with no dependencies (Request, ExpertInfo, Tier, the verdict labels)
    ("coserve_jax", "types"),
    # leaves: JSON output, counters, timelines and request records, Flax architectures, the image
    # generator, byte-budgeted pools and checkpoints
    ("metrics", "models", "data", "store"),
    # reports: they read run dirs (results.json, timelines, request records), nothing of the engine
    ("report",),
    # the cost model every policy and the simulator read (saved with metrics' atomic writer)
    ("cost",),
    # optax training of the demo experts
    ("train",),
    # CoE graphs, paper-scale boards, the trained zoo (which trains its experts)
    ("coe",),
    # policies read the CoE graph and the cost model; the config checks a paper board's usage
    # tail with coe/paper.py (so coe reports a bad model.zoo as a ValueError, not a ConfigError)
    ("policies", "config"),
    # the loop, its backends and builder; traces of requests
    ("engine", "workload"),
    # what every job needs to run arms: model, runtime, ArmRunner, JAX devices
    ("runner",),
    # microbenchmarks, loop overhead (it runs arms), profile cache and trust, allocation search
    ("profiler",),
    # serve, zoo, profile, plan; the run dir
    ("jobs",),
    # the public API facade and the Hydra entry point
    ("api", "run"),
    # the Ray Serve application: each replica wraps the public online Engine
    ("serve",),
]

# (module, imported module) -> why it is imported inside a function. Keep this short.
FUNCTION_IMPORTS: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[0] if len(parts) == 1 else parts[1]


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported coserve_jax module, line, at module level) for every import in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    top = _module_level(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # "from pkg import sub" imports the submodule pkg.sub; "from mod import name" imports mod
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "coserve_jax":
                out.append((_known(name), node.lineno, id(node) in top))
    return out


def _known(name: str) -> str:
    """The module ``name`` refers to (``coserve_jax.x.y`` may name ``y`` in module ``x``)."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def _module_level(tree: ast.Module) -> set[int]:
    """Ids of the module body's statements, including those in module-level if/try/with blocks."""
    out, stack = set(), list(tree.body)
    while stack:
        n = stack.pop()
        out.add(id(n))
        if isinstance(n, (ast.If, ast.Try, ast.With)):
            stack.extend(getattr(n, "body", []) + getattr(n, "orelse", []) + getattr(n, "finalbody", [])
                         + [s for h in getattr(n, "handlers", []) for s in h.body])
    return out


LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
GRAPH = {m: _imports(m) for m in MODULES}


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in MODULES}
    assert sorted(units - set(LAYER)) == [], "add the new unit to LAYERS (tests/test_layers.py)"
    assert sorted(set(LAYER) - units) == [], "LAYERS names a unit that no longer exists"


def test_imports_point_down():
    upward = [f"{m}:{line} imports {t} ({_unit(m)}: layer {LAYER[_unit(m)]}, {_unit(t)}: layer {LAYER[_unit(t)]})"
              for m, imports in GRAPH.items() for t, line, _ in imports
              if _unit(t) != _unit(m) and LAYER[_unit(t)] >= LAYER[_unit(m)]]
    assert upward == []


def test_no_function_level_imports_of_the_package():
    hidden = [f"{m}:{line} imports {t} inside a function" for m, imports in GRAPH.items()
              for t, line, top in imports if not top and (m, t) not in FUNCTION_IMPORTS]
    assert hidden == []
    stale = [k for k in FUNCTION_IMPORTS if not any(t == k[1] and not top for t, _, top in GRAPH.get(k[0], []))]
    assert stale == [], "FUNCTION_IMPORTS lists imports that are gone"


def test_no_import_cycles():
    edges = defaultdict(set)
    for m, imports in GRAPH.items():
        edges[m].update(t for t, _, _ in imports if t != m)
    # Tarjan's strongly connected components; any with more than one module is a circle.
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(MODULES):
        if m not in index:
            visit(m)
    assert cycles == []


@pytest.mark.parametrize("source, expected", [
    ("from coserve_jax.engine import loop\n", [("coserve_jax.engine.loop", 1, True)]),
    ("import coserve_jax.engine.loop as l\n", [("coserve_jax.engine.loop", 1, True)]),
    ("from coserve_jax.engine.loop import EngineLoop\n", [("coserve_jax.engine.loop", 1, True)]),
    ("def f():\n    from coserve_jax.types import Tier\n", [("coserve_jax.types", 2, False)]),
    ("if True:\n    import coserve_jax.types\n", [("coserve_jax.types", 2, True)]),
    ("import numpy\n", []),
])
def test_the_parser_sees_every_form_of_import(source, expected, tmp_path, monkeypatch):
    f = tmp_path / "probe.py"
    f.write_text(source)
    monkeypatch.setitem(MODULES, "coserve_jax.probe", f)
    assert _imports("coserve_jax.probe") == expected
