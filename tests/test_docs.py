"""The documentation covers the public API and runs: every name of `moe_interp.__all__` has an
API reference entry, every public object's docstring has a doctest (run by `python -m pytest`,
which collects the package with --doctest-modules), and every code block of the docs pages
runs here (tutorials are notebooks, executed by the docs build)."""

import inspect
import linecache
import re
from pathlib import Path

import pytest

import moe_interp as mi

DOCS = Path(__file__).resolve().parent.parent / "docs"
ENTRY = re.compile(r"^:::\s+([\w.]+)\s*$", re.M)


def _entries() -> set[str]:
    return {name for page in (DOCS / "api").glob("*.md") for name in ENTRY.findall(page.read_text())}


def _has_example(doc: str | None) -> bool:
    return bool(doc) and ">>>" in doc  # a doctest: pytest runs it


def _public_objects():
    """`(name, object)` for every class or function of `mi.__all__`, and of the `__all__` of
    every public module listed there."""
    for name in mi.__all__:
        value = getattr(mi, name)
        if inspect.ismodule(value):
            for member in getattr(value, "__all__", ()):
                inner = getattr(value, member)
                if inspect.isclass(inner) or inspect.isfunction(inner):
                    yield f"{name}.{member}", inner
        else:
            yield name, value


def _paths(name: str) -> set[str]:
    """The names an entry may use: `moe_interp.<name>`, or the defining module's path (needed
    where a function shares its module's name, as `moe_interp.trace.trace` does)."""
    value = getattr(mi, name)
    paths = {f"moe_interp.{name}"}
    if not inspect.ismodule(value) and hasattr(value, "__qualname__"):
        paths.add(f"{value.__module__}.{value.__qualname__}")
    return paths


def test_every_public_name_has_an_api_reference_entry():
    entries = _entries()
    missing = [name for name in mi.__all__ if not _paths(name) & entries]
    assert not missing, f"add `::: moe_interp.<name>` to a page in docs/api/ for: {missing}"


def test_api_reference_entries_name_real_objects():
    import importlib

    for entry in _entries():
        module, _, attr = entry.rpartition(".")
        try:
            importlib.import_module(entry)
        except ImportError:
            assert hasattr(importlib.import_module(module), attr), f"docs/api names {entry}, which does not exist"


@pytest.mark.parametrize("name, obj", list(_public_objects()), ids=lambda v: v if isinstance(v, str) else "")
def test_public_docstring_shows_an_example(name, obj):
    assert _has_example(obj.__doc__), f"{name}'s docstring needs a doctest example (>>> lines that run)"


def test_public_modules_have_a_docstring():
    for name in mi.__all__:
        value = getattr(mi, name)
        if inspect.ismodule(value):
            assert (value.__doc__ or "").strip(), f"module moe_interp.{name} needs a docstring"


def test_nav_lists_every_tutorial_and_api_page():
    nav = (DOCS.parent / "mkdocs.yml").read_text()
    pages = [p.relative_to(DOCS).as_posix() for p in [*DOCS.glob("tutorials/*.ipynb"), *DOCS.glob("api/*.md")]]
    assert pages and not [p for p in pages if p not in nav]


def test_tutorial_notebooks_are_committed_without_outputs():
    import json

    for path in DOCS.glob("tutorials/*.ipynb"):
        cells = json.loads(path.read_text())["cells"]
        dirty = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
        assert not dirty, f"{path.name}: clear the outputs of cells {dirty} (they are made at build time)"


# -- no stale references (issue 16, item 8) ------------------------------------------------------

def _families_table():
    import importlib.util

    spec = importlib.util.spec_from_file_location("families_table", DOCS.parent / "scripts" / "families_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_concepts_family_table_is_generated_from_the_adapters_and_the_survey():
    module = _families_table()
    text = (DOCS / "concepts.md").read_text()
    assert module.render(text) == text, "run `python scripts/families_table.py`"
    # what the README survey says, read by hand: granitemoehybrid builds tiny and is exact since issue 27
    # (a hand-written tiny config); a type the survey could not judge would be marked "(not verified: ...)"
    assert "`granitemoehybrid`," in text or "`granitemoehybrid` |" in text
    assert "granitemoehybrid" not in module.survey_unverified()  # docs/api/survey.json
    assert "(not verified" not in text and not module.survey_unverified()  # every MoE type judged
    from moe_interp.arch._families import FAMILIES

    assert all(f"`{t}`" in text for adapter in FAMILIES for t in adapter.model_types)


def test_nothing_cites_a_paper_md_that_is_not_in_the_repository():
    root = DOCS.parent
    assert not (root / "PAPER.md").exists()
    files = [*root.glob("moe_interp/**/*.py"), *root.glob("examples/*.py"), *root.glob("docs/**/*.md"),
             *root.glob("docs/**/*.ipynb"), root / "README.md"]
    stale = [str(p.relative_to(root)) for p in files if "PAPER.md" in p.read_text(encoding="utf-8")]
    assert not stale, f"cite the paper (arXiv 2601.14050) instead of PAPER.md in {stale}"


# -- a quiet docs build (issue 16, item 9) ---------------------------------------------------------

def test_the_docs_build_is_quiet_by_construction():
    hooks = (DOCS / "hooks.py").read_text()
    # transformers' "Loading weights" bar shows as a red stderr box in notebook cells otherwise
    assert 'os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")' in hooks
    pyproject = (DOCS.parent / "pyproject.toml").read_text()
    docs_extra = re.search(r"^docs = \[(.*?)\]", pyproject, re.M | re.S).group(1)
    assert "ruff" in docs_extra  # without black or ruff, mkdocstrings prints a notice per build
    assert "NO_MKDOCS_2_WARNING=1 mkdocs build --strict" in (DOCS / "install.md").read_text()


# -- every code block of the docs pages runs -------------------------------------------------------

BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
# Pages whose blocks cannot run offline, and why (they are checked by hand against NDIF).
NOT_RUN = {"remote.md": "needs an NDIF account, the network and a deployed hub model"}


def _doc_blocks():
    for page in sorted([*DOCS.glob("*.md"), *DOCS.glob("api/*.md")]):
        for i, code in enumerate(BLOCK.findall(page.read_text(encoding="utf-8"))):
            yield page.relative_to(DOCS).as_posix(), i, code


def test_the_home_page_block_is_the_readme_snippet_that_test_readme_runs():
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    home = [code for page, _, code in _doc_blocks() if page == "index.md"]
    assert home == [BLOCK.search(readme).group(1)]


@pytest.mark.parametrize("page, index, code", [b for b in _doc_blocks() if b[0] not in NOT_RUN and b[0] != "index.md"],
                         ids=lambda v: str(v)[:40])
def test_docs_code_block_runs(page, index, code):
    namespace: dict = {}
    filename = f"docs/{page} block {index}"
    # nnsight reads a `with` block's source back by file name: register the block's lines
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    exec(compile(code, filename, "exec"), namespace)


def test_only_the_listed_pages_have_blocks_that_do_not_run():
    pages = {page for page, _, _ in _doc_blocks()}
    assert set(NOT_RUN) <= pages  # a page that lost its blocks leaves the list


def test_the_docs_home_page_links_every_tutorial():
    """docs/index.md linked 5 of the 8 tutorials (issue 26, section 2)."""
    root = Path(__file__).resolve().parents[1]
    index = (root / "docs" / "index.md").read_text()
    missing = [p.name for p in sorted((root / "docs" / "tutorials").glob("*.ipynb"))
               if f"(tutorials/{p.name})" not in index]
    assert missing == []
