"""`slurm`: the jobs as Slurm job arrays, one array task per job, submitted with `sbatch`.

A task runs `python -m resbench.executors.task FOLDER GROUP` on its node: the same worker
process, timeout and memory cap as a local job, its records written whole to its own shard
(shards.py). This process shows progress from `squeue`, and gathers the shards into the results
file under its lock. A task that ends without records gets its status from Slurm's own state
(`scontrol`, else `sacct`): TIMEOUT → timeout, OUT_OF_MEMORY → oom, CANCELLED / PREEMPTED /
NODE_FAIL → killed, FAILED → error, each with Slurm's reason. Tasks are `--requeue`d when
preempted and recorded once. `--detach` submits and returns; `resbench gather` (or the same
`run` again) collects later, and nothing a finished task wrote is lost if this process dies.

sbatch rather than a Python client: a task is a command on a job file (no pickled closure whose
Python must match the login node's), an array carries the concurrency cap (%k), and Slurm's
state is read from its own tools, which work with or without an accounting database.
"""
from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import ConfigError, UserError
from ..results import make_record
from .base import Context, Executor, Job, register
from .process import child_environment
from .shards import read_manifest, read_shard, submissions_dir, write_json, write_shard

EXCLUSIVE = ("none", "timed", "all")
# Slurm's end states → resbench statuses (docs/CLUSTER.md)
STATES = {"TIMEOUT": "timeout", "DEADLINE": "timeout", "OUT_OF_MEMORY": "oom", "CANCELLED": "killed",
          "PREEMPTED": "killed", "NODE_FAIL": "killed", "BOOT_FAIL": "killed", "FAILED": "error",
          "COMPLETED": "error", "SPECIAL_EXIT": "error"}
LIVE = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "CONFIGURING",
        "COMPLETING", "STAGE_OUT", "SIGNALING", "STOPPED", "RESV_DEL_HOLD")
MARGIN_S = 120  # a task's time limit beyond its job's timeout: start-up, imports, writing its shard


@dataclass(frozen=True)
class Params:
    partition: str = ""
    account: str = ""
    qos: str = ""
    max_concurrent: int = 0  # array tasks running at once (%k); 0: as many as Slurm gives
    exclusive: str = "none"  # none | timed | all: which tasks ask for whole nodes (--exclusive)
    gpus_per_task: int = -1  # -1: the job's ranks on cuda, none on cpu
    cpus_per_task: int = 0  # 0: the job's threads x ranks
    time_limit_min: int = 0  # 0: from the job's timeout_s (+ 2 min)
    sbatch_args: tuple = ()  # more sbatch options, verbatim (e.g. --constraint=h100)
    poll_s: float = 5.0
    python: str = ""  # the interpreter on the nodes (default: this one, on the shared filesystem)


@register("slurm")
class Slurm(Executor):
    Params = Params
    help = "a Slurm cluster: one array task per job, records gathered from shards"

    def check(self, params, jobs, device):
        if params.exclusive not in EXCLUSIVE:
            raise ConfigError(f"executor.exclusive must be one of {', '.join(EXCLUSIVE)}; got {params.exclusive!r}")
        if shutil.which("sbatch") is None:
            raise UserError("executor slurm: no `sbatch` on this machine's PATH (run on a Slurm login node)")
        if any(j.cells[0].launch.get("nnodes", 1) > 1 for j in jobs if j.cells[0].launch):
            raise ConfigError("executor slurm runs a job on one node: launcher.nnodes must be 1")
        if params.exclusive == "none" and any(j.timed for j in jobs):
            warnings.warn("timed jobs go to Slurm without --exclusive: they may share a node's CPUs with other "
                          "tasks (ratios are paired in one process; absolute times are not): --exclusive timed",
                          stacklevel=2)

    def execute(self, params, jobs, ctx: Context):
        folder = submissions_dir(ctx.out) / ctx.run_id
        submit(params, jobs, ctx, folder)
        if ctx.detach:
            n = sum(len(j.todo) for j in jobs)
            print(f"submitted {len(jobs)} jobs ({n} cells) to Slurm ({folder}); collect their records with "
                  f"`resbench gather {ctx.out}`", file=sys.stderr)
            return
        wait(folder, ctx, params.poll_s)


# -- submitting ---------------------------------------------------------------------------------

