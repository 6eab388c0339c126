#!/usr/bin/env bash
# The package as a user gets it from an index: build the sdist and the wheel, check their metadata
# (`twine check --strict`), install the wheel into a fresh virtual environment and run the README's
# first Python snippet from an empty directory, so nothing of the repository is on the path (the
# bundled demo model and corpus must come from the wheel). Prints the sizes. CI runs it (.ci/run).
#
#   scripts/check_wheel.sh [WORK_DIR]        # default: a fresh directory under $TMPDIR, removed after
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
if [ -n "${1:-}" ]; then
  work="$1"
else  # a directory of its own, removed on exit: the venv alone is ~1.5 GB, and runs add up
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
"$python" -m pip install -q build twine
rm -rf "$work/dist"
"$python" -m build -q --outdir "$work/dist" . >/dev/null
"$python" -m twine check --strict "$work"/dist/*
"$python" -m venv "$work/venv"
# torch first, pinned as .ci/run does (a local CPU wheel on the CI machines)
"$work/venv/bin/python" -m pip install -q "torch==2.13.0"
"$work/venv/bin/python" -m pip install -q "$work"/dist/*.whl
"$python" - README.md > "$work/snippet.py" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
print(re.search(r"```python\n(.*?)```", text, re.S).group(1))
PY
mkdir -p "$work/empty"
(cd "$work/empty" && OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$work/venv/bin/python" ../snippet.py)
(cd "$work/empty" && "$work/venv/bin/python" -c "import moe_interp, pathlib; p = pathlib.Path(moe_interp.__file__).parent; \
assert 'site-packages' in str(p), p; assert (p / 'py.typed').is_file(); print('installed from the wheel:', p, moe_interp.__version__)")
for f in "$work"/dist/*; do echo "$(basename "$f"): $(du -k "$f" | cut -f1) KiB"; done
