"""The import graph of ``src/latkit``, read from the source (``ast``, every import: module level and
inside functions alike, since a lazy import is still a dependency): no import circle between
modules, and no package importing one on a higher floor.

The floors, bottom to top (a package may import its own floor's packages and anything below):

0. ``latkit`` (the version), ``errors`` (``LatkitError``), ``config`` (the strict config base and its
   error formatter), ``testing`` (tiny random models), ``provenance``, ``cliutil``: import nothing of
   latkit but the version.
1. ``models``: loading, chat templates, the block adapter, block hooks, likelihood scoring, saving.
2. ``data``: loaders, schemas, collators, text corpora, the index stream.
3. ``objectives``: losses over logits and activations.
4. ``adversary``: the latent adversary (δ, its constraint, its hooks), which minimises an objective.
5. ``attacks``: input- and latent-space attacks on a trained model (GCG, prefill, refusal direction …).
6. ``train``: recipes, the trainer and its tasks (R2D2 runs the GCG attack in the loop).
7. ``judges``: what counts as a refusal / a success.
8. ``evaluation``: suites of attacks scored by judges, utility, reports.
9. ``unlearning``, ``backdoor``, ``analysis``, ``classifiers``: studies built on all of the above; ``sweep``:
   grids of training runs, each evaluated, on robustness against utility.
10. ``cli``: the ``latkit`` command.

A new package must be given a floor here (the test says so), which is the point: where it sits
is a decision, not an accident.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "latkit"

FLOORS: list[set[str]] = [
    {"latkit", "errors", "config", "testing", "provenance", "cliutil"},
    {"models"},
    {"data"},
    {"objectives"},
    {"adversary"},
    {"attacks"},
    {"train"},
    {"judges"},
    {"evaluation"},
    {"unlearning", "backdoor", "analysis", "classifiers", "sweep"},
    {"cli"},
]
FLOOR = {pkg: i for i, floor in enumerate(FLOORS) for pkg in floor}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The latkit modules ``name`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import latkit.a.b.c` where c is a name: the module is a.b
                t = t.rpartition(".")[0]
            if t and t.split(".")[0] == "latkit" and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "latkit"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    graph = _graph()
    assert "latkit.train.trainer" in graph and "latkit.errors" in graph
    # a known edge of each kind: top-level, from-import of a submodule, lazy (inside a function)
    assert "latkit.adversary.latent" in graph["latkit.train.trainer"]
    assert "latkit.adversary.config" in graph["latkit.adversary"]


def test_every_package_has_a_floor():
    missing = sorted({_package(m) for m in _modules()} - set(FLOOR))
    assert not missing, f"give these packages a floor in FLOORS (tests/test_import_graph.py): {missing}"


def test_no_import_circle():
    cycles = _cycles(_graph())
    assert not cycles, "import circles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_upward_import():
    graph = _graph()
    up = sorted(f"{m} -> {d} (floor {FLOOR[_package(m)]} imports floor {FLOOR[_package(d)]})"
                for m, deps in graph.items() for d in deps
                if _package(m) in FLOOR and _package(d) in FLOOR and FLOOR[_package(d)] > FLOOR[_package(m)])
    assert not up, "upward imports:\n" + "\n".join(up)


def test_errors_import_nothing_of_latkit():
    """The error base is the bottom floor: every package can raise a LatkitError without import costs."""
    assert _graph()["latkit.errors"] == set()


@pytest.mark.parametrize("edges, expect", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
])
def test_cycle_finder(edges, expect):
    assert _cycles(edges) == expect
