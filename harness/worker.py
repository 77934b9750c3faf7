"""One cell (or one interleaved throughput group) in its own fresh process.

    python -m resbench.worker JOB.json RESULT.json

A fresh process per job keeps peak-memory counters clean and keeps a crash, an OOM kill or a
hang inside its cell. The parent (runner.py) turns a missing RESULT.json into a status.
"""
from __future__ import annotations

import json
import os
import sys

import torch

from .config import Cell
from .results import environment
from .workloads import classify, run_loss, run_memory, run_throughput


PROGRESS = "resbench-progress"


def _report_progress(done: int, total: int) -> None:
    """One stdout line per timed call; the parent turns them into a progress bar."""
    print(PROGRESS, done, total, flush=True)


def run_job(job: dict) -> dict:
    cells = [Cell(**c) for c in job["cells"]]
    if cells[0].threads:
        torch.set_num_threads(cells[0].threads)
    kind = cells[0].workload
    if kind == "loss":  # bit-for-bit curves; not for timing, where it may pick slower kernels
        torch.use_deterministic_algorithms(True, warn_only=True)
    if kind == "throughput":
        outcomes = run_throughput(cells, progress=_report_progress)
    else:
        runner = {"memory": run_memory, "loss": run_loss}[kind]
        outcomes = {}
        for cell in cells:
            try:
                outcomes[cell.key] = runner(cell)
            except Exception as exc:  # noqa: BLE001 - recorded as the cell's status
                outcomes[cell.key] = classify(exc)
    env = environment(cells[0].device)
    return {key: {"status": s, "message": msg, "metrics": m, "env": env} for key, (s, msg, m) in outcomes.items()}


def main(argv: list[str]) -> int:
    job_path, result_path = argv
    with open(job_path) as fh:
        job = json.load(fh)
    result = run_job(job)
    tmp = result_path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, default=float)
    os.replace(tmp, result_path)  # the parent never sees a half-written result
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
