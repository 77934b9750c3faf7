"""`resbench compare` (the regression gate) and `resbench dashboard` (asv's history, served).

asv owns history: `dashboard` runs `asv publish`, with this interpreter so the venv's asv is the
one used, on the asv.conf.json of the resbench checkout you stand in, or, for a results folder of
your own (`--results`), on a config written for it in a temporary folder; dashboard.py makes the
site work offline in resbench's colours; then it serves the site itself, on loopback unless
--host says otherwise (`asv preview` binds every interface).
"""
from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import dashboard
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


def check_flags(args) -> None:
    """Every numeric flag finite and in range, before anything runs: NaN compares false with
    everything, so `--threshold nan` would pass any regression."""
    for flag in ("threshold", "time_threshold"):
        v = getattr(args, flag, None)
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise UserError(f"--{flag.replace('_', '-')} must be a finite number >= 0, got {v}")
    alpha = getattr(args, "alpha", None)
    if alpha is not None and not 0 < alpha < 1:
        raise UserError(f"--alpha must be a number between 0 and 1 (exclusive), got {alpha}")
    port = getattr(args, "port", None)
    if port is not None and not 1 <= port <= 65535:
        raise UserError(f"--port must be in 1..65535, got {port}")


def check_site(conf: Path, html_flag: str) -> Path:
    """The html dir `conf` publishes into, once what asv publish would trip on is ruled out (it
    answers a bad config or benchmarks.json with a traceback, or with nothing at all). asv publish
    deletes the html dir first: refuse one whose deletion takes more than an earlier site."""
    from asv.config import Config  # asv parses its own commented JSON

    from .history_gate import read_benchmarks

    try:
        cfg = Config.load(str(conf))
        html = (conf.parent / cfg.html_dir).resolve()
        results = (conf.parent / cfg.results_dir).resolve()
    except Exception as exc:  # noqa: BLE001 - asv raises whatever its parser trips on
        why = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        raise UserError(f"{conf}: not an asv config asv can read ({why})") from None
    if (results / "benchmarks.json").is_file():
        read_benchmarks(results / "benchmarks.json")
    where = f"{html_flag} {html}"
    if html == results or html in results.parents:
        raise UserError(f"{where}: holds the results folder {results}, and asv publish deletes the html folder")
    if html.exists():
        if not html.is_dir():
            raise UserError(f"{where}: exists and is not a folder")
        # asv copies its page template (index.html, asv.js) first: a site, even half-published
        if any(html.iterdir()) and not ((html / "index.html").is_file() and (html / "asv.js").is_file()):
            raise UserError(f"{where}: a folder that is not an asv site, and asv publish deletes the html "
                            "folder: pass a new or empty one")
    anchor = next(a for a in (html, *html.parents) if a.exists())  # the root always exists
    if not anchor.is_dir():
        raise UserError(f"{where}: cannot be created ({anchor} is not a folder)")
    for d in {anchor, html.parent} if html.exists() else {anchor}:
        if not os.access(d, os.W_OK | os.X_OK):
            raise UserError(f"{where}: cannot be written ({d} is not writable)")
    return html


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):  # HTTPServer's looks the host's name up: a DNS query, maybe a slow one
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def make_server(directory: Path, host: str, port: int) -> ThreadingHTTPServer:
    """A static file server of `directory` bound to host:port (port 0: any free one)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (OSError, UnicodeError, ValueError) as exc:
        raise UserError(f"--host {host}: cannot resolve it ({exc})") from None
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(directory))
    try:
        return type("Server", (_Server,), {"address_family": family})((host, port), handler)
    except OSError as exc:
        raise UserError(f"cannot serve on {host} port {port}: {exc.strerror or exc}") from None


def url(server: ThreadingHTTPServer) -> str:
    host, port = server.socket.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    anywhere = " (every interface: reachable from other machines)" if host in ("0.0.0.0", "::") else ""
    return f"http://{shown}:{port}/{anywhere}"


def _serve(server: ThreadingHTTPServer) -> None:
    server.serve_forever()


def cmd_dashboard(args) -> int:
    check_flags(args)
    if importlib.util.find_spec("asv") is None:
        raise UserError("resbench dashboard needs asv: pip install 'resbench[history]' (or asv itself)")
    if args.online and args.js_dir:
        raise UserError("--online and --js-dir exclude each other (CDN tags kept, or local copies)")
    if args.js_dir:
        dashboard.js_folder(args.js_dir)  # refused before asv deletes the old site
    with tempfile.TemporaryDirectory(prefix="resbench-dashboard-") as tmp:
        if args.results:
            conf = results_config(args.results, args.repo, args.html, Path(tmp))
            html = check_site(conf, "--html")
        elif args.repo or args.html:
            raise UserError("--repo and --html go with --results (a checkout's asv.conf.json names its own)")
        else:
            conf = find_asv_config(args.config)
            html = check_site(conf, f"{conf}: html_dir")
        # bound before publishing: a port in use or a bad host is refused before asv deletes the old site
        server = None if args.no_serve else make_server(html, args.host, args.port)
        try:
            return _publish_and_serve(conf, html, server, args)
        finally:
            if server is not None:
                server.server_close()


def _publish_and_serve(conf: Path, html: Path, server: ThreadingHTTPServer | None, args) -> int:
    rc = _asv(conf, "publish")
    if rc != 0:
        print(f"resbench: asv publish failed (exit {rc}); see asv's message above", file=sys.stderr)
        return rc
    note = dashboard.finish(html, args.js_dir, args.online)
    if note:
        print(f"resbench: {note}", file=sys.stderr)
    if server is None:
        print(html / "index.html")
        return 0
    print(f"serving {html} on {url(server)} (Ctrl-C stops)", file=sys.stderr)
    try:
        _serve(server)
    except KeyboardInterrupt:  # the normal way to stop a server
        pass
    return 0


def cmd_compare(args) -> int:
    from . import history_gate

    check_flags(args)
    asv_sides = [history_gate.is_asv_result(p) for p in (args.base, args.head)]
    if all(asv_sides):
        return history_gate.compare_asv(args)
    if any(asv_sides):
        raise UserError("BASE and HEAD must both be resbench JSONL or both asv results files (results/asv/MACHINE/*.json)")
    from .compare import compare_records

    return compare_records(args)


def add_subcommands(sub) -> None:
    cmp = sub.add_parser("compare", help="regression gate: HEAD's records against BASE's; exit 1 on a regression",
                         description="Compare HEAD's results with BASE's, metric by metric: two resbench JSONL files "
                         "(cells paired by key, timings tested with a one-sided Mann-Whitney U) or two asv results "
                         "files (a threshold per rule: ratio, time, exact, fixed-seed). Exit 1 on a regression, 2 on a user error.")
    cmp.add_argument("base", metavar="BASE", help="results JSONL, or JSONL@COMMIT for one commit's records, or an "
                                                  "asv results file (one per commit, e.g. "
                                                  "results/asv/xeon-2core/f8fd65b0-virtualenv-py3.11-torch2.13.0.json)")
    cmp.add_argument("head", metavar="HEAD", help="results JSONL, or JSONL@COMMIT, or an asv results file")
    cmp.add_argument("--threshold", type=float, default=0.10,
                     help="relative worsening that counts, a finite number >= 0 (default 0.10 = HEAD 10%% "
                          "worse than BASE); for asv results, of the ratio-vs-PreNorm series")
    cmp.add_argument("--time-threshold", type=float, default=0.50,
                     help="asv results only: worsening of an absolute (machine-dependent) time series that "
                          "counts, a finite number >= 0 (default 0.50); bytes and FLOPs count any increase, the "
                          "loss one above 0.1%%")
    cmp.add_argument("--all", action="store_true", help="asv results only: list every series, not only the "
                                                        "ones that moved past their threshold")
    cmp.add_argument("--alpha", type=float, default=0.01,
                     help="significance for timings with raw repeats (one-sided Mann-Whitney U), between 0 and "
                          "1 (default 0.01)")
    cmp.add_argument("--json", action="store_true", help="the comparison as JSON (exit status as without it)")
    cmp.set_defaults(func=cmd_compare)

    dash = sub.add_parser("dashboard", help="asv publish, then serve the site (the history dashboard)",
                          description="Publish the asv history (this checkout's, or --results DIR of your own) into a "
                          "static site and serve it on 127.0.0.1 (--host to open it to a network) until Ctrl-C.")
    dash.add_argument("--no-serve", action="store_true", help="publish only and print the index.html path")
    dash.add_argument("--port", type=int, default=8080, help="port to serve on, 1..65535 (default 8080)")
    dash.add_argument("--host", default="127.0.0.1",
                      help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to "
                           "every network interface)")
    dash.add_argument("--config", help="asv config (default: ./asv.conf.json or the repository's)")
    dash.add_argument("--results", metavar="DIR", help="an asv results folder of your own (benchmarks.json and one "
                                                       "folder per machine), e.g. outside any checkout")
    dash.add_argument("--repo", metavar="PATH", help="with --results: the git clone holding the measured commits "
                                                     "(default: the checkout resbench runs from)")
    dash.add_argument("--html", metavar="DIR", help="with --results: where the site goes (default: asv-html "
                                                    "beside the results folder)")
    dash.add_argument("--js-dir", metavar="DIR",
                      help="where the page's jQuery, flot, bootstrap, stupidtable and md5 come from, laid out as "
                           "Debian's /usr/share/javascript (default: that folder when it holds them all)")
    dash.add_argument("--online", action="store_true",
                      help="keep asv's CDN tags: the page then needs the internet to show anything")
    dash.set_defaults(func=cmd_dashboard)
