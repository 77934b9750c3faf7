"""One Slurm array task: one resbench job on this node, its records into its own shard.

    python -m resbench.executors.task FOLDER GROUP     (SLURM_ARRAY_TASK_ID picks the job)

The job runs as a local job does (harness/executors/process.py: a fresh worker, its timeout, the memory
cap, torchrun's ranks); its records say where it ran (`placement`: node, Slurm job, the GPUs
Slurm gave it, start and end). A requeued task runs the job again and replaces the shard whole.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..results import make_record
from .base import Job, now, placement
from .process import default_memory_cap, run_job
from .shards import read_manifest, write_shard


def main(argv: list[str]) -> int:
    folder, group = Path(argv[0]), int(argv[1])
    try:
        manifest = read_manifest(folder)
    except OSError as exc:  # the usual cause: the folder is not on a filesystem this node shares
        print(f"resbench task: cannot read {folder}/manifest.json ({exc.strerror}): is it on a filesystem "
              "every node shares?", file=sys.stderr)
        return 3
    task = int(os.environ["SLURM_ARRAY_TASK_ID"])
    index = manifest["groups"][group]["jobs"][task]
    job = Job.from_dict(manifest["jobs"][index])

    start = now()
    cap = manifest.get("memory_cap") or default_memory_cap()  # the suite's, else 90% of this node's memory
    limits = {**manifest["limits"], "memory_cap_bytes": cap}
    outcomes = run_job(job.cells, job.timeout_s, memory_cap=cap)
    where = placement("slurm", start, now(), slurm_job=f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{task}",
                      devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                      restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0")))
    records = []
    for cell in job.cells:
        if cell.key in job.todo:
            res = {**(outcomes.get(cell.key) or {}), "placement": where} if outcomes.get(cell.key) else None
            records.append(make_record(cell, res, manifest["suite"], manifest["run"], limits))
    write_shard(folder, index, records)
    print(f"resbench task: job {index} ({len(records)} cells) on {where['host']}: "
          + ", ".join(sorted({r['status'] for r in records})), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
