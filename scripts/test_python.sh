#!/usr/bin/env bash
# The test suite on another Python, with the dependency versions pip resolves for it that day.
#
#   scripts/test_python.sh PYTHON [VENV_DIR] [PYTEST_ARGS...]
#   scripts/test_python.sh python3.11                                       # the lowest Python we declare
#   scripts/test_python.sh /root/.pyenv/versions/3.13.0/bin/python         # the newest we test
#
# Makes a virtual environment with PYTHON (default: a fresh directory under $TMPDIR, removed after), installs
# torch==2.13.0 first, then the project with its test extras (every other dependency as pip resolves
# it for that Python), prints the versions it got, and runs the README's test command (`pytest -q -n 2 --dist loadfile`)
# with PYTEST_ARGS added. Not run by CI (it would double CI's time): results and the date they were taken are in
# docs/install.md. torch's wheel: on the CI machines pip finds a local CPU build only for Python 3.11;
# for any other Python the same pin pulls the CUDA build from PyPI (~4.3 GB in the venv), which runs
# on the CPU too. To avoid it, add --index-url https://download.pytorch.org/whl/cpu to the torch line.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:?usage: scripts/test_python.sh PYTHON [VENV_DIR] [PYTEST_ARGS...]}"
if [ -n "${2:-}" ]; then
  venv="$2"
else  # a directory of its own, removed on exit (the venv is up to ~4.3 GB)
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  venv="$scratch/py"
fi
shift $(( $# >= 2 ? 2 : 1 ))
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q "torch==2.13.0"   # first: the pinned wheel, not one a later package picks
"$venv/bin/python" -m pip install -q -e ".[test]"
"$venv/bin/python" - <<'EOF'
import sys
from importlib.metadata import version
names = ("torch", "transformers", "nnsight", "numpy", "pandas", "plotly", "jaxtyping", "pytest")
print(f"Python {sys.version.split()[0]}:", ", ".join(f"{n} {version(n)}" for n in names))
EOF
"$venv/bin/python" -m pytest -q -n 2 --dist loadfile "$@"
