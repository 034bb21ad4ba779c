"""The package's import graph points one way: subpackages import only downward, with no cycle.

Imports are read with ``ast`` from every module of ``pyro_vae``, including imports
inside functions and under ``TYPE_CHECKING`` (an annotation is a dependency too).
The layers, bottom up, are :data:`LAYERS`; ``docs/layout.md`` explains each.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_vae"
# Bottom up: a module may import from its own layer and the layers below it, never above.
LAYERS = ("core", "data", "models", "objectives", "results", "estimators", "baselines", "plots", "runs", "jobs", "cli")
# Modules allowed to import package modules inside functions, and why.
DEFERRED_IMPORTS = {
    "pyro_vae.cli": "each command imports only what it needs, so `pyro-vae --help` and `list` start fast",
    "pyro_vae": "`import pyro_vae` must not load torch and Pyro before a name of the public API is used",
}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, package): p for p in package.rglob("*.py")}


def package_imports(path: Path, package: Path = PACKAGE) -> list[tuple[str, bool]]:
    """``(imported pyro_vae module, inside a function?)`` for every import in ``path``.

    ``from pyro_vae.x import y`` counts as importing ``pyro_vae.x.y`` when that is a
    module, else ``pyro_vae.x``; relative imports are resolved against ``path``.
    """
    modules = package_modules(package)
    here = module_name(path, package)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool]] = []

    def resolve(node: ast.ImportFrom) -> str | None:
        if node.level == 0:
            return node.module
        base = here.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                source = resolve(child)
                if source and source.split(".")[0] == package.name:
                    for alias in child.names:
                        candidate = f"{source}.{alias.name}"
                        found.append((candidate if candidate in modules else source, nested))
            elif isinstance(child, ast.Import):
                found.extend((a.name, nested) for a in child.names if a.name.split(".")[0] == package.name)
            visit(child, nested)

    visit(tree, False)
    return [(m, f) for m, f in found if m in modules and m != here]


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    return {name: {m for m, _ in package_imports(p, package)} for name, p in package_modules(package).items()}


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of ``pyro_vae.<layer>...``; ``None`` for the package itself."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else None


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


def defined_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def exported_names(tree: ast.Module) -> list[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return [e.value for e in node.value.elts]
    return []


# --- the checker itself -----------------------------------------------------------------


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_reader_resolves_relative_function_level_and_type_checking_imports(tmp_path):
    package = tmp_path / "pyro_vae"
    (package / "models").mkdir(parents=True)
    (package / "core").mkdir()
    for f in ("__init__.py", "models/__init__.py", "core/__init__.py", "core/ops.py", "core/stats.py", "models/w.py"):
        (package / f).write_text("")
    (package / "models" / "x.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..core.ops import T\n"
        "def f():\n    from pyro_vae.core import stats\n    import pyro_vae.models.w\n"
    )
    found = package_imports(package / "models" / "x.py", package)
    assert sorted(found) == [("pyro_vae.core.ops", False), ("pyro_vae.core.stats", True), ("pyro_vae.models.w", True)]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"importer -> imported"`` for every import that runs back up :data:`LAYERS`."""
    upward = []
    for module, imported in graph.items():
        here = layer_of(module)
        if here is None:  # the package's __init__: the public API, above everything
            continue
        upward += [f"{module} -> {m}" for m in sorted(imported) if layer_of(m) is not None and layer_of(m) > here]
    return upward


def test_layer_rule_catches_a_planted_upward_import():
    planted = {"pyro_vae.models.vae": {"pyro_vae.runs.config", "pyro_vae.core.ops"}, "pyro_vae.runs.config": set(),
               "pyro_vae": {"pyro_vae.jobs.train"}}
    assert upward_imports(planted) == ["pyro_vae.models.vae -> pyro_vae.runs.config"]


# --- the package ----------------------------------------------------------------------------


def test_every_module_lives_in_a_declared_layer():
    modules = package_modules()
    assert len(modules) > 30, "the package was not found"
    stray = sorted(m for m in modules if m != "pyro_vae" and m.split(".")[1] not in LAYERS)
    assert not stray, f"modules outside the layers {LAYERS}: {stray}"


def test_no_import_cycle_among_package_modules():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_subpackages_import_only_downward():
    upward = upward_imports(import_graph())
    assert not upward, "imports running back up the layers:\n" + "\n".join(upward)


def test_function_level_imports_only_defer_heavy_dependencies():
    offenders = {}
    for module, path in package_modules().items():
        if module in DEFERRED_IMPORTS:
            continue
        inside = sorted({m for m, nested in package_imports(path) if nested})
        if inside:
            offenders[module] = inside
    assert not offenders, offenders


def test_no_module_reexports_a_name_defined_elsewhere():
    """``__all__`` of every module (``__init__`` files excepted) names only what the module defines."""
    offenders = {}
    for module, path in package_modules().items():
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        foreign = sorted(set(exported_names(tree)) - defined_names(tree))
        if foreign:
            offenders[module] = foreign
    assert not offenders, f"re-exported names (import them from their home instead): {offenders}"


def test_exported_functions_and_classes_are_defined_where_exported():
    """Imported and asked for its ``__all__``, every module's functions and classes name it as their home."""
    import importlib

    elsewhere = {}
    for module, path in package_modules().items():
        if path.name == "__init__.py" or module == "pyro_vae.cli":
            continue
        mod = importlib.import_module(module)
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name)
            home = getattr(obj, "__module__", module) if callable(obj) else module
            if home.startswith("pyro_vae") and home != module:
                elsewhere[f"{module}.{name}"] = home
    assert not elsewhere, elsewhere


def test_public_api_resolves_to_each_name_home():
    import pyro_vae

    assert pyro_vae.__all__, "the public API is empty"
    for name in pyro_vae.__all__:
        obj = getattr(pyro_vae, name)
        if name.startswith("__"):
            continue
        home = getattr(obj, "__module__", None)
        assert home and home.startswith("pyro_vae."), (name, home)


@pytest.mark.parametrize("module", ["pyro_vae.models.vae", "pyro_vae.models.target", "pyro_vae.estimators.ais"])
def test_models_and_estimators_know_nothing_of_runs(module):
    imported = import_graph()[module]
    assert not {m for m in imported if m.split(".")[1] in ("runs", "jobs", "plots")}, imported
