"""The package's import graph points one way: no cycles, plots a leaf, estimators below run I/O.

Imports are read with ``ast`` from every module of ``pyro_vae``, including imports
inside functions and under ``TYPE_CHECKING`` (an annotation is a dependency too).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_vae"
# Modules allowed to import package modules inside functions, and why.
DEFERRED_IMPORTS = {"cli": "each command imports only what it needs, so `pyro-vae --help` and `list` start fast",
                    "__init__": "`import pyro_vae` must not load torch and Pyro before VAE is used"}
MAX_LINES = 450


def module_name(path: Path) -> str:
    return path.stem


def package_imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported pyro_vae module, inside a function?)`` for every import in ``path``."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                if child.level == 1:  # from . import x / from .x import y
                    targets = [child.module] if child.module else [a.name for a in child.names]
                elif child.module and child.module.split(".")[0] == "pyro_vae":
                    rest = child.module.split(".")[1:]
                    targets = rest[:1] if rest else [a.name for a in child.names]
                else:
                    targets = []
                found.extend((t.split(".")[0], nested) for t in targets)
            elif isinstance(child, ast.Import):
                found.extend((a.name.split(".")[1], nested) for a in child.names
                             if a.name.startswith("pyro_vae."))
            visit(child, nested)

    visit(tree, False)
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    return [(m, f) for m, f in found if m in modules and m != path.stem]


def import_graph() -> dict[str, set[str]]:
    return {p.stem: {m for m, _ in package_imports(p)} for p in PACKAGE.glob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    """The checker itself works: it reports a cycle through function-level imports."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_reader_counts_function_level_and_type_checking_imports(tmp_path, monkeypatch):
    (tmp_path / "x.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .y import T\n"
        "def f():\n    from pyro_vae.z import g\n    import pyro_vae.w\n"
    )
    for name in ("y", "z", "w"):
        (tmp_path / f"{name}.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path)
    assert sorted(package_imports(tmp_path / "x.py")) == [("w", True), ("y", False), ("z", True)]


def test_no_import_cycle_among_package_modules():
    graph = import_graph()
    assert len(graph) > 20, "the package was not found"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


@pytest.mark.parametrize("module, forbidden", [
    ("plots", {"train", "evaluate", "runs", "compare", "importance", "ais"}),
    ("evaluate", {"train"}),
    ("compare", {"train"}),
    ("family", {"train", "runs", "evaluate", "cli"}),
    ("adversarial", {"vae", "train", "build", "runs", "evaluate"}),
    ("importance", {"train", "runs", "plots", "evaluate"}),
    ("report", {"train", "runs", "plots", "evaluate", "importance"}),
    ("logjoint", {"vae", "train", "runs", "evaluate", "importance"}),
])
def test_layering(module, forbidden):
    imported = import_graph()[module]
    assert not imported & forbidden, f"{module} imports {sorted(imported & forbidden)}"


def test_function_level_imports_only_defer_heavy_dependencies():
    offenders = {p.stem: sorted({m for m, inside in package_imports(p) if inside})
                 for p in PACKAGE.glob("*.py") if p.stem not in DEFERRED_IMPORTS}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_modules_stay_short():
    long = {p.name: n for p in PACKAGE.glob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
