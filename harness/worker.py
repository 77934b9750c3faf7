"""One cell (or one interleaved throughput group) in its own fresh process.

    python -m resbench.worker [--parent-stdin] JOB.json RESULT.json

A fresh process per job keeps peak-memory counters clean and keeps a crash, an OOM kill or a
hang inside its cell. The parent (runner.py) turns a missing RESULT.json into a status: the
worker's last stderr line says why it wrote none, and faulthandler's stack why it crashed.
Progress goes to a file of its own (job["progress"]), never to stdout, where a variant may print.
"""
from __future__ import annotations

import faulthandler
import json
import os
import shutil
import sys
import threading
import traceback

import torch

from . import variants, workloads
from .cells import Cell
from .errors import classify
from .parallel import launch
from .provenance import environment
from .workloads.common import RunContext


PROGRESS = "resbench-progress"


class ResultNotWritten(RuntimeError):
    """RESULT.json could not be written (a full or read-only disk): the cells' numbers are lost."""


class _Progress:
    """progress(done, total): one line per timed call appended to the job's progress file, which
    the parent tails into a progress bar. Best effort: a full disk costs the bar, not the cell."""

    def __init__(self, path: str | None):
        self.fd = None
        if path:
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError:
                pass

    def __call__(self, done: int, total: int) -> None:
        if self.fd is not None:
            try:
                os.write(self.fd, f"{PROGRESS} {int(done)} {int(total)}\n".encode())
            except OSError:
                pass


def foreign_variants(cells: list[Cell]) -> dict[str, str]:
    """Cells whose variant name resolves here to another class than the one the parent expanded
    (two modules registering one name): they must not run under that cell's key."""
    out = {}
    for c in cells:
        here = variants.source_of(c.variant)
        if c.variant_source and here != c.variant_source:
            out[c.key] = (f"the worker's {c.variant!r} is {here}, not {c.variant_source} as when the suite was "
                          "expanded: two modules register this name")
    return out


def run_job(job: dict) -> dict:
    """{cell key: {status, message, metrics, env}}. Outside torchrun a failure outside any one cell
    (threads torch refuses, a variant's sys.exit past its workload) is every cell's status; a rank
    raises it instead, so that torchrun stops the others and its error file names the cause."""
    cells = [Cell(**c) for c in job["cells"]]
    try:
        outcomes = _outcomes(cells, job)
    except (Exception, SystemExit) as exc:
        status, message, _ = classify(exc)
        if launch.in_torchrun():
            if isinstance(exc, SystemExit):  # @record ignores SystemExit: make it an error it writes
                raise RuntimeError(message) from exc
            raise
        traceback.print_exc()
        outcomes = {c.key: (status, message, {}) for c in cells}
    env = environment(cells[0].device, job.get("system"))
    return {key: {"status": s, "message": msg, "metrics": m, "env": env} for key, (s, msg, m) in outcomes.items()}


def _outcomes(cells: list[Cell], job: dict) -> dict:
    ctx = RunContext.of(cells)
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    workload = workloads.get(cells[0].workload)
    if workload.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    bad = foreign_variants(cells)
    if bad:
        return {c.key: ("error", bad.get(c.key, "a variant of this job is not the one expanded"), {}) for c in cells}
    return workload.run(cells, ctx, progress=_Progress(job.get("progress")))


def _exit_with_parent(job_dir: str) -> None:
    """The parent holds our stdin open; EOF means it is gone (even SIGKILLed): remove the job's
    temporary folder, which the parent can no longer do, and stop at once, so no worker outlives
    its run. It reads the raw fd: a thread blocked in sys.stdin's buffer holds its lock, and the
    interpreter's teardown would abort on it."""
    def watch():
        try:
            while os.read(0, 1 << 16):
                pass
        except OSError:
            pass
        shutil.rmtree(job_dir, ignore_errors=True)
        os._exit(70)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(argv: list[str]) -> int:
    """The exit code; whatever happens, the last stderr line says what went wrong."""
    try:
        return _main(argv)
    except ResultNotWritten as exc:
        _say(str(exc))
    except BaseException:  # noqa: BLE001 - said, then the exit code tells the parent
        _say(traceback.format_exc().rstrip())
    return 1


def _say(text: str) -> None:
    sys.stdout.flush()  # what a variant printed comes first: the parent reads the last line
    print(text, file=sys.stderr, flush=True)


def _main(argv: list[str]) -> int:
    watch = bool(argv) and argv[0] == "--parent-stdin"  # the runner's workers go when the runner goes
    job_path, result_path = argv[1:] if watch else argv
    faulthandler.enable(sys.stderr)  # a crash (a variant's segfault) leaves its Python stack
    if watch:
        _exit_with_parent(os.path.dirname(os.path.abspath(job_path)))
    with open(job_path) as fh:
        job = json.load(fh)
    if not launch.in_torchrun():
        _write(run_job(job), result_path)
        return 0
    # one of torchrun's ranks: @record writes what it raised to the error file torchrun names
    # (the runner reads it); the interpreter's teardown is skipped (__main__), where a DDP/FSDP
    # object outliving its process group would abort the process
    from torch.distributed.elastic.multiprocessing.errors import record
    return record(_rank)(job, result_path)


def _rank(job: dict, result_path: str) -> int:
    """Join the group, run the job on every rank; each node's local rank 0 writes the result for
    its runner; then all leave together (torchrun would stop a rank still writing)."""
    launch.init(job["cells"][0].get("launch") or {}, job.get("timeout_s") or 600.0)
    result = run_job(job)
    if launch.writes_result():
        _write(result, result_path)
    torch.distributed.barrier()
    return 0


def _write(result: dict, result_path: str) -> None:
    tmp = result_path + ".tmp"
    try:
        with open(tmp, "w") as fh:
            json.dump(result, fh, default=float)
        os.replace(tmp, result_path)  # the parent never sees a half-written result
    except (OSError, TypeError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        raise ResultNotWritten(f"cannot write the result in {os.path.dirname(result_path)}: {why}"[:500]) from None


if __name__ == "__main__":
    code = main(sys.argv[1:])
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)  # never the interpreter's teardown: see _exit_with_parent and _main
