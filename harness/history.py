"""`resbench compare` (the regression gate) and `resbench dashboard` (asv's history, served).

asv owns history: `dashboard` only runs `asv publish` and `asv preview` against the repository's
asv.conf.json, with this interpreter so the venv's asv is the one used.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .errors import UserError
from .provenance import checkout_root
from .results import results_root


def find_asv_config(given: str | None) -> Path:
    """--config, else the one of the resbench checkout you are in, else the checkout the code runs from."""
    here, code = results_root().parent, checkout_root()
    cands = [Path(given)] if given else [here / "asv.conf.json"] + ([code / "asv.conf.json"] if code else [])
    for cand in cands:
        if cand.is_file():
            return cand.resolve()
    raise UserError(f"asv config not found: {given or 'asv.conf.json (run from the repository root)'}")


def _asv(conf: Path, *args: str) -> int:
    # asv resolves the config's relative paths against the working directory: run it from there
    return subprocess.call([sys.executable, "-m", "asv", *args, "--config", str(conf)], cwd=conf.parent)


def html_dir(conf: Path) -> Path:
    from asv.config import Config  # asv parses its own commented JSON

    return conf.parent / Config.load(str(conf)).html_dir


def cmd_dashboard(args) -> int:
    conf = find_asv_config(args.config)
    results = conf.parent / "results" / "asv"
    rc = _asv(conf, "publish")
    if rc != 0:
        print(f"resbench: asv publish failed (exit {rc}); results recorded? see {results}", file=sys.stderr)
        return rc
    index = html_dir(conf) / "index.html"
    if args.no_serve:
        print(index)
        return 0
    print(f"serving {index.parent} on http://127.0.0.1:{args.port}/ (Ctrl-C stops)", file=sys.stderr)
    try:
        return _asv(conf, "preview", "--port", str(args.port))
    except KeyboardInterrupt:  # the normal way to stop a server
        return 0


def cmd_compare(args) -> int:
    from .compare import cmd_compare as run

    return run(args)


def add_subcommands(sub) -> None:
    cmp = sub.add_parser("compare", help="regression gate: HEAD's records against BASE's; exit 1 on a regression")
    cmp.add_argument("base", metavar="BASE", help="results JSONL, or JSONL@COMMIT for one commit's records")
    cmp.add_argument("head", metavar="HEAD", help="results JSONL, or JSONL@COMMIT")
    cmp.add_argument("--threshold", type=float, default=0.10,
                     help="relative worsening that counts (default 0.10 = HEAD 10%% worse than BASE)")
    cmp.add_argument("--alpha", type=float, default=0.01,
                     help="significance for timings with raw repeats (one-sided Mann-Whitney U; default 0.01)")
    cmp.add_argument("--json", action="store_true", help="the comparison as JSON (exit status as without it)")
    cmp.set_defaults(func=cmd_compare)

    dash = sub.add_parser("dashboard", help="asv publish, then asv preview (the history dashboard)")
    dash.add_argument("--no-serve", action="store_true", help="publish only and print the index.html path")
    dash.add_argument("--port", type=int, default=8080)
    dash.add_argument("--config", help="asv config (default: ./asv.conf.json or the repository's)")
    dash.set_defaults(func=cmd_dashboard)
