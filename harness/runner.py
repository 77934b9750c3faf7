"""Suite → cells → jobs → executor → worker process → records.

plan: the suite's cells, less those finished (resume), grouped into jobs as each workload says (a
job is one cell, or every variant of a throughput group, whose repeats are interleaved in one
process). execute: an executor runs each job's worker somewhere (executors/: `local`, `slurm`)
and hands back its records. record: each is verified and appended, once, under the results
file's lock. A sweep never stops for one bad cell: a crash, a kill, running out of memory or a
timeout becomes that cell's status. Re-running resumes: finished cells are skipped.
"""
from __future__ import annotations

import sys
import uuid
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from . import executors, workloads
from .config import Cell, Suite, expand_cells
from .errors import UserError
from .executors import Context, Job
from .executors.process import default_memory_cap
from .executors.shards import Appender, pending
from .provenance import environment, producer, system
from .results import check_writable, exclusive, finished_keys

# --only KEY=VALUE: what each key reads of a cell
SELECTORS = {"variant": "variant", "label": "label", "shape": "shape_name", "workload": "workload", "seed": "seed",
             "precision": "precision", "compile": "compile"}


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but no CUDA GPU is available (torch.cuda.is_available() is False); "
                        "use device: cpu or auto")
    return requested


def plan_jobs(cells: list[Cell], todo: set[str]) -> list[list[Cell]]:
    """Jobs holding at least one unfinished cell, grouped as each workload says (workload order)."""
    jobs = []
    for wl in workloads.registered():
        jobs += wl.jobs([c for c in cells if c.workload == wl.name], todo)
    return jobs


def plan(cells: list[Cell], todo: set[str], timeout_s: float) -> list[Job]:
    """The jobs, each with the cells it records: a cell in several jobs (the baseline of every
    `group: pair`) is recorded by the first."""
    out, claimed = [], set()
    for n, cells_ in enumerate(plan_jobs(cells, todo)):
        mine = tuple(c.key for c in cells_ if c.key in todo and c.key not in claimed)
        claimed.update(mine)
        wl = workloads.get(cells_[0].workload)
        out.append(Job(n, cells_, timeout_s * len(cells_), wl.times(cells_[0].params), mine))
    return out


def parse_only(specs: list[str]) -> dict[str, set[str]]:
    """`variant=a,shape=s` (several flags or commas; a key given twice: either value)."""
    out: dict[str, set[str]] = {}
    for spec in specs:
        for item in filter(None, (x.strip() for x in spec.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key not in SELECTORS or not value:
                raise UserError(f"--only {item!r}: give KEY=VALUE with KEY one of {', '.join(SELECTORS)}")
            out.setdefault(key, set()).add(value)
    return out


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    i, sep, n = spec.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):
        raise UserError(f"--shard {spec!r}: give I/N with 1 <= I <= N (e.g. 1/4)")
    return int(i), int(n)


def selection(cells: list[Cell], only: dict | None = None, shard: tuple[int, int] | None = None) -> set[str]:
    """Keys of the cells `--only` keeps, in shard i of n: shards are whole jobs of the plan of
    every cell (so a shard is the same however much of the suite is finished), job j in shard
    j mod n + 1."""
    keep = {c.key for c in cells if all(str(getattr(c, SELECTORS[k])) in v for k, v in (only or {}).items())}
    if shard:
        i, n = shard
        keep &= {k for j in plan(cells, {c.key for c in cells}, 0.0) if j.index % n == i - 1 for k in j.todo}
    return keep


def preflight(suite: Suite) -> None:
    """Errors a user can fix surface once, before any cell runs (each workload's own checks)."""
    for wl_name, params in suite.workloads.items():
        workloads.get(wl_name).preflight(params, suite.shapes)


def run_suite(suite: Suite, out: Path, force: bool = False, device: str | None = None, progress: bool = True,
              resume_any: bool = False, only: dict | None = None, shard: tuple[int, int] | None = None,
              detach: bool = False) -> list[dict]:
    """Run every unfinished cell of the suite (of `only`, of `shard` i/n of the jobs) with the
    suite's executor; append and return the new records. A cell counts as finished only if this
    code on this machine (provenance.producer) finished it, unless ``resume_any``. The results
    file is held exclusively for the whole run; earlier submissions to a cluster are gathered
    into it first."""
    device = resolve_device(device or suite.device)
    check_writable(out)
    preflight(suite)
    cells = expand_cells(suite, device)
    name, params = suite.executor
    executor = executors.get(name)
    params = params if params is not None else executor.Params()
    with exclusive(out):
        appender = Appender(out)
        earlier = pending(out)
        if earlier:  # a crashed or detached submission: its records first, so resume sees them
            from .executors.slurm import gather

            gather(earlier, appender, progress)
        sysinfo = system()
        here = environment(device, sysinfo)
        cap = suite.memory_cap_gb * 2**30 if suite.memory_cap_gb else default_memory_cap()
        limits = {"memory_cap_bytes": cap, "timeout_s": suite.timeout_s}
        done, foreign = (set(), 0) if force else finished_keys(out, None if resume_any else producer(here), limits)
        if foreign:
            warnings.warn(f"{out}: {foreign} finished cell(s) there were measured by other code or on another "
                          "machine; they are measured again here (--resume-any reuses them)", stacklevel=2)
        keep = selection(cells, only, shard)
        todo = {c.key for c in cells if c.key not in done and c.key in keep}
        jobs = plan(cells, todo, suite.timeout_s)
        executor.check(params, jobs, device)
        ctx = Context(suite.name, uuid.uuid4().hex[:12], limits, out, sysinfo, detach=detach, progress=progress,
                      extra={"memory_cap": cap if suite.memory_cap_gb else None})
        return _execute(executor, params, jobs, ctx, appender, len(keep) - len(todo))


def _execute(executor, params, jobs: list[Job], ctx: Context, appender: Appender, before: int) -> list[dict]:
    records: list[dict] = []
    total = sum(len(j.todo) for j in jobs)
    bar = tqdm(total=total, unit="cell", disable=not ctx.progress, file=sys.stderr,
               desc=f"{ctx.suite_name} ({before} done before)" if before else ctx.suite_name)
    inner = tqdm(total=0, unit="call", desc="  timed calls", leave=False, position=1, file=sys.stderr,
                 disable=not ctx.progress)

    def deliver(job: Job, recs: list[dict]) -> None:
        new = appender.add([r for r in recs if r["key"] in job.todo])
        records.extend(new)
        bar.update(len(new))

    def on_progress(job: Job, done: int, total: int) -> None:
        if workloads.get(job.cells[0].workload).timed_calls:
            if done == 0 or inner.total != total:
                inner.reset(total)
                bar.set_postfix_str(f"{job.cells[0].workload} {job.cells[0].shape_name} "
                                    + ",".join(c.label for c in job.cells)[:60])
            inner.update(done - inner.n)

    ctx.deliver, ctx.on_progress = deliver, on_progress
    ctx.on_status = bar.set_postfix_str
    try:
        executor.execute(params, jobs, ctx)
    finally:
        inner.close()
        bar.close()
    return records
