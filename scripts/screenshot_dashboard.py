#!/usr/bin/env python3
"""Publish resbench's asv history, serve it on loopback, open a benchmark's graph page in
headless Chromium and save a screenshot (default docs/dashboard.png).

    .venv/bin/python scripts/screenshot_dashboard.py [--bench NAME] [--out PNG] [--online]

Needs Debian's `chromium`. asv's page loads jQuery, flot, bootstrap, stupidtable and md5 from
CDNs; a machine without internet (this project's CI) cannot, so by default the page is served
from a copy whose CDN tags point at Debian's packaged copies instead
(apt-get install libjs-jquery libjs-jquery-flot libjs-bootstrap libjs-jquery-stupidtable
node-blueimp-md5). --online serves asv's output untouched.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from resbench.history import make_server

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_JS = Path("/usr/share/javascript")
# CDN file name -> Debian file (None: Debian's flot bundle already contains that plugin)
LOCAL = {
    "jquery-3.3.1.min.js": "jquery/jquery.min.js",
    "jquery.flot.min.js": "jquery-flot/jquery.flot.js",
    "jquery.flot.time.min.js": None,
    "jquery.flot.selection.min.js": None,
    "jquery.flot.categories.min.js": None,
    "jquery.flot.orderBars.js": None,  # bar-chart ordering only; the history graphs are lines
    "stupidtable.min.js": "jquery-stupidtable/stupidtable.min.js",
    "md5.min.js": "blueimp-md5/md5.min.js",
    "bootstrap.min.js": "bootstrap/js/bootstrap.min.js",
    "bootstrap.min.css": "bootstrap/css/bootstrap.min.css",
}
# Debian's flot is 4.x: it draws axis labels itself (asv's 0.8 plugin would draw them twice) and
# its SVG legend box is black unless styled
FLOT4_FIXES = ('<style>.legendLayer .background { fill: #fff !important; stroke: #ccc; }</style>',
               re.compile(r'<script[^>]*src="jquery\.flot\.axislabels\.js"[^>]*>\s*</script>'))
CDN_TAG = re.compile(r'<(script|link)\b[^>]*?(?:src|href)="(https://[^"]+)"[^>]*>(?:</script>)?')


def localize(html_dir: Path, out: Path) -> None:
    """Copy asv's published site to `out`, CDN tags replaced by local files (see module doc)."""
    shutil.copytree(html_dir, out)
    vendor = out / "vendor"
    vendor.mkdir()

    def swap(m: re.Match) -> str:
        tag, url = m.group(1), m.group(2)
        name = url.rsplit("/", 1)[-1]
        if name not in LOCAL:
            sys.exit(f"unknown CDN file in asv's page: {url} (use --online)")
        if LOCAL[name] is None:
            return ""
        src = DEBIAN_JS / LOCAL[name]
        if not src.is_file():
            sys.exit(f"missing {src}: apt-get install libjs-jquery libjs-jquery-flot libjs-bootstrap "
                     "libjs-jquery-stupidtable node-blueimp-md5 (or use --online)")
        shutil.copy(src.resolve(), vendor / name)
        if tag == "link":
            return f'<link rel="stylesheet" href="vendor/{name}">'
        return f'<script src="vendor/{name}"></script>'

    style, axislabels = FLOT4_FIXES
    for page in out.glob("*.html"):
        text = axislabels.sub("", CDN_TAG.sub(swap, page.read_text()))
        page.write_text(text.replace("</head>", style + "\n</head>", 1))


def wait_until_up(url: str, seconds: float = 15) -> None:
    end = time.time() + seconds
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"server did not answer at {url}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default="bench_speed.SpeedVsPreNorm.track_train_ratio",
                    help="the benchmark whose graph page to open (default: the train-step ratio vs PreNorm)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    ap.add_argument("--port", type=int, default=8089)
    ap.add_argument("--size", default="1400,1000")
    ap.add_argument("--online", action="store_true", help="serve asv's page as published (needs internet)")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "chromium"))
    args = ap.parse_args()
    if shutil.which(args.chromium) is None:
        sys.exit(f"needs {args.chromium} (Debian: apt-get install chromium)")

    out = subprocess.run([sys.executable, "-m", "resbench", "dashboard", "--no-serve"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout  # = asv publish
    html_dir = Path(out.strip().splitlines()[-1]).parent
    with tempfile.TemporaryDirectory() as tmp:
        site = html_dir
        if not args.online:
            site = Path(tmp) / "site"
            localize(html_dir, site)
        server = make_server(site, "127.0.0.1", args.port)  # loopback only, as `resbench dashboard`
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            base = f"http://127.0.0.1:{args.port}/"
            wait_until_up(base)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([
                args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={tmp}/profile", "--hide-scrollbars",
                f"--window-size={args.size}",
                # the graphs are drawn by JavaScript after load: let it run before the picture
                "--run-all-compositor-stages-before-draw", "--virtual-time-budget=20000",
                f"--screenshot={os.path.abspath(args.out)}", f"{base}#{args.bench}",
            ], check=True, capture_output=True, timeout=120)
        finally:
            server.shutdown()
            server.wait(timeout=10)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
