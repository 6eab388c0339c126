"""`benchmarks/gpu.py --smoke`: the GPU benchmark's every section runs on the CPU (tiny config).

The GPU run is rare (a device is lent to some sessions only), so the script must not first fail
there: this runs it as a user would, in a subprocess, and reads its report. The smoke run's
split is two CPU placements (pre-hooks moving each block's inputs; accelerate's `device_map`
too where accelerate is installed): it shows the split code path and the per-router plan
placement run and give the unsplit counts, not a copy across devices.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu.py")
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS_GPU.md")


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def smoke():
    before = _read(RESULTS) if os.path.exists(RESULTS) else None
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, SCRIPT, "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    after = _read(RESULTS) if os.path.exists(RESULTS) else None
    return run, before, after


def test_smoke_run_succeeds_and_writes_no_results_file(smoke):
    run, before, after = smoke
    assert run.returncode == 0, run.stderr[-3000:]
    assert before == after, "--smoke must never write benchmarks/RESULTS_GPU.md"
    assert "FAILED" not in run.stdout, run.stdout + run.stderr[-3000:]


def test_smoke_report_has_every_section(smoke):
    out = smoke[0].stdout
    for heading in ("# GPU benchmark", "## Split across devices", "## experts implementation 'grouped_mm', bf16",
                    "## experts implementation 'eager', bf16", "Against a plain nnsight trace of the same batch",
                    "### `mi.profile` throughput", "## bf16 autocast on CUDA", "## `mi.profile` on the demo model",
                    "Total wall time"):
        assert heading in out, f"missing {heading!r} in:\n{out}"
    assert "- device: cpu (CPU smoke run" in out  # the device is named
    assert "Skipped: this run is on the CPU" in out  # autocast says why it did not run
    for variant in ("RouterRecord()", "RouterRecord(per_token=True)", "LayerRouteSteer", "ExpertAblate"):
        assert re.search(rf"^\| {re.escape(variant)}[^|]*\| \d+\.\d+x \| .* \| (yes|no) \|$", out, re.M), variant
    assert re.search(r"`mi.profile` / plain forward tokens/s: \*\*\d+\.\d+\*\*", out)
    assert "profile counted" in out and ": the same)" in out  # the plain forward ran the profile's tokens


def test_split_counts_equal_unsplit(smoke):
    out = smoke[0].stdout
    assert "Split vs unsplit counts: **equal**" in out
    rows = re.findall(r"^\| (pre-hooks|`device_map`)[^|]*\| ([^|]+) \| (\d+) of (\d+) \|$", out, re.M)
    runs = {name.strip() for _, name, _, _ in rows}
    assert {"RouterRecord()", "LayerRouteSteer + RouterRecord()", "ExpertAblate (reroute) + RouterRecord()",
            "HF output_router_logits + top-k (oracle)"} <= runs
    assert rows and all(differ == "0" and int(total) > 0 for _, _, differ, total in rows)
    assert re.search(r"pre-hooks: the second half runs on cpu \((\d+) hook calls", out)
    assert int(re.search(r"\((\d+) hook calls", out).group(1)) > 0  # the split's hooks really ran
    assert "RouterRecord equals the oracle on every model (split and unsplit): **yes**" in out
    # exactness of the timed model, every experts implementation
    assert re.findall(r"exactness: .*\*\*(\d+) of \d+\*\*", out) == ["0", "0"]
