"""The package's import graph has no cycle, lazy imports included, and data flows one way."""

import ast
from pathlib import Path

import pytest

import moe_interp as mi

PACKAGE = Path(mi.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules `name` imports anywhere in its body (functions included): a lazy
    import is still an edge of the graph."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from . import x` and `from .pkg import module` name modules; others name attributes
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("moe_interp") and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    for name in modules:  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parent = name.rpartition(".")[0]
        while parent:
            if parent in graph and parent != name:
                graph[name].add(parent)
            parent = parent.rpartition(".")[0]
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _edges_ignoring_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph without the implicit child -> parent-package edges: a package's `__init__`
    importing its own submodules is how re-exports work, not a cycle of the code."""
    return {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}


def test_the_package_has_no_import_cycle():
    cycle = _cycle(_edges_ignoring_parents(_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_lazy_imports_are_edges(tmp_path):
    source = "def f():\n    from .analysis._stats import RoutingStats\n"
    (tmp_path / "x.py").write_text(source)
    modules = {"moe_interp.x": tmp_path / "x.py", "moe_interp.analysis._stats": PACKAGE / "analysis" / "_stats.py"}
    assert _imports("moe_interp.x", tmp_path / "x.py", modules) == {"moe_interp.analysis._stats"}


# Data flows one way (DESIGN.md): the folders are the layers, bottom first; a module imports
# only from its own layer and the layers below it.
LAYERS = [
    ("core", ["moe_interp.core"]),
    ("arch", ["moe_interp.arch"]),
    ("runtime", ["moe_interp.runtime"]),
    ("models", ["moe_interp.models"]),
    ("analysis", ["moe_interp.analysis"]),
    ("tracing", ["moe_interp.tracing"]),
    ("datasets", ["moe_interp.datasets"]),
    ("experiments", ["moe_interp.experiments"]),
    ("face", ["moe_interp", "moe_interp.cli"]),
]


def _layer(module: str) -> int:
    """The index in LAYERS of the layer holding `module` (the longest prefix that names it)."""
    best, found = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{module} is in no layer of tests/test_imports.py LAYERS: add it"
    return found


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{name} ({LAYERS[_layer(name)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
                  for name, targets in graph.items() for target in targets
                  if _layer(target) > _layer(name))


def test_every_module_lives_in_a_layer_and_imports_only_its_own_and_lower_layers():
    graph = _edges_ignoring_parents(_graph())
    assert _upward(graph) == []


def test_the_layer_check_finds_a_planted_upward_import():
    graph = {"moe_interp.runtime._kernels": {"moe_interp.analysis._stats"}, "moe_interp.analysis._stats": set()}
    assert _upward(graph) == ["moe_interp.runtime._kernels (runtime) imports moe_interp.analysis._stats (analysis)"]


def test_the_root_holds_only_the_face_and_the_layer_folders():
    assert sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()) == [
        "__init__.py", "analysis", "arch", "cli.py", "core", "datasets", "experiments", "models", "runtime",
        "tracing.py"]


# Within the foundation, too: nothing below imports from above.
BELOW = {
    "moe_interp.core._layers": {"moe_interp.core._checks"},
    "moe_interp.core._checks": set(),
    "moe_interp.core._files": set(),
    "moe_interp.core.languages": set(),
    "moe_interp.core._counts": {"moe_interp.core._layers", "moe_interp.core._checks", "moe_interp.core._files",
                                "moe_interp.core.languages"},  # the repr says languages when the labels are
}


@pytest.mark.parametrize("module", sorted(BELOW))
def test_foundation_modules_import_only_what_is_below_them(module):
    graph = _graph()
    assert graph[module] - {"moe_interp", "moe_interp.core"} <= BELOW[module]


def test_the_runtime_never_reaches_the_analyses():
    """A trace returns counts; `RoutingStats` (analysis, plots, plotly, pandas) is the face's."""
    graph = _edges_ignoring_parents(_graph())
    seen, todo = set(), [m for m in graph if m.startswith("moe_interp.runtime")]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    assert not any(m.startswith("moe_interp.analysis") for m in seen)


@pytest.mark.parametrize("module", ["moe_interp.analysis", "moe_interp.analysis.plots", "moe_interp.core._counts"])
def test_analysis_and_plots_never_reach_the_user_facing_stats(module):
    graph = _edges_ignoring_parents(_graph())
    seen, todo = set(), [module] + [m for m in graph if m.startswith(module + ".") and m != "moe_interp.analysis._stats"]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    assert "moe_interp.analysis._stats" not in seen
    assert "moe_interp.datasets" not in seen  # family metadata comes from moe_interp.core.languages


def test_languages_and_layers_import_nothing_above():
    graph = _graph()
    assert graph["moe_interp.core.languages"] - {"moe_interp", "moe_interp.core"} == set()


@pytest.mark.parametrize("module", ["moe_interp", "moe_interp.analysis", "moe_interp.datasets", "moe_interp.core.languages",
                                    "moe_interp.analysis.plots"])
def test_public_names_are_sorted_and_exist(module):
    import importlib

    mod = importlib.import_module(module)
    # isort style, as ruff's RUF022: CONSTANTS, then Classes, then functions and modules
    assert mod.__all__ == sorted(mod.__all__, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))
    assert [name for name in mod.__all__ if not hasattr(mod, name)] == []


def test_public_modules_do_not_hide_each_other():
    """`mi.trace` is the function; no public module name is shadowed by an attribute of the package."""
    shadowed = [name for name in _modules() if name.count(".") == 1 and not name.split(".")[1].startswith("_")
                and not isinstance(getattr(mi, name.split(".")[1], None), type(mi))
                and hasattr(mi, name.split(".")[1])]
    assert shadowed == []


def _private_imports(name: str, path: Path, modules: dict[str, Path]) -> set[tuple[str, str]]:
    """(module, name) of every underscore name `name` imports from another module of the package:
    private modules themselves (`from . import _claims`) are the package's layout, not names;
    a package's `__init__` may re-export from its own submodules."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        if not base.startswith("moe_interp") or base == name:
            continue
        if path.name == "__init__.py" and base.startswith(name + "."):
            continue
        found |= {(base, alias.name) for alias in node.names
                  if alias.name.startswith("_") and f"{base}.{alias.name}" not in modules}
    return found


# Today's private names that cross a module: this list may only shrink.
PRIVATE_IMPORTS = {
    "moe_interp.datasets.__main__": {("moe_interp.datasets._udhr", "_markdown")},
}


def test_no_private_name_crosses_a_module_beyond_the_listed_ones():
    modules = _modules()
    found = {name: imports for name, path in modules.items() if (imports := _private_imports(name, path, modules))}
    assert found == PRIVATE_IMPORTS


def test_the_private_import_finder_finds_a_planted_one(tmp_path):
    (tmp_path / "x.py").write_text("from .core._counts import _check_count, RoutingCounts\n"
                                   "from .experiments import _claims\n")
    modules = {"moe_interp.x": tmp_path / "x.py", "moe_interp.core._counts": PACKAGE / "core" / "_counts.py",
               "moe_interp.experiments._claims": PACKAGE / "experiments" / "_claims.py"}
    assert _private_imports("moe_interp.x", tmp_path / "x.py", modules) == {("moe_interp.core._counts", "_check_count")}
