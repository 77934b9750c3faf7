"""Records: one JSON line per cell, appended atomically; where a user's results go; resume."""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import stat
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

from . import workloads
from .cells import CONNECTION, OPTIONAL_CELL_FIELDS, Cell, cell_key
from .errors import UserError
from .model import ModelConfig
from .provenance import producer

STATUSES = ("ok", "oom", "diverged", "timeout", "killed", "crashed", "error")
# deterministic outcomes; timeout, killed (a signal from outside), crashed (a signal from within:
# a segfault, an abort) and error are retried on resume
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


def make_record(cell: Cell, res: dict | None, suite: str, run: str, limits: dict) -> dict:
    """One cell's record from its worker's outcome ({status, message, metrics, env, ...}); a cell
    the worker said nothing of is an `error`. Its message is bounded; a record that cannot be
    written as JSON (a NaN metric) or is too large becomes an `error` record saying why."""
    res = dict(res or {"status": "error", "message": "no result for this cell", "metrics": {}})
    res["message"] = bounded_message(res.get("message"))
    record = {"key": cell.key, "suite": suite, "run": run, "time": now(), "cell": cell.to_dict(), "limits": limits,
              **res}
    try:
        encode_record(record)
    except (ValueError, TypeError) as exc:
        record = {**record, "status": "error", "metrics": {},
                  "message": f"the cell's record could not be written as JSON: {str(exc)[:300]}"}
    return record


