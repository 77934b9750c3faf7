"""What produced a record: the code (commit, content hash), the machine, the software and the
run's numeric settings. Resume and report use it so that records of another machine, another
code or another torch are never taken for this run's.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path

import torch

from . import __version__

PACKAGE_DIR = Path(__file__).resolve().parent  # harness/ in a checkout, resbench/ when installed


def _sha(chunks) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def source_hash(path: str) -> str | None:
    """sha256 of one source file (None if it cannot be read: a frozen or zipped module)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """Hash of every .py file of the harness and its built-in variants, by path and content: the
    same for two checkouts of one commit, different as soon as one line of code differs (a dirty
    tree included). External variants are identified per record by their own source hash."""
    from . import variants

    roots = [PACKAGE_DIR, Path(variants.__file__).resolve().parent]
    files = sorted({(r.name, p.relative_to(r).as_posix(), p) for r in roots for p in r.rglob("*.py")})
    return _sha(f"{top}/{rel}\0".encode() + p.read_bytes() + b"\0" for top, rel, p in files)[:16]


def checkout_root() -> Path | None:
    """The git checkout this code runs from (None for an installed wheel)."""
    root = PACKAGE_DIR.parent
    return root if (root / ".git").exists() else None


@functools.lru_cache(maxsize=1)
def git_fingerprint() -> dict:
    """The checkout's commit and dirty flag; for a copy without .git (scripts/gpu_acceptance.sh
    on a machine without git access), the commit its launcher names in RESBENCH_COMMIT, marked
    as stated, not read (the code hash still identifies the code)."""
    root = checkout_root()
    if root is None:
        stated = os.environ.get("RESBENCH_COMMIT")
        return {"commit": stated, "dirty": None, "commit_stated": True} if stated else {"commit": None, "dirty": None}

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                k, v = (x.strip() for x in line.split(":", 1))
                out.setdefault(k, v)  # the first processor's entry
    except OSError:
        pass
    return out


def _mem_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def machine() -> dict:
    """The hardware, with an id over its class: what tells two kinds of machine apart, not two
    nodes of one kind. The CPU signature (family, model, stepping, cache, flags) separates two CPUs
    that print the same model name ("AMD EPYC" on two generations); GPUs by model, count, memory
    and driver. The host name is recorded beside it, not in it, so identical nodes of a cluster
    produce records of one producer (and memory counts in whole GiB: kernels reserve a little
    differently)."""
    info = _cpuinfo()
    sig = ",".join(info.get(k, "") for k in ("vendor_id", "cpu family", "model", "stepping", "cache size"))
    flags = hashlib.sha256(info.get("flags", "").encode()).hexdigest()[:8]
    m = {"hostname": platform.node(), "cpu": cpu_model(), "cpu_signature": f"{sig},flags:{flags}",
         "cpu_count": os.cpu_count(), "mem_total": _mem_total(), "arch": platform.machine()}
    if torch.cuda.is_available():
        m["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        props = torch.cuda.get_device_properties(0)
        m["gpu_memory"] = int(props.total_memory)
        m["gpu_capability"] = f"{props.major}.{props.minor}"
        m["nvidia_driver"] = _nvidia_driver()
    ident = {**m, "mem_total": round((m["mem_total"] or 0) / 2**30)}
    ident.pop("hostname")
    m["machine_id"] = hashlib.sha256(repr(sorted(ident.items())).encode()).hexdigest()[:12]
    return m


def _nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else v
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML absent: the collect_env fingerprint may still have it
        return None


def _fp32_mode(*getters) -> str | None:
    """The first of the getters that answers 'tf32' or 'ieee'. torch >= 2.9 has per-backend
    settings (`fp32_precision`, "none" = inherit from the parent); mixing them with the legacy
    API makes the legacy getters raise, so the new ones are read first."""
    for getter in getters:
        try:
            value = getter()
        except (AttributeError, RuntimeError):
            continue
        if isinstance(value, bool):  # a legacy allow_tf32 flag
            return "tf32" if value else "ieee"
        if value in ("tf32", "ieee"):
            return value
    return None


def matmul_fp32_precision() -> str:
    """How fp32 matmuls run on CUDA: 'tf32' or 'ieee'."""
    return _fp32_mode(lambda: torch.backends.cuda.matmul.fp32_precision, lambda: torch.backends.fp32_precision,
                      lambda: torch.get_float32_matmul_precision() != "highest",
                      lambda: torch.backends.cuda.matmul.allow_tf32) or "ieee"


def cudnn_fp32_precision() -> str | None:
    """How fp32 convolutions run in cuDNN (recorded; resbench's model has none)."""
    return _fp32_mode(lambda: torch.backends.cudnn.conv.fp32_precision, lambda: torch.backends.cudnn.fp32_precision,
                      lambda: torch.backends.cudnn.allow_tf32)


@functools.lru_cache(maxsize=1)
def system() -> dict:
    """Software the numbers depend on, mostly from torch.utils.collect_env (about a second: the
    runner takes it once and hands it to its workers)."""
    from torch.utils import collect_env

    try:
        info = collect_env.get_env_info()._asdict()
    except Exception as exc:  # noqa: BLE001 - a fingerprint must never stop a run
        info = {"collect_env_error": f"{type(exc).__name__}: {exc}"}
    keep = ("os", "libc_version", "gcc_version", "cuda_compiled_version", "cuda_runtime_version",
            "nvidia_driver_version", "nvidia_gpu_models", "cudnn_version", "is_debug_build",
            "hip_compiled_version", "collect_env_error")
    out = {k: info[k] for k in keep if info.get(k) not in (None, "N/A", "")}
    import numpy

    out.update(python=platform.python_version(), torch=torch.__version__, numpy=numpy.__version__,
               torch_git=getattr(torch.version, "git_version", None), mkldnn=torch.backends.mkldnn.is_available())
    return out


def environment(device: str, sysinfo: dict | None = None) -> dict:
    """Where and with what a record was measured (taken inside the cell's process; `sysinfo`:
    the parent's `system()`, same interpreter)."""
    m = machine()
    sysinfo = sysinfo or system()
    env = {
        **git_fingerprint(),
        "code_hash": code_hash(),
        "resbench_version": __version__,
        "torch": torch.__version__,
        "python": sysinfo["python"],
        "platform": platform.platform(),
        "cpu": m["cpu"],
        "cpu_count": m["cpu_count"],
        "machine_id": m["machine_id"],
        "machine": m,
        "system": sysinfo,
        "threads": torch.get_num_threads(),
        "device": device,
        "fp32_matmul": matmul_fp32_precision(),
        "fp32_cudnn": cudnn_fp32_precision(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def producer(env: dict) -> tuple:
    """What must match for a record to stand in for a fresh measurement here: the same code, the
    same machine and the same torch/python (threads and device are part of the cell)."""
    return (env.get("code_hash"), env.get("machine_id"), env.get("torch"), env.get("python"))


def describe(env: dict) -> str:
    """One line naming the code and machine behind a record."""
    commit = str(env.get("commit") or "no git")[:10] + (" (dirty)" if env.get("dirty") else "")
    hw = env.get("gpu") or env.get("cpu", "?")
    return (f"commit {commit}, code {env.get('code_hash', '?')}, {hw} ×{env.get('cpu_count', '?')} "
            f"[machine {env.get('machine_id', '?')}], torch {env.get('torch', '?')}")
