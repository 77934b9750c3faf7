"""`resbench compare` (the regression gate) and `resbench dashboard` (asv's history, served).

asv owns history: `dashboard` only runs `asv publish` and `asv preview`, with this interpreter so
the venv's asv is the one used: on the asv.conf.json of the resbench checkout you stand in, or,
for a results folder of your own (`--results`), on a config written for it in a temporary folder.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import UserError
from .provenance import checkout_root
from .results import results_root

NEEDS = ("run inside a resbench checkout, or pass --results DIR (an asv results folder: benchmarks.json "
         "and one folder per machine) and --repo PATH (a git clone holding the commits it measured)")


def find_asv_config(given: str | None) -> Path:
    """--config, else the one of the resbench checkout you are in, else the checkout the code runs from."""
    here, code = results_root().parent, checkout_root()
    cands = [Path(given)] if given else [here / "asv.conf.json"] + ([code / "asv.conf.json"] if code else [])
    for cand in cands:
        if cand.is_file():
            return cand.resolve()
    if given:
        raise UserError(f"asv config not found: {given}")
    raise UserError(f"no asv.conf.json here and resbench is not running from a checkout: {NEEDS}")


def results_config(results: str, repo: str | None, html: str | None, tmp: Path) -> Path:
    """An asv config in `tmp` that publishes `results` into `html` (default: asv-html beside it),
    reading commit order and dates from `repo` (default: the checkout this code runs from)."""
    res = Path(results).resolve()
    if not (res / "benchmarks.json").is_file():
        raise UserError(f"--results {results}: no benchmarks.json there, so not an asv results folder "
                        "(asv run writes DIR/benchmarks.json and DIR/MACHINE/*.json)")
    git = Path(repo).resolve() if repo else checkout_root()
    if git is None:
        raise UserError("asv publish orders commits from their git repository, and resbench is not running from "
                        "a checkout: pass --repo PATH (a git clone holding the commits the results measured)")
    if subprocess.run(["git", "-C", str(git), "rev-parse", "--git-dir"], capture_output=True).returncode != 0:
        raise UserError(f"--repo {git}: not a git repository")
    out = Path(html).resolve() if html else res.parent / "asv-html"
    conf = tmp / "asv.conf.json"
    conf.write_text(json.dumps({"version": 1, "project": "resbench", "project_url": "#", "repo": str(git),
                                "branches": ["main"], "dvcs": "git", "results_dir": str(res),
                                "html_dir": str(out), "show_commit_url": "#"}))
    return conf


def _asv(conf: Path, *args: str) -> int:
    # asv resolves the config's relative paths against the working directory: run it from there
    return subprocess.call([sys.executable, "-m", "asv", *args, "--config", str(conf)], cwd=conf.parent)


def html_dir(conf: Path) -> Path:
    from asv.config import Config  # asv parses its own commented JSON

    return conf.parent / Config.load(str(conf)).html_dir


def cmd_dashboard(args) -> int:
    with tempfile.TemporaryDirectory(prefix="resbench-dashboard-") as tmp:
        if args.results:
            conf = results_config(args.results, args.repo, args.html, Path(tmp))
        elif args.repo or args.html:
            raise UserError("--repo and --html go with --results (a checkout's asv.conf.json names its own)")
        else:
            conf = find_asv_config(args.config)
        return _publish_and_serve(conf, args)


def _publish_and_serve(conf: Path, args) -> int:
    rc = _asv(conf, "publish")
    if rc != 0:
        print(f"resbench: asv publish failed (exit {rc}); see asv's message above", file=sys.stderr)
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
    from . import history_gate

    asv_sides = [history_gate.is_asv_result(p) for p in (args.base, args.head)]
    if all(asv_sides):
        return history_gate.cmd_compare(args)
    if any(asv_sides):
        raise UserError("BASE and HEAD must both be resbench JSONL or both asv results files (results/asv/MACHINE/*.json)")
    from .compare import cmd_compare as run

    return run(args)


def add_subcommands(sub) -> None:
    cmp = sub.add_parser("compare", help="regression gate: HEAD's records against BASE's; exit 1 on a regression")
    cmp.add_argument("base", metavar="BASE", help="results JSONL, or JSONL@COMMIT for one commit's records, or an "
                                                  "asv results file (one per commit, e.g. "
                                                  "results/asv/xeon-2core/f8fd65b0-virtualenv-py3.11-torch2.13.0.json)")
    cmp.add_argument("head", metavar="HEAD", help="results JSONL, or JSONL@COMMIT, or an asv results file")
    cmp.add_argument("--threshold", type=float, default=0.10,
                     help="relative worsening that counts (default 0.10 = HEAD 10%% worse than BASE); for asv "
                          "results, of the ratio-vs-PreNorm series")
    cmp.add_argument("--time-threshold", type=float, default=0.50,
                     help="asv results only: worsening of an absolute (machine-dependent) time series that "
                          "counts (default 0.50); bytes and FLOPs count any increase, the loss one above 0.1%%")
    cmp.add_argument("--all", action="store_true", help="asv results only: list every series, not only the "
                                                        "ones that moved past their threshold")
    cmp.add_argument("--alpha", type=float, default=0.01,
                     help="significance for timings with raw repeats (one-sided Mann-Whitney U; default 0.01)")
    cmp.add_argument("--json", action="store_true", help="the comparison as JSON (exit status as without it)")
    cmp.set_defaults(func=cmd_compare)

    dash = sub.add_parser("dashboard", help="asv publish, then asv preview (the history dashboard)")
    dash.add_argument("--no-serve", action="store_true", help="publish only and print the index.html path")
    dash.add_argument("--port", type=int, default=8080, help="preview port (default 8080)")
    dash.add_argument("--config", help="asv config (default: ./asv.conf.json or the repository's)")
    dash.add_argument("--results", metavar="DIR", help="an asv results folder of your own (benchmarks.json and one "
                                                       "folder per machine), e.g. outside any checkout")
    dash.add_argument("--repo", metavar="PATH", help="with --results: the git clone holding the measured commits "
                                                     "(default: the checkout resbench runs from)")
    dash.add_argument("--html", metavar="DIR", help="with --results: where the site goes (default: asv-html "
                                                    "beside the results folder)")
    dash.set_defaults(func=cmd_dashboard)
