#!/usr/bin/env bash
# NDIF's server code on the Python it requires (>= 3.12), with its declared dependencies, serving the
# client on this checkout's Python (3.11 in CI).
#
#   scripts/ndif_server_py312.sh [PYTEST_ARGS...]
#       NDIF_PY312=/root/.pyenv/versions/3.12.1/bin/python   the interpreter to build the venv with
#       NDIF_PY312_VENV=.ndif/py312                           where the venv goes (git-ignored)
#
# 1. Makes (once) a virtual environment with Python 3.12 and installs, from PyPI: torch==2.13.0 first
#    (pinned to the client's release; on 3.12 PyPI only has the CUDA build, which runs on the CPU), then
#    `ndif[ray]==0.1.2` (its declared dependencies: pydantic, redis, click, python-dotenv, pyyaml, boto3,
#    and the `ray` extra its model actor needs: ray[default], transformers, accelerate, numpy, zstandard,
#    peft), with nnsight and transformers pinned to the client's versions (the server must build the
#    model the client traced). Never moe_interp: the server does not have it.
# 2. Runs tests/test_ndif_py312.py with NDIF_PY312_VENV set: the client stays on this Python, the
#    harness server (tests/ndif_harness/server.py) and its sandbox runners run on the venv's 3.12, and
#    every result is compared bitwise with the same call run locally.
#
# Measured (2026-12-06, 2 shared cores, PyPI): 4 min 7 s to install, 5.3 GB (torch 4.7 GB of it), 103 tests
# passed in 183-275 s; docs/remote.md section 7, "On the Python ndif requires (3.12)".
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
client="${PYTHON:-python}"
py312="${NDIF_PY312:-/root/.pyenv/versions/3.12.1/bin/python}"
venv="${NDIF_PY312_VENV:-.ndif/py312}"

read -r nnsight_v transformers_v torch_v < <("$client" -c 'import nnsight, transformers, torch
print(nnsight.__version__, transformers.__version__, torch.__version__.split("+")[0])')
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import ndif, ray, boto3, redis, accelerate' 2>/dev/null; then
  started=$SECONDS
  "$py312" -c 'import sys; assert sys.version_info >= (3, 12), sys.version' \
    || { echo "NDIF_PY312=$py312 is not Python >= 3.12 (ndif 0.1.2 requires it)" >&2; exit 2; }
  "$py312" -m venv "$venv"
  "$venv/bin/python" -m pip install -q "torch==$torch_v"   # first: the pinned wheel, not one a later package picks
  "$venv/bin/python" -m pip install -q "ndif[ray]==0.1.2" "nnsight==$nnsight_v" "transformers==$transformers_v"
  echo "installed in $((SECONDS - started)) s: $(du -sh "$venv" | cut -f1) in $venv"
fi
"$venv/bin/python" - <<'EOF'
import sys
from importlib.metadata import version
names = ("ndif", "nnsight", "transformers", "torch", "ray", "boto3", "redis", "accelerate", "zstandard", "pydantic")
print(f"server: Python {sys.version.split()[0]}:", ", ".join(f"{n} {version(n)}" for n in names))
EOF
NDIF_PY312_VENV="$venv" "$client" -m pytest -q -p no:cacheprovider tests/test_ndif_py312.py "$@"
