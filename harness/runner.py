"""Suite → cells → one fresh process per job → records.

A job is one cell unless its workload groups cells (throughput: every variant of one shape,
precision and seed shares a process so their repeats can be interleaved). A sweep never stops for one bad cell: a crash, a
kill, running out of memory or a timeout becomes that cell's status. Re-running resumes:
finished cells are skipped.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from . import variants, workloads
from .config import Cell, Suite, expand_cells
from .errors import UserError
from .parallel import launch
from .provenance import environment, producer, system
from .results import append_record, bounded_message, check_writable, encode_record, exclusive, finished_keys, now
from .worker import PROGRESS


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


def preflight(suite: Suite) -> None:
    """Errors a user can fix surface once, before any cell runs (each workload's own checks)."""
    for kind, params in suite.workloads.items():
        workloads.get(kind).preflight(params, suite.shapes)


def default_memory_cap() -> float:
    """90% of physical memory, in bytes (what a worker may hold before it is stopped as `oom`)."""
    try:
        return 0.9 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return float("inf")


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts each rank in a session of its own, so its
    process group does not hold them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class _Watch(threading.Thread):
    """Polls the worker's resident memory; past the cap it kills the worker and keeps the
    evidence, so that `oom` is recorded only when resbench itself saw the memory run out."""

    def __init__(self, proc: subprocess.Popen, cap: float, tree: bool = False):
        super().__init__(daemon=True)
        self.proc, self.cap, self.peak, self.evidence, self.tree = proc, cap, 0, None, tree
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.05 if not self.tree else 0.25):  # a tree costs a /proc scan
            pids = [self.proc.pid] + (_descendants(self.proc.pid) if self.tree else [])
            rss = sum(_rss(p) for p in pids)
            self.peak = max(self.peak, rss)
            if rss > self.cap:
                what = "worker RSS" if not self.tree else f"RSS of torchrun and its {len(pids) - 1} processes"
                self.evidence = f"{what} {rss / 2**30:.2f} GiB passed the memory cap of {self.cap / 2**30:.2f} GiB"
                _kill(self.proc, self.tree)
                return


def _run_job(cells: list[Cell], timeout: float, on_progress=None, sysinfo: dict | None = None,
             memory_cap: float | None = None) -> dict[str, dict]:
    """Run one job in a fresh worker process. ``on_progress(done, total)`` gets the worker's
    progress (throughput: one per timed call) from a file of its own in the job's folder, so
    nothing a variant prints can reach it; its stdout and stderr are kept together. The worker
    watches its stdin and exits when this process is gone (killed, even by SIGKILL); an interrupt
    or SIGTERM here kills the worker before it propagates, and the job's temporary folder is
    removed."""
    with tempfile.TemporaryDirectory(prefix="resbench-") as tmp:
        job_path, result_path = os.path.join(tmp, "job.json"), os.path.join(tmp, "result.json")
        progress_path, log_dir = os.path.join(tmp, "progress"), os.path.join(tmp, "torchrun")
        with open(job_path, "w") as fh:
            json.dump({"cells": [c.to_dict() for c in cells], "system": sysinfo, "timeout_s": timeout,
                       "progress": progress_path}, fh)
        cmd = ["-m", f"{__package__}.worker", "--parent-stdin", job_path, result_path]
        launched = cells[0].launch  # torchrun: its ranks inherit our stdin, so they too go when we go
        cmd = launch.torchrun_command(launched, cmd, cells[0].key, log_dir) if launched else [sys.executable, *cmd]
        env = _child_env()
        if launched:  # the ranks set their threads (cell.threads); torchrun need not warn about it
            env.setdefault("OMP_NUM_THREADS", str(cells[0].threads or 1))
        # a pipe, not a file in the job's folder: on a full disk the worker's last words still arrive
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", env=env, start_new_session=bool(launched))
        output: list[str] = []
        done = threading.Event()
        threads = [threading.Thread(target=_drain, args=(proc.stdout, output), daemon=True),
                   threading.Thread(target=_read_progress, args=(progress_path, on_progress, done), daemon=True)]
        watch = _Watch(proc, memory_cap or default_memory_cap(), tree=bool(launched))
        for t in threads + [watch]:
            t.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc, launched)
            return _same(cells, "timeout", f"cell exceeded timeout_s={timeout:g}"
                         + (" (every rank was killed)" if launched else ""), sysinfo)
        except BaseException:  # Ctrl-C, SIGTERM: the worker goes with us
            _kill(proc, launched)
            raise
        finally:
            watch.stop.set()
            done.set()
            for t in threads:
                t.join(timeout=5)
            if proc.stdin:
                proc.stdin.close()
        lines = [ln for ln in output[:] if ln.strip()]
        if os.path.exists(result_path) and watch.evidence is None:
            with open(result_path) as fh:
                result = json.load(fh)
            if lines:  # warnings the worker printed (a non-deterministic op, a deprecation): kept
                for res in result.values():
                    res["worker_stderr"] = lines[-20:]
            return result
        tail = (lines or ["(no output)"])[-1][:500]
        if watch.evidence:
            return _same(cells, "oom", watch.evidence, sysinfo)
        text, said = "\n".join(lines), lines[-20:]
        failed = launch.rank_failure(text, log_dir) if launched else None
        if failed:
            return _same(cells, failed[0], failed[1], sysinfo, said)
        if proc.returncode < 0:
            status, how = launch.ended_by(proc.returncode)
            if status == "crashed":  # its own fault (a segfault in a variant): faulthandler's stack says where
                stack = launch.fault_stack(text)
                return _same(cells, status, f"worker {how} (retried on resume): "
                             + (f"Python stack, innermost first: {stack}" if stack else tail), sysinfo, said)
            return _same(cells, status, f"worker {how} from outside resbench (retried on resume): {tail}", sysinfo,
                         said)
        return _same(cells, "error", f"worker exited with code {proc.returncode}: {tail}", sysinfo, said)


