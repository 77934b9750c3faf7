"""Scaling out: the records of the ddp, fsdp and pp (pipeline-parallel) workloads as three tables (data
parallel, pipeline parallel, stage-transition traffic). The check: every pipeline cell's counted
forward traffic equals what its layout predicts (harness/parallel/comm.py), its backward sends as many
bytes as its forward, and every send was received."""
from __future__ import annotations

from tabulate import tabulate

from ..cells import BASELINE
from ..results import newest_per_cell, newest_producer_only
from ..workloads.base import fmt_ms, num, rounds_notes
from .base import Study, register


def _ratio(m) -> str:
    r = m.get("x_prenorm")
    if not r:
        return "-"
    ci = r.get("ci")
    return f"{r['median']:.3f}" + (f" [{ci[0]:.3f}–{ci[1]:.3f}]" if ci else " [too few rounds]")


def _mib(b) -> str:
    return f"{b / 2**20:.0f}"


def dp_rows(rs):
    rows = []
    for r in rs:
        m, c = r["metrics"], r["cell"]
        per = m["rank_tokens_per_s"]
        rows.append([c["label"], c["workload"], m["ranks"], fmt_ms(m["step_ms"]), _ratio(m), f"{m['tokens_per_s']:.0f}",
                     f"{min(per):.0f}–{max(per):.0f}", m["slowest_rank"],
                     f"{_mib(m['memory']['max'])} / {_mib(m['memory']['min'])}"])
    return rows


def pp_rows(rs):
    rows = []
    for r in rs:
        m, c, p = r["metrics"], r["cell"], r["cell"]["params"]
        rows.append([c["label"], p["schedule"], f"{m['ranks']}×{p['virtual']}", p["microbatches"], p["comm"],
                     fmt_ms(m["step_ms"]), _ratio(m), f"{m['tokens_per_s']:.0f}",
                     f"{max(m['bubble']):.2f} ({m['bubble_ideal']:.2f})"])
    return rows


def comm_side_by_side(rs) -> list[list[str]]:
    """Headers, then one row per (variant, schedule, P×V) measured under more than one comm form
    (none: an empty list)."""
    from ..parallel.pipeline import COMMS  # torch's pipelining: only when there is a table to show

    by: dict[tuple, dict[str, float]] = {}
    for r in rs:
        m, c, p = r["metrics"], r["cell"], r["cell"]["params"]
        by.setdefault((c["label"], p["schedule"], f"{m['ranks']}×{p['virtual']}"), {})[p["comm"]] = m["vectors_per_token"]
    rows = [[*k, *(num(v.get(h), "g") for h in COMMS)] for k, v in by.items() if len(v) > 1]
    return [["variant", "schedule", "P×V", *COMMS], *rows] if rows else []


def comm_rows(rs):
    """(rows, every cell's traffic as predicted)."""
    rows, ok = [], True
    for r in rs:
        m, c, p = r["metrics"], r["cell"], r["cell"]["params"]
        b = m["bytes"]
        sym = b["fwd_send"] == b["fwd_recv"] == b["bwd_send"] == b["bwd_recv"]
        ex = m.get("expected")
        match = sym and (ex is None or abs(m["vectors_per_token"] - ex["total"]) < 1e-9)
        ok &= match
        rows.append([c["label"], p["schedule"], f"{m['ranks']}×{p['virtual']}", p["comm"],
                     " ".join(f"{v:g}" for v in m["transition_vectors"]), f"{m['vectors_per_token']:g}",
                     f"{b['bwd_send'] / b['fwd_send']:g}" if b["fwd_send"] else "-",
                     "-" if ex is None else f"{ex['blocks']:g} + {ex['embedding']} + {ex['partial']} = {ex['total']:g}",
                     num(m.get("paper_eq"), "g"), "yes" if match else "NO"])
    return rows, ok


