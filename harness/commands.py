"""`resbench run` and `resbench report`: the measuring commands."""
from __future__ import annotations

import json
import sys
from collections import Counter
import warnings
from pathlib import Path

from . import studies
from .config import expand_cells, read_yaml, resolve_suite_path
from .errors import UserError
from .provenance import checkout_root, environment, producer
from .report import render, tables
from .results import FINISHED, LOCAL_DIR, default_results_path, read_records, results_root, warn_to_stderr
from .runner import resolve_device, run_suite


def cmd_run(args) -> int:
    """Any suite: its `kind:` picks the study (none: a plain measurement suite)."""
    path = resolve_suite_path(args.suite)
    study, cfg = studies.parse(read_yaml(path), default_name=path.stem)
    wanted = getattr(args, "kind", None)  # a shortcut subcommand (scale, project) runs one kind
    if wanted and (study is None or study.name != wanted):
        raise UserError(f"`resbench {args.command}` runs a `kind: {wanted}` suite; {path} is "
                        f"{'a measurement suite' if study is None else f'kind: {study.name}'} (use `resbench run`)")
    if study is not None and study.own_schema:
        given = [f"--{n.replace('_', '-')}" for n in ("force", "resume_any", "device") if getattr(args, n, None)]
        if given:
            raise UserError(f"{' '.join(given)} does not apply to a {study.name} suite (its cells run in-process, "
                            "always all of them)")
        return study.run(cfg, Path(args.out) if args.out else results_root() / LOCAL_DIR / "scaling",
                         progress=not args.quiet)
    suite = cfg
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
    if study is not None and shown:
        text, met = study.analyse(shown, suite, out.with_suffix(""))  # its files beside the records
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
    """The tables of any records; with --suite, that suite's study report (exit 1 if its checks fail)."""
    if args.suite and args.json:
        raise UserError("--json gives the plain tables; a study's report (--suite) is Markdown: drop one of them")
    study, cfg = studies.load(args.suite) if args.suite else (None, None)
    out = Path(args.out) if args.out else results_root() / LOCAL_DIR / (cfg.name if cfg else "report")
    if study is not None and study.own_schema:
        return study.report(args.results, cfg, out)
    records = read_records(*args.results)
    if not records:
        raise UserError(f"no records in {', '.join(args.results)}")
    if args.json:
        print(json.dumps([{k: v for k, v in t.items() if k != "records"} for t in tables(records)], indent=1),
              file=getattr(args, "stdout", sys.stdout))
        return 0
    if study is None:
        print(render(records))
        return 0
    text, ok = study.analyse(records, cfg, out)
    print(text)
    return 0 if ok else 1


def add_subcommands(sub) -> None:
    warnings.showwarning = warn_to_stderr
    run = sub.add_parser("run", help="run any suite (default: the shipped quick suite) and print its tables and, "
                         "for a suite with a `kind:`, its study's report")
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

    rep = sub.add_parser("report", help="re-render the tables of results files, or a study's report (--suite)")
    rep.add_argument("results", nargs="+", help="results JSONL file(s) (a scaling or projection study: its .jsonl)")
    rep.add_argument("--suite", metavar="SUITE", help="render the report of this suite's study (its `kind:`): "
                     "overhead checks the targets (exit 1 if one is missed), loss writes report.md + PNG plots, "
                     "scaling / projection re-render their tables and plots")
    rep.add_argument("--out", metavar="DIR", help="where a study's report files go (default: "
                     "results/local/<suite name>)")
    rep.add_argument("--json", action="store_true", help="the tables as JSON (raw numbers: ms, bytes, ratios); "
                     "not with --suite")
    rep.set_defaults(func=cmd_report)

    for study in studies.registered():  # shortcuts: `resbench scale` = `resbench run scaling`
        if study.command:
            sc = sub.add_parser(study.command, help=f"{study.help} (= resbench run on a kind: {study.name} suite)")
            sc.add_argument("suite", nargs="?", default=study.default_suite,
                            help=f"{study.name} YAML path or shipped name (default: {study.default_suite})")
            sc.add_argument("--out", help="output directory (default: results/local/scaling)")
            sc.add_argument("--quiet", action="store_true", help="no per-cell progress lines")
            sc.set_defaults(func=cmd_run, kind=study.name)
