"""The executor protocol: *where* a planned job's worker runs. The runner plans (cells → jobs),
an executor executes (each job's worker, here or on a cluster) and hands back each job's
outcomes, the runner records them. The executor is not part of a cell's key: the same cell run
locally or on Slurm is the same measurement (the record's `placement` says where it ran).

An executor module defines an `Executor` subclass decorated with `@register("name")`:

    Params     a frozen dataclass: the keys of a suite's `executor:` mapping (and its CLI flags)
    check      the params against the planned jobs, before anything runs
    execute    run the jobs; call ctx.deliver(job, outcomes) for each finished one
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..cells import Cell
from ..registry import Registry
from ..results import make_record

REGISTRY = Registry("executor")
register = REGISTRY.register


@dataclass
class Job:
    """One worker process's cells, as the runner planned them."""

    index: int
    cells: list[Cell]
    timeout_s: float  # for the whole job: the suite's timeout_s per cell
    timed: bool  # its workload times things: it must not share its device (on a CPU: the machine)
    todo: tuple[str, ...] = ()  # keys of the cells to record (a throughput partner may be done already)

    @property
    def ranks(self) -> int:
        """Processes of this job on one node (torchrun's nproc; 1 for a local worker)."""
        return int(self.cells[0].launch.get("nproc", 1)) if self.cells[0].launch else 1

    @property
    def threads(self) -> int:
        return self.cells[0].threads or 1

    def to_dict(self) -> dict:
        return {"index": self.index, "cells": [c.to_dict() for c in self.cells], "timeout_s": self.timeout_s,
                "timed": self.timed, "todo": list(self.todo)}

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        return cls(d["index"], [Cell(**c) for c in d["cells"]], d["timeout_s"], d["timed"], tuple(d["todo"]))


@dataclass
class Context:
    """What an executor needs from the run: the worker's settings, and where records go."""

    suite_name: str
    run_id: str
    limits: dict  # {"memory_cap_bytes", "timeout_s"}: kept in every record
    out: Path  # the results file
    sysinfo: dict | None = None  # the runner's provenance.system() (None: the worker takes its own)
    deliver: Callable[[Job, list[dict]], None] | None = None  # append a job's records (the runner's thread)
    on_progress: Callable[[Job, int, int], None] | None = None  # a job's timed calls, when one job runs at a time
    on_status: Callable[[str], None] | None = None  # a line about the executor's state (a progress bar's postfix)
    detach: bool = False  # submit and return; the records are gathered later
    progress: bool = True
    extra: dict = field(default_factory=dict)  # memory_cap: the suite's own (None: each machine's default)

    @property
    def memory_cap(self) -> float | None:
        return self.limits.get("memory_cap_bytes")

    def records(self, job: Job, outcomes: dict[str, dict]) -> list[dict]:
        """The records of a job's cells to record, from its worker's outcomes."""
        return [make_record(c, outcomes.get(c.key), self.suite_name, self.run_id, self.limits)
                for c in job.cells if c.key in job.todo]


class Executor:
    name = "?"
    Params: type = type(None)
    help = ""

    def check(self, params, jobs: list[Job], device: str) -> None:
        """Raise ConfigError if these jobs cannot run this way (before any of them runs)."""

    def execute(self, params, jobs: list[Job], ctx: Context) -> None:
        raise NotImplementedError


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def placement(executor: str, start: str, end: str, **more) -> dict:
    """Where and when a job ran: kept in its records beside the cell, never in the key."""
    return {"executor": executor, "host": socket.gethostname(), "start": start, "end": end,
            **{k: v for k, v in more.items() if v is not None}}
