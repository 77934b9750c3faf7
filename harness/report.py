"""Records → side-by-side tables (tabulate), one per model shape / device / precision / producer."""
from __future__ import annotations

import statistics
from collections import defaultdict

from tabulate import tabulate

from .provenance import producer
from .results import newest_per_cell

MiB = 2**20


def _fmt_ms(ms: dict | None) -> str:
    if not ms:
        return "-"
    return f"{ms['median']:.1f} [{ms['min']:.1f}–{ms['max']:.1f}]"


def median_present(xs):
    """Median of the values that are not None; None if there are none."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def primary_peak(view: dict | None) -> tuple[float | None, str]:
    """The primary counter for a view: torch.cuda peak allocated on GPU, else the tracker."""
    if not view:
        return None, ""
    if view.get("cuda_peak_allocated") is not None:
        return view["cuda_peak_allocated"], "torch.cuda peak allocated"  # absolute: params included
    return view.get("peak_bytes"), "live-tensor tracker"


def _loss_cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} (n={len(values)})"


def tables(records: list[dict]) -> list[dict]:
    """One table per (shape, device, precision) and per producer (code, machine, torch:
    provenance.producer): {"heading", "measured_by", "rows": summary rows, "notes", "records"}.
    Records of another producer are never merged into a row; within a table each (variant,
    workload, seed) shows its newest record."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in newest_per_cell(records):
        c = r["cell"]
        env = r.get("env") or {}
        groups[(c["shape_name"], tuple(sorted(c["shape"].items())), c["device"], c["precision"], producer(env))].append(r)
    out = []
    for (shape_name, shape, device, precision, _), rs in groups.items():
        shape = dict(shape)
        envs = [r.get("env") or {} for r in rs]
        env = next((e for e in envs if e), {})
        commits = sorted({str(e.get("commit") or "no git")[:10] + (" (dirty)" if e.get("dirty") else "") for e in envs if e})
        runs = sorted({r.get("run") or "?" for r in rs})
        rows, notes = summary_rows(rs)
        out.append({
            "heading": f"{shape_name}: d_model={shape['d_model']}, {shape['n_blocks']} blocks (L={2 * shape['n_blocks']}), "
                       f"{shape['n_heads']} heads, seq {shape['seq_len']} — {device} {precision}, "
                       f"{env.get('gpu') or env.get('cpu', '?')}, {env.get('threads', '?')} threads, "
                       f"torch {env.get('torch', '?')}",
            "measured_by": f"commit {', '.join(commits) or '?'} · code {env.get('code_hash', '?')} · "
                           f"machine {env.get('machine_id', '?')} ({(env.get('machine') or {}).get('hostname', '?')}) · "
                           f"{len(runs)} run{'s' if len(runs) != 1 else ''} ({', '.join(runs)})",
            "shape": {"name": shape_name, **shape}, "device": device, "precision": precision,
            "commits": commits, "runs": runs, "code_hash": env.get("code_hash"), "machine_id": env.get("machine_id"),
            "rows": rows, "notes": notes, "unstable": unstable(rs), "records": rs,
        })
    return out


def render(records: list[dict]) -> str:
    """Markdown-friendly text: a heading line, who measured it, and a table per `tables` entry."""
    out = []
    for t in tables(records):
        out += [f"## {t['heading']}", f"measured by: {t['measured_by']}", "", _text(t), ""]
    return "\n".join(out).rstrip() + "\n"


def summary_rows(rs: list[dict]) -> tuple[list[dict], list[str]]:
    """One row per variant label: raw numbers (None where not measured), and notes on cells that
    did not finish."""
    by_label: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rs:
        by_label[r["cell"]["label"]][r["cell"]["workload"]].append(r)
    rows, notes = [], []
    for label, wl in by_label.items():
        ok = {k: [r for r in v if r["status"] == "ok"] for k, v in wl.items()}
        bad = [f"{k}: {r['status']}" for k, v in wl.items() for r in v if r["status"] != "ok"]
        notes += [f"{label} {k} seed {r['cell']['seed']}: {r['status']} — {r.get('message')}"
                  for k, v in wl.items() for r in v if r["status"] != "ok"]
        tp = [r["metrics"] for r in ok.get("throughput", [])]
        mem = [r["metrics"] for r in ok.get("memory", [])]
        any_m = (tp or mem or [r["metrics"] for r in ok.get("loss", [])] or [{}])[0]
        train_peak, c1 = primary_peak(mem[0]["train"]) if mem else (None, "")
        inf_peak, c2 = primary_peak(mem[0]["inference"]) if mem else (None, "")
        rows.append({
            "variant": label, "params": any_m.get("params"),
            "train_ms": tp[0]["train_ms"] if tp else None,
            "train_tokens_per_s": median_present(m["train_tokens_per_s"] for m in tp),
            "train_ratio": median_present(m.get("train_ratio_vs_prenorm") for m in tp),
            "prefill_ms": tp[0]["prefill_ms"] if tp else None,
            "prefill_ratio": median_present(m.get("prefill_ratio_vs_prenorm") for m in tp),
            "train_mfu": median_present(m["train_mfu"] for m in tp),
            "train_peak_bytes": train_peak, "infer_peak_bytes": inf_peak,
            "memory_counters": sorted(c for c in (c1, c2) if c),
            "state_vectors": any_m.get("state_vectors"),
            "val_loss": [r["metrics"]["final_val_loss"] for r in ok.get("loss", [])],
            "status": "; ".join(bad) or "ok",
        })
    return rows, notes