def groups(params: Params, jobs: list[Job], device: str) -> list[dict]:
    """Jobs that share sbatch options (exclusive, GPUs, CPUs) go in one array."""
    out: dict[tuple, dict] = {}
    for job in jobs:
        gpus = params.gpus_per_task if params.gpus_per_task >= 0 else (job.ranks if device == "cuda" else 0)
        cpus = params.cpus_per_task or job.threads * job.ranks
        exclusive = params.exclusive == "all" or (params.exclusive == "timed" and job.timed)
        g = out.setdefault((exclusive, gpus, cpus), {"exclusive": exclusive, "gpus": gpus, "cpus": cpus,
                                                     "jobs": [], "timeout_s": 0.0, "timed": job.timed})
        g["jobs"].append(job.index)
        g["timeout_s"] = max(g["timeout_s"], job.timeout_s)
    return list(out.values())


def sbatch_command(params: Params, group: dict, n: int, folder: Path, name: str) -> list[str]:
    minutes = params.time_limit_min or math.ceil((group["timeout_s"] + MARGIN_S) / 60)
    cmd = ["sbatch", "--parsable", f"--array=0-{n - 1}" + (f"%{params.max_concurrent}" if params.max_concurrent else ""),
           f"--job-name=resbench-{name}", f"--time={minutes}", f"--cpus-per-task={group['cpus']}", "--ntasks=1",
           f"--output={folder / 'logs' / '%A_%a.out'}", "--open-mode=append", "--requeue", f"--chdir={os.getcwd()}"]
    if group["gpus"]:
        cmd.append(f"--gres=gpu:{group['gpus']}")
    if group["exclusive"]:
        cmd.append("--exclusive")
    cmd += [f"--{k}={getattr(params, k)}" for k in ("partition", "account", "qos") if getattr(params, k)]
    return cmd + list(params.sbatch_args)


def submit(params: Params, jobs: list[Job], ctx: Context, folder: Path) -> None:
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    device = jobs[0].cells[0].device if jobs else "cpu"
    gs = groups(params, jobs, device)
    manifest = {"suite": ctx.suite_name, "run": ctx.run_id, "limits": ctx.limits, "results": str(ctx.out),
                "memory_cap": ctx.extra.get("memory_cap"), "jobs": [j.to_dict() for j in jobs], "groups": gs}
    write_json(folder / "manifest.json", manifest)
    python = params.python or sys.executable
    env = child_environment()
    submitted = []
    try:
        for i, g in enumerate(gs):
            script = folder / f"group-{i}.sh"
            script.write_text("#!/bin/bash\n# one array task = one resbench job (resbench.executors.task)\n"
                              f"exec {shlex.quote(python)} -m resbench.executors.task {shlex.quote(str(folder))} {i}\n")
            cmd = sbatch_command(params, g, len(g["jobs"]), folder, ctx.suite_name) + [str(script)]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
            if res.returncode != 0:
                why = " ".join((res.stderr or res.stdout).split())[:300]
                raise UserError(f"sbatch refused the array ({why}); command: {shlex.join(cmd)}"[:600])
            g["slurm_id"] = res.stdout.strip().split(";")[0]
            submitted.append(g["slurm_id"])
            write_json(folder / "manifest.json", manifest)  # each array's id as soon as it is known
    except BaseException:
        for sid in submitted:  # half a submission would be gathered as if it were whole
            subprocess.run(["scancel", sid], capture_output=True)
        raise


# -- waiting and gathering ----------------------------------------------------------------------

def wait(folder: Path, ctx: Context, poll_s: float = 5.0, block: bool = True) -> bool:
    """Deliver each job's records as its shard appears; a task that ends without one gets Slurm's
    state. True once every job is delivered (`block` False: one look, for `gather --no-wait`)."""
    manifest = read_manifest(folder)
    jobs = {j["index"]: Job.from_dict(j) for j in manifest["jobs"]}
    where = {idx: (g["slurm_id"], n) for g in manifest["groups"] if g.get("slurm_id") for n, idx in enumerate(g["jobs"])}
    left = set(jobs)
    while True:
        live = _live(sorted({sid for sid, _ in where.values()}))
        for idx in sorted(left):
            recs = read_shard(folder, idx)
            task = where.get(idx)
            if recs is None and task is not None and f"{task[0]}_{task[1]}" not in live:
                recs = read_shard(folder, idx)  # it may have written it as it left
                if recs is None:
                    recs = _ended(folder, jobs[idx], manifest, task)
                    write_shard(folder, idx, recs)
            if recs is not None:
                ctx.deliver(jobs[idx], recs)
                left.discard(idx)
        if ctx.on_status:
            running = sum(1 for s in live.values() if s == "RUNNING")
            ctx.on_status(f"slurm: {running} running, {len(live) - running} waiting")
        if not left:
            (folder / "gathered").write_text(manifest["run"] + "\n")
            return True
        if not block:
            return False
        time.sleep(poll_s)


