"""Launchers: where a cell's worker runs. `local` is one process (the default); `torchrun` starts
`nproc` ranks per node through PyTorch's own launcher (torch.distributed.run), backend gloo on CPU
and nccl on GPU. Each node's local rank 0 writes the job's result for its node's runner; the
runner kills torchrun and every rank on a timeout, and a rank that fails becomes the cell's
status: what it raised (the error file torchrun's @record writes under --log-dir), else how it
ended (torchrun's summary), with faulthandler's stack for a crash.
"""
from __future__ import annotations

import glob
import itertools
import json
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
from ..measure.timing import time_interleaved

LAUNCHERS = ("local", "torchrun")
BACKENDS = ("auto", "gloo", "nccl")
FAULT_ENV = "RESBENCH_FAULT"  # "kill|hang|raise:RANK:STEP": a test hook (tests/test_distributed.py)


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
    launcher = raw.get("type", "torchrun")
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher.type must be one of {', '.join(LAUNCHERS)}; got {launcher!r}")
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
    if raw.get("rdzv_endpoint"):
        _check_endpoint(raw["rdzv_endpoint"])
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", raw.get("rdzv_id", "resbench")):
        raise ConfigError(f"launcher.rdzv_id must be a plain name (letters, digits, _ . -), got {raw['rdzv_id']!r}"[:200])
    if out["nnodes"] > 1 and not raw.get("rdzv_endpoint"):
        raise ConfigError("launcher.nnodes > 1 needs launcher.rdzv_endpoint (host:port every node can reach)")
    return Launch(launcher, out["nproc"], out["nnodes"], backend, raw.get("rdzv_endpoint", ""),
                  raw.get("rdzv_id", "resbench"))


def _check_endpoint(value: str) -> None:
    """host or host:port (torchrun's default port without one); [v6]:port for IPv6. A port that
    cannot be one fails here, not in every cell at run time."""
    host, sep, port = value.rpartition(":") if not value.endswith("]") else ("", "", "")
    host = host if sep else value
    if sep and (not port.isdigit() or not 1 <= int(port) <= 65535):
        raise ConfigError(f"launcher.rdzv_endpoint {value!r}: the port must be a number in 1..65535"[:200])
    if not host.strip("[]") or any(c.isspace() for c in value):
        raise ConfigError(f"launcher.rdzv_endpoint {value!r}: give host:port (a host every node can reach)"[:200])