# The GEMM probes run the same work in every round: an interquartile spread (q3 / q1, the median
# over the probes of one timing process) beyond this means the machine itself changed speed while
# it was being timed (another job, frequency steps), not one outlier round: ratios are then
# unreliable. A quiet run here keeps it near 1.1; the quick suite under load reached 2-10.
UNSTABLE_PROBE_SPREAD = 1.25


def unstable(rs: list[dict]) -> str | None:
    """Why this table's timings cannot be trusted, or None (see UNSTABLE_PROBE_SPREAD)."""
    worst, where = 1.0, None
    for r in rs:
        probes = (r.get("metrics") or {}).get("peak_probes") or {}
        spreads = sorted(p["ms"]["q3"] / p["ms"]["q1"] for p in probes.values()
                         if (p.get("ms") or {}).get("q1"))
        if spreads and spreads[len(spreads) // 2] > worst:
            worst, where = spreads[len(spreads) // 2], r["cell"]["label"]
    if worst <= UNSTABLE_PROBE_SPREAD:
        return None
    return (f"the machine is unstable: the fixed GEMM probes timed beside {where} spread {worst:.2f}x between "
            "their quartiles across rounds; timings, ratios and MFU in this table are not reliable. "
            "Rerun on a quiet machine.")


def _text(t: dict) -> str:
    rows = [[
        r["variant"], _num(r["params"] and r["params"] / 1e6, ".3f"), _fmt_ms(r["train_ms"]),
        _num(r["train_tokens_per_s"], ",.0f"), _num(r["train_ratio"], ".3f"), _fmt_ms(r["prefill_ms"]),
        _num(r["prefill_ratio"], ".3f"), _num(r["train_mfu"], ".1%"),
        _num(r["train_peak_bytes"] and r["train_peak_bytes"] / MiB, ".1f"),
        _num(r["infer_peak_bytes"] and r["infer_peak_bytes"] / MiB, ".1f"),
        "-" if r["state_vectors"] is None else r["state_vectors"], _loss_cell(r["val_loss"]), r["status"],
    ] for r in t["rows"]]
    headers = ["variant", "params (M)", "train ms [min–max]", "train tok/s", "× prenorm", "prefill ms [min–max]",
               "× prenorm", "MFU train", "peak train MiB", "peak infer MiB", "state d/tok", "val loss", "status"]
    text = tabulate(rows, headers=headers, disable_numparse=True, tablefmt="github")
    tps = [r["metrics"] for r in t["records"] if r["cell"]["workload"] == "throughput" and r["status"] == "ok"]
    counters = sorted({c for r in t["rows"] for c in r["memory_counters"]})
    foot = [f"WARNING: {t['unstable']}"] if t["unstable"] else []
    if tps:
        lo, hi = min(m["peak_flops"] for m in tps) / 1e9, max(m["peak_flops"] for m in tps) / 1e9
        against = f"{lo:,.1f} GFLOP/s" if hi - lo < 0.05 else f"{lo:,.1f}–{hi:,.1f} GFLOP/s (per timing process)"
        foot.append(f"MFU against {against} ({tps[0]['peak_flops_source']}); "
                    "× prenorm = median of per-round ratios, repeats interleaved in one process.")
    if counters:
        foot.append("Peak memory: " + ", ".join(counters) + "; train = params + AdamW state + step peak; "
                    "infer = params + no-grad prefill peak.")
    foot += t["notes"]
    return text + ("\n\n" + "\n".join(foot) if foot else "")
