#!/usr/bin/env python3
"""Publish resbench's asv history (`resbench dashboard --no-serve`: offline, in the palette's
colours), serve it on loopback, open a benchmark's graph page in headless Chromium and save a
screenshot (default docs/dashboard.png).

    .venv/bin/python scripts/screenshot_dashboard.py [--bench NAME] [--out PNG]

Needs Debian's `chromium` and the page's JavaScript (apt-get install chromium libjs-jquery
libjs-jquery-flot libjs-bootstrap libjs-jquery-stupidtable node-blueimp-md5).
"""
from __future__ import annotations

import argparse
import os
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
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "chromium"))
    args = ap.parse_args()
    if shutil.which(args.chromium) is None:
        sys.exit(f"needs {args.chromium} (Debian: apt-get install chromium)")

    out = subprocess.run([sys.executable, "-m", "resbench", "dashboard", "--no-serve"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    site = Path(out.strip().splitlines()[-1]).parent
    with tempfile.TemporaryDirectory() as tmp:
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
            server.server_close()
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