def check_writable(path: Path) -> None:
    """Fail before any work if records cannot be written (creates the folder, nothing else)."""
    if path.is_dir():
        raise UserError(f"results path {path} is a directory; give a file, e.g. {path / 'results.jsonl'}")
    if path.exists() and not path.is_file():  # a FIFO blocks the reader, a device takes anything
        raise UserError(f"results path {path} is not a regular file; give a .jsonl file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"results directory {path.parent} cannot be created: {exc.strerror}") from None
    if path.exists() and not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        raise UserError(f"results path {path} is not writable")


MAX_RECORD_BYTES = 1 << 20  # one line; the largest real record is ~20 KB (a decode sweep's points)
MAX_MESSAGE = 2000  # characters of a record's message kept, written or read


def bounded_message(msg):
    if isinstance(msg, str) and len(msg) > MAX_MESSAGE:
        return f"{msg[:MAX_MESSAGE]}... ({len(msg) - MAX_MESSAGE} more characters cut)"
    return msg


def encode_record(record: dict) -> bytes:
    """The record as one JSON line; ValueError if it holds NaN or inf (not JSON) or is larger
    than MAX_RECORD_BYTES (its message is cut to MAX_MESSAGE first)."""
    if "message" in record:
        record = {**record, "message": bounded_message(record["message"])}
    line = (json.dumps(record, sort_keys=True, allow_nan=False, default=str) + "\n").encode()
    if len(line) > MAX_RECORD_BYTES:
        raise ValueError(f"the record is {len(line):,} bytes, over the {MAX_RECORD_BYTES:,} a record may hold")
    return line


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
    """Hold an exclusive lock on the results file itself (its inode, with flock) for a run: a
    second run on it is refused, never interleaved with the first, whatever name it is reached
    by (a symlink, a hard link). The file is created if need be, and removed again if the run
    wrote nothing to it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot open results file {path}: {exc.strerror}") from None
    created = False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"results path {path} is not a regular file; give a .jsonl file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{path} is in use by {_lock_holder(st)}; wait for it, or write elsewhere with "
                            "--out") from None
        try:  # the name may have been replaced while we waited: the lock must be on what is written
            now_st = os.stat(path)
        except OSError:
            now_st = None
        if now_st is None or (now_st.st_dev, now_st.st_ino) != (st.st_dev, st.st_ino):
            raise UserError(f"{path} was replaced while a run was starting on it; run again")
        created = st.st_size == 0
        yield
    finally:
        if created and os.fstat(fd).st_size == 0:
            with contextlib.suppress(OSError):
                os.unlink(path)
        os.close(fd)  # releases the lock


def _lock_holder(st: os.stat_result) -> str:
    """'resbench run (pid N)' for the process /proc/locks says holds a flock on this inode."""
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == want:
                return f"another resbench run (pid {parts[4]})"
    except OSError:
        pass
    return "another resbench run"


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


CELL_FIELDS = tuple(f.name for f in dataclasses.fields(Cell) if f.name not in OPTIONAL_CELL_FIELDS)
# what each cell field must be (records written before `precision` carry `dtype`: _upgrade)
CELL_TYPES = {"variant": str, "options": dict, "label": str, "shape_name": str, "shape": dict, "workload": str,
              "params": dict, "device": str, "precision": str, "seed": int, "threads": int, "variant_source": str,
              "compile": str, "launch": dict}


def check_value(value, spec, where: str) -> str | None:
    """Why `value` does not fit `spec`, or None. A spec is a type (float: any real number, not a
    bool), a tuple of them (None: null allowed), or a mapping {field: spec} whose fields ending
    in '?' may be absent (a workload's Workload.metrics_schema)."""
    if isinstance(spec, tuple):  # alternatives: the first that fits
        whys = [check_value(value, alt, where) for alt in spec]
        return None if None in whys else next((w for w in whys if " is missing" in w or "." in w[len(where):]),
                                              f"{where} is {type(value).__name__} {str(value)[:40]!r}, "
                                              f"not {_spec_name(spec)}")
    if spec is None:
        return None if value is None else f"{where} is not null"
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"{where} is a {type(value).__name__}, not a mapping"
        for name, sub in spec.items():
            key = name.rstrip("?")
            if key not in value:
                if not name.endswith("?"):
                    return f"{where}.{key} is missing"
                continue
            why = check_value(value[key], sub, f"{where}.{key}")
            if why:
                return why
        return None
    if spec in (float, int):
        fits = isinstance(value, (int, float) if spec is float else int) and not isinstance(value, bool)
    else:
        fits = isinstance(value, spec)
    return None if fits else f"{where} is {type(value).__name__} {str(value)[:40]!r}, not {_spec_name(spec)}"


def _spec_name(spec) -> str:
    names = {float: "a number", int: "an integer", str: "a string", list: "a list", dict: "a mapping", None: "null"}
    return " or ".join("a mapping" if isinstance(t, dict) else names.get(t, getattr(t, "__name__", str(t)))
                       for t in (spec if isinstance(spec, tuple) else (spec,)))


def check_record(rec, verify_key: bool = True) -> str | None:
    """Why `rec` is not a usable record, or None: what report, resume and compare rely on — the
    cell's fields and types, a key that is the hash of that cell, and for an `ok` record the
    metrics its workload's readers use (Workload.metrics_schema)."""
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
    for name, typ in CELL_TYPES.items():
        if name in cell:
            why = check_value(cell[name], typ, f"cell.{name}")
            if why:
                return why
    absent = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in cell["shape"]]
    if absent:  # every record states its whole shape (Cell.shape is ModelConfig.to_dict())
        return f"cell.shape lacks {', '.join(absent)}"
    try:
        ModelConfig(**cell["shape"])
    except (TypeError, ValueError) as exc:  # ConfigError is a ValueError
        return f"cell.shape is not a model shape ({str(exc)[:80]})"
    if verify_key and rec["key"] != cell_key(cell):
        return f"its key {rec['key'][:20]!r} is not the hash of its cell (edited, or written by other code)"
    if not isinstance(rec.get("metrics"), dict):
        return "'metrics' is not a mapping"
    if rec.get("env") is not None and not isinstance(rec["env"], dict):
        return "'env' is not a mapping"
    if not isinstance(rec.get("status"), str):
        return "no string 'status'"
    if rec.get("message") is not None and not isinstance(rec["message"], str):
        return "'message' is not a string"
    try:
        wl = workloads.get(cell["workload"])
    except KeyError:
        return None  # a workload this code does not have: readers skip it
    params = dataclasses.fields(wl.Params) if dataclasses.is_dataclass(wl.Params) else ()
    for f in params:  # a value the workload's readers format or compute with
        if f.name in cell["params"] and f.type in (int, float, str, bool, "int", "float", "str", "bool"):
            typ = {"int": int, "float": float, "str": str, "bool": bool}.get(f.type, f.type)
            v = cell["params"][f.name]
            if not isinstance(v, (list, tuple)) and check_value(v, typ if typ is not bool else (bool,), "p"):
                return f"cell.params.{f.name} is {type(v).__name__} {str(v)[:40]!r}, not {_spec_name(typ)}"
    if rec["status"] == "ok":
        return check_value(rec["metrics"], wl.metrics_schema, "metrics")
    return None


def _foreign_key(rec) -> str | None:
    if not (isinstance(rec, dict) and isinstance(rec.get("cell"), dict) and isinstance(rec.get("key"), str)):
        return None  # check_record says what is wrong
    try:
        ok = rec["key"] == cell_key(rec["cell"])
    except (TypeError, ValueError, RecursionError):
        return "its cell cannot be hashed"
    return None if ok else f"its key {rec['key'][:20]!r} is not the hash of its cell (edited, or written by other code)"


def _lines(path: Path):
    """(line number, text) of each line, reading at most MAX_RECORD_BYTES of any one: a longer
    line is passed over unread (None), so one huge record cannot exhaust memory."""
    with open(path, "rb") as fh:
        n = 0
        while True:
            line = fh.readline(MAX_RECORD_BYTES + 1)
            if not line:
                return
            n += 1
            if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # the rest of the line, in bounded chunks
                    line = fh.readline(MAX_RECORD_BYTES)
                yield n, None
                continue
            yield n, line.decode("utf-8", errors="replace")


def read_records(*paths: Path) -> list[dict]:
    """All good records. A torn, corrupt, oversized or malformed line is skipped with a warning
    naming its line, never fatal; a record with an unknown status is kept, with a warning."""
    out = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"results file not found: {path}")
        try:
            lines = list(_lines(path))
        except OSError as exc:
            raise UserError(f"cannot read results file {path}: {exc.strerror}") from None
        for n, line in lines:
            if line is None:
                warnings.warn(f"{path}:{n}: skipped a line over {MAX_RECORD_BYTES:,} bytes", stacklevel=2)
                continue
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                warnings.warn(f"{path}:{n}: skipped a line that is not JSON (a run killed mid-write?)", stacklevel=2)
                continue
            # the key is the hash of the cell as written: checked before an old cell is upgraded
            why = _foreign_key(rec)
            if why is None:
                if isinstance(rec, dict):
                    _upgrade(rec)
                why = check_record(rec, verify_key=False)
            if why:
                warnings.warn(f"{path}:{n}: skipped a malformed record: {why}", stacklevel=2)
                continue
            rec["message"] = bounded_message(rec.get("message"))
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
    # records written before the shape's transformer-block count was named `depth` (n_blocks now
    # means only Block AttnRes's N); the key, checked before this, is still the hash as written
    shape = cell.get("shape") if isinstance(cell, dict) else None
    if isinstance(shape, dict) and "n_blocks" in shape and "depth" not in shape:
        cell["shape"] = {"depth" if k == "n_blocks" else k: v for k, v in shape.items()}
    # records of the distributed workloads written before their peak memory's `kind` was named
    # `counter` (the memory workload's term; "kind" means a suite's study elsewhere): ddp/fsdp hold
    # one mapping, pp a list of them (one per rank); metrics are not in the key, so only readers care
    metrics = rec.get("metrics")
    if isinstance(cell, dict) and isinstance(metrics, dict) and "memory" in metrics and _distributed(cell):
        mem = metrics["memory"]
        metrics["memory"] = [_counter(m) for m in mem] if isinstance(mem, list) else _counter(mem)


