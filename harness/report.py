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


def render(records: list[dict]) -> str:
    """Markdown-friendly text: a heading line and a table per (shape, device, precision) and per
    producer (code, machine, torch: provenance.producer). Records of another producer are never
    merged into a row; within a table each (variant, workload, seed) shows its newest record."""
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
        out.append(
            f"## {shape_name}: d_model={shape['d_model']}, {shape['n_blocks']} blocks (L={2 * shape['n_blocks']}), "
            f"{shape['n_heads']} heads, seq {shape['seq_len']} — {device} {precision}, {env.get('gpu') or env.get('cpu', '?')}, "
            f"{env.get('threads', '?')} threads, torch {env.get('torch', '?')}"
        )
        out.append(f"measured by: commit {', '.join(commits) or '?'} · code {env.get('code_hash', '?')} · "
                   f"machine {env.get('machine_id', '?')} ({(env.get('machine') or {}).get('hostname', '?')}) · "
                   f"{len(runs)} run{'s' if len(runs) != 1 else ''} ({', '.join(runs)})")
        out.append("")
        out.append(_table(rs))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _table(rs: list[dict]) -> str:
    by_label: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    order = []
    for r in rs:
        label = r["cell"]["label"]
        if label not in order:
            order.append(label)
        by_label[label][r["cell"]["workload"]].append(r)
    rows, counters, notes = [], set(), []
    for label in order:
        wl = by_label[label]
        ok = {k: [r for r in v if r["status"] == "ok"] for k, v in wl.items()}
        bad = [f"{k}: {r['status']}" for k, v in wl.items() for r in v if r["status"] != "ok"]
        for k, v in wl.items():
            for r in v:
                if r["status"] != "ok":
                    notes.append(f"{label} {k} seed {r['cell']['seed']}: {r['status']} — {r.get('message')}")
        tp = [r["metrics"] for r in ok.get("throughput", [])]
        mem = [r["metrics"] for r in ok.get("memory", [])]
        loss = [r["metrics"]["final_val_loss"] for r in ok.get("loss", [])]
        any_m = (tp or mem or [r["metrics"] for r in ok.get("loss", [])] or [{}])[0]
        train_peak, c1 = primary_peak(mem[0]["train"]) if mem else (None, "")
        inf_peak, c2 = primary_peak(mem[0]["inference"]) if mem else (None, "")
        counters.update(c for c in (c1, c2) if c)
        rows.append([
            label,
            _num(any_m.get("params") and any_m["params"] / 1e6, ".3f"),
            _fmt_ms(tp[0]["train_ms"]) if tp else "-",
            _num(median_present(m["train_tokens_per_s"] for m in tp), ",.0f"),
            _num(median_present(m.get("train_ratio_vs_prenorm") for m in tp), ".3f"),
            _fmt_ms(tp[0]["prefill_ms"]) if tp else "-",
            _num(median_present(m.get("prefill_ratio_vs_prenorm") for m in tp), ".3f"),
            _num(median_present(m["train_mfu"] for m in tp), ".1%"),
            _num(train_peak and train_peak / MiB, ".1f"),
            _num(inf_peak and inf_peak / MiB, ".1f"),
            any_m.get("state_vectors", "-"),
            _loss_cell(loss),
            "; ".join(bad) or "ok",
        ])
    headers = ["variant", "params (M)", "train ms [min–max]", "train tok/s", "× prenorm", "prefill ms [min–max]",
               "× prenorm", "MFU train", "peak train MiB", "peak infer MiB", "state d/tok", "val loss", "status"]
    text = tabulate(rows, headers=headers, disable_numparse=True, tablefmt="github")
    tps = [r["metrics"] for r in rs if r["cell"]["workload"] == "throughput" and r["status"] == "ok"]
    foot = []
    if tps:
        lo, hi = min(m["peak_flops"] for m in tps) / 1e9, max(m["peak_flops"] for m in tps) / 1e9
        against = f"{lo:,.1f} GFLOP/s" if hi - lo < 0.05 else f"{lo:,.1f}–{hi:,.1f} GFLOP/s (per timing process)"
        foot.append(f"MFU against {against} ({tps[0]['peak_flops_source']}); "
                    "× prenorm = median of per-round ratios, repeats interleaved in one process.")
    if counters:
        foot.append("Peak memory: " + ", ".join(sorted(counters)) + "; train = params + AdamW state + step peak; "
                    "infer = params + no-grad prefill peak.")
    foot += notes
    return text + ("\n\n" + "\n".join(foot) if foot else "")
