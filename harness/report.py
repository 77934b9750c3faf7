"""Records → side-by-side tables (tabulate), one per model shape / device / precision / compile
mode / producer."""
from __future__ import annotations

from collections import defaultdict

from tabulate import tabulate

from . import workloads
from .cells import label_of
from .provenance import producer
from .results import newest_per_cell
from .workloads.base import num


def unstable(rs: list[dict]) -> str | None:
    """Why this table's numbers cannot be trusted (the first workload that says so), or None."""
    return next((w for w in (wl.warning([r for r in rs if r["cell"]["workload"] == wl.name])
                             for wl in workloads.registered()) if w), None)


def tables(records: list[dict]) -> list[dict]:
    """One table per (shape, device, precision, compile mode) and per producer (code, machine, torch:
    provenance.producer): {"heading", "measured_by", "rows": summary rows, "notes", "records"}.
    Records of another producer are never merged into a row; within a table each (variant,
    workload, seed) shows its newest record."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in newest_per_cell(records):
        c = r["cell"]
        env = r.get("env") or {}
        groups[(c["shape_name"], tuple(sorted(c["shape"].items())), c["device"], c["precision"],
                c.get("compile", "none"), producer(env))].append(r)
    out = []
    for (shape_name, shape, device, precision, mode, _), rs in groups.items():
        shape = dict(shape)
        envs = [r.get("env") or {} for r in rs]
        env = next((e for e in envs if e), {})
        commits = sorted({str(e.get("commit") or "no git")[:10] + (" (dirty)" if e.get("dirty") else "") for e in envs if e})
        runs = sorted({r.get("run") or "?" for r in rs})
        hosts = {(e.get("machine") or {}).get("hostname") for e in envs if e} - {None}
        rows, notes = summary_rows(rs)
        out.append({
            "heading": f"{shape_name}: d_model={shape['d_model']}, {shape['depth']} blocks (L={2 * shape['depth']}), "
                       f"{shape['n_heads']} heads, seq {shape['seq_len']} — {device} {precision}"
                       f"{'' if mode == 'none' else f', torch.compile {mode}'}, "
                       f"{env.get('gpu') or env.get('cpu', '?')}, {env.get('threads', '?')} threads, "
                       f"torch {env.get('torch', '?')}",
            "measured_by": f"commit {', '.join(commits) or '?'} · code {env.get('code_hash', '?')} · "
                           f"machine {env.get('machine_id', '?')} ({_hosts(hosts)}) · "
                           f"{len(runs)} run{'s' if len(runs) != 1 else ''} ({', '.join(runs)})",
            "shape": {"name": shape_name, **shape}, "device": device, "precision": precision, "compile": mode,
            "commits": commits, "runs": runs, "hosts": sorted(hosts), "code_hash": env.get("code_hash"),
            "machine_id": env.get("machine_id"),
            "rows": rows, "notes": notes, "unstable": unstable(rs), "records": rs,
        })
    return out


def _hosts(hosts: set[str]) -> str:
    """The host that measured a table, or how many nodes of its class did."""
    return next(iter(hosts)) if len(hosts) == 1 else f"{len(hosts)} nodes" if hosts else "?"


def render(records: list[dict]) -> str:
    """Markdown-friendly text: a heading line, who measured it, and a table per `tables` entry."""
    out = []
    for t in tables(records):
        out += [f"## {t['heading']}", f"measured by: {t['measured_by']}", "", _text(t), ""]
    return "\n".join(out).rstrip() + "\n"


def summary_rows(rs: list[dict]) -> tuple[list[dict], list[str]]:
    """One row per variant label: raw numbers (None where not measured; each workload fills its
    own fields, Workload.summary), and notes on cells that did not finish."""
    by_label: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rs:
        by_label[label_of(r["cell"])][r["cell"]["workload"]].append(r)
    rows, notes = [], []
    for label, wl in by_label.items():
        ok = {k: [r["metrics"] for r in v if r["status"] == "ok"] for k, v in wl.items()}
        bad = [f"{k}: {r['status']}" for k, v in wl.items() for r in v if r["status"] != "ok"]
        notes += [f"{label} {k} seed {r['cell']['seed']}: {r['status']} — {r.get('message')}"
                  for k, v in wl.items() for r in v if r["status"] != "ok"]
        any_m = next((ok[w][0] for w in workloads.names() if ok.get(w)), {})  # static facts: any workload
        row = {"variant": label, "params": any_m.get("params"), "state_vectors": any_m.get("state_vectors")}
        for w in workloads.registered():
            row.update(w.summary(ok.get(w.name, [])))
        rows.append({**row, "status": "; ".join(bad) or "ok"})
    return rows, notes


def _text(t: dict) -> str:
    present = {r["cell"]["workload"] for r in t["records"]}  # a workload's columns only where it ran
    cols = [c for w in workloads.registered() if w.name in present for c in w.columns]
    rows = [[r["variant"], num(r["params"] and r["params"] / 1e6, ".3f"), *(show(r) for _, show in cols), r["status"]]
            for r in t["rows"]]
    headers = ["variant", "params (M)", *(h for h, _ in cols), "status"]
    text = tabulate(rows, headers=headers, disable_numparse=True, tablefmt="github")
    foot = [f"WARNING: {t['unstable']}"] if t["unstable"] else []
    for w in workloads.registered():
        ok = [r["metrics"] for r in t["records"] if r["cell"]["workload"] == w.name and r["status"] == "ok"]
        foot += w.footnotes(ok, t["rows"])
    foot += t["notes"]
    return text + ("\n\n" + "\n".join(foot) if foot else "")
