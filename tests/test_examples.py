"""Every script in examples/ runs as a user would run it (`python examples/<name>.py`), offline, and
prints what it promises (issue 26: the advertised quickstart crashed on a 361-token input)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "examples").glob("*.py"))


def test_every_example_script_is_listed_here():
    assert [p.name for p in SCRIPTS] == ["paper_analysis.py", "quickstart.py"]


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_the_example_runs(script, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = [sys.executable, str(script)] + ([str(tmp_path / "out.html")] if script.name == "paper_analysis.py" else [])
    run = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    if script.name == "quickstart.py":
        lines = run.stdout.splitlines()
        assert lines[0].startswith("qwen3_moe: MoE layers")
        assert any(line.startswith("RoutingStats(languages=[eng, fra, deu, cmn]") for line in lines)
        assert lines[-1].startswith("steered routing of French text: RoutingStats(")
    else:
        assert (tmp_path / "out.html").stat().st_size > 100_000
