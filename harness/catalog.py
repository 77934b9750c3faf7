"""`resbench suites`: the shipped suites, each with its kind, how many cells it expands to, what it
is for (the first line of its file's comment) and how long it took on a reference machine (from
the committed reference records of a checkout: the wall time of the runs that wrote them)."""
from __future__ import annotations

import json
import warnings
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from tabulate import tabulate

from . import studies
from .config import expand_cells, read_yaml, resolve_suite_path, suites_dir
from .errors import ConfigError
from .provenance import checkout_root
from .results import read_records


def purpose(path: Path) -> str:
    """The first line of a suite file, a comment: what the suite is for (a shipped suite's
    convention; tests hold every shipped suite to it)."""
    first = (path.read_text().splitlines() or [""])[0]
    return first.lstrip("# ").rstrip(".") if first.startswith("#") else "-"


def cell_count(study, cfg) -> int | None:
    return len(expand_cells(cfg, cfg.device if cfg.device != "auto" else "cpu"))


def reference_durations() -> dict[str, tuple[float, str]]:
    """{suite: (seconds, reference machine folder)} from each committed SUITE.jsonl (the newest
    when several machines have one): the wall time its runs covered, from each run's first record
    (its start, where recorded) to its last, runs that overlapped counted once."""
    root = checkout_root()
    ref = root / "results" / "reference" if root is not None else None
    if ref is None or not ref.is_dir():
        return {}
    shipped = {p.stem for p in suites_dir().glob("*.yaml")}
    out: dict[str, tuple[float, str, float]] = {}
    for path in sorted(ref.rglob("*.jsonl")):
        if path.stem not in shipped:
            continue  # a suite's reference run writes SUITE.jsonl; other files hold parts or studies
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                recs = read_records(path)
            except Exception:  # noqa: BLE001 - a file this code cannot read has no duration
                continue
        runs: dict[str, list[float]] = defaultdict(list)
        for r in recs:
            t = _ts(r.get("time"))
            if t is not None:
                runs[r.get("run") or "?"] += [_ts((r.get("placement") or {}).get("start")) or t, t]
        if not runs:
            continue
        spans = sorted((min(v), max(v)) for v in runs.values())
        total, (lo, hi) = 0.0, spans[0]
        for a, b in spans[1:]:
            if a > hi:
                total, lo = total + hi - lo, a
            hi = max(hi, b)
        total += hi - lo
        newest = max(b for _, b in spans)
        if path.stem not in out or newest > out[path.stem][2]:
            out[path.stem] = (total, path.relative_to(ref).parts[0], newest)
    return {k: (v[0], v[1]) for k, v in out.items()}


def _ts(value) -> float | None:
    try:
        return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else None
    except ValueError:
        return None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def rows() -> list[dict]:
    durations = reference_durations()
    out = []
    for path in sorted(suites_dir().glob("*.yaml")):
        try:
            study, cfg = studies.parse(read_yaml(path), default_name=path.stem)
            kind, cells, device = (study.name if study else "measurement"), cell_count(study, cfg), \
                getattr(cfg, "device", "cpu")
        except ConfigError as exc:  # a shipped suite that no longer parses is a bug: say so, keep listing
            kind, cells, device = f"invalid: {exc}", None, "?"
        took = durations.get(path.stem)
        out.append({"suite": path.stem, "kind": kind, "device": device, "cells": cells, "purpose": purpose(path),
                    "reference_s": took[0] if took else None, "reference_machine": took[1] if took else None})
    return out


def cmd_suites(args) -> int:
    if args.show:
        print(resolve_suite_path(args.show).read_text(), end="", file=args.stdout)
        return 0
    table = rows()
    if args.json:
        print(json.dumps(table, indent=1), file=args.stdout)
        return 0
    print(tabulate([[r["suite"], r["kind"], r["device"], "-" if r["cells"] is None else r["cells"],
                     "-" if r["reference_s"] is None else f"{_minutes(r['reference_s'])} ({r['reference_machine']})",
                     r["purpose"]] for r in table],
                   headers=["suite", "kind", "device", "cells", "took (reference run)", "purpose"],
                   tablefmt="github", disable_numparse=True), file=args.stdout)
    print("\nRun one with `resbench run SUITE [--set KEY=VALUE]`; print its YAML with `resbench suites --show SUITE`.",
          file=args.stdout)
    return 0
