"""The demo's own report, opened in a real headless browser (Debian's chromium): every figure
draws, no console error, nothing wider than the window. CI installs chromium and sets
MOE_INTERP_REQUIRE_CHROMIUM=1, so there a missing browser fails instead of skipping."""

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("MOE_INTERP_REQUIRE_CHROMIUM") == "1"


def _check_html():
    spec = importlib.util.spec_from_file_location("check_html", ROOT / "scripts" / "check_html.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def browser():
    if shutil.which("chromium") is None:
        if REQUIRED:
            pytest.fail("MOE_INTERP_REQUIRE_CHROMIUM=1 but no chromium: apt-get install -y chromium")
        pytest.skip("needs Debian's chromium (apt-get install -y chromium)")
    return _check_html()


def test_the_demo_report_draws_every_figure_in_chromium(browser, tmp_path):
    from moe_interp.experiments.demo import run_demo

    result = run_demo(tmp_path / "report.html", languages=["eng", "deu", "nld", "fin", "ekk", "hun"], quick=True,
                      progress=False, resamples=20)
    page = result.path.read_text()
    figures = page.count("plotly-graph-div")  # a container per figure in the page's source
    checked = browser.check(result.path)
    assert checked["figures"] >= 5 and checked["figures"] == figures
    assert checked["drawn"] == checked["figures"], checked
    assert checked["errors"] == [], checked["errors"]
    assert checked["wide"] == [] and checked["page"] <= checked["width"], checked["wide"]
    # issue 28: the load-and-health and co-activation figures, the trained model beside its twin, with their findings
    assert "<h2>Expert load and health: the trained model beside its random-init twin</h2>" in page
    assert "<h2>Co-activation: which experts a token chooses together</h2>" in page
    assert any("never chosen" in line and "twin" in line for line in result.findings)
    assert any(line.startswith("co-activation: ") for line in result.findings)


def test_the_browser_check_fails_on_a_figure_that_does_not_draw(browser, tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><div class='plotly-graph-div'></div>"
                      "<script>Plotly.newPlot('x')</script></body></html>")
    checked = browser.check(broken)
    assert checked["figures"] == 1 and checked["drawn"] == 0 and checked["errors"]
