"""Open an HTML page in headless Chromium at 1280 px; fail on console errors, undrawn figures
or horizontal overflow; optionally screenshot it.

    python scripts/check_html.py report.html [--screenshot docs/assets/report.png]

Needs Debian's `chromium` (apt-get install -y chromium). Prints one line, e.g.
`report.html: 7 of 7 figures drawn, 0 console errors, widest element 1100 px in a 1280 px window`:
a figure is a plotly container (`plotly-graph-div`); it is drawn when plotly has turned it into
a plot (`js-plotly-plot`). A copy of the page measures, once its figures are drawn, every
element whose content is wider than the window or than its own box (a `<pre>` or table that
would scroll sideways). Exits 1 on any console error, undrawn figure or overflow.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WIDTH = 1280

# Appended to a copy of the page: after the figures have had time to draw (virtual time),
# write what overflows into the DOM, where --dump-dom can read it.
_MEASURE = """<script>
setTimeout(() => {
  const width = window.innerWidth, wide = [];
  for (const el of document.body.querySelectorAll("*")) {
    const box = el.getBoundingClientRect();
    const own = ["PRE", "TABLE", "P", "LI", "H1", "H2"].includes(el.tagName) && el.scrollWidth > el.clientWidth + 1;
    if (box.width > 0 && (box.right > width + 1 || own)) {
      wide.push(`${el.tagName.toLowerCase()}.${(el.className.baseVal ?? el.className).split(" ")[0]}`
                + ` ${Math.round(box.right)} px` + (own ? ` (content ${el.scrollWidth} px in ${el.clientWidth})` : ""));
    }
  }
  const out = document.createElement("script");
  out.type = "application/json"; out.id = "check-html-metrics";
  out.textContent = JSON.stringify({width, page: document.documentElement.scrollWidth, wide: wide.slice(0, 10)});
  document.body.appendChild(out);
}, 15000);
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    sys.exit("no chromium found: apt-get install -y chromium")


def _classes(dom: str) -> list[list[str]]:
    return [c.split() for c in re.findall(r'<div[^>]*\bclass="([^"]*)"', dom)]


def check(page: Path, screenshot: Path | None = None, budget_ms: int = 30000) -> dict:
    """Figures (containers and drawn), console lines and errors, and overflow of `page`."""
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
            "--hide-scrollbars", f"--window-size={WIDTH},1600", f"--virtual-time-budget={budget_ms}",
            f"--user-data-dir={tempfile.mkdtemp()}"]
    with tempfile.TemporaryDirectory(dir=page.resolve().parent) as folder:
        measured = Path(folder) / page.name  # same folder level: relative links still resolve
        text = page.read_text(encoding="utf-8")
        measured.write_text(text.replace("</body>", _MEASURE + "</body>") if "</body>" in text else text + _MEASURE,
                            encoding="utf-8")
        dom = subprocess.run(base + ["--dump-dom", measured.as_uri()], capture_output=True, text=True, timeout=600)
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    errors = [line for line in console if re.search(r"error|Uncaught", line, re.I)]
    classes = _classes(dom.stdout)
    metrics = re.search(r'<script type="application/json" id="check-html-metrics">(.*?)</script>', dom.stdout, re.S)
    metrics = json.loads(metrics.group(1)) if metrics else {"width": WIDTH, "page": None, "wide": ["not measured"]}
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(base + [f"--screenshot={screenshot}", page.resolve().as_uri()], capture_output=True, timeout=600)
    return {"figures": sum("plotly-graph-div" in c for c in classes),
            "drawn": sum("plotly-graph-div" in c and "js-plotly-plot" in c for c in classes),
            "console": console, "errors": errors, **metrics}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--screenshot", type=Path, help=f"PNG of the page's top {WIDTH}x1600 px")
    args = parser.parse_args()
    result = check(args.page, args.screenshot)
    size = args.page.stat().st_size / 1e6
    print(f"{args.page} ({size:.1f} MB): {result['drawn']} of {result['figures']} figures drawn, "
          f"{len(result['errors'])} console errors, page {result['page']} px wide in a {result['width']} px window, "
          f"{len(result['wide'])} elements overflow")
    for line in result["errors"] + result["wide"]:
        print("  ", line)
    return 1 if result["errors"] or result["drawn"] < result["figures"] or result["wide"] else 0


if __name__ == "__main__":
    sys.exit(main())