def render(records: list[dict]) -> tuple[str, bool]:
    recs = newest_per_cell(newest_producer_only(records, "distributed tables"))
    ok_recs = [r for r in recs if r["status"] == "ok"]
    env = next((r.get("env") for r in ok_recs if r.get("env")), {}) or {}
    out = [f"Measured on {env.get('gpu') or env.get('cpu', '?')} (machine {env.get('machine_id', '?')}), torch "
           f"{env.get('torch', '?')}, commit {str(env.get('commit') or '?')[:10]}; times are the slowest rank's, "
           f"ratios the median of per-round ratios to {BASELINE} under the same launcher and schedule [95% CI].", ""]
    shapes = sorted({r["cell"]["shape_name"] for r in ok_recs})
    passed = True
    for shape in shapes:
        rs = [r for r in ok_recs if r["cell"]["shape_name"] == shape]
        s = rs[0]["cell"]["shape"]
        out.append(f"### shape {shape}: d_model {s['d_model']}, {s['depth']} blocks, seq {s['seq_len']} — "
                   f"{rs[0]['cell']['device']} {rs[0]['cell']['precision']}, backend "
                   f"{(rs[0]['cell'].get('launch') or {}).get('backend', '?')}")
        dp = [r for r in rs if r["cell"]["workload"] in ("ddp", "fsdp")]
        if dp:
            out += ["", "Data parallel (train step incl. gradient sync and AdamW; batch per rank "
                        f"{dp[0]['cell']['params']['batch']}):", "",
                    tabulate(dp_rows(dp), headers=["variant", "wrap", "ranks", "step ms [min–max]", "× prenorm",
                                                   "tok/s", "tok/s per rank", "slowest rank",
                                                   f"peak MiB max / min ({dp[0]['metrics']['memory']['counter']}, job)"],
                             tablefmt="github", disable_numparse=True)]
        pp = [r for r in rs if r["cell"]["workload"] == "pp"]
        if pp:
            out += ["", "Pipeline parallel (torch.distributed.pipelining; train step incl. AdamW; bubble = 1 − the "
                        "rank's compute / the schedule's time, worst rank, ideal (P−1)/(V·M+P−1) in brackets):", "",
                    tabulate(pp_rows(pp), headers=["variant", "schedule", "P×V", "M", "comm", "step ms [min–max]",
                                                   "× prenorm", "tok/s", "bubble (ideal)"],
                             tablefmt="github", disable_numparse=True)]
            rows, ok = comm_rows(pp)
            passed &= ok
            out += ["", "Stage-transition traffic, d-vectors per token per step, counted at the posted sends "
                        "(forward; backward as a multiple of forward). Predicted = completed blocks + embeddings + "
                        "partial sums (harness/parallel/comm.py); Eq. 7/8 = the paper's count of blocks, N_p = N/C "
                        "(cached-all: resbench's closed form in the same terms, docs/DISTRIBUTED.md):", "",
                    tabulate(rows, headers=["variant", "schedule", "P×V", "comm", "per transition", "forward",
                                            "backward ×", "predicted", "Eq. 7/8", "match"],
                             tablefmt="github", disable_numparse=True)]
            side = comm_side_by_side(pp)
            if side:
                out += ["", "Forward traffic by state transfer, d-vectors per token per step, measured (the "
                            "paper's cross-stage caching, and cached-all keeping what a rank made too):", "",
                        tabulate(side[1:], headers=side[0], tablefmt="github", disable_numparse=True)]
        # adaptive rounds (workloads' precision/budget_s): how many ran and why they ended, per workload
        out += [f"{n.replace('Adaptive rounds', 'Adaptive rounds (rank 0 decides for all ranks)')}" for n in
                rounds_notes([{f"{r['cell']['workload']}_rounds": r["metrics"].get("rounds")} for r in rs],
                              tuple(dict.fromkeys(r["cell"]["workload"] for r in rs)))]
        out.append("")
    bad = [r for r in recs if r["status"] != "ok"]
    out += [f"- {r['cell']['label']} {r['cell']['workload']} {r['cell']['params'].get('schedule', '')} "
            f"{r['cell']['params'].get('comm', '')}: {r['status']} — {r.get('message')}" for r in bad]
    return "\n".join(out).rstrip() + "\n", passed and not bad


@register("distributed")
class Distributed(Study):
    help = "data- and pipeline-parallel throughput vs the baseline, and stage traffic against Eq. 7/8"

    def analyse(self, records, suite, out):
        return render(records)
