"""`resbench run` and `resbench report`: the measuring commands."""
from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
import warnings
from pathlib import Path

from . import studies
from . import executors
from .catalog import cmd_suites
from .config import apply_overrides, expand_cells, parse_executor, read_yaml, resolve_suite_path
from .errors import UserError
from .executors.shards import Appender, pending
from .executors.slurm import gather
from .provenance import checkout_root, environment, producer
from .report import render, tables
from .results import FINISHED, LOCAL_DIR, default_results_path, exclusive, read_records, results_root, warn_to_stderr
from .runner import parse_only, parse_shard, resolve_device, run_suite, selection


def cmd_run(args) -> int:
    """Any suite: its `kind:` picks the study (none: a plain measurement suite)."""
    path = resolve_suite_path(args.suite)
    study, cfg = studies.parse(apply_overrides(read_yaml(path), getattr(args, "set", None) or []),
                               default_name=path.stem)
    wanted = getattr(args, "kind", None)  # a shortcut subcommand (scale, project) runs one kind
    if wanted and (study is None or study.name != wanted):
        raise UserError(f"`resbench {args.command}` runs a `kind: {wanted}` suite; {path} is "
                        f"{'a measurement suite' if study is None else f'kind: {study.name}'} (use `resbench run`)")
    suite = with_executor(cfg, args)
    out = Path(args.out) if args.out else default_results_path(suite.name)
    only, shard = parse_only(args.only or []), parse_shard(args.shard)
    _warn_other_checkout()
    records = run_suite(suite, out, force=args.force, device=args.device, progress=not args.quiet,
                        resume_any=args.resume_any, only=only, shard=shard, detach=args.detach)
    if args.detach:
        return 0
    if not records:
        print(f"all cells of {suite.name!r} already finished in {out} (use --force to redo them)", file=sys.stderr)
    # this suite's cells as this code on this machine measured them (other lines of the file: `report`)
    keys = selection(expand_cells(suite, resolve_device(args.device or suite.device)), only, shard)
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


EXECUTOR_FLAGS = ("executor", "devices", "slots", "partition", "account", "qos", "max_concurrent", "exclusive",
                  "gpus_per_task", "time_limit_min", "sbatch_args")


def with_executor(suite, args):
    """The suite with the command line's executor settings on top of its own `executor:`."""
    over = {k: getattr(args, k, None) for k in EXECUTOR_FLAGS}
    if not any(v is not None for v in over.values()):
        return suite
    name, params = suite.executor
    raw = {"type": name, **(dataclasses.asdict(params) if params is not None else {})}
    over["type"] = over.pop("executor")
    return dataclasses.replace(suite, executor=parse_executor(raw, over))


def cmd_gather(args) -> int:
    """Collect the records of earlier submissions to a cluster into their results file."""
    out = Path(args.results)
    subs = pending(out)
    if not subs:
        print(f"nothing to gather for {out}: no submission of it is waiting", file=sys.stderr)
        return 0
    with exclusive(out):
        got, complete = gather(subs, Appender(out), progress=not args.quiet, block=not args.no_wait)
    counts = Counter(r["status"] for r in got)
    print(f"gathered {len(got)} record(s) into {out}: " + (", ".join(f"{n} {s}" for s, n in counts.most_common())
                                                          or "none") + ("" if complete else
                                                                        "; tasks still running (gather again later)"),
          file=sys.stderr)
    return 0 if complete and all(r["status"] in FINISHED for r in got) else 1


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
    if args.set and not args.suite:
        raise UserError("--set changes a suite: it goes with --suite")
    study, cfg = studies.load(args.suite, args.set or []) if args.suite else (None, None)
    out = Path(args.out) if args.out else results_root() / LOCAL_DIR / (cfg.name if cfg else "report")
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
                         "for a suite with a `kind:`, its study's report",
                         description="Expand the suite into cells, run every cell not finished yet (by this code on "
                         "this machine) in fresh worker processes, append one record per cell to the results file, "
                         "and print the tables (and the study's report for a suite with a `kind:`). Exit 0 when every "
                         "cell finished (and every target was met), 1 otherwise, 2 on a user error.")
    run_arguments(run, "quick")
    run.set_defaults(func=cmd_run)

    su = sub.add_parser("suites", help="the shipped suites: kind, cells, purpose and how long a reference run took",
                        description="Lists every shipped suite (benchmarks/suites/) with its study kind, device, the "
                        "number of cells it expands to, what it is for, and the wall time of its committed reference "
                        "run (a checkout only). --show NAME prints a suite's file, to copy and edit.")
    su.add_argument("--json", action="store_true", help="the rows as JSON")
    su.add_argument("--show", metavar="NAME", help="print this shipped suite's YAML")
    su.set_defaults(func=cmd_suites)

    ga = sub.add_parser("gather", help="collect the records of Slurm submissions (a --detach run, or one whose "
                        "submitting process died) into their results file",
                        description="Waits for the tasks of every submission of RESULTS not yet gathered, then "
                        "appends their records (each once) under the file's lock. Exit 0 when every gathered cell "
                        "finished, 1 otherwise.")
    ga.add_argument("results", metavar="RESULTS", help="the results JSONL the submission was for")
    ga.add_argument("--no-wait", action="store_true", help="gather what is finished and return, tasks still running "
                                                           "stay for a later gather (exit 1)")
    ga.add_argument("--quiet", action="store_true", help="no progress bar")
    ga.set_defaults(func=cmd_gather)

    rep = sub.add_parser("report", help="re-render the tables of results files, or a study's report (--suite)",
                         description="The tables of any results files (one per shape, precision, compile mode and "
                         "producer; the newest record per cell), or with --suite the report of that suite's study "
                         "(overhead: exit 1 if a target is missed; loss: report.md and plots in --out).")
    rep.add_argument("results", nargs="+", help="results JSONL file(s)")
    rep.add_argument("--suite", metavar="SUITE", help="render the report of this suite's study (its `kind:`): "
                     "overhead checks the targets (exit 1 if one is missed), loss writes report.md + PNG plots, "
                     "scaling / projection re-render their tables and plots")
    rep.add_argument("--out", metavar="DIR", help="where a study's report files go (default: "
                     "results/local/<suite name>)")
    rep.add_argument("--json", action="store_true", help="the tables as JSON (raw numbers: ms, bytes, ratios); "
                     "not with --suite")
    rep.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="with --suite: the same changes the run was given (repeatable)")
    rep.set_defaults(func=cmd_report)

    for study in studies.registered():  # shortcuts: `resbench scale` = `resbench run scaling`
        if study.command:
            sc = sub.add_parser(study.command, help=f"{study.help} (= resbench run on a kind: {study.name} suite)",
                                description=f"{study.help[0].upper()}{study.help[1:]}: `resbench run` on a "
                                f"kind: {study.name} suite (default: the shipped {study.default_suite}).")
            run_arguments(sc, study.default_suite)
            sc.set_defaults(func=cmd_run, kind=study.name)


