"""The dependency rules of docs/architecture.md, checked on the source (no imports run).

Every ``import`` counts, at module level or inside a function, so a cycle cannot hide
behind a late import. A failure names the importing file and line and the rule it breaks.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("testbed", "proxy", "experiments", "benchmarks")

# Highest first: a module may import its own layer and the layers below it, never above.
LAYERS: list[tuple[str, ...]] = [
    ("testbed.cli", "testbed.__main__"),
    ("lablib", "testbed.ui"),
    ("testbed.run",),
    ("testbed.ui.page",),
    ("testbed.mesh.deploy",),
    ("testbed.mesh.pilot",),
    ("testbed.mesh.citadel",),
    ("testbed.mesh.etcd", "testbed.mesh.rules"),
    ("testbed.mesh",),
    ("testbed.faults",),
    ("testbed.compat",),
    ("testbed.net",),
    ("testbed.links", "testbed.topology"),
    ("testbed.apps",),
    ("testbed.shape", "testbed.journal", "testbed.history", "testbed.paths", "testbed.aio", "testbed"),
    ("proxy",),
]


@dataclass(frozen=True)
class Edge:
    src: str          # importing module
    dst: str          # imported module (the longest known module name the import names)
    file: str
    line: int

    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.src} imports {self.dst}"


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in ("experiments", "benchmarks"):
        parts = parts[1:] if len(parts) > 1 and parts[1] == "lablib" else [parts[0], *parts[1:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for top in SOURCES:
        for path in sorted((REPO / top).rglob("*.py")):
            found[module_name(path)] = path
    return found


def _targets(node: ast.Import | ast.ImportFrom, src: str, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = src.split(".")[: len(src.split(".")) - (0 if is_pkg else 1)]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    return [f"{base}.{a.name}" for a in node.names] + [base]


def edges(mods: dict[str, Path] | None = None) -> list[Edge]:
    mods = modules() if mods is None else mods
    out = []
    for src, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            seen = set()
            for t in _targets(node, src, path.name == "__init__.py"):
                while t and t not in mods and not t.startswith("tests"):
                    t = t.rpartition(".")[0]
                if t and t != src and t not in seen:
                    seen.add(t)
                    out.append(Edge(src, t, str(path.relative_to(REPO)), node.lineno))
    return out


def layer(module: str) -> int | None:
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best_len:
                best, best_len = i, len(n)
    return best


def violations(es: list[Edge]) -> list[str]:
    bad = []
    for e in es:
        if e.dst.startswith("tests") and not e.src.startswith("benchmarks"):   # benchmarks are harness too
            bad.append(f"{e.where()}: production code imports a test helper")
            continue
        if e.src.startswith("proxy") and not e.dst.startswith("proxy"):
            bad.append(f"{e.where()}: the sidecar (proxy/) imports only proxy/: it meets the control "
                       "plane through bootstrap config, xDS and SDS")
            continue
        ls, ld = layer(e.src), layer(e.dst)
        if ls is not None and ld is not None and ld < ls:
            bad.append(f"{e.where()}: {LAYERS[ls][0]} (layer {ls}) may not import {LAYERS[ld][0]} "
                       f"(layer {ld}, above it)")
    return bad


def cycles(es: list[Edge]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for e in es:
        graph.setdefault(e.src, set()).add(e.dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:       # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def all_edges() -> list[Edge]:
    return edges()


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in modules() if m.split(".")[0] in ("testbed", "proxy") and layer(m) is None]
    assert not unplaced, f"modules outside every layer of LAYERS: {unplaced}"


def test_dependencies_point_down(all_edges: list[Edge]) -> None:
    bad = violations(all_edges)
    assert not bad, "\n".join(bad)


def test_no_import_cycles(all_edges: list[Edge]) -> None:
    found = cycles(all_edges)
    assert not found, "import cycles (imports inside functions count):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_sidecar_does_not_name_the_testbed() -> None:
    hits = [f"{p.relative_to(REPO)}:{i}" for p in (REPO / "proxy").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if "testbed" in line]
    assert not hits, f"proxy/ mentions testbed: {hits}"


def test_the_rules_catch_an_inverted_import(tmp_path: Path) -> None:
    """The checker itself: an import from the sidecar into the control plane, a core module
    importing the CLI, and a two-module cycle are all reported."""
    fake = {"proxy.server": tmp_path / "s.py", "testbed.mesh.pilot.server": tmp_path / "p.py",
            "testbed.net.network": tmp_path / "n.py", "testbed.cli.app": tmp_path / "c.py"}
    fake["proxy.server"].write_text("from testbed.mesh.pilot.server import Pilot\n")
    fake["testbed.mesh.pilot.server"].write_text("def f():\n    import proxy.server\n")
    fake["testbed.net.network"].write_text("from testbed.cli.app import main\n")
    fake["testbed.cli.app"].write_text("import testbed.net.network\n")
    es = [Edge(e.src, e.dst, e.file.split("/")[-1], e.line) for e in _edges_of(fake)]
    bad = violations(es)
    assert any("proxy.server imports testbed.mesh.pilot.server" in b for b in bad)
    assert any("testbed.net.network imports testbed.cli.app" in b for b in bad)
    assert ["proxy.server", "testbed.mesh.pilot.server"] in cycles(es)


def _edges_of(fake: dict[str, Path]) -> list[Edge]:
    out = []
    for src, path in fake.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in _targets(node, src, False):
                    while t and t not in fake:
                        t = t.rpartition(".")[0]
                    if t and t != src:
                        out.append(Edge(src, t, str(path), node.lineno))
    return out
