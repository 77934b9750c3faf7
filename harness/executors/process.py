"""One job in a fresh worker process on this machine: the boundary every executor keeps.

    job.json → python -m resbench.worker (or torchrun's ranks) → result.json

The worker runs the job's cells and writes their outcomes; this side turns a missing result into
a status with its cause: `timeout` (past the job's time), `oom` (only on evidence: the memory cap
seen exceeded), `killed` / `crashed` (a signal from outside / of its own), `error`. The local
executor calls it in the runner's process, the Slurm executor inside each array task.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading

import psutil

from .. import variants
from ..cells import Cell
from ..parallel import launch
from ..provenance import environment
from ..worker import PROGRESS


def default_memory_cap() -> float:
    """90% of physical memory, in bytes (what a worker may hold before it is stopped as `oom`)."""
    return 0.9 * psutil.virtual_memory().total


def _tree(proc: subprocess.Popen, tree: bool) -> list[psutil.Process]:
    """The worker, and with `tree` every process below it (torchrun starts each rank in a session
    of its own, so its process group does not hold them)."""
    try:
        root = psutil.Process(proc.pid)
        return [root] + (root.children(recursive=True) if tree else [])
    except psutil.Error:
        return []


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass  # gone meanwhile
    return total


class MemoryWatch(threading.Thread):
    """Polls the worker's resident memory (torchrun's: the whole tree's); past the cap it kills
    the worker and keeps the evidence, so that `oom` is recorded only when resbench itself saw the
    memory run out."""

    def __init__(self, proc: subprocess.Popen, cap: float, tree: bool = False):
        super().__init__(daemon=True)
        self.proc, self.cap, self.peak, self.evidence, self.tree = proc, cap, 0, None, tree
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.05 if not self.tree else 0.25):  # a tree costs a scan of every process
            procs = _tree(self.proc, self.tree)
            rss = _rss(procs)
            self.peak = max(self.peak, rss)
            if rss > self.cap:
                what = "worker RSS" if not self.tree else f"RSS of torchrun and its {len(procs) - 1} processes"
                self.evidence = f"{what} {rss / 2**30:.2f} GiB passed the memory cap of {self.cap / 2**30:.2f} GiB"
                kill(self.proc, self.tree)
                return


def run_job(cells: list[Cell], timeout: float, on_progress=None, sysinfo: dict | None = None,
            memory_cap: float | None = None, env: dict | None = None, running: set | None = None) -> dict[str, dict]:
    """Run one job in a fresh worker process; {cell key: outcome}. ``on_progress(done, total)``
    gets the worker's progress (throughput: one per timed call) from a file of its own in the
    job's folder, so nothing a variant prints can reach it; its stdout and stderr are kept
    together. ``env``: extra environment (a device pool's CUDA_VISIBLE_DEVICES). ``running``: a
    set the process is kept in while it runs, so a pool can stop it. The worker watches its stdin
    and exits when this process is gone (killed, even by SIGKILL); an interrupt or SIGTERM here
    kills the worker before it propagates, and the job's temporary folder is removed."""
    with tempfile.TemporaryDirectory(prefix="resbench-") as tmp:
        job_path, result_path = os.path.join(tmp, "job.json"), os.path.join(tmp, "result.json")
        progress_path, log_dir = os.path.join(tmp, "progress"), os.path.join(tmp, "torchrun")
        with open(job_path, "w") as fh:
            json.dump({"cells": [c.to_dict() for c in cells], "system": sysinfo, "timeout_s": timeout,
                       "progress": progress_path}, fh)
        cmd = ["-m", "resbench.worker", "--parent-stdin", job_path, result_path]
        launched = cells[0].launch  # torchrun: its ranks inherit our stdin, so they too go when we go
        cmd = launch.torchrun_command(launched, cmd, cells[0].key, log_dir) if launched else [sys.executable, *cmd]
        child_env = {**child_environment(), **(env or {})}
        if launched:  # the ranks set their threads (cell.threads); torchrun need not warn about it
            child_env.setdefault("OMP_NUM_THREADS", str(cells[0].threads or 1))
        # a pipe, not a file in the job's folder: on a full disk the worker's last words still arrive
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", env=child_env, start_new_session=bool(launched))
        if running is not None:
            running.add((proc, bool(launched)))
        output: list[str] = []
        done = threading.Event()
        threads = [threading.Thread(target=_drain, args=(proc.stdout, output), daemon=True),
                   threading.Thread(target=read_progress, args=(progress_path, on_progress, done), daemon=True)]
        watch = MemoryWatch(proc, memory_cap or default_memory_cap(), tree=bool(launched))
        for t in threads + [watch]:
            t.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill(proc, launched)
            return same(cells, "timeout", f"cell exceeded timeout_s={timeout:g}"
                        + (" (every rank was killed)" if launched else ""), sysinfo)
        except BaseException:  # Ctrl-C, SIGTERM: the worker goes with us
            kill(proc, launched)
            raise
        finally:
            if running is not None:
                running.discard((proc, bool(launched)))
            watch.stop.set()
            done.set()
            for t in threads:
                t.join(timeout=5)
            if proc.stdin:
                proc.stdin.close()
        return _outcome(cells, proc, output, watch, result_path, log_dir, sysinfo)


def _outcome(cells, proc, output, watch, result_path, log_dir, sysinfo) -> dict[str, dict]:
    launched = cells[0].launch
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
        return same(cells, "oom", watch.evidence, sysinfo)
    text, said = "\n".join(lines), lines[-20:]
    failed = launch.rank_failure(text, log_dir) if launched else None
    if failed:
        return same(cells, failed[0], failed[1], sysinfo, said)
    if proc.returncode < 0:
        status, how = launch.ended_by(proc.returncode)
        if status == "crashed":  # its own fault (a segfault in a variant): faulthandler's stack says where
            stack = launch.fault_stack(text)
            return same(cells, status, f"worker {how} (retried on resume): "
                        + (f"Python stack, innermost first: {stack}" if stack else tail), sysinfo, said)
        return same(cells, status, f"worker {how} from outside resbench (retried on resume): {tail}", sysinfo, said)
    return same(cells, "error", f"worker exited with code {proc.returncode}: {tail}", sysinfo, said)


def kill(proc: subprocess.Popen, tree: bool) -> None:
    """The worker, or torchrun and every process below it (its ranks: each in its own session)."""
    for p in _tree(proc, tree)[1:]:
        try:
            p.kill()
        except psutil.Error:
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


def read_progress(path: str, on_progress, done: threading.Event) -> None:
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


def child_environment() -> dict[str, str]:
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


def same(cells: list[Cell], status: str, message: str, sysinfo: dict | None = None,
         said: list[str] | None = None) -> dict[str, dict]:
    """Every cell of the job with one status; `said`: the worker's last lines of output, kept."""
    env = environment(cells[0].device, sysinfo)
    extra = {"worker_stderr": said} if said else {}
    return {c.key: {"status": status, "message": message, "metrics": {}, "env": env, **extra} for c in cells}
