"""Records: one JSON line per cell, appended atomically; environment fingerprint; resume."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

from .errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
STATUSES = ("ok", "oom", "diverged", "timeout", "error")
FINISHED = ("ok", "oom", "diverged")  # deterministic outcomes; timeout/error are retried on resume
HARNESS_VERSION = "0.1.0"


def git_fingerprint(root: Path = REPO_ROOT) -> dict:
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


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    """Where and with what a record was measured (taken inside the cell's process)."""
    env = {
        **git_fingerprint(),
        "harness_version": HARNESS_VERSION,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_writable(path: Path) -> None:
    """Fail before any work if records cannot be written (creates the folder, nothing else)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"results directory {path.parent} cannot be created: {exc.strerror}") from None
    if path.exists() and not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        raise UserError(f"results path {path} is not writable")


def append_record(path: Path, record: dict) -> None:
    """One write() of one whole line on an O_APPEND fd: a killed run leaves at most a torn last line."""
    line = (json.dumps(record, sort_keys=True, allow_nan=False, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # a torn line from a killed run must not swallow this record: start on a fresh line
        if os.fstat(fd).st_size and not _ends_with_newline(path):
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def read_records(*paths: Path) -> list[dict]:
    """All good records; a truncated or corrupt line is skipped with a warning, never fatal."""
    out = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"results file not found: {path}")
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or "cell" not in rec or "status" not in rec:
                    raise ValueError("not a record")
            except ValueError:
                warnings.warn(f"{path}:{n}: skipped a malformed record line (killed run?)", stacklevel=2)
                continue
            out.append(rec)
    return out


def latest_by_key(records: list[dict]) -> dict[str, dict]:
    """The newest record per cell key (a --force rerun supersedes older lines)."""
    out = {}
    for rec in records:
        out[rec["key"]] = rec
    return out


def finished_keys(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {k for k, r in latest_by_key(read_records(path)).items() if r["status"] in FINISHED}


def default_results_path(suite_name: str) -> Path:
    return REPO_ROOT / "results" / f"{suite_name}.jsonl"


def warn_to_stderr(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
    print(f"resbench: warning: {message}", file=sys.stderr)
