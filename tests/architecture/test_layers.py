"""The package's shape: layers import downwards only, no import cycles (imports inside functions
included), no module over 600 lines, ``medvlp/train`` names no objective, nothing app-specific in
``medvlp/explain``. These read the source (AST), they import nothing."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "medvlp"
MAX_LINES = 600

# Lower layers never import higher ones. Same-rank packages may import each other only without a
# package-level cycle (checked below).
RANK = {
    "errors": 0, "config": 0, "resources": 0,
    "io": 1, "models": 1, "ontology": 1,
    "domains": 2,
    "data": 3, "demos": 3.5,
    "eval": 4, "objectives": 4,
    "train": 5,
    "explain": 6,
    "api": 7, "": 7,  # "" = medvlp/__init__.py
    "cli": 8, "app": 8, "__main__": 8,
}
OBJECTIVE_WORDS = re.compile(r"\b(siglip|concept|concepts|keep|softclip|clip)\b")


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = ("medvlp",) + p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        mods[name] = p
    return mods


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                for n in ast.walk(sub):
                    skip.add(id(n))
    return skip


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    def resolve(target: str) -> str | None:
        parts = target.split(".")
        while parts:
            name = ".".join(parts)
            if name in mods:
                return name
            parts.pop()
        return None

    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_nodes(tree)
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
            for t in targets:
                if not t.startswith("medvlp"):
                    continue
                r = resolve(t)
                if r and r != name:
                    edges[name].add(r)
                    break
    return edges


def _cycles(edges: dict[str, set[str]], nodes: list[str]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_module_import_cycles():
    mods = _modules()
    cycles = _cycles(_edges(mods), sorted(mods))
    assert not cycles, f"import cycles between modules: {cycles}"


def test_layers_import_downwards_only():
    mods = _modules()
    bad = []
    pkg_edges: dict[str, set[str]] = defaultdict(set)
    for a, targets in _edges(mods).items():
        for b in targets:
            pa, pb = _package(a), _package(b)
            if pa == pb:
                continue
            assert pa in RANK and pb in RANK, f"package not placed in a layer: {pa or pb} (add it to RANK)"
            pkg_edges[pa].add(pb)
            if RANK[pb] > RANK[pa]:
                bad.append(f"{a} -> {b}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))
    cycles = _cycles(pkg_edges, sorted(pkg_edges))
    assert not cycles, f"package-level import cycles: {cycles}"


def test_no_private_names_imported_across_packages():
    mods = _modules()
    bad = []
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medvlp") and not node.level:
                if _package(node.module) != _package(name):
                    bad += [f"{name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not bad, "private names imported across packages:\n" + "\n".join(bad)


def test_no_module_over_600_lines():
    big = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_train_names_no_objective():
    hits = []
    for path in (ROOT / "train").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and OBJECTIVE_WORDS.search(node.value):
                # prose in docstrings/messages may say "objective"; it may not name one
                hits.append(f"{path.name}:{node.lineno}: string {node.value[:60]!r}")
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medvlp.objectives."):
                if node.module.rsplit(".", 1)[1] not in ("base", "distributed"):
                    hits.append(f"{path.name}:{node.lineno}: imports {node.module}")
            elif isinstance(node, ast.Name | ast.arg | ast.Attribute):
                ident = node.id if isinstance(node, ast.Name) else node.arg if isinstance(node, ast.arg) else node.attr
                if re.search(r"(siglip|concept|keep|softclip)", ident, re.I):
                    hits.append(f"{path.name}:{node.lineno}: name {ident}")
    assert not hits, "medvlp/train names objectives:\n" + "\n".join(hits)


def test_explain_has_nothing_app_specific():
    bad = []
    for path in (ROOT / "explain").rglob("*.py"):
        if path.name.startswith("app"):
            bad.append(path.name)
        src = path.read_text()
        if re.search(r"^\s*(import|from)\s+streamlit", src, re.M):
            bad.append(f"{path.name} imports streamlit")
    assert not bad, f"app code under medvlp/explain: {bad}"
