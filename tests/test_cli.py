"""The moe-interp command: help, one-line errors with exit code 2, profile -> report."""

import os
import subprocess
import sys

import pytest
import torch

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


# -- bad input fails early; results keyed by content (issue 12, sections 2 and 4) -------------

def _stats(shared):
    """8-expert, 4-layer stats over eng/deu/fra in which eng and deu share the experts `shared`."""
    count = torch.zeros(3, 4, 8, dtype=torch.long)
    others = [e for e in range(8) if e not in shared]
    count[0, :, shared] = count[1, :, shared] = 10
    count[2, :, others] = 10
    return mi.RoutingStats(("eng", "deu", "fra"), (0, 1, 2, 3), 8, 2, count, count.double(), count.sum((1, 2)) // 2)


def test_steer_twice_with_other_stats_and_the_default_out_recomputes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a, b = _stats([0, 1, 2, 3]).save(tmp_path / "a.routing"), _stats([4, 5, 6, 7]).save(tmp_path / "b.routing")
    argv = ["steer", "--model", "tiny:qwen3_moe", "--languages", "deu", "--scales", "50"]
    assert main([*argv, "--stats", str(a)]) == 0
    with_a = capsys.readouterr().out
    cells = tmp_path / "steering.jsonl"
    assert len(cells.read_text().splitlines()) == 4  # dev and test: baseline and steered
    assert main([*argv, "--stats", str(b)]) == 0
    with_b = capsys.readouterr().out
    # the steered cells ran again with B (the repr of both steers is alike); the baselines did not
    assert len(cells.read_text().splitlines()) == 6 and with_b != with_a


def test_steer_with_k_beyond_the_experts_fails_before_computing_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    stats = _stats([0, 1]).save(tmp_path / "a.routing")
    with pytest.raises(SystemExit) as exit_:
        main(["steer", "--model", "tiny:qwen3_moe", "--stats", str(stats), "--languages", "deu", "--k", "20"])
    assert exit_.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "--k" in message and "8 experts" in message
    assert not (tmp_path / "steering.jsonl").exists()


def test_profile_to_an_existing_out_fails_before_profiling_and_names_the_flag(tmp_path, monkeypatch, capsys):
    out = tmp_path / "old.routing"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")

    def profile(*args, **kwargs):
        raise AssertionError("profiled although --out exists")
    monkeypatch.setattr(mi, "profile", profile)
    with pytest.raises(SystemExit) as exit_:
        main(["profile", "--model", "tiny:qwen3_moe", "--languages", "eng", "--out", str(out)])
    assert exit_.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "--overwrite" in message and "overwrite=True" not in message
    assert str(out) in message and (out / "keep.txt").read_text() == "earlier results"


def test_profile_with_overwrite_replaces_an_existing_out(tmp_path):
    out = tmp_path / "old.routing"
    _stats([0]).save(out)
    assert main(["profile", "--model", "tiny:qwen3_moe", "--languages", "eng", "--out", str(out), "--overwrite"]) == 0
    assert mi.RoutingStats.load(out).languages == ("eng",)


def test_a_missing_model_directory_is_one_line(tmp_path):
    missing = tmp_path / "no-such-model"
    result = subprocess.run([sys.executable, "-m", "moe_interp.cli", "profile", "--model", str(missing), "--out",
                             str(tmp_path / "out.routing")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "--model" in lines[0], result.stderr