def torchrun_command(launch: dict, argv: list[str], job: str = "", log_dir: str = "") -> list[str]:
    """python -m torch.distributed.run ... -m <argv>: one node standalone, else a c10d rendezvous
    named after `job` (the same on every node for the same job: its first cell's key). Under
    `log_dir` torchrun keeps each failed rank's error file (rank_failure reads them)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={launch['nproc']}", "--max-restarts=0"]
    if log_dir:
        cmd.append(f"--log-dir={log_dir}")
    if launch["nnodes"] == 1 and not launch.get("rdzv_endpoint"):
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={launch['nnodes']}", "--rdzv-backend=c10d", f"--rdzv-endpoint={launch['rdzv_endpoint']}",
                f"--rdzv-id={launch.get('rdzv_id', 'resbench')}-{job}" if job else
                f"--rdzv-id={launch.get('rdzv_id', 'resbench')}"]
    return cmd + argv


# -- how a worker or a rank ended --------------------------------------------------------------

# signals someone sends (a user, a scheduler, torchrun stopping the other ranks, the kernel's OOM
# killer): `killed`; any other ends a process from within (a segfault, an abort): `crashed`
OUTSIDE = ("SIGKILL", "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")


def ended_by(code: int) -> tuple[str, str]:
    """(status, how) of a negative return code: ("crashed", "crashed with SIGSEGV")."""
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return ("killed", f"killed by {name}") if name in OUTSIDE else ("crashed", f"crashed with {name}")


_FRAME = re.compile(r'File "(.+?)", line (\d+) in (\S+)')


def fault_stack(output: str) -> str:
    """The crashing thread's Python stack from faulthandler's last dump, innermost first, on one
    line ("write (my_variants.py:12) < forward (model.py:80)"); "" if it printed none."""
    at = output.rfind("Fatal Python error")
    if at < 0:
        return ""
    dump = output[at:]
    current = dump.find("Current thread")
    if current >= 0:
        dump = dump[current:]
    frames = []
    for line in dump.splitlines()[1:]:
        if m := _FRAME.search(line):
            frames.append(f"{m.group(3)} ({os.path.basename(m.group(1))}:{m.group(2)})")
        elif frames:
            break  # the end of that thread's frames
    return " < ".join(frames[:8])


# torchrun's failure summary, a block per failed rank: "rank      : 1 (local_rank: 1)",
# "exitcode  : -9 (pid: 123)", "error_file: <N/A>"; anchored at the line start (after any
# "[rankN]:" prefix) so "local_rank: 1" is not a rank
_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)(?:\s*\(local_rank:\s*(\d+)\))?")
_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")
_FILE = re.compile(r"^\s*error_file\s*:\s*(\S.*?)\s*$")
_PREFIX = re.compile(r"^\[rank(\d+)\]:\s?")  # torch's excepthook prefixes a rank's traceback
# a rank's own last words: the exception line of its traceback ("ConfigError: ...")
_RAISED = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")


def _summary(output: str) -> dict[int, dict]:
    """{rank: {"code", "local", "error_file"}} from torchrun's summary."""
    failed: dict[int, dict] = {}
    rank = None
    for line in output.splitlines():
        line = _PREFIX.sub("", line)
        if m := _RANK.match(line):
            rank = int(m.group(1))
            failed[rank] = {"code": None, "local": int(m.group(2) or rank), "error_file": None}
        elif rank is not None and (m := _EXIT.match(line)):
            failed[rank]["code"] = int(m.group(1))
        elif rank is not None and (m := _FILE.match(line)) and m.group(1) != "<N/A>":
            failed[rank]["error_file"] = m.group(1)
    return {r: f for r, f in failed.items() if f["code"] is not None}


def _error_files(log_dir: str) -> dict[str, tuple[int, float, str]]:
    """{path: (local rank, when written, "Type: message")} of the error files @record wrote."""
    out = {}
    for path in glob.glob(os.path.join(glob.escape(log_dir), "*", "attempt_*", "*", "error.json")):
        try:
            with open(path) as fh:
                raw = json.load(fh)["message"]
            msg = raw["message"] if isinstance(raw, dict) else raw
            out[os.path.realpath(path)] = (int(os.path.basename(os.path.dirname(path))), os.stat(path).st_mtime_ns,
                                           (str(msg).strip().splitlines() or ["?"])[0][:300])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written or foreign: torchrun's summary still has the rank's exit
    return out


def _raised(output: str, rank: int) -> str:
    """The last exception line this rank (or an unprefixed process) printed, or ""."""
    last = ""
    for line in output.splitlines():
        m = _PREFIX.match(line)
        if m and int(m.group(1)) != rank:
            continue
        if r := _RAISED.match(_PREFIX.sub("", line)):
            last = f"{r.group(1)}: {r.group(2)[:300]}"
    return last


