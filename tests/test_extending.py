"""docs/extending.md's worked example runs: its new analysis module, installed as the page says
(a private module of `analysis/`, its name re-exported by `moe_interp.analysis`), passes its own
docstring example and the test the page shows, and obeys the layering.

The page's module is a ```python block, which tests/test_docs.py also runs on its own; the
test is a ```py block, as it imports the module that only this file installs.
"""

import ast
import doctest
import re
import sys
import types
from pathlib import Path

import pytest

import moe_interp as mi

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
MODULE = "moe_interp.analysis._busiest"


def _section(title: str) -> str:
    text = PAGE.read_text(encoding="utf-8")
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _block(fence: str) -> str:
    (code,) = re.findall(rf"^```{fence}\n(.*?)^```", _section("A new analysis"), re.M | re.S)
    return code


@pytest.fixture
def installed(monkeypatch):
    """The page's module as `moe_interp.analysis._busiest`, and its name in `mi.analysis` (step 2)."""
    module = types.ModuleType(MODULE)
    module.__file__ = str(PAGE)
    exec(compile(_block("python"), f"{PAGE.name} (the module)", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, MODULE, module)
    for name in module.__all__:
        monkeypatch.setattr(mi.analysis, name, getattr(module, name), raising=False)
    return module


def test_the_page_module_passes_its_docstring_example(installed):
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(installed, MODULE, globs=dict(installed.__dict__)) if t.examples]
    for test in tests:
        runner.run(test)
    failed, attempted = runner.summarize(verbose=False)
    assert failed == 0 and attempted > 0


def test_the_page_test_passes(installed, tmp_path):
    # written to a file, as the page says: nnsight reads a `with` block's body from its source
    path = tmp_path / "test_busiest.py"
    path.write_text(_block("py"), encoding="utf-8")
    namespace: dict = {"__name__": "test_busiest"}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    tests = {name: f for name, f in namespace.items() if name.startswith("test_")}
    assert len(tests) == 4
    for test in tests.values():
        test()


def test_the_page_module_is_private_documented_and_imports_only_the_layer_below():
    tree = ast.parse(_block("python"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {m for m in imported if m.startswith("moe_interp")} == {"moe_interp.core._checks",
                                                                   "moe_interp.core._counts"}
    assert MODULE.rpartition(".")[2].startswith("_")
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert [f.name for f in functions] == ["busiest_share"]
    assert ">>>" in ast.get_docstring(functions[0])


def test_the_page_keeps_a_section_for_each_kind_of_extension():
    text = PAGE.read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings == ["A new analysis", "A new edit kind", "A new readout kind", "A new architecture"]
    assert "(tutorials/new_architecture.ipynb)" in text
