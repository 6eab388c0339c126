"""The public surface, in one place: every module of the package is private (a path component
starting with `_`), a layer folder with no names of its own, or listed in `PUBLIC` here.

A new module whose name has no underscore fails `test_every_module_is_private_a_layer_folder_or_public`
until it is listed (and then documented) or renamed. The layers themselves (which folder may import
which) are pinned in tests/test_imports.py; docs/concepts.md ("Layers") shows the same list.
"""

import importlib
import inspect
import re
from pathlib import Path

import pytest

import moe_interp as mi

PACKAGE = Path(mi.__file__).parent
DOCS = PACKAGE.parent / "docs"

# The public modules: each has a docstring and an `__all__` of names that exist and are documented.
PUBLIC = {
    "moe_interp": "`import moe_interp as mi`: the names users and tests rely on",
    "moe_interp.cli": "the `moe-interp` command",
    "moe_interp.tracing": "`mi.trace`, `mi.generate` and their `RoutingTracer`",
    "moe_interp.arch": "describe a model; adapters for new architectures",
    "moe_interp.core.languages": "`mi.languages`",
    "moe_interp.models.zoo": "`mi.zoo`",
    "moe_interp.analysis": "`mi.analysis`",
    "moe_interp.analysis.plots": "`mi.plots`",
    "moe_interp.datasets": "`mi.datasets`",
    "moe_interp.datasets.reference": "the paper's released counts (`mi.datasets.reference_stats`)",
    "moe_interp.experiments": "`mi.experiments`: grids, ablation, steering",
    "moe_interp.experiments.evaluate": "`mi.evaluate`",
    "moe_interp.experiments.report": "self-contained HTML reports",
    "moe_interp.experiments.demo": "the offline demo (`moe-interp demo`)",
}

# Layer folders with no public names of their own: what they hold is private, re-exported by `mi`
# or reached through the public modules inside them.
LAYER_FOLDERS = {"moe_interp.core", "moe_interp.runtime", "moe_interp.models"}

# Public classes and functions whose docstring has no example yet: this list may only shrink.
MISSING_EXAMPLES: set = set()

# Public modules whose names need no API reference page, and why.
NOT_IN_API = {"moe_interp.cli": "a command: `moe-interp --help` and the README document it"}


def _modules() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def _unlisted(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if not _private(m) and m not in PUBLIC and m not in LAYER_FOLDERS)


def test_every_module_is_private_a_layer_folder_or_public():
    assert _unlisted(_modules()) == [], (
        "name the module with a leading underscore (private), or list it in PUBLIC of "
        "tests/test_public_surface.py and in the Layers table of docs/concepts.md")


def test_the_surface_check_finds_a_planted_unlisted_module():
    planted = {"moe_interp.analysis.newthing", "moe_interp.analysis._private", "moe_interp.datasets.__main__",
               "moe_interp.core", "moe_interp.analysis.plots"}
    assert _unlisted(planted) == ["moe_interp.analysis.newthing"]


def test_every_listed_module_exists():
    assert (set(PUBLIC) | LAYER_FOLDERS) - _modules() == set()


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_a_public_module_has_a_docstring_and_an_all_of_names_it_holds(module):
    mod = importlib.import_module(module)
    assert (mod.__doc__ or "").strip(), f"{module} needs a docstring"
    names = getattr(mod, "__all__", None)
    assert names is not None, f"{module} needs an __all__ listing its public names"
    assert [n for n in names if n.startswith("_") or not hasattr(mod, n)] == []


@pytest.mark.parametrize("module", sorted(LAYER_FOLDERS))
def test_a_layer_folder_has_a_docstring_and_no_names_of_its_own(module):
    mod = importlib.import_module(module)
    assert (mod.__doc__ or "").strip(), f"{module} needs a docstring saying what the layer holds"
    assert not hasattr(mod, "__all__")
    own = [n for n, v in vars(mod).items() if not n.startswith("_") and not inspect.ismodule(v)]
    assert own == [], f"{module} defines {own}: a layer folder re-exports nothing (mi does)"


def _public_objects():
    """`(path, object)` for every class and function named in a public module's `__all__`."""
    for module in sorted(PUBLIC):
        mod = importlib.import_module(module)
        for name in mod.__all__:
            value = getattr(mod, name)
            if inspect.isclass(value) or inspect.isfunction(value):
                yield f"{module}.{name}", value


def test_every_public_class_and_function_shows_an_example():
    missing = {path for path, value in _public_objects() if ">>>" not in (value.__doc__ or "")}
    assert missing == MISSING_EXAMPLES, "give these docstrings a doctest example (>>> lines that run)"


ENTRY = re.compile(r"^:::\s+([\w.]+)\s*\n((?:[ \t]+.*\n)*)", re.M)


def _api_entries() -> tuple[set[str], set[str]]:
    """The objects named by `:::` entries of docs/api, and the modules rendered with their members."""
    named, whole = set(), set()
    for page in (DOCS / "api").glob("*.md"):
        for name, options in ENTRY.findall(page.read_text(encoding="utf-8")):
            named.add(name)
            if "members: false" not in options and "members: [" not in options:
                whole.add(name)
    return named, whole


def _resolve(entry: str) -> object:
    """What `::: entry` renders: `moe_interp.plots` is the module `mi.plots`, wherever it lives."""
    parts = entry.split(".")
    value: object = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 2):
        if not hasattr(value, part):
            try:
                importlib.import_module(".".join(parts[:i]))
            except ImportError:
                return None
        value = getattr(value, part, None)
    return value


def _documented_at(entries: tuple[set[str], set[str]], value: object) -> bool:
    named, whole = entries
    for entry in named:
        target = _resolve(entry)
        if target is value:
            return True
        if entry in whole and inspect.ismodule(target) and any(
                getattr(target, n, None) is value for n in getattr(target, "__all__", ())):
            return True
    return False


def test_every_public_class_and_function_has_an_api_reference_entry():
    entries = _api_entries()
    missing = sorted(path for path, value in _public_objects()
                     if path.rpartition(".")[0] not in NOT_IN_API and not _documented_at(entries, value))
    assert missing == [], "add `::: <path>` to a page of docs/api (or the module, rendered with its members)"


def test_the_concepts_page_lists_the_same_public_modules():
    text = (DOCS / "concepts.md").read_text(encoding="utf-8")
    section = text.split("### Layers", 1)[1].split("\n### ", 1)[0]
    column = {row.split("|")[-2] for row in section.splitlines() if row.startswith("| `") or row.startswith("| the")}
    listed = set(re.findall(r"`(moe_interp(?:\.\w+)*)`", "".join(column)))
    assert listed == set(PUBLIC)
