"""mkdocs hooks: keep the built site offline.

Notebook figures: plotly's default renderer in a headless kernel emits only its JSON
mimetype, which the HTML export cannot draw. `PLOTLY_RENDERER` (read by plotly at import,
inherited by the kernels mkdocs-jupyter starts) adds an HTML rendering with plotly.js
inline, so figures draw without a CDN; the notebooks themselves stay plain. plotly's HTML
also names MathJax on a CDN (unused by our figures), which is dropped here, and tqdm's
warning about a kernel without ipywidgets is silenced (it would show on every page).
"""

import os
import re
import tempfile
from pathlib import Path

os.environ.setdefault("PLOTLY_RENDERER", "plotly_mimetype+notebook")
# transformers' "Loading weights" progress bar, which a notebook shows as a red stderr box
# (the kernels inherit this environment).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# tqdm.auto warns in a kernel without ipywidgets; the notebooks show no progress bars anyway.
os.environ.setdefault("PYTHONWARNINGS", "ignore:IProgress not found")

# ipykernel warns on every kernel start that its local TCP transport is unencrypted (the
# kernels mkdocs-jupyter starts talk only to this process on 127.0.0.1); a build-only IPython
# profile lowers the kernel app's log level so the build log shows only what matters.
if "IPYTHONDIR" not in os.environ:
    _IPYTHON = Path(tempfile.mkdtemp(prefix="moe-interp-docs-ipython-"))
    (_IPYTHON / "profile_default").mkdir()
    (_IPYTHON / "profile_default" / "ipython_kernel_config.py").write_text('c.IPKernelApp.log_level = "ERROR"\n')
    os.environ["IPYTHONDIR"] = str(_IPYTHON)

_CDN_SCRIPT = re.compile(r'<script[^>]*\bsrc="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]*"[^>]*>\s*</script>')


def on_post_page(output: str, page, config) -> str:
    return _CDN_SCRIPT.sub("", output)
