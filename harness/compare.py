"""The regression gate: HEAD's records against BASE's, metric by metric.

A metric regresses when HEAD/BASE exceeds 1 + threshold AND, where raw repeats exist (timings),
a one-sided Mann-Whitney U test says HEAD is slower with p < alpha. Memory bytes and the loss
are single deterministic numbers per cell: the ratio alone decides. A cell that finished at
BASE but not at HEAD (oom, diverged, error, timeout) is a regression too.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from scipy.stats import mannwhitneyu
from tabulate import tabulate

from . import workloads
from .errors import UserError
from .results import identity, latest_by_key, read_records



def metrics() -> dict[str, tuple]:
    """metric -> (workload, how to read (value, raw samples or None) from a record's metrics,
    format), as each workload declares it (Workload.compare_metrics), in workload order."""
    return {name: (w.name, read, fmt) for w in workloads.registered() for name, (read, fmt) in w.compare_metrics.items()}


@dataclass
class Row:
    cell: str
    metric: str
    base: float | None
    head: float | None
    ratio: float | None
    p: float | None
    verdict: str
    regressed: bool


# -- loading ----------------------------------------------------------------------------------

def load_side(spec: str) -> tuple[str, dict[str, dict]]:
    """`PATH` or `PATH@COMMIT` (records of that commit only, e.g. two commits in one file)."""
    path, commit = spec, None
    m = re.fullmatch(r"(.+)@([0-9a-fA-F]{4,40})", spec)
    if m and not Path(spec).exists():
        path, commit = m.group(1), m.group(2).lower()
    records = read_records(Path(path))
    if commit:
        records = [r for r in records if str((r.get("env") or {}).get("commit") or "").startswith(commit)]
        if not records:
            raise UserError(f"{path}: no records measured at commit {commit}")
    if not records:
        raise UserError(f"{path}: no records")
    return spec, latest_by_key(records)


def _loose(rec: dict) -> str:
    """Cell identity without the run's settings (threads, repeats) or the code's version (the
    variant's source hash): matches across suites and commits. Precision and device stay in:
    fp32 against bf16, or CPU against GPU, is a different measurement, never a regression."""
    c = rec["cell"]
    return identity(c)


def pair_cells(base: dict[str, dict], head: dict[str, dict]) -> list[tuple[dict, dict]]:
    """Same key first; the rest by (label, shape, workload, seed) where that is unambiguous."""
    pairs = [(base[k], head[k]) for k in base if k in head]
    rest_b = [r for k, r in base.items() if k not in head]
    rest_h = [r for k, r in head.items() if k not in base]
    by_loose: dict[str, list[dict]] = {}
    for r in rest_h:
        by_loose.setdefault(_loose(r), []).append(r)
    b_count: dict[str, int] = {}
    for r in rest_b:
        b_count[_loose(r)] = b_count.get(_loose(r), 0) + 1
    for r in rest_b:
        cands = by_loose.get(_loose(r), [])
        if len(cands) == 1 and b_count[_loose(r)] == 1:
            pairs.append((r, cands[0]))
    return pairs


# -- comparing --------------------------------------------------------------------------------

def _cell_name(rec: dict) -> str:
    c = rec["cell"]
    return f"{c['label']}, {c['shape_name']}, seed {c['seed']}"


def judge(ratio: float, allowed: float, base_s=None, head_s=None, alpha: float = 0.01,
          lower: str = "better") -> tuple[float | None, str, bool]:
    """The one regression rule, for records (`compare`) and asv history (history_gate): (p,
    verdict, regressed) of HEAD/BASE = `ratio` against ±`allowed`. With both sides' raw repeats
    a one-sided Mann-Whitney U test must also say HEAD is slower (or faster) with p < alpha;
    `lower` names a drop beyond the threshold ("changed (lower)" where lower is not better)."""
    tested = bool(base_s and head_s)
    if ratio >= 1:
        p = float(mannwhitneyu(head_s, base_s, alternative="greater").pvalue) if tested else None
        if ratio > 1 + allowed:
            return (p, "REGRESSION", True) if p is None or p < alpha else (p, "worse, not significant", False)
    else:  # the p shown is then the one for "HEAD is faster"
        p = float(mannwhitneyu(head_s, base_s, alternative="less").pvalue) if tested else None
        if ratio < 1 - allowed:
            return p, lower if p is None or p < alpha else f"{lower}, not significant", False
    return p, "within threshold", False


def compare_metric(base_v, head_v, base_s, head_s, threshold: float, alpha: float) -> tuple:
    """(ratio, p, verdict, regressed) for one metric of one cell."""
    if base_v is None or head_v is None or not math.isfinite(base_v) or base_v <= 0:
        return None, None, "no data", False
    if not math.isfinite(head_v):  # NaN compares false with every threshold: it must not pass as "within"
        return None, None, "not finite at HEAD: REGRESSION", True
    ratio = head_v / base_v
    return (ratio, *judge(ratio, threshold, base_s, head_s, alpha))


def compare(base: dict[str, dict], head: dict[str, dict], threshold: float = 0.10,
            alpha: float = 0.01) -> list[Row]:
    if not (math.isfinite(threshold) and threshold >= 0):  # NaN compares false: it would pass anything
        raise UserError(f"--threshold must be finite and >= 0, got {threshold}")
    if not 0 < alpha < 1:  # false for NaN too
        raise UserError(f"--alpha must be in (0, 1), got {alpha}")
    pairs = pair_cells(base, head)
    if not pairs:
        raise UserError("BASE and HEAD have no cell in common (same label, shape, device, precision, workload "
                        "and seed)")
    rows = []
    order = {w: i for i, w in enumerate(workloads.names())}
    for b, h in sorted(pairs, key=lambda p: (_cell_name(p[0]), order.get(p[0]["cell"]["workload"], 9))):
        name = _cell_name(b)
        if b["status"] != "ok" or h["status"] != "ok":
            lost = b["status"] == "ok"  # it used to finish and now does not
            rows.append(Row(name, b["cell"]["workload"], None, None, None, None,
                            f"status {b['status']} -> {h['status']}" + (": REGRESSION" if lost else ""), lost))
            continue
        for metric, (workload, read, _) in metrics().items():
            if workload != b["cell"]["workload"]:
                continue
            (bv, bs), (hv, hs) = read(b["metrics"]), read(h["metrics"])
            ratio, p, verdict, bad = compare_metric(bv, hv, bs, hs, threshold, alpha)
            rows.append(Row(name, metric, bv, hv, ratio, p, verdict, bad))
    return rows


def env_warnings(base: dict[str, dict], head: dict[str, dict]) -> list[str]:
    """Timing across different machines or settings measures the machines, not the code."""
    def first_env(recs):
        return next((r.get("env") or {} for r in recs.values() if r.get("env")), {})

    eb, eh = first_env(base), first_env(head)
    return [f"BASE and HEAD differ in {k}: {eb.get(k)!r} vs {eh.get(k)!r}"
            for k in ("device", "cpu", "gpu", "torch", "threads") if eb.get(k) != eh.get(k)]


def machine_drift(base: dict[str, dict], head: dict[str, dict]) -> float | None:
    """HEAD/BASE of the matmul peak each CPU run measured for MFU: how much faster the machine
    itself was. Repeats within a run cannot see a shift between runs (a busy neighbour)."""
    def peak(recs):
        vals = sorted(v for r in recs.values() if r["status"] == "ok" and r["cell"]["workload"] in workloads.names()
                      for v in [workloads.get(r["cell"]["workload"]).machine_peak(r["metrics"])] if v is not None)
        return vals[len(vals) // 2] if vals else None

    b, h = peak(base), peak(head)
    return h / b if b and h else None


def render(rows: list[Row]) -> str:
    fmt = {m: f for m, (_, _, f) in metrics().items()}

    def num(v, metric):
        return "-" if v is None else fmt.get(metric, "{:.4g}").format(v)

    table = [[r.cell, r.metric, num(r.base, r.metric), num(r.head, r.metric),
              "-" if r.ratio is None else f"{r.ratio:.3f}", "-" if r.p is None else f"{r.p:.2g}", r.verdict]
             for r in rows]
    return tabulate(table, headers=["cell", "metric", "BASE", "HEAD", "HEAD/BASE", "p (MWU)", "verdict"],
                    disable_numparse=True, tablefmt="github")


def compare_records(args) -> int:
    base_name, base = load_side(args.base)
    head_name, head = load_side(args.head)
    rows = compare(base, head, args.threshold, args.alpha)
    for w in env_warnings(base, head):
        print(f"resbench: warning: {w}", file=sys.stderr)
    bad = [r for r in rows if r.regressed]
    if args.json:
        print(json.dumps({"base": base_name, "head": head_name, "threshold": args.threshold, "alpha": args.alpha,
                          "rows": [dataclasses.asdict(r) for r in rows], "regressions": len(bad)}, indent=1),
              file=getattr(args, "stdout", sys.stdout))  # the CLI's real stdout under --json
        return 1 if bad else 0
    print(f"BASE {base_name}  vs  HEAD {head_name}\nregression: HEAD/BASE > {1 + args.threshold:.2f} and, "
          f"for timings with raw repeats, one-sided Mann-Whitney U p < {args.alpha:g}\n")
    print(render(rows))
    drift = machine_drift(base, head)
    if drift is not None and abs(drift - 1) > args.threshold / 2:
        print(f"resbench: warning: the machine ran {abs(drift - 1):.0%} {'slower' if drift < 1 else 'faster'} "
              "in HEAD's run than in BASE's (measured matmul peak): timing ratios include that; "
              "measure both on a quiet machine, or use `asv continuous`", file=sys.stderr)
    print(f"\n{len(bad)} regression(s)" + (": " + "; ".join(f"{r.cell} {r.metric}" for r in bad) if bad else ""))
    return 1 if bad else 0
