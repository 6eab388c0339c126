"""Open an HTML page in headless Chromium; fail on console errors; optionally screenshot it.

    python scripts/check_html.py report.html [--screenshot docs/assets/report.png]

Needs Debian's `chromium` (apt-get install -y chromium). Prints how many plotly figures
rendered (an SVG `main-svg` per figure, counted in the DOM Chromium dumps) and every
console message; exits 1 if any console message is an error or a figure did not render.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    sys.exit("no chromium found: apt-get install -y chromium")


def check(page: Path, screenshot: Path | None = None, budget_ms: int = 20000) -> tuple[int, int, list[str]]:
    url = page.resolve().as_uri()
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
            f"--virtual-time-budget={budget_ms}", f"--user-data-dir={tempfile.mkdtemp()}"]
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=300)
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    errors = [line for line in console if re.search(r"error|Uncaught", line, re.I)]
    figures = dom.stdout.count('class="plotly-graph-div')
    rendered = dom.stdout.count('class="main-svg"') // 2  # plotly draws two main-svg layers per figure
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(base + [f"--screenshot={screenshot}", "--window-size=1200,1600", url],
                       capture_output=True, timeout=300)
    return figures, rendered, console if errors else errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    figures, rendered, errors = check(args.page, args.screenshot)
    print(f"{args.page}: {figures} figures, {rendered} rendered, {len(errors)} console errors")
    for line in errors:
        print("  ", line)
    return 1 if errors or rendered < figures else 0


if __name__ == "__main__":
    sys.exit(main())
