"""The moe-interp command: help, one-line errors with exit code 2, profile -> report."""

import subprocess
import sys

import pytest

import moe_interp as mi
from moe_interp.cli import main

SUBCOMMANDS = ["profile", "report", "ablate", "steer", "demo"]


def run(*args):
    return subprocess.run([sys.executable, "-m", "moe_interp.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("sub", [None, *SUBCOMMANDS])
def test_help_of_every_subcommand(sub, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([sub, "--help"] if sub else ["--help"])
    assert exit_.value.code == 0
    assert "usage: moe-interp" in capsys.readouterr().out


@pytest.mark.parametrize("argv, says", [(["profile"], "--out"), (["frobnicate"], "invalid choice"),
                                        (["profile", "--batch-size", "x", "--out", "o"], "invalid int"),
                                        (["report", "does-not-exist"], "not a saved RoutingStats")])
def test_bad_arguments_give_one_clear_line_and_exit_code_2(argv, says):
    result = run(*argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and lines[0].startswith("moe-interp")


def test_profile_then_report_on_a_tiny_model(tmp_path, capsys):
    out = tmp_path / "tiny.routing"
    assert main(["profile", "--model", "tiny:qwen3_moe", "--languages", "eng,deu,fra", "--out", str(out)]) == 0
    stats = mi.RoutingStats.load(out)
    assert stats.languages == ("eng", "deu", "fra") and stats.item_count is not None
    html_path = tmp_path / "report.html"
    assert main(["report", str(out), "--out", str(html_path)]) == 0
    text = html_path.read_text()
    assert text.count("plotly-graph-div") >= 5 and '<script src="http' not in text  # offline: nothing fetched
    assert "Clustering languages" in text or "Family agreement not computed" in text
