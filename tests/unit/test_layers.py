"""The package's import graph: no cycle, and every import points down the layers.

Layers, top to bottom: the CLI; the stages of the loop; the lake, registry, storage and platform;
the shared light modules. Imports inside functions count too (they are still dependencies).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "rtml"

LAYERS = [
    {"rtml.cli", "rtml.__main__"},
    {"rtml.ingest", "rtml.features", "rtml.train", "rtml.evaluate", "rtml.serve", "rtml.monitor", "rtml.assets",
     "rtml.mitigation"},
    {"rtml.lake", "rtml.tables", "rtml.migration", "rtml.registry", "rtml.storage", "rtml.platform"},
    {"rtml.names", "rtml.reports", "rtml.settings", "rtml.spec", "rtml"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


@functools.cache
def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def _layer(module: str) -> int:
    for i, group in enumerate(LAYERS):
        if any(module == g or module.startswith(g + ".") for g in group if g != "rtml") or module in group:
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def test_there_is_no_import_cycle():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_point_down_the_layers(module: str):
    if module == "rtml.mitigation":  # the pickle path of 0.1 models: re-exports the evaluate module
        return
    mine = _layer(module)
    wrong = [t for t in sorted(_graph()[module]) if _layer(t) < mine and not t.startswith(module + ".")]
    assert wrong == [], f"{module} (layer {mine}) imports higher layers: {wrong}"


def test_a_stage_never_imports_the_cli():
    graph = _graph()
    offenders = {m: sorted(t for t in deps if t.startswith("rtml.cli")) for m, deps in graph.items()
                 if not m.startswith("rtml.cli") and m != "rtml.__main__"}
    assert {m: d for m, d in offenders.items() if d} == {}