def _kill(proc: subprocess.Popen, tree: bool) -> None:
    """The worker, or torchrun and every process below it (its ranks: each in its own session)."""
    for pid in (_descendants(proc.pid) if tree else []):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.kill()
    proc.wait()


def _drain(stream, output: list[str]) -> None:
    """The worker's stdout and stderr to EOF (so it never blocks on a full pipe), the last lines
    kept, each cut to a bounded length."""
    for line in iter(lambda: stream.readline(1 << 14), ""):
        output.append(line.rstrip("\n")[:2000])
        if len(output) > 4000:
            del output[:2000]


def _read_progress(path: str, on_progress, done: threading.Event) -> None:
    """Tails the worker's progress file until `done`, handing on each well-formed
    "resbench-progress DONE TOTAL" line; anything else is skipped, never fatal."""
    pos = 0
    while True:
        finished = done.wait(0.1)
        try:
            with open(path, "rb") as fh:
                fh.seek(pos)
                data = fh.read()
        except OSError:
            data = b""
        data = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next look
        pos += len(data)
        for line in data.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == PROGRESS and on_progress is not None:
                try:
                    counts = int(parts[1]), int(parts[2])
                except ValueError:
                    continue
                on_progress(*counts)
        if finished:
            return


def _child_env() -> dict[str, str]:
    """The worker must see what this process sees: the same resbench (an installed or editable
    package is found the same way; a PYTHONPATH is inherited) and every variant module loaded so
    far (--variants-module, RESBENCH_VARIANTS), importable from the same places (the working
    directory too)."""
    env = dict(os.environ)
    paths = [os.getcwd()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    mods = [m for m in env.get("RESBENCH_VARIANTS", "").split(",") if m.strip()] + variants.loaded_modules
    env["RESBENCH_VARIANTS"] = ",".join(dict.fromkeys(mods))
    return env


def _same(cells: list[Cell], status: str, message: str, sysinfo: dict | None = None,
          said: list[str] | None = None) -> dict[str, dict]:
    """Every cell of the job with one status; `said`: the worker's last lines of output, kept."""
    env = environment(cells[0].device, sysinfo)
    extra = {"worker_stderr": said} if said else {}
    return {c.key: {"status": status, "message": message, "metrics": {}, "env": env, **extra} for c in cells}


def run_suite(suite: Suite, out: Path, force: bool = False, device: str | None = None,
              progress: bool = True, resume_any: bool = False) -> list[dict]:
    """Run every unfinished cell of the suite; append and return the new records. A cell counts
    as finished only if this code on this machine (provenance.producer) finished it, unless
    ``resume_any``. The results file is held exclusively for the whole run."""
    device = resolve_device(device or suite.device)
    check_writable(out)
    preflight(suite)
    cells = expand_cells(suite, device)
    with exclusive(out):
        return _run(suite, cells, out, force, device, progress, resume_any)


def _run(suite, cells, out, force, device, progress, resume_any) -> list[dict]:
    sysinfo = system()
    here = environment(device, sysinfo)
    cap = suite.memory_cap_gb * 2**30 if suite.memory_cap_gb else default_memory_cap()
    limits = {"memory_cap_bytes": cap if cap != float("inf") else None, "timeout_s": suite.timeout_s}
    done, foreign = (set(), 0) if force else finished_keys(out, None if resume_any else producer(here), limits)
    if foreign:
        warnings.warn(f"{out}: {foreign} finished cell(s) there were measured by other code or on another machine; "
                      "they are measured again here (--resume-any reuses them)", stacklevel=2)
    todo = [c for c in cells if c.key not in done]
    jobs = plan_jobs(cells, {c.key for c in todo})
    run_id = uuid.uuid4().hex[:12]
    records = []
    bar = tqdm(total=len(todo), unit="cell", disable=not progress, file=sys.stderr,
               desc=f"{suite.name} ({len(cells) - len(todo)} done before)" if done else suite.name)
    for job in jobs:
        bar.set_postfix_str(f"{job[0].workload} {job[0].shape_name} " + ",".join(c.label for c in job)[:60])
        with tqdm(total=0, unit="call", desc="  timed calls", leave=False, position=1, file=sys.stderr,
                  disable=not progress or not workloads.get(job[0].workload).timed_calls) as inner:
            def on_progress(done, total, inner=inner):
                inner.total = total
                inner.update(done - inner.n)
            outcome = _run_job(job, suite.timeout_s * len(job), on_progress, sysinfo, cap)
        for cell in job:
            if cell.key in done:  # a finished cell reruns only as a throughput partner
                continue
            res = outcome.get(cell.key) or {"status": "error", "message": "no result for this cell",
                                            "metrics": {}, "env": here}
            record = {"key": cell.key, "suite": suite.name, "run": run_id, "time": now(), "cell": cell.to_dict(),
                      "limits": limits, **res}
            records.append(_append(out, record))
            done.add(cell.key)  # pairs: the baseline's record comes from its first pair
            bar.update(1)
    bar.close()
    return records


def _append(out: Path, record: dict) -> dict:
    """Append the record; one that cannot be written as JSON (a NaN metric) becomes an `error`
    record saying why, so one bad value never aborts the sweep. A failing disk does (UserError)."""
    record["message"] = bounded_message(record.get("message"))
    try:
        encode_record(record)
    except (ValueError, TypeError) as exc:
        record = {**record, "status": "error", "metrics": {},
                  "message": f"the cell's record could not be written as JSON: {str(exc)[:300]}"}
    append_record(out, record)
    return record