def rank_failure(output: str, log_dir: str | None = None) -> tuple[str, str] | None:
    """(status, message) for a torchrun job whose ranks failed, or None if none did. The first
    cause leads: a rank ended by a signal other than torchrun's SIGTERM (`killed` or `crashed`,
    with faulthandler's stack), else the rank whose error file was written first (what it raised:
    `error`, `oom` for an out-of-memory error), else a non-zero exit; the others follow."""
    failed = _summary(output)
    files = _error_files(log_dir) if log_dir else {}
    by_path = {os.path.realpath(f["error_file"]): r for r, f in failed.items() if f["error_file"]}
    for path, (local, _, _) in files.items():  # a rank missing from the summary: its local rank
        failed.setdefault(by_path.get(path, local), {"code": 1, "local": local, "error_file": path})
    if not failed:
        return None
    causes = []
    for r, f in failed.items():
        raised = files.get(os.path.realpath(f["error_file"])) if f["error_file"] else None
        code = f["code"]
        if code < 0 and code != -signal.SIGTERM:
            status, how = ended_by(code)
            causes.append((0, 0, r, status, how, how))
        elif raised:
            exc_type = raised[2].split(":", 1)[0]
            status = "oom" if exc_type in ("OutOfMemoryError", "MemoryError") else "error"
            causes.append((1, raised[1], r, status, f"raised {raised[2]}", f"raised {exc_type}"))
        elif code > 0:
            causes.append((2, 0, r, "error", f"exited with code {code}", f"exited with code {code}"))
        else:
            causes.append((3, 0, r, "killed", ended_by(code)[1], ended_by(code)[1]))
    causes.sort()
    (prio, _, rank, status, how, _), *rest = causes
    text = "; ".join([f"rank {rank} {how}"] + [f"rank {r} {short}" for *_, r, _, _, short in rest])
    text += " (torchrun stopped the other ranks)"
    if status == "crashed" and (stack := fault_stack(output)):
        text += f"; Python stack, innermost first: {stack}"
    elif prio == 2 and (last := _raised(output, rank)):
        text += f": {last}"
    return status, text[:1000]


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
    """This rank's peak: allocated bytes on a GPU, resident set size (the process's) on a CPU; `counter`
    names which (the memory workload's term, memory_counters)."""
    if device.startswith("cuda"):
        return {"counter": "cuda max_memory_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    return {"counter": "process peak RSS", "bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}


def fault_point(step: int) -> None:
    """The test hook: RESBENCH_FAULT=kill:R:S kills rank R at its step S; hang:R:S hangs it there;
    raise:R:S raises a RuntimeError there."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or not dist.is_initialized():
        return
    action, rank, at = spec.split(":")
    if dist.get_rank() == int(rank) and step == int(at):
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "hang":
            time.sleep(10**6)
        elif action == "raise":
            raise RuntimeError(f"injected fault on rank {rank}")


def time_rounds(fns: dict, warmup: int, repeats: int, device: str, progress=None, plan=None,
                baseline: str | None = None) -> dict[str, list[float]]:
    """Seconds of each fn per round on this rank: measure.time_interleaved's rounds, with every
    call started together on all ranks (a barrier before it, outside its timing), since a
    distributed step's cost includes waiting for the others. Call on every rank alike. With
    adaptive `plan` (harness/measure/rounds.py) the rounds may stop at a planned look, on the slowest
    rank's ratios to `baseline`: rank 0 decides and every rank follows."""
    calls = itertools.count()

    def meet(_name) -> None:
        fault_point(next(calls))
        dist.barrier()

    def stop(done: int, samples: dict[str, list[float]]) -> bool:
        return plan.at_look(done) and _agree_stop(plan, done, samples, baseline)

    adaptive = plan is not None and baseline in fns
    out = time_interleaved(fns, device, warmup, repeats, progress, stop=stop if adaptive else None, before=meet)
    if plan is not None:
        plan.rounds = len(next(iter(out.values()), []))
    return out


def _agree_stop(plan, done: int, mine: dict[str, list[float]], baseline: str) -> bool:
    """Every rank's times to rank 0, which checks the plan on the slowest rank per round (a step
    ends when its last rank does) and tells every rank whether to stop: one decision, since the
    budget's clock and the times differ per rank."""
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    decision = [False, plan.stopped]
    if dist.get_rank() == 0:
        slowest = {k: [max(e[k][i] for e in every) for i in range(done)] for k in mine}
        base = slowest[baseline]
        decision[0] = plan.check(done, [[a / b for a, b in zip(slowest[k], base)] for k in slowest if k != baseline])
        decision[1] = plan.stopped
    dist.broadcast_object_list(decision, src=0)
    plan.stopped = decision[1]
    return decision[0]
