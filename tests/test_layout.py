"""The code's layout stays what docs/architecture.md says: no import circles between modules (outside one
registry's own folder), and tests share helpers through tests/helpers/, never by importing each other."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = ("latent_codec", "edge", "cloud", "training", "bench")
REGISTRY_FOLDERS = (
    "latent_codec/families",
    "training/models",
)  # a registry and its members may import each other


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _top_level_imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """Modules imported at module level (not inside functions: those run later and cannot make a circle at import).

    ``from pkg import sub`` depends on the submodule, not on the package's __init__ (which Python runs first in
    any case), so a name that is a module counts as that module, and only other names as the package."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = {f"{mod}.{a.name}" for a in node.names}
            out |= {m for m in subs if m in modules}
            if any(m not in modules for m in subs):
                out.add(mod)
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "wire" not in p.parts}
    graph = {}
    for name, path in files.items():
        graph[name] = {m for m in _top_level_imports(path, name, set(files)) if m in files and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_outside_a_registrys_own_folder():
    allowed = tuple(f.replace("/", ".") for f in REGISTRY_FOLDERS)
    bad = [c for c in _cycles(_graph()) if not all(m.startswith(allowed) for m in c)]
    assert not bad, f"import circles: {bad}"


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_tests_share_helpers_through_the_helpers_package_not_each_other():
    offenders = []
    for p in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            mod = node.module if isinstance(node, ast.ImportFrom) else None
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if (mod or "").startswith("tests.test_") or any(n.startswith("tests.test_") for n in names):
                offenders.append(str(p.relative_to(ROOT)))
    assert not offenders, offenders
