"""`benchmarks/co_activation.py`: its smoke run works as a user would run it (a subprocess: the two
traces' counts bitwise equal, both clocks reported with a verdict, nothing written), and its
verdict is worded by the rule its docstring states (no time is asserted: tests assert behaviour)."""

import os
import subprocess
import sys

from conftest import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "co_activation.py")
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")


def _module():
    return load_script(SCRIPT, "co_activation_benchmark")


def test_the_verdict_is_decided_by_the_median_s_interval_against_two_percent():
    bench = _module()
    assert bench.verdict(0.99, 1.02) == "within 2%"
    assert bench.verdict(1.021, 1.05) == "more than 2%"
    assert bench.verdict(1.00, 1.03).startswith("undecided")
    low, high = bench.median_interval([1.0] * 5 + [3.0] * 5, resamples=2000)
    assert (low, high) == (1.0, 3.0)  # the median of 10 resampled values moves between the two
    assert bench.median_interval([1.01] * 7) == (1.01, 1.01)


def test_the_smoke_run_reports_both_clocks_and_writes_nothing():
    with open(RESULTS, "rb") as f:
        before = f.read()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, SCRIPT, "--smoke"], capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()[-2:]
    assert [line.split(":")[0] for line in lines] == ["CPU time", "wall time"]
    assert all("95% CI" in line and ("within 2%" in line or "more than 2%" in line or "undecided" in line)
               for line in lines)
    with open(RESULTS, "rb") as f:
        assert f.read() == before
