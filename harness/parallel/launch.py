"""Launchers: where a cell's worker runs. `local` is one process (the default); `torchrun` starts
`nproc` ranks per node through PyTorch's own launcher (torch.distributed.run), backend gloo on CPU
and nccl on GPU. Each node's local rank 0 writes the job's result for its node's runner; the
runner kills torchrun and every rank on a timeout, and a rank that fails becomes the cell's
status (runner.py reads torchrun's summary).
"""
from __future__ import annotations

import os
import re
import resource
import signal
import sys
import time
from dataclasses import asdict, dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..cells import CONNECTION
from ..errors import ConfigError

LAUNCHERS = ("local", "torchrun")
BACKENDS = ("auto", "gloo", "nccl")
FAULT_ENV = "RESBENCH_FAULT"  # "kill:RANK:STEP" or "hang:RANK:STEP": a test hook (tests/test_distributed.py)


@dataclass(frozen=True)
class Launch:
    launcher: str = "local"
    nproc: int = 1         # ranks per node
    nnodes: int = 1
    backend: str = "auto"  # auto: nccl on cuda, gloo on cpu
    rdzv_endpoint: str = ""  # host:port of the rendezvous (multi-node); "" on one node: --standalone
    rdzv_id: str = "resbench"  # a prefix: each job's rendezvous is named after it and its first cell

    @property
    def world(self) -> int:
        return self.nproc * self.nnodes

    def resolved(self, device: str) -> dict:
        """The cell's `launch` field: {} for local, else the fields with the backend resolved."""
        if self.launcher == "local":
            return {}
        backend = self.backend if self.backend != "auto" else ("nccl" if device == "cuda" else "gloo")
        return {**asdict(self), "backend": backend}


def parse_launch(raw) -> Launch:
    """`launcher: local`, `launcher: torchrun` (2 ranks) or a mapping
    {type: torchrun, nproc, nnodes, backend, rdzv_endpoint, rdzv_id}."""
    if raw is None or raw == "local":
        return Launch()
    if raw == "torchrun":
        return Launch("torchrun", nproc=2)
    if not isinstance(raw, dict):
        raise ConfigError(f"launcher must be local, torchrun or a mapping with type: torchrun; got {raw!r}"[:200])
    allowed = ("type", "nproc", "nnodes", "backend", "rdzv_endpoint", "rdzv_id")
    for k in raw:
        if k not in allowed:
            raise ConfigError(f"launcher: unknown key {k!r}; allowed: {', '.join(allowed)}")
    kind = raw.get("type", "torchrun")
    if kind not in LAUNCHERS:
        raise ConfigError(f"launcher.type must be one of {', '.join(LAUNCHERS)}; got {kind!r}")
    out = {}
    for k in ("nproc", "nnodes"):
        v = raw.get(k, 2 if k == "nproc" else 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"launcher.{k} must be a positive integer, got {v!r}")
        out[k] = v
    backend = raw.get("backend", "auto")
    if backend not in BACKENDS:
        raise ConfigError(f"launcher.backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    for k in CONNECTION:
        if k in raw and not isinstance(raw[k], str):
            raise ConfigError(f"launcher.{k} must be a string, got {raw[k]!r}")
    if out["nnodes"] > 1 and not raw.get("rdzv_endpoint"):
        raise ConfigError("launcher.nnodes > 1 needs launcher.rdzv_endpoint (host:port every node can reach)")
    return Launch(kind, out["nproc"], out["nnodes"], backend, raw.get("rdzv_endpoint", ""),
                  raw.get("rdzv_id", "resbench"))


def torchrun_command(launch: dict, argv: list[str], job: str = "") -> list[str]:
    """python -m torch.distributed.run ... -m <argv>: one node standalone, else a c10d rendezvous
    named after `job` (the same on every node for the same job: its first cell's key)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={launch['nproc']}", "--max-restarts=0"]
    if launch["nnodes"] == 1 and not launch.get("rdzv_endpoint"):
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={launch['nnodes']}", "--rdzv-backend=c10d", f"--rdzv-endpoint={launch['rdzv_endpoint']}",
                f"--rdzv-id={launch.get('rdzv_id', 'resbench')}-{job}" if job else
                f"--rdzv-id={launch.get('rdzv_id', 'resbench')}"]
    return cmd + argv


# torchrun's failure summary, a block per failed rank: "rank      : 1 (local_rank: 1)",
# "exitcode  : -9 (pid: 123)"; anchored at the line start so "local_rank: 1" is not a rank
_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)", re.M)
_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)", re.M)
# a rank's own last words: the exception line of its traceback ("ConfigError: ...")
_RAISED = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$", re.M)


def rank_failure(stderr: str) -> tuple[str, str] | None:
    """(status, message) from torchrun's summary of failed ranks, or None if it printed none.
    A rank ended by a signal is `killed`, one that exited non-zero `error`; the last exception a
    rank printed is kept in the message."""
    failed: dict[int, int] = {}
    rank = None
    for line in stderr.splitlines():
        if m := _RANK.match(line):
            rank = int(m.group(1))
        elif (m := _EXIT.match(line)) and rank is not None:
            failed[rank] = int(m.group(1))
            rank = None
    if not failed:
        return None

    def how(code):
        if code < 0 and -code in signal.valid_signals():
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"

    status = "killed" if any(code < 0 for code in failed.values()) else "error"
    raised = _RAISED.findall(stderr)
    why = f": {raised[-1][0]}: {raised[-1][1][:300]}" if raised else ""
    return status, "; ".join(f"rank {r} {how(c)}" for r, c in sorted(failed.items())) + \
        f" (torchrun stopped the other ranks){why}"


# -- inside a rank ------------------------------------------------------------------------------

def in_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init(launch: dict, timeout_s: float = 600.0) -> None:
    """Join the process group (env:// from torchrun), on this rank's GPU under nccl."""
    if launch.get("backend") == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():
        dist.init_process_group(launch.get("backend", "gloo"), timeout=timedelta(seconds=timeout_s))


def writes_result() -> bool:
    """Local rank 0 of each node writes the job's result: every node's runner records the job."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def gather(obj) -> list:
    """Every rank's object, in rank order, on every rank."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def peak_memory(device: str) -> dict:
    """This rank's peak: allocated bytes on a GPU, resident set size (the process's) on a CPU."""
    if device.startswith("cuda"):
        return {"kind": "cuda max_memory_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    return {"kind": "process peak RSS", "bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}


def fault_point(step: int) -> None:
    """The test hook: RESBENCH_FAULT=kill:R:S kills rank R at its step S; hang:R:S hangs it there."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or not dist.is_initialized():
        return
    kind, rank, at = spec.split(":")
    if dist.get_rank() == int(rank) and step == int(at):
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "hang":
            time.sleep(10**6)


def time_rounds(fns: dict, warmup: int, repeats: int, device: str, progress=None) -> dict[str, list[float]]:
    """Wall seconds of each fn per round on this rank, interleaved as measure.time_interleaved
    does (round r starts at fn r mod n), every call started together on all ranks (a barrier),
    since a distributed step's cost includes waiting for the others. Call on every rank alike."""
    names = list(fns)
    out = {n: [] for n in names}
    step = 0
    for r in range(-warmup, repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fault_point(step)
            step += 1
            dist.barrier()
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fns[name]()
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            if r >= 0:
                out[name].append(time.perf_counter() - t0)
            if progress is not None:
                progress(1)
    return out
