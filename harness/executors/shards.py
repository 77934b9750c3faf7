"""A submission's folder beside its results file, on a filesystem the nodes share:

    RESULTS.slurm/RUN/manifest.json     the jobs, the arrays they went to, the run's settings
    RESULTS.slurm/RUN/shards/JOB.jsonl  each job's records, written whole by its task (or, for a
                                        task Slurm ended, by the submitter with Slurm's reason)
    RESULTS.slurm/RUN/logs/             each array task's output
    RESULTS.slurm/RUN/gathered          present once every record is in RESULTS

No process appends to a file another may write (locks over NFS are unreliable); one process,
holding RESULTS's lock, gathers the shards into it, each record once per run.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from ..results import append_record, encode_record, read_records


def submissions_dir(out: Path) -> Path:
    return out.with_name(out.name + ".slurm")


def write_json(path: Path, obj) -> None:
    """Whole or not at all: a reader (another node) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, sort_keys=True))
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def shard_path(folder: Path, job: int) -> Path:
    return folder / "shards" / f"{job}.jsonl"


def write_shard(folder: Path, job: int, records: list[dict]) -> None:
    """A job's records as one file, replaced whole (a requeued task's second attempt replaces the
    first's, so each cell is recorded once)."""
    path = shard_path(folder, job)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        for rec in records:
            fh.write(encode_record(rec))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_shard(folder: Path, job: int) -> list[dict] | None:
    """The job's records (verified as any results file's), or None if it has none yet."""
    path = shard_path(folder, job)
    if not path.is_file():
        return None
    return read_records(path)


def pending(out: Path) -> list[Path]:
    """Submissions of this results file not yet gathered, oldest first."""
    root = submissions_dir(out)
    if not root.is_dir():
        return []
    subs = [d for d in root.iterdir() if (d / "manifest.json").is_file() and not (d / "gathered").exists()]
    return sorted(subs, key=lambda d: d.stat().st_mtime)


class Appender:
    """Appends records to the results file once per (key, run): a gather repeated after a crash,
    or a shard read twice, adds nothing twice. Call with the results file's lock held."""

    def __init__(self, out: Path):
        self.out = out
        self.seen: set[tuple[str, str]] = set()
        if out.is_file() and out.stat().st_size:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the run itself warns about bad lines
                self.seen = {(r["key"], r.get("run")) for r in read_records(out)}

    def add(self, records: list[dict]) -> list[dict]:
        new = [r for r in records if (r["key"], r.get("run")) not in self.seen]
        for r in new:
            append_record(self.out, r)
            self.seen.add((r["key"], r.get("run")))
        return new