def run_arguments(run, default: str) -> None:
    """The arguments of `resbench run` (and of its shortcuts, with their default suite)."""
    run.add_argument("suite", nargs="?", default=default, help=f"suite YAML path or shipped suite name (default: {default})")
    run.add_argument("--out", help="results JSONL (default: results/local/<suite name>.jsonl under the resbench "
                     "checkout you are in, else under the working directory); a study's report files go in "
                     "the folder of the same name without .jsonl")
    run.add_argument("--force", action="store_true", help="redo cells that already have a finished record")
    run.add_argument("--resume-any", action="store_true",
                     help="also skip cells finished by other code or on another machine (default: only this code, "
                          "this machine and this torch count as finished)")
    run.add_argument("--device", choices=("cpu", "cuda", "auto"), help="override the suite's device")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="change one value of the suite before it is checked, e.g. workloads.loss.steps=10 or "
                          "shapes[0].d_model=256 (VALUE is YAML; repeatable; docs/SUITES.md)")
    run.add_argument("--only", action="append", metavar="KEY=VALUE,...",
                     help="run only these cells (keys: variant, label, shape, workload, seed, precision, compile; a "
                          "key given twice: either value); their throughput partners run too")
    run.add_argument("--shard", metavar="I/N", help="run shard I of N: every N-th job of the plan, whole jobs (split "
                                                   "a suite across machines by hand, then `report` the files together)")
    ex = run.add_argument_group("executor: where each job's worker runs (default: the suite's `executor:`, else "
                                "local, one job at a time; docs/CLUSTER.md)")
    ex.add_argument("--executor", choices=executors.names(), help="local (this machine) or slurm (a job array)")
    ex.add_argument("--devices", help="local: device ids, one job per device at once, e.g. 0,1,2,3")
    ex.add_argument("--slots", type=int, help="local, CPU: untimed jobs side by side (a timed job runs alone; "
                                              "default 1)")
    ex.add_argument("--partition", help="slurm: sbatch --partition")
    ex.add_argument("--account", help="slurm: sbatch --account")
    ex.add_argument("--qos", help="slurm: sbatch --qos")
    ex.add_argument("--max-concurrent", type=int, help="slurm: array tasks running at once (--array=...%%K; "
                                                       "default: no cap)")
    ex.add_argument("--exclusive", choices=("none", "timed", "all"), help="slurm: which tasks get whole nodes "
                                                                        "(default none)")
    ex.add_argument("--gpus-per-task", type=int, help="slurm: --gres=gpu:K per task (default: the job's ranks on "
                                                      "cuda, 0 on cpu)")
    ex.add_argument("--time-limit-min", type=int, help="slurm: each task's --time in minutes (default: the job's "
                                                       "timeout_s + 2)")
    ex.add_argument("--sbatch-arg", dest="sbatch_args", action="append", metavar="OPT",
                    help="slurm: one more sbatch option, verbatim (repeatable), e.g. --sbatch-arg=--constraint=h100")
    ex.add_argument("--detach", action="store_true", help="slurm: submit and return; collect with `resbench gather`")
