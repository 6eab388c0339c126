"""The README's first Python snippet runs verbatim, offline, as a script, and prints what the README
shows; the docs' home page shows the same snippet; the install text says what each torch command installs."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

# Any attempt to open a network connection fails the run (loaded before the snippet).
NO_NETWORK = """
import socket
def _refuse(*args, **kwargs):
    raise OSError("network access attempted by the README snippet")
socket.socket.connect = _refuse
socket.create_connection = _refuse
"""


def _first_python_block(text: str) -> str:
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_the_first_readme_snippet_runs_verbatim_offline(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(NO_NETWORK)
    script = tmp_path / "readme_snippet.py"
    script.write_text(_first_python_block(README), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TORCH_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out == _shown_output(README)  # what the README says it prints
    # the demo model's tokenizer: one token per UTF-8 byte, no BOS; 256 bytes + 3 specials
    assert out.strip().splitlines()[-1] == f"torch.Size([1, {len('Wie viele Äpfel hat Anna?'.encode())}, 259])"


def _shown_output(text: str) -> str:
    """The ```text block right after the first Python snippet: its printed output."""
    return re.search(r"```python\n.*?```\n\nIt prints.*?```text\n(.*?)```", text, re.S).group(1)


def test_the_snippet_uses_only_names_it_defines_or_imports():
    """The snippet of the first version used `english_texts` and `german_texts`, defined nowhere."""
    code = _first_python_block(README)
    assert "english_texts" not in code and "german_texts" not in code
    assert code.startswith("import moe_interp as mi\n")


def test_the_docs_home_page_shows_the_same_snippet():
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert _first_python_block(index) == _first_python_block(README)


def test_the_hub_model_is_one_line_away_and_commented():
    code = _first_python_block(README)
    assert re.search(r'^# model = mi\.load\("[\w-]+/[\w.-]+"\)', code, re.M)
    assert re.search(r"^model = mi\.zoo\.demo_model\(\)", code, re.M)


def test_install_text_says_which_torch_build_each_command_installs():
    for text in (README, (ROOT / "docs" / "install.md").read_text(encoding="utf-8")):
        assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in text
        assert "CUDA build" in text
        # the old text claimed `pip install torch==2.13.0` takes the CPU wheel anywhere
        assert "`pip install torch==2.13.0` first takes the CPU wheel" not in text
