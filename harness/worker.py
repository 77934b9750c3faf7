"""One cell (or one interleaved throughput group) in its own fresh process.

    python -m resbench.worker [--parent-stdin] JOB.json RESULT.json

A fresh process per job keeps peak-memory counters clean and keeps a crash, an OOM kill or a
hang inside its cell. The parent (runner.py) turns a missing RESULT.json into a status.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading

import torch

from . import variants, workloads
from .cells import Cell
from .parallel import launch
from .provenance import environment


PROGRESS = "resbench-progress"


def _report_progress(done: int, total: int) -> None:
    """One stdout line per timed call; the parent turns them into a progress bar."""
    print(PROGRESS, done, total, flush=True)


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
    cells = [Cell(**c) for c in job["cells"]]
    if cells[0].threads:
        torch.set_num_threads(cells[0].threads)
    workload = workloads.get(cells[0].workload)
    if workload.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    env = environment(cells[0].device, job.get("system"))
    bad = foreign_variants(cells)
    if bad:
        return {c.key: {"status": "error", "message": bad.get(c.key, "a variant of this job is not the one expanded"),
                        "metrics": {}, "env": env} for c in cells}
    outcomes = workload.run(cells, progress=_report_progress)
    return {key: {"status": s, "message": msg, "metrics": m, "env": env} for key, (s, msg, m) in outcomes.items()}


def _exit_with_parent(job_dir: str) -> None:
    """The parent holds our stdin open; EOF means it is gone (even SIGKILLed): remove the job's
    temporary folder, which the parent can no longer do, and stop at once, so no worker outlives
    its run."""
    def watch():
        try:
            while sys.stdin.buffer.read(1 << 16):
                pass
        except (OSError, ValueError):
            pass
        shutil.rmtree(job_dir, ignore_errors=True)
        os._exit(70)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(argv: list[str]) -> int:
    watch = bool(argv) and argv[0] == "--parent-stdin"  # the runner's workers go when the runner goes
    job_path, result_path = argv[1:] if watch else argv
    if watch:
        _exit_with_parent(os.path.dirname(os.path.abspath(job_path)))
    with open(job_path) as fh:
        job = json.load(fh)
    if not launch.in_torchrun():
        _write(run_job(job), result_path)
        return 0
    # one of torchrun's ranks: join the group, run the job on every rank, each node's local rank 0
    # writes the result for its runner; then all leave together and skip the interpreter's
    # teardown, where a DDP/FSDP object outliving its process group aborts the process (and
    # torchrun would stop a rank still writing)
    launch.init(job["cells"][0].get("launch") or {}, job.get("timeout_s") or 600.0)
    result = run_job(job)
    if launch.writes_result():
        _write(result, result_path)
    torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _write(result: dict, result_path: str) -> None:
    tmp = result_path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, default=float)
    os.replace(tmp, result_path)  # the parent never sees a half-written result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
