"""No import cycle between rlhfkit's modules, function-level imports included.

A cycle hidden inside functions still ties two modules together: neither can be read, moved
or tested without the other, and a top-level import added later turns it into an ImportError.
The modules are found by walking src/rlhfkit, so modules that are added or moved are checked
without editing this test."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "rlhfkit"


def modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is its __init__.py)."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module `name` imports anywhere in its file (top level,
    inside functions, classes or `if` blocks). `from a import b` counts as importing a.b when
    that is a module, else a; a submodule does not count as importing its parent package."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package, one level up per extra dot
                pkg = name.split(".") if is_package else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def graph(src: Path = SRC) -> dict[str, set[str]]:
    mods = modules(src)
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def _explain(g: dict[str, set[str]], comp: list[str]) -> str:
    members = set(comp)
    return "; ".join(f"{m} -> {', '.join(sorted(g[m] & members))}" for m in comp)


def test_the_finder_sees_function_level_relative_and_from_imports(tmp_path):
    """A cycle made of a function-level import, a relative import and `from pkg import module`."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from rlhfkit.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from .b import g\n")
    (pkg / "sub" / "b.py").write_text("import torch\nfrom ..c import h\n")
    (pkg / "c.py").write_text("class C:\n    def m(self):\n        import rlhfkit.a\n")
    (pkg / "d.py").write_text("from rlhfkit import a\n")  # outside the cycle: imports it, not imported
    g = graph(tmp_path)
    assert g["rlhfkit.sub"] == {"rlhfkit.sub.b"} and g["rlhfkit.sub.b"] == {"rlhfkit.c"}
    assert cycles(g) == [["rlhfkit.a", "rlhfkit.c", "rlhfkit.sub.b"]]
    (pkg / "c.py").write_text("")
    assert cycles(graph(tmp_path)) == []


def test_no_import_cycle_between_the_packages_modules():
    if not (SRC / PACKAGE).is_dir():
        pytest.skip("no src/rlhfkit beside tests/")
    g = graph()
    assert len(g) > 20  # the walk found the package
    found = cycles(g)
    assert not found, "import cycles (module -> the members it imports):\n" + "\n".join(_explain(g, c) for c in found)
