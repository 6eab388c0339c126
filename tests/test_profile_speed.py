"""`benchmarks/profile_speed.py --smoke`: the profile-speed benchmark runs as a user would run it
(a subprocess), finds the three profiles' tables bitwise equal (hooks stopping early, hooks to the
end, traces) and the tokens counted equal to the plain forward's, per batch too, finds the early
reads stopped and the others not, and writes nothing (no time is asserted: tests assert behaviour)."""

import os
import subprocess
import sys

from conftest import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "profile_speed.py")
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")


def test_the_smoke_run_reports_equal_tables_and_tokens_and_writes_nothing():
    with open(RESULTS, "rb") as f:
        before = f.read()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, SCRIPT, "--smoke"], capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "gave bitwise equal tables" in run.stdout and "(the same)" in run.stdout
    assert "stopped at model.layers.7.mlp.experts:" in run.stdout
    for row in ("`mi.profile` (the default: batches read by torch hooks, each forward stopped after the last router "
                "read)", "`mi.profile`, batches read by torch hooks, every forward to its end",
                "the batches alone, read by torch hooks, stopped after the last read",
                "the batches alone, read by torch hooks, forward to its end"):
        assert f"| {row} | **" in run.stdout
    assert "Target (>= 0.97), decided on CPU time" in run.stdout
    with open(RESULTS, "rb") as f:
        assert f.read() == before


def test_the_verdict_rule_reads_the_medians_interval_against_the_target():
    script = load_script(SCRIPT, "profile_speed_benchmark")
    assert script.TARGET == 0.97
    assert script.verdict([0.99, 1.0, 1.01, 0.98, 1.02] * 5).startswith("met")
    assert script.verdict([0.90, 0.91, 0.92, 0.93, 0.94] * 5).startswith("missed")
    assert script.verdict([0.95, 0.96, 0.97, 0.98, 0.99] * 5).startswith("not decided")
    low, high = script.median_interval([1.0] * 9)
    assert low == high == 1.0
