"""`resbench run` and `resbench report`: the measuring commands."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

from .config import load_suite
from .overhead import render_overhead
from .report import render
from .results import default_results_path, read_records, warn_to_stderr
from .runner import run_suite


def cmd_run(args) -> int:
    suite = load_suite(args.suite)
    out = Path(args.out) if args.out else default_results_path(suite.name)
    records = run_suite(suite, out, force=args.force, device=args.device, progress=not args.quiet)
    if not records:
        print(f"all cells of {suite.name!r} already finished in {out} (use --force to redo them)", file=sys.stderr)
    print(render(read_records(out)))
    if suite.targets:
        print(render_overhead(read_records(out), suite.targets)[0])
    print(f"records: {out}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    records = read_records(*args.results)
    if args.loss_study:
        from .studies.loss import report

        print(report(records, Path(args.loss_study)))
        print(f"report and plots: {args.loss_study}", file=sys.stderr)
    elif args.targets:
        text, met = render_overhead(records, load_suite(args.targets).targets)
        print(text)
        return 0 if met else 1
    else:
        print(render(records))
    return 0


def add_subcommands(sub) -> None:
    warnings.showwarning = warn_to_stderr
    run = sub.add_parser("run", help="run a suite (default: the shipped quick suite) and print the table")
    run.add_argument("suite", nargs="?", default="quick", help="suite YAML path or shipped suite name (default: quick)")
    run.add_argument("--out", help="results JSONL (default: results/<suite name>.jsonl)")
    run.add_argument("--force", action="store_true", help="redo cells that already have a finished record")
    run.add_argument("--device", choices=("cpu", "cuda", "auto"), help="override the suite's device")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="re-render the tables of one or more results files")
    rep.add_argument("results", nargs="+", help="results JSONL file(s)")
    rep.add_argument("--loss-study", metavar="DIR", help="render the loss-study report (statistics over seeds, "
                     "compute-equivalence, time-to-target, dynamics) as DIR/report.md with PNG plots")
    rep.add_argument("--targets", metavar="SUITE", help="the cost-vs-prenorm table, checked against the suite's "
                     "targets (e.g. overhead); exit 1 if one is not met")
    rep.set_defaults(func=cmd_report)
