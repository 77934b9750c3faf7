"""`local`: jobs on this machine. By default one after another (what a timing on a shared
machine wants). With a pool they run side by side where that cannot disturb a measurement:

- `devices: [0, 1, ...]` (`--devices 0,1`): one job per device at once, CUDA_VISIBLE_DEVICES set
  for each; a torchrun job with nproc k takes k free devices.
- `slots: N` (CPU): untimed jobs (loss, memory) take one slot each, N at a time, each with its
  suite `threads`; a timed job (throughput, decode, distributed) takes every slot: it runs
  alone on the machine.

Jobs start in plan order; a timed job waiting for the machine holds back every job after it
(no starvation), while an untimed one lets later untimed jobs past it.
"""
from __future__ import annotations

import os
import queue
import threading
from collections import deque
from dataclasses import dataclass

from ..errors import ConfigError
from .base import Context, Executor, Job, now, placement, register
from .process import kill, run_job


@dataclass(frozen=True)
class Params:
    devices: tuple = ()  # device ids for CUDA_VISIBLE_DEVICES, one job per device at once
    slots: int = 1  # CPU: untimed jobs side by side (a timed job takes them all)


@register("local")
class Local(Executor):
    Params = Params
    help = "this machine: one job at a time, or a pool of devices (--devices) or CPU slots (--slots)"

    def check(self, params, jobs, device):
        if params.devices and params.slots != 1:
            raise ConfigError("executor.slots is for a CPU pool; with executor.devices each job takes its own "
                              "device(s): drop one of them")
        wide = [j for j in jobs if params.devices and j.ranks > len(params.devices)]
        if wide:
            raise ConfigError(f"a job of {wide[0].cells[0].workload} needs {wide[0].ranks} devices (launcher nproc) "
                              f"and executor.devices lists {len(params.devices)}")
        cores = os.cpu_count() or 1
        if params.slots > 1:
            unset = [j for j in jobs if not j.timed and not j.cells[0].threads]
            if unset:
                raise ConfigError(f"executor.slots: {params.slots} runs jobs side by side: set the suite's threads "
                                  f"(e.g. threads: {max(1, cores // params.slots)}), or each takes every core")

    def execute(self, params, jobs, ctx: Context):
        if not params.devices and params.slots == 1:  # one after another, in this thread
            for job in jobs:
                start = now()
                out = run_job(job.cells, job.timeout_s, _progress_of(ctx, job), ctx.sysinfo, ctx.memory_cap)
                _place(out, placement("local", start, now(), slots="1/1"))
                ctx.deliver(job, ctx.records(job, out))
            return
        _Pool(params, ctx).run(jobs)


def _progress_of(ctx: Context, job: Job):
    if ctx.on_progress is None:
        return None
    return lambda done, total: ctx.on_progress(job, done, total)


def _place(outcomes: dict, where: dict) -> None:
    for res in outcomes.values():
        res["placement"] = where


class _Pool:
    """Threads each waiting on one worker process; this thread starts jobs as resources free up
    and delivers outcomes (records are appended here only, never from two threads)."""

    def __init__(self, params: Params, ctx: Context):
        self.params, self.ctx = params, ctx
        self.devices = [str(d) for d in params.devices]
        self.free_devices = list(self.devices)
        self.free_slots = params.slots
        self.done: queue.Queue = queue.Queue()
        self.running: set = set()  # (process, is a tree) of every live worker, to stop them all at once

    def need(self, job: Job):
        if self.devices:
            return ("devices", job.ranks)
        return ("slots", self.params.slots if job.timed else 1)

    def fits(self, job: Job) -> bool:
        pool, n = self.need(job)
        return len(self.free_devices) >= n if pool == "devices" else self.free_slots >= n

    def take(self, job: Job):
        pool, n = self.need(job)
        if pool == "devices":
            got, self.free_devices = self.free_devices[:n], self.free_devices[n:]
            return got
        self.free_slots -= n
        return n

    def give(self, job: Job, held) -> None:
        if isinstance(held, list):
            self.free_devices = sorted(self.free_devices + held, key=self.devices.index)
        else:
            self.free_slots += held

    def run(self, jobs: list[Job]) -> None:
        pending, live = deque(jobs), 0
        try:
            while pending or live:
                for job in list(pending):
                    if self.fits(job):
                        pending.remove(job)
                        live += 1
                        self.start(job, self.take(job))
                    elif job.timed:
                        break  # it waits for the whole machine (or its devices): nothing overtakes it
                job, held, outcome = self.done.get()
                live -= 1
                self.give(job, held)
                if isinstance(outcome, BaseException):
                    raise outcome
                self.ctx.deliver(job, self.ctx.records(job, outcome))
        except BaseException:  # Ctrl-C, SIGTERM, a bug in a thread: no worker outlives the run
            for proc, tree in list(self.running):
                kill(proc, tree)
            raise

    def start(self, job: Job, held) -> None:
        env = {"CUDA_VISIBLE_DEVICES": ",".join(held)} if isinstance(held, list) else None
        where = {"devices": ",".join(held)} if isinstance(held, list) else {"slots": f"{held}/{self.params.slots}"}

        def work():
            start = now()
            try:
                out = run_job(job.cells, job.timeout_s, None, self.ctx.sysinfo, self.ctx.memory_cap, env, self.running)
                _place(out, placement("local", start, now(), **where))
                self.done.put((job, held, out))
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which stops the others
                self.done.put((job, held, exc))

        threading.Thread(target=work, daemon=True, name=f"job-{job.index}").start()