def gather(folders: list[Path], appender, progress: bool = True, block: bool = True,
           poll_s: float = 5.0) -> tuple[list[dict], bool]:
    """Each submission's records into the results file (`appender`, under its lock), waiting for
    live tasks unless not `block`: (the records added, whether every submission is complete)."""
    got, complete = [], True
    for folder in folders:
        manifest = read_manifest(folder)
        bar = tqdm(total=sum(len(j["todo"]) for j in manifest["jobs"]), unit="cell", disable=not progress,
                   file=sys.stderr, desc=f"gather {manifest['suite']} ({folder.name})")

        def deliver(job: Job, recs: list[dict], bar=bar) -> None:
            new = appender.add([r for r in recs if r["key"] in job.todo])
            got.extend(new)
            bar.update(len(new))

        ctx = Context(manifest["suite"], manifest["run"], manifest["limits"], appender.out, deliver=deliver,
                      on_status=bar.set_postfix_str)
        try:
            complete &= wait(folder, ctx, poll_s, block)
        finally:
            bar.close()
    return got, complete


def _live(array_ids: list[str]) -> dict[str, str]:
    """{"ARRAY_TASK": state} of every task of these arrays still in the queue."""
    if not array_ids:
        return {}
    if shutil.which("squeue") is None:
        raise UserError("a Slurm submission of this results file is not gathered yet, and this machine has no "
                        "`squeue`: gather it on the cluster (resbench gather RESULTS), or remove its folder "
                        "(RESULTS.slurm/RUN) to drop it")
    res = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(array_ids), "-o", "%F_%K %T"],
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0 and "Invalid job id" not in res.stderr:
        raise UserError(f"squeue failed: {' '.join(res.stderr.split())[:300]}")
    out = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] in LIVE:
            out[parts[0]] = parts[1]
    return out


def slurm_state(array_id: str, task: int) -> tuple[str, str] | None:
    """(state, reason) of a finished array task from scontrol (it keeps a job MinJobAge seconds),
    else sacct (an accounting database); None if neither knows it any more."""
    for attempt in range(3):  # a busy controller may refuse a query for a moment: ask again before giving up
        res = subprocess.run(["scontrol", "show", "job", "-o", f"{array_id}_{task}"], capture_output=True, text=True,
                             timeout=60)
        if res.returncode == 0 or "Invalid job id" in res.stderr:
            break
        time.sleep(1 + attempt)
    if res.returncode == 0:
        for line in res.stdout.splitlines():
            fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            if fields.get("ArrayTaskId") == str(task) and "JobState" in fields:
                return fields["JobState"], fields.get("Reason", "None")
    res = subprocess.run(["sacct", "-n", "-P", "-X", "-j", f"{array_id}_{task}", "-o", "State,Reason"],
                         capture_output=True, text=True, timeout=60)
    if res.returncode == 0 and res.stdout.strip():
        state, _, reason = res.stdout.strip().splitlines()[-1].partition("|")
        return state.split()[0], reason or "None"
    return None


def _ended(folder: Path, job: Job, manifest: dict, task: tuple[str, int]) -> list[dict]:
    """Records for a job whose task left the queue without writing any: Slurm's state decides."""
    sid, n = task
    got = slurm_state(sid, n)
    log = folder / "logs" / f"{sid}_{n}.out"
    tail = ""
    if log.is_file():
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        tail = f"; its log ends: {lines[-1][:300]}" if lines else ""
    if got is None:
        status, msg = "error", f"Slurm task {sid}_{n} left the queue without records, and Slurm no longer knows it{tail}"
    else:
        state, reason = got
        status = STATES.get(state, "error")
        msg = f"Slurm ended task {sid}_{n}: {state}" + (f" ({reason})" if reason not in ("None", "") else "")
        if state == "COMPLETED":
            msg += f" without writing its records: is {folder} on a filesystem the nodes share?"
        msg += tail
    res = {"status": status, "message": msg, "metrics": {},
           "placement": {"executor": "slurm", "slurm_job": f"{sid}_{n}", "slurm_state": got[0] if got else None}}
    return [make_record(c, res, manifest["suite"], manifest["run"], manifest["limits"])
            for c in job.cells if c.key in job.todo]


