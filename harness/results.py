"""Records: one JSON line per cell, appended atomically; where a user's results go; resume."""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

from . import workloads
from .cells import CONNECTION, OPTIONAL_CELL_FIELDS, Cell
from .errors import UserError
from .provenance import producer

STATUSES = ("ok", "oom", "diverged", "timeout", "killed", "error")
# deterministic outcomes; timeout, killed (a signal from outside) and error are retried on resume
FINISHED = ("ok", "oom", "diverged")
# a cell as a reader names it (not its key: settings such as repeats or batch stay out)
IDENTITY = ("label", "shape_name", "shape", "device", "precision", "compile", "workload", "seed")
DEFAULTS = {"compile": "none"}  # what an identity field means in a record written before it existed


def identity(cell: dict) -> str:
    """The cell as a reader names it (IDENTITY's fields, its launcher's ranks and backend, and its
    workload's axis values: one row per schedule), as one comparable string."""
    launch = {k: v for k, v in (cell.get("launch") or {}).items() if k not in CONNECTION}
    try:
        axes = workloads.get(cell["workload"]).axes
    except KeyError:
        axes = ()
    return json.dumps([cell.get(k, DEFAULTS.get(k)) for k in IDENTITY] + [launch, [cell["params"].get(k) for k in axes]],
                      sort_keys=True)
LOCAL_DIR = "local"  # results/local/: a user's own runs (git-ignored); results/reference/: committed


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_writable(path: Path) -> None:
    """Fail before any work if records cannot be written (creates the folder, nothing else)."""
    if path.is_dir():
        raise UserError(f"results path {path} is a directory; give a file, e.g. {path / 'results.jsonl'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"results directory {path.parent} cannot be created: {exc.strerror}") from None
    if path.exists() and not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        raise UserError(f"results path {path} is not writable")


def encode_record(record: dict) -> bytes:
    """The record as one JSON line; ValueError if it holds NaN or inf (not JSON)."""
    return (json.dumps(record, sort_keys=True, allow_nan=False, default=str) + "\n").encode()


def append_record(path: Path, record: dict) -> None:
    """Append one whole line or nothing. A killed run leaves at most a torn last line; a failed
    write (a full disk, a short write) is cut back to the file's previous length, so the file
    stays byte for byte what it was, and raises a one-line UserError."""
    line = encode_record(record)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot open results file {path}: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        # a torn line from a killed run must not swallow this record: start on a fresh line
        if size and not _ends_with_newline(path):
            line = b"\n" + line
        try:
            done = 0
            while done < len(line):  # os.write may write less than asked
                n = os.write(fd, line[done:])
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += n
            os.fsync(fd)
        except OSError as exc:
            os.ftruncate(fd, size)
            raise UserError(f"cannot write a record to {path}: {exc.strerror or exc} (the file is left as it was)") \
                from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(path: Path):
    """Hold an exclusive lock on `path` (through PATH.lock, which names the holder) for a run:
    a second run on the same results file is refused, never interleaved with the first."""
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot create the lock file {lock}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"{path} is in use by {holder}; wait for it, or write elsewhere with --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"resbench run (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, empty locks are harmless


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


CELL_FIELDS = tuple(f.name for f in dataclasses.fields(Cell) if f.name not in OPTIONAL_CELL_FIELDS)


def check_record(rec) -> str | None:
    """Why `rec` is not a usable record, or None. What report, resume and compare rely on."""
    if not isinstance(rec, dict):
        return f"a {type(rec).__name__}, not a record"
    if not isinstance(rec.get("key"), str):
        return "no string 'key'"
    cell = rec.get("cell")
    if not isinstance(cell, dict):
        return "'cell' is not a mapping"
    missing = [f for f in CELL_FIELDS if f not in cell]
    if missing:
        return f"cell lacks {', '.join(missing)}"
    if not isinstance(cell["shape"], dict) or not isinstance(cell["params"], dict):
        return "cell.shape / cell.params are not mappings"
    if not isinstance(rec.get("metrics"), dict):
        return "'metrics' is not a mapping"
    if rec.get("env") is not None and not isinstance(rec["env"], dict):
        return "'env' is not a mapping"
    if not isinstance(rec.get("status"), str):
        return "no string 'status'"
    return None


def read_records(*paths: Path) -> list[dict]:
    """All good records. A torn, corrupt or malformed line is skipped with a warning naming its
    line, never fatal; a record with an unknown status is kept, with a warning."""
    out = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"results file not found: {path}")
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            raise UserError(f"cannot read results file {path}: {exc.strerror}") from None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                warnings.warn(f"{path}:{n}: skipped a line that is not JSON (a run killed mid-write?)", stacklevel=2)
                continue
            if isinstance(rec, dict):
                _upgrade(rec)
            why = check_record(rec)
            if why:
                warnings.warn(f"{path}:{n}: skipped a malformed record: {why}", stacklevel=2)
                continue
            if rec["status"] not in STATUSES:
                warnings.warn(f"{path}:{n}: unknown status {rec['status'][:40]!r} (known: {', '.join(STATUSES)})",
                              stacklevel=2)
            out.append(rec)
    return out


# records written before `precision` replaced `dtype` (weights and compute in that dtype)
_OLD_DTYPES = {"float32": "fp32", "bfloat16": "bf16-pure", "float16": "fp16-pure"}


def _upgrade(rec: dict) -> None:
    cell = rec.get("cell")
    if isinstance(cell, dict) and "precision" not in cell and "dtype" in cell and isinstance(cell["dtype"], str):
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
        ident = (producer(r.get("env") or {}), identity(c))
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
