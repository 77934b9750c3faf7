#!/usr/bin/env python3
"""The executors measured against one another on this machine, each pair back to back:

  pool     the untimed cells (loss, memory) of decision.yaml, one after another vs `--slots 2`:
           wall time both ways, and whether the records are the same (losses bit for bit)
  slurm    the quick suite through Slurm vs local: the same keys and statuses, and what
           submitting and gathering cost per job
  decision decision.yaml through Slurm (timed jobs --exclusive, untimed side by side) vs local

    .venv/bin/python scripts/executor_check.py --out results/reference/MACHINE/executors \\
        [--only shape=s,shape=m] [--parts pool,slurm,decision]

The slurm parts need a Slurm controller (scripts/slurm-local.sh start). Run it on a quiet
machine: the wall times are the point. Writes each run's records and summary.md to --out.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str]) -> tuple[float, int, str]:
    """`resbench run ...`: (wall seconds, exit status, the last line it printed on stderr)."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "resbench", "run", *args, "--quiet"], capture_output=True, text=True)
    return time.perf_counter() - t0, res.returncode, (res.stderr.strip().splitlines() or [""])[-1]


def records(path: Path) -> dict[str, dict]:
    return {r["key"]: r for r in map(json.loads, path.read_text().splitlines())}


def same_records(a: dict, b: dict) -> tuple[bool, bool, int]:
    """(same keys and statuses, every loss curve bit for bit, loss cells compared)."""
    keys = a.keys() == b.keys() and all(a[k]["status"] == b[k]["status"] for k in a)
    losses = [k for k in a if a[k]["cell"]["workload"] == "loss" and a[k]["status"] == "ok" and k in b]
    bits = all(a[k]["metrics"]["val_loss"] == b[k]["metrics"]["val_loss"]
               and a[k]["metrics"]["train_loss"] == b[k]["metrics"]["train_loss"] for k in losses)
    return keys, bits, len(losses)


def fresh(path: Path) -> Path:
    for p in (path, path.with_name(path.name + ".slurm")):
        if p.is_dir():
            subprocess.run(["rm", "-rf", str(p)], check=True)
        elif p.exists():
            p.unlink()
    return path


def part_pool(out: Path, only: list[str]) -> list[str]:
    sel = ["--only", "workload=loss,workload=memory", *[x for o in only for x in ("--only", o)]]
    seq, rc1, l1 = run(["decision", *sel, "--out", str(fresh(out / "pool-1.jsonl"))])
    two, rc2, l2 = run(["decision", *sel, "--slots", "2", "--out", str(fresh(out / "pool-2.jsonl"))])
    keys, bits, n = same_records(records(out / "pool-1.jsonl"), records(out / "pool-2.jsonl"))
    return ["### Local pool: decision.yaml's untimed cells (loss, memory)" + (f", {' '.join(only)}" if only else ""),
            "", "| executor | wall s | exit | last line |", "|---|---|---|---|",
            f"| local, one at a time | {seq:.0f} | {rc1} | {l1} |", f"| local, --slots 2 | {two:.0f} | {rc2} | {l2} |", "",
            f"Speed-up {seq / two:.2f}x; same keys and statuses: {keys}; loss curves bit for bit: {bits} ({n} loss "
            "cells).", ""]


def part_slurm(out: Path) -> list[str]:
    loc, rc1, l1 = run(["quick", "--out", str(fresh(out / "quick-local.jsonl"))])
    slu, rc2, l2 = run(["quick", "--executor", "slurm", "--out", str(fresh(out / "quick-slurm.jsonl"))])
    a, b = records(out / "quick-local.jsonl"), records(out / "quick-slurm.jsonl")
    keys, bits, n = same_records(a, b)
    jobs = len(json.loads(next((out / "quick-slurm.jsonl.slurm").glob("*/manifest.json")).read_text())["jobs"])
    return ["### The quick suite through Slurm and locally", "", "| executor | wall s | exit | last line |",
            "|---|---|---|---|", f"| local | {loc:.0f} | {rc1} | {l1} |", f"| slurm (local one-node cluster) | {slu:.0f} | "
            f"{rc2} | {l2} |", "", f"{jobs} jobs; same keys and statuses: {keys}; loss curves bit for bit: {bits} "
            f"({n} loss cells); submitting, queueing and gathering cost {(slu - loc) / jobs:+.1f} s per job "
            "(the difference of the wall times over the jobs; Slurm ran one task at a time here: 2 CPUs per task "
            "on a 2-CPU node).", ""]


def part_decision(out: Path, only: list[str]) -> list[str]:
    sel = [x for o in only for x in ("--only", o)]
    loc, rc1, l1 = run(["decision", *sel, "--out", str(fresh(out / "decision-local.jsonl"))])
    slu, rc2, l2 = run(["decision", *sel, "--executor", "slurm", "--exclusive", "timed",
                        "--out", str(fresh(out / "decision-slurm.jsonl"))])
    a, b = records(out / "decision-local.jsonl"), records(out / "decision-slurm.jsonl")
    keys, bits, n = same_records(a, b)
    timed = [r for r in b.values() if r["cell"]["workload"] == "throughput"]
    untimed = [r for r in b.values() if r["cell"]["workload"] != "throughput"]
    alone = all(not _overlap(t, o) for t in timed for o in b.values() if o["placement"] != t["placement"])
    side = sum(_overlap(x, y) for x in untimed for y in untimed if x["key"] < y["key"])
    return ["### decision.yaml through Slurm (timed jobs --exclusive) and locally" + (f", {' '.join(only)}" if only
                                                                                   else ""),
            "", "| executor | wall s | exit | last line |", "|---|---|---|---|", f"| local | {loc:.0f} | {rc1} | {l1} |",
            f"| slurm --exclusive timed | {slu:.0f} | {rc2} | {l2} |", "",
            f"Same keys and statuses: {keys}; loss curves bit for bit: {bits} ({n} loss cells); every timed task ran "
            f"alone on the node: {alone}; pairs of untimed tasks that ran side by side: {side}.", ""]


def _overlap(a: dict, b: dict) -> bool:
    from datetime import datetime

    def span(r):
        return [datetime.fromisoformat(r["placement"][k]).timestamp() for k in ("start", "end")]

    (s1, e1), (s2, e2) = span(a), span(b)
    return s1 < e2 and s2 < e1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the records and summary-PARTS.md")
    ap.add_argument("--only", action="append", default=[], help="cells of decision.yaml to run (resbench --only)")
    ap.add_argument("--parts", default="pool,slurm,decision", help="which comparisons (default: all three)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from resbench.provenance import environment

    env = environment("cpu")
    lines = [f"**Executors on {env['cpu']} ({env['cpu_count']} cores, machine {env['machine_id']}), commit "
             f"{str(env.get('commit'))[:10]}{' (dirty)' if env.get('dirty') else ''}**", "",
             f"Command: `.venv/bin/python scripts/executor_check.py --out {args.out}"
             + "".join(f" --only {o}" for o in args.only) + f" --parts {args.parts}`", ""]
    parts = args.parts.split(",")
    if "pool" in parts:
        lines += part_pool(out, args.only)
    if "slurm" in parts:
        lines += part_slurm(out)
    if "decision" in parts:
        lines += part_decision(out, args.only)
    (out / f"summary-{'-'.join(parts)}.md").write_text("\n".join(lines).rstrip() + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