def _distributed(cell: dict) -> bool:
    try:
        return workloads.get(cell.get("workload")).distributed
    except (KeyError, TypeError):  # a workload this code does not have, or not a name
        return False


def _counter(mem):
    """A distributed workload's peak-memory mapping with `kind` renamed `counter` (key order kept)."""
    if not (isinstance(mem, dict) and "kind" in mem and "counter" not in mem):
        return mem
    return {"counter" if k == "kind" else k: v for k, v in mem.items()}


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


def finished_keys(path: Path, current: tuple | None = None, limits: dict | None = None) -> tuple[set[str], int]:
    """Keys of cells finished in `path` by the producer `current` (see provenance.producer; None:
    by anyone), and how many finished records were passed over for another producer. An `oom`
    counts as finished only under a memory cap no larger than the one it ran out under
    (`limits`: this run's; a record that does not say its cap is measured again)."""
    if not path.is_file():
        return set(), 0
    done, foreign = set(), set()
    for rec in read_records(path):
        if rec["status"] not in FINISHED or (rec["status"] == "oom" and not _same_limit(rec, limits)):
            continue
        if current is None or producer(rec.get("env") or {}) == current:
            done.add(rec["key"])
        else:
            foreign.add(rec["key"])
    return done, len(foreign - done)


def _same_limit(rec: dict, limits: dict | None) -> bool:
    if limits is None or limits.get("memory_cap_bytes") is None:
        return True
    was = (rec.get("limits") or {}).get("memory_cap_bytes") if isinstance(rec.get("limits"), dict) else None
    return isinstance(was, (int, float)) and was >= limits["memory_cap_bytes"]


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
