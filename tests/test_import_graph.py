"""The import graph of the package: no cycles in tguide.metrics, studies only on top of the library.

Every ``.py`` under ``tguide/`` and ``callbacks/`` (installed as ``tguide.callbacks``) is parsed
with :mod:`ast`; every tguide-internal import is an edge, wherever it sits (module level, inside a
function, ``importlib.import_module("literal")``), except under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"tguide": REPO / "tguide", "tguide.callbacks": REPO / "callbacks"}


def module_files(roots: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under each root (``__init__`` = the package)."""
    out: dict[str, Path] = {}
    for prefix, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("").parts
            if any(not p.isidentifier() for p in rel):
                continue
            parts = rel[:-1] if rel[-1] == "__init__" else rel
            out[".".join((prefix, *parts))] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _nodes(tree: ast.AST) -> Iterable[ast.AST]:
    """Every node, skipping the bodies of ``if TYPE_CHECKING:`` (type-only imports)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _imported_names(name: str, path: Path) -> Iterable[tuple[str, int]]:
    """``(dotted name, line)`` of everything ``name`` (at ``path``) imports, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, node.lineno
            for alias in node.names:
                yield f"{module}.{alias.name}", node.lineno  # kept only if it is a module
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if fname in ("import_module", "__import__"):
                yield node.args[0].value, node.lineno


def import_graph(roots: dict[str, Path]) -> dict[str, dict[str, int]]:
    """``{module: {imported tguide module: line}}`` over the modules under ``roots``."""
    files = module_files(roots)
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        edges: dict[str, int] = {}
        for target, line in _imported_names(name, path):
            if target in files and target != name:
                edges.setdefault(target, line)
            elif target.startswith("tguide.") and target.rpartition(".")[0] in files and \
                    target.rpartition(".")[0] != name:
                # `from pkg import attr`: the edge goes to pkg (its __init__ runs)
                edges.setdefault(target.rpartition(".")[0], line)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]], within: str) -> list[list[str]]:
    """The non-trivial strongly connected components among modules named ``within`` or below it."""
    nodes = [n for n in graph if n == within or n.startswith(within + ".")]
    keep = set(nodes)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in keep:
                continue
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

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def _study(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["tguide", "studies"] else None


def layering_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    """Library modules importing a study, and studies importing other studies."""
    bad = []
    for src, edges in sorted(graph.items()):
        in_studies = src == "tguide.studies" or src.startswith("tguide.studies.")
        for dst, line in sorted(edges.items()):
            if not (dst == "tguide.studies" or dst.startswith("tguide.studies.")):
                continue
            if not in_studies:
                bad.append(f"{src} (line {line}) is library code but imports the study module {dst}")
            elif _study(src) and _study(dst) and _study(src) != _study(dst):
                bad.append(f"{src} (line {line}) imports {dst}, another study")
    return bad


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph(ROOTS)


def _describe(graph: dict[str, dict[str, int]], comp: list[str]) -> str:
    members = set(comp)
    return "; ".join(f"{a} -> {b} (line {line})" for a in comp for b, line in graph[a].items() if b in members)


def test_graph_sees_the_package(graph):
    assert "tguide.metrics.null" in graph and "tguide.callbacks" in graph
    assert "tguide.metrics.functional.otce" in graph["tguide.metrics.null"]


def test_no_cycles_in_metrics(graph):
    found = cycles(graph, "tguide.metrics")
    assert not found, "import cycles in tguide.metrics: " + " | ".join(_describe(graph, c) for c in found)


def test_studies_sit_on_top_of_the_library(graph):
    bad = layering_violations(graph)
    assert not bad, "\n".join(bad)


# ----------------------------------------------------------------------------- the checker itself


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_sees_hidden_cycles_and_layering(tmp_path):
    _write(tmp_path / "tguide", {
        "__init__.py": "",
        "metrics/__init__.py": "from tguide.metrics.a import f\n",
        "metrics/a.py": "def f():\n    from .b import g\n    return g()\n",
        "metrics/b.py": "import importlib\n_a = importlib.import_module('tguide.metrics.a')\ndef g():\n    return 1\n",
        "metrics/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tguide.metrics import a\n",
        "studies/__init__.py": "",
        "studies/one/__init__.py": "",
        "studies/one/run.py": "from tguide.studies.two import run\nfrom tguide.metrics import f\n",
        "studies/two/__init__.py": "",
        "studies/two/run.py": "from tguide.studies.two.helpers import h\n",
        "studies/two/helpers.py": "h = 1\n",
        "probe.py": "from tguide.studies.one.run import x\n",
    })
    g = import_graph({"tguide": tmp_path / "tguide"})
    assert cycles(g, "tguide.metrics") == [["tguide.metrics.a", "tguide.metrics.b"]]
    assert "tguide.metrics.a" not in g["tguide.metrics.c"]  # type-only import
    bad = layering_violations(g)
    assert len(bad) == 3, bad  # one.run -> two and two.run (both run on import); probe -> one.run
    assert sum(b.startswith("tguide.studies.one.run") and "another study" in b for b in bad) == 2
    assert any(b.startswith("tguide.probe") and "library code" in b for b in bad)
    assert not any(b.startswith("tguide.studies.two") for b in bad)  # within one study is fine
