"""What a release carries: one version, typed, the tested-versions table true to its sources."""

import re
import tomllib
from pathlib import Path

import moe_interp as mi
from moe_interp.runtime._nnsight_compat import CHECKED_WITH

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _table() -> dict[str, tuple[str, str]]:
    text = (ROOT / "docs" / "install.md").read_text()
    block = text[text.index("<!-- tested versions"):text.index("<!-- end of tested versions -->")]
    rows = re.findall(r"^\| (\w+) \| ([\d.]+) \| ([\d.]+) \|$", block, re.M)
    return {name: (low, high) for name, low, high in rows}


def test_the_version_is_written_once():
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "moe_interp.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", mi.__version__)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {mi.__version__}" in changelog


def test_the_package_is_typed_and_ships_its_marker():
    assert (Path(mi.__file__).parent / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["moe_interp"]
    assert "Typing :: Typed" in PYPROJECT["project"]["classifiers"]


def test_the_tested_versions_table_gives_the_declared_lower_bounds():
    table = _table()
    for name in ("torch", "transformers", "nnsight"):
        spec = next(d for d in PYPROJECT["project"]["dependencies"] if re.match(rf"{name}\b", d))
        assert table[name][0] == re.search(r">=\s*([\d.]+)", spec)[1], name


def test_the_tested_versions_table_gives_the_recorded_newest():
    table = _table()
    record = (ROOT / "docs" / "conformance.md").read_text()
    recorded = dict(re.findall(r"(torch|transformers|nnsight) ([\d.]+)", record[record.index("Recorded on"):][:200]))
    assert {name: table[name][1] for name in recorded} == recorded
    assert table["nnsight"][1] == CHECKED_WITH


def test_the_python_classifiers_name_only_the_tested_pythons():
    table = _table()
    versions = [c.rsplit(" :: ", 1)[1] for c in PYPROJECT["project"]["classifiers"]
                if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert versions == sorted(set(table["Python"]), key=lambda v: tuple(map(int, v.split("."))))


def test_the_lowest_tested_python_is_the_one_pyproject_requires():
    # 3.10 was declared once, while transformers >= 5.21 (our lower bound) requires 3.11: pip on 3.10 finds no
    # transformers that satisfies the pin, so the declaration promised an install that cannot happen
    assert PYPROJECT["project"]["requires-python"] == f">={_table()['Python'][0]}"
