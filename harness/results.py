"""Records: one JSON line per cell, appended atomically; where a user's results go; resume."""
from __future__ import annotations

import json
import os
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

from .errors import UserError
from .provenance import producer

STATUSES = ("ok", "oom", "diverged", "timeout", "error")
FINISHED = ("ok", "oom", "diverged")  # deterministic outcomes; timeout/error are retried on resume
# a cell as a reader names it (not its key: settings such as repeats or batch stay out)
IDENTITY = ("label", "shape_name", "shape", "device", "precision", "workload", "seed")
LOCAL_DIR = "local"  # results/local/: a user's own runs (git-ignored); results/reference/: committed


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
            _upgrade(rec)
            out.append(rec)
    return out


# records written before `precision` replaced `dtype` (weights and compute in that dtype)
_OLD_DTYPES = {"float32": "fp32", "bfloat16": "bf16-pure", "float16": "fp16-pure"}


def _upgrade(rec: dict) -> None:
    cell = rec.get("cell")
    if isinstance(cell, dict) and "precision" not in cell and "dtype" in cell:
        cell["precision"] = _OLD_DTYPES.get(cell.pop("dtype"), "?")


def latest_by_key(records: list[dict]) -> dict[str, dict]:
    """The newest record per cell key (a --force rerun supersedes older lines)."""
    out = {}
    for rec in records:
        out[rec["key"]] = rec
    return out


def newest_per_cell(records: list[dict]) -> list[dict]:
    """The newest record per (producer, label, shape, device, precision, workload, seed), in file
    order: a rerun or a changed setting (repeats, batch) replaces the older line instead of being
    averaged with it."""
    out: dict[tuple, dict] = {}
    for r in records:
        c = r["cell"]
        ident = (producer(r.get("env") or {}), json.dumps([c.get(k) for k in IDENTITY], sort_keys=True))
        out.pop(ident, None)  # re-insert: later lines come later
        out[ident] = r
    return list(out.values())


def newest_producer_only(records: list[dict], what: str) -> list[dict]:
    """The records of the producer (code, machine, torch) of the newest record; a warning names
    how many of other producers were left out, so a study never pools two machines' seeds."""
    if not records:
        return records
    keep = producer(records[-1].get("env") or {})
    mine = [r for r in records if producer(r.get("env") or {}) == keep]
    if len(mine) < len(records):
        warnings.warn(f"{what}: left out {len(records) - len(mine)} record(s) measured by other code or on another "
                      "machine than the newest one; report each producer's results on their own", stacklevel=2)
    return mine


def finished_keys(path: Path, current: tuple | None = None) -> tuple[set[str], int]:
    """Keys of cells finished in `path` by the producer `current` (see provenance.producer; None:
    by anyone), and how many finished records were passed over for another producer."""
    if not path.is_file():
        return set(), 0
    done, foreign = set(), set()
    for rec in read_records(path):
        if rec["status"] not in FINISHED:
            continue
        if current is None or producer(rec.get("env") or {}) == current:
            done.add(rec["key"])
        else:
            foreign.add(rec["key"])
    return done, len(foreign - done)


def results_root(cwd: Path | None = None) -> Path:
    """results/ of the resbench checkout the user stands in (its root, from any subfolder), else
    results/ under the working directory. Never where the package is installed."""
    cwd = (cwd or Path.cwd()).resolve()
    for d in (cwd, *cwd.parents):
        if (d / "asv.conf.json").is_file() and (d / "harness").is_dir() and (d / "variants").is_dir():
            return d / "results"
    return cwd / "results"


def default_results_path(suite_name: str) -> Path:
    """results/local/<suite>.jsonl: a user's own runs, apart from the committed reference results."""
    return results_root() / LOCAL_DIR / f"{suite_name}.jsonl"


def warn_to_stderr(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
    print(f"resbench: warning: {message}", file=sys.stderr)
