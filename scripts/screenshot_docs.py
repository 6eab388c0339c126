"""Screenshot of the built quickstart page with its plotly figure -> docs/assets/quickstart.png.

    mkdocs build --strict -d site && python scripts/screenshot_docs.py site

Needs headless Chromium (`apt-get install chromium`) and Pillow (`pip install pillow`) for the
crop; neither is a dependency of the package. The page is served locally: nothing is fetched.
"""

import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PAGE = "tutorials/quickstart/"
CROP = (280, 2010, 1000, 2700)  # left, top, right, bottom of the "Plot" section at 1280 px wide


def main(site: str = "site") -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("no chromium on PATH: apt-get install chromium")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=site)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "page.png"
        subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1280,4000", "--virtual-time-budget=15000", f"--screenshot={full}",
                        f"http://127.0.0.1:{server.server_address[1]}/{PAGE}"], check=True, capture_output=True)
        server.shutdown()
        out = ROOT / "docs" / "assets" / "quickstart.png"
        Image.open(full).crop(CROP).save(out, optimize=True)
    print(f"wrote {out.relative_to(ROOT)}: check that it shows the figure")


if __name__ == "__main__":
    main(*sys.argv[1:])
