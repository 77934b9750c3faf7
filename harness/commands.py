"""`resbench run` and `resbench report`: the measuring commands."""
from __future__ import annotations

import json
import sys
from collections import Counter
import warnings
from pathlib import Path

from .config import expand_cells, load_suite, parse_suite, read_yaml, resolve_suite_path
from .errors import UserError
from .overhead import render_overhead
from .provenance import checkout_root, environment, producer
from .report import render, tables
from .results import FINISHED, default_results_path, read_records, results_root, warn_to_stderr
from .runner import resolve_device, run_suite


STUDY_KINDS = {"scaling": "cmd_scale", "projection": "cmd_project"}  # suites with their own `kind:`


def cmd_run(args) -> int:
    """Any suite: a measurement suite (cells of workloads), or a study suite with a `kind:`."""
    path = resolve_suite_path(args.suite)
    raw = read_yaml(path)  # read once: its kind decides which command runs it
    kind = raw.get("kind") if isinstance(raw, dict) else None
    if kind in STUDY_KINDS:
        from .studies import scaling

        given = [f"--{n.replace('_', '-')}" for n in ("force", "resume_any", "device") if getattr(args, n)]
        if given:
            raise UserError(f"{' '.join(given)} does not apply to a {kind} suite (its cells run in-process, "
                            "always all of them)")
        return getattr(scaling, STUDY_KINDS[kind])(args)
    suite = parse_suite(raw, default_name=path.stem)
    out = Path(args.out) if args.out else default_results_path(suite.name)
    _warn_other_checkout()
    records = run_suite(suite, out, force=args.force, device=args.device, progress=not args.quiet,
                        resume_any=args.resume_any)
    if not records:
        print(f"all cells of {suite.name!r} already finished in {out} (use --force to redo them)", file=sys.stderr)
    # this suite's cells as this code on this machine measured them (other lines of the file: `report`)
    keys = {c.key for c in expand_cells(suite, resolve_device(args.device or suite.device))}
    mine = producer(environment("cpu"))
    shown = [r for r in read_records(out) if r["key"] in keys
             and (args.resume_any or producer(r.get("env") or {}) == mine)]
    print(render(shown))
    for t in tables(shown):
        if t["unstable"]:
            warnings.warn(f"{t['heading'].split(':')[0]}: {t['unstable']}", stacklevel=2)
    met = True
    if suite.targets:
        text, met = render_overhead(shown, suite.targets)
        print(text)
    latest = {r["key"]: r["status"] for r in shown}
    unfinished = {k for k in keys if latest.get(k) not in FINISHED}
    counts = Counter(latest.get(k, "missing") for k in keys)
    print(f"records: {out} — {len(keys)} cells: " + ", ".join(f"{n} {s}" for s, n in counts.most_common())
          + (f"; {len(unfinished)} not finished (rerun to retry them)" if unfinished else ""), file=sys.stderr)
    return 0 if not unfinished and met else 1


def _warn_other_checkout() -> None:
    """An editable install runs the checkout it was installed from, wherever the user stands."""
    here, code = results_root().parent, checkout_root()
    if code is not None and (here / "harness").is_dir() and here.resolve() != code.resolve():
        warnings.warn(f"you are in the checkout {here}, but resbench runs the code of {code} (its editable "
                      f"install); records carry that code's commit. Install this checkout to measure it.", stacklevel=2)


def cmd_report(args) -> int:
    records = read_records(*args.results)
    if not records:
        raise UserError(f"no records in {', '.join(args.results)}")
    if args.loss_study:
        from .studies.loss import report

        print(report(records, Path(args.loss_study)))
        print(f"report and plots: {args.loss_study}", file=sys.stderr)
    elif args.targets:
        text, met = render_overhead(records, load_suite(args.targets).targets)
        print(text)
        return 0 if met else 1
    elif args.json:
        print(json.dumps([{k: v for k, v in t.items() if k != "records"} for t in tables(records)], indent=1))
    else:
        print(render(records))
    return 0


def add_subcommands(sub) -> None:
    warnings.showwarning = warn_to_stderr
    run = sub.add_parser("run", help="run a suite (default: the shipped quick suite) and print the table; a "
                         "scaling or projection suite runs as `resbench scale` / `resbench project` would")
    run.add_argument("suite", nargs="?", default="quick", help="suite YAML path or shipped suite name (default: quick)")
    run.add_argument("--out", help="results JSONL (default: results/local/<suite name>.jsonl under the resbench "
                     "checkout you are in, else under the working directory); for a scaling or projection "
                     "suite, the output directory (default: results/local/scaling)")
    run.add_argument("--force", action="store_true", help="redo cells that already have a finished record")
    run.add_argument("--resume-any", action="store_true",
                     help="also skip cells finished by other code or on another machine (default: only this code, "
                          "this machine and this torch count as finished)")
    run.add_argument("--device", choices=("cpu", "cuda", "auto"), help="override the suite's device")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="re-render the tables of one or more results files")
    rep.add_argument("results", nargs="+", help="results JSONL file(s)")
    rep.add_argument("--loss-study", metavar="DIR", help="render the loss-study report (statistics over seeds, "
                     "compute-equivalence, time-to-target, dynamics) as DIR/report.md with PNG plots")
    rep.add_argument("--targets", metavar="SUITE", help="the cost-vs-prenorm table, checked against the suite's "
                     "targets (e.g. overhead); exit 1 if one is not met")
    rep.add_argument("--json", action="store_true", help="the tables as JSON (raw numbers: ms, bytes, ratios)")
    rep.set_defaults(func=cmd_report)
