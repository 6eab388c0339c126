"""The moe-interp command: help, one-line errors with exit code 2, profile -> report."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

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
                                        (["report", "does-not-exist"], "not a saved RoutingStats"),
                                        (["steer", "--stats", "s", "--languages", "deu", "--replicates", "100"],
                                         "--replicates is named --resamples now")])
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
    assert "adjusted Rand index" in text or "Family agreement not computed" in text


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


# -- a newcomer's first hour (issue 16) ----------------------------------------------------------

def _subparsers():
    from moe_interp.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_every_option_has_help_and_every_subcommand_a_description_and_an_example(sub):
    parser = _subparsers()[sub]
    assert len(parser.description) > 60 and "example:" in parser.epilog and f"moe-interp {sub}" in parser.epilog
    for action in parser._actions:
        assert action.help, f"{sub} {action.option_strings or action.dest} has no help text"


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["steer", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: eng)", "(default: 0,0.02,0.05,0.1,0.2)", "(default: 0.7)", "(default: demo)",
                    "(default: steering.jsonl)", "(default: auto)", "paper's 20 of 128 experts scaled to the model"):
        assert default in text


@pytest.mark.parametrize("argv, names", [
    (["demo", "--languages", "eng,ger,fra"], ["'ger'", "deu (German"]),
    (["demo", "--languages", "ger"], ["'ger'", "deu (German"]),
    (["profile", "--languages", "en", "--out", "x.routing"], ["'en'", "did you mean eng (English)?"]),
    (["demo", "--languages", ","], ["--languages is empty"]),
    (["demo", "--languages", "eng,eng"], ["eng more than once"]),
])
def test_unknown_or_empty_language_codes_fail_naming_the_code_meant(argv, names, tmp_path):
    result = subprocess.run([sys.executable, "-m", "moe_interp.cli", *argv], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("moe-interp: error: --languages") and all(n in line for n in names), line
    assert "ven" not in line and len(line) < 200  # not the 312 codes, nor spelling neighbours of 'en'
    assert not (tmp_path / "report.html").exists()


def test_ablate_with_an_iso_639_1_target_names_the_639_3_code(tmp_path, capsys):
    stats = _stats([0, 1]).save(tmp_path / "a.routing")
    with pytest.raises(SystemExit) as exit_:
        main(["ablate", "--model", "tiny:qwen3_moe", "--stats", str(stats), "--eval-languages", "eng,deu",
              "--target-languages", "en", "--out", str(tmp_path / "ablation.jsonl")])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--target-languages: 'en'" in line and "did you mean eng (English)?" in line
    assert not (tmp_path / "ablation.jsonl").exists()


@pytest.mark.parametrize("model", ["demo", *(f"tiny:{a}" for a in mi.zoo.TINY_ARCHITECTURES)])
def test_steer_with_default_arguments_runs_on_the_demo_and_every_zoo_model(model, tmp_path, monkeypatch, capsys):
    import moe_interp.cli as cli

    monkeypatch.chdir(tmp_path)
    full = cli._corpus  # every default argument as is; only fewer, shorter texts, for time
    monkeypatch.setattr(cli, "_corpus", lambda *a: {l: [t[:200] for t in texts[:3]] for l, texts in full(*a).items()})
    assert main(["profile", "--model", model, "--languages", "eng,deu", "--out", "p.routing"]) == 0
    assert main(["steer", "--model", model, "--stats", "p.routing", "--languages", "deu"]) == 0
    out = capsys.readouterr()
    assert "scale" in out.out and "deu: gain" in out.out
    experts = mi.RoutingStats.load("p.routing").num_experts
    assert f"with k={ {32: 5, 16: 3, 8: 2}[experts] };" in out.err  # 20 of 128 experts scaled, at least top-2


def test_threads_follow_the_environment_or_the_flag(monkeypatch):
    from moe_interp.experiments.demo import choose_threads

    monkeypatch.setenv("TORCH_NUM_THREADS", "3")
    assert choose_threads() == (3, "TORCH_NUM_THREADS=3")
    monkeypatch.delenv("TORCH_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr("moe_interp.core._threads._cgroup_cpus", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 1.0, 1.0))
    threads, why = choose_threads()
    assert threads == 1 and "4 CPUs, load average 2.6" in why  # round(4 - 2.6)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert choose_threads()[0] == 4
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert choose_threads()[0] == 1  # never 0
    torch_threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit):
            main(["report", "--threads", "0", "x"])
        main(["report", "--threads", "2", "--out", "/dev/null", str(_stats([0]).save(Path(tempfile.mkdtemp()) / "s"))])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(torch_threads)


# -- every verdict carries its evidence; select on train, evaluate held out (issue 13) ---------

def _short_corpus(monkeypatch):
    import moe_interp.cli as cli

    full = cli._corpus  # the defaults as they are; fewer, shorter texts, for time
    monkeypatch.setattr(cli, "_corpus", lambda *a: {l: [t[:120] for t in texts[:4]] for l, texts in full(*a).items()})


def test_ablate_after_a_default_profile_prints_intervals_controls_and_verdicts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _short_corpus(monkeypatch)
    assert main(["profile", "--model", "tiny:qwen3_moe", "--languages", "eng,deu,fin", "--out", "p.routing"]) == 0
    capsys.readouterr()
    assert main(["ablate", "--model", "tiny:qwen3_moe", "--stats", "p.routing", "--eval-languages", "eng,deu,fin",
                 "--target-languages", "eng,fin", "--k", "4", "--resamples", "200"]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert lines[0].startswith("Ablation of each language's exclusive experts (exclusive among the 3 profiled "
                               "languages); bands: early-third")
    assert "Random sets: 20 draws per cell" in lines[1] and lines[2].startswith("Verdicts: ")
    cells = lines[3:]
    assert [line.split(" (")[0] for line in cells] == ["eng"] * 3 + ["fin"] * 3     # one line per band
    assert "same family (deu)" in cells[0] and "no same-family language evaluated" in cells[3]
    for line in cells:
        assert "random sets" in line and "own - other families" in line and "[" in line
        assert line.endswith(("language-specific", "family-level", "not specific", "no effect",
                              "specific, no relative evaluated", "nothing to ablate"))
    assert "20 usage-matched random control sets" in out.err and "held-out split" in out.err


def test_ablate_on_the_texts_the_stats_were_profiled_on_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _short_corpus(monkeypatch)
    assert main(["profile", "--model", "tiny:qwen3_moe", "--languages", "eng,deu", "--split", "heldout",
                 "--out", "p.routing"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["ablate", "--model", "tiny:qwen3_moe", "--stats", "p.routing", "--eval-languages", "eng,deu",
              "--target-languages", "deu", "--k", "4"])
    assert exit_.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the line saying what runs
    assert line.startswith("moe-interp: error: the statistics were profiled on the same eng, deu texts")
    assert "split='train'" in line
    assert not (tmp_path / "ablation.jsonl").exists()


def test_steer_prints_the_dose_response_next_to_the_outcome(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _short_corpus(monkeypatch)
    assert main(["profile", "--model", "tiny:qwen3_moe", "--languages", "eng,deu", "--out", "p.routing"]) == 0
    assert main(["steer", "--model", "tiny:qwen3_moe", "--stats", "p.routing", "--languages", "deu", "--scales",
                 "0,2", "--k", "4", "--resamples", "200"]) == 0
    text = capsys.readouterr().out
    assert "dose-response on the test split" in text and "scale 0.0: 0.0% of top-k sets changed" in text
    assert "no effect: routing did not move" in text and "scale 2.0:" in text
