#!/usr/bin/env bash
# The core tests on the lowest versions pyproject.toml declares for torch, nnsight and transformers.
#
#   scripts/test_lower_bounds.sh [VENV_DIR]     # default: a fresh directory under $TMPDIR, removed after
#
# Makes a fresh virtual environment, installs torch, nnsight and transformers pinned to the lower
# bounds of their ranges in pyproject.toml (read from it, so the pins follow the declaration), then
# the project with its test extras (every other dependency as pip resolves it), and runs the core
# tests: detection and the live survey of every MoE type of that transformers version, recording,
# interventions and their hold on every type, the router view, tracing and the zoo. CI runs it
# (.ci/run). torch's wheel: on these machines pip finds a local CPU build of the declared lower
# bound; elsewhere the same pin may pull the CUDA build from PyPI (add
# --index-url https://download.pytorch.org/whl/cpu to a pip.conf to avoid it).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
if [ -n "${1:-}" ]; then
  venv="$1"
else  # a directory of its own, removed on exit (the venv is ~1.5 GB)
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  venv="$scratch/lower-bounds"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

mapfile -t pins < <("$python" - <<'EOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for name in ("torch", "nnsight", "transformers"):
    spec = next(d for d in deps if re.match(rf"{name}\b", d))
    low = re.search(r">=\s*([\w.]+)", spec)
    if not low:
        raise SystemExit(f"pyproject.toml declares no lower bound for {name}: {spec!r}")
    print(f"{name}=={low[1]}")
EOF
)
echo "lower bounds: ${pins[*]} (venv: $venv)"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q "${pins[0]}"   # torch first: its pinned wheel, not one a later package picks
"$venv/bin/python" -m pip install -q -e ".[test]" "${pins[@]}"
"$venv/bin/python" - "${pins[@]}" <<'EOF'
import sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    got = version(name).split("+")[0]
    assert got == want, f"{name} {got} installed, {want} pinned"
print("installed:", ", ".join(f"{p.split('==')[0]} {version(p.split('==')[0])}" for p in sys.argv[1:]))
EOF
"$venv/bin/python" -m pytest -q -p no:logging tests/test_arch.py tests/test_zoo.py tests/test_record.py tests/test_trace.py \
    tests/test_interventions.py tests/test_hold_every_arch.py tests/test_router_view.py moe_interp/arch moe_interp/runtime
