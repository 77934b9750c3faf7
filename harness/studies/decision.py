""""Is it worth it on my hardware?": per size, each variant against the baseline in one table that
joins what the loss study, the throughput and memory workloads measure separately, every figure
with its interval:

- final validation loss difference at equal steps (Welch, seeds) and the smallest difference the
  seeds could have detected (80% power);
- compute multiplier at equal loss (FLOPs, power-law fits over sizes, seed bootstrap);
- step-time ratio, interleaved per round, eager and torch.compile'd;
- wall-clock multiplier to the baseline's final loss: steps-to-target ratio ÷ step-time ratio,
  bootstrapped over seeds and timing rounds together (stats.time_to_target), and its verdict;
- train and inference peak-memory ratios (exact bytes).

Loss records with a time budget (`budget_s`, AlgoPerf's time-to-result) get their own table: the
loss each variant reached in the same seconds.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from tabulate import tabulate

from .. import workloads
from ..cells import BASELINE, label_of
from ..errors import ConfigError
from ..results import newest_per_cell, newest_producer_only
from ..measure.rounds import ratio_interval
from ..stats import (bootstrap_multiplier, mean_ci, min_detectable_difference, time_to_target,
                     welch_compare)
from .base import Study, register
from .loss import step_flops_of

LOSS, TIMING, MEMORY = "loss", "throughput", "memory"  # the workloads this study joins


def _ci(point, lo, hi, fmt=".3f") -> str:
    if point is None:
        return "-"
    inner = "" if lo is None or not np.isfinite(lo) else f" [{lo:{fmt}}–{hi:{fmt}}]"
    return f"{point:{fmt}}{inner}"


def _gather(records):
    """{shape: {label: [loss metrics by seed]}}, the budget runs apart, {(shape, mode): {seed:
    {label: throughput record}}}, {shape: {label: memory record}}, shape fields by name."""
    loss, budget = defaultdict(lambda: defaultdict(list)), defaultdict(lambda: defaultdict(list))
    timing, memory, shapes = defaultdict(lambda: defaultdict(dict)), defaultdict(dict), {}
    for r in sorted(records, key=lambda r: r["cell"]["seed"]):
        c = r["cell"]
        shapes[c["shape_name"]] = c["shape"]
        if c["workload"] == LOSS:
            m = {**r["metrics"], **step_flops_of(c, r["metrics"]), "budget_s": c["params"].get("budget_s", 0.0)}
            (budget if c["params"].get("budget_s") else loss)[c["shape_name"]][label_of(c)].append(m)
        elif c["workload"] == TIMING:
            timing[(c["shape_name"], c.get("compile", "none"))][c["seed"]][label_of(c)] = r
        elif c["workload"] == MEMORY:
            memory[c["shape_name"]][label_of(c)] = r
    return loss, budget, timing, memory, shapes


def _round_ratios(jobs: dict, label: str) -> tuple[list[float], int]:
    """Per-round train-step ratios, the variant's round i over the baseline's round i of the same
    timing job, pooled over the jobs (one per seed): each job is an interleaved measurement. With
    them the most planned looks any job's adaptive rounds had: the pooled interval is taken at
    that level, as each job's own is (harness/measure/rounds.py)."""
    out, looks = [], 1
    for by_label in jobs.values():
        rec, base = by_label.get(label), by_label.get(BASELINE)
        if not rec or not base:
            continue
        a, b = (x["metrics"].get("train_ms", {}).get("samples") for x in (rec, base))
        if a and b and len(a) == len(b):
            out += [x / y for x, y in zip(a, b)]
            looks = max(looks, (rec["metrics"].get("train_rounds") or {}).get("looks", 1))
    return out, looks


def decision_rows(loss, timing, memory, shapes) -> list[list]:
    """The table: its header row first."""
    rows = []
    per_label = defaultdict(dict)  # label -> {size: [(flops, final loss)]} for the compute fits
    for shape, by_label in loss.items():
        for label, runs in by_label.items():
            per_label[label][shape] = [(m["train_flops"], m["final_val_loss"]) for m in runs]
    modes = sorted({mode for _, mode in timing}, key=lambda m: m != "none")
    for shape in sorted(loss, key=lambda s: (shapes[s]["d_model"], shapes[s]["depth"])):
        by_label = loss[shape]
        base = by_label.get(BASELINE)
        if not base:
            continue
        base_final = [m["final_val_loss"] for m in base]
        base_mem = workloads.get(MEMORY).cost([memory[shape][BASELINE]]) if BASELINE in memory[shape] else {}
        for label, runs in by_label.items():
            if label == BASELINE:
                continue
            finals = [m["final_val_loss"] for m in runs]
            w = welch_compare(finals, base_final)
            mdd = (min_detectable_difference(float(np.std(finals, ddof=1)), len(finals), float(np.std(base_final, ddof=1)),
                                             len(base_final)) if min(len(finals), len(base_final)) > 1 else None)
            target = max(float(np.mean(base_final)), float(np.mean(finals)))
            comp = (bootstrap_multiplier(per_label[BASELINE], per_label[label], target)
                    if len(per_label[label]) > 1 and len(per_label[BASELINE]) > 1 else (None, None, None))
            step_cols, wall_cols, verdicts = [], [], []
            for mode in modes:
                ratios, looks = _round_ratios(timing[(shape, mode)], label)
                if not ratios:
                    step_cols.append("-")
                    wall_cols.append("-")
                    continue
                step_cols.append(_ci(*ratio_interval(ratios, looks)) + f" (n={len(ratios)})")
                t = time_to_target([x["val_loss"] for x in base], [x["val_loss"] for x in runs], ratios)
                point = _ci(t.multiplier, t.lo, t.hi) if t.bound is None else f"< {t.bound:.3f} [{t.lo:.3f}–{t.hi:.3f}]"
                wall_cols.append(point + ("" if t.reached == 1 else f" (reached {t.reached:.0%})"))
                verdicts.append(f"{t.verdict}{'' if mode == 'none' else ' (compiled)'}")
            mem = workloads.get(MEMORY).cost([memory[shape][label]]) if label in memory[shape] else {}
            rows.append([shape, label, len(finals), f"{w.diff:+.4f} [{w.lo:+.4f}, {w.hi:+.4f}]",
                         "-" if mdd is None else f"{mdd:.4f} ({mdd / np.mean(base_final):.1%})",
                         _ci(*comp), *step_cols, *wall_cols,
                         _ratio(mem.get("train_peak"), base_mem.get("train_peak")),
                         _ratio(mem.get("infer_peak"), base_mem.get("infer_peak")), "; ".join(verdicts) or "-"])
    headers = (["size", "variant", "seeds", "Δ final loss [95% CI]", "MDD (80% power)", "compute × at equal loss"]
               + [f"step × {'eager' if m == 'none' else m}" for m in modes]
               + [f"wall-clock × to target, {'eager' if m == 'none' else m}" for m in modes]
               + ["train mem ×", "infer mem ×", "verdict"])
    return [headers] + rows


def _ratio(a, b) -> str:
    return "-" if not a or not b else f"{a / b:.3f}"


def budget_rows(budget) -> list[list]:
    rows = []
    for shape, by_label in budget.items():
        base = [m["final_val_loss"] for m in by_label.get(BASELINE, [])]
        for label, runs in by_label.items():
            finals = [m["final_val_loss"] for m in runs]
            ci = mean_ci(finals)
            diff = "-"
            if base and label != BASELINE:
                w = welch_compare(finals, base)
                diff = f"{w.diff:+.4f} [{w.lo:+.4f}, {w.hi:+.4f}] {w.verdict}"
            rows.append([shape, label, len(finals), f"{runs[0]['budget_s']:g}",
                         f"{np.mean([m['steps_done'] for m in runs]):.0f}", f"{ci.mean:.4f} ± {ci.half_width:.4f}", diff])
    return rows


def render(records: list[dict]) -> tuple[str, bool]:
    recs = newest_per_cell(newest_producer_only(records, "decision report"))
    ok = [r for r in recs if r["status"] == "ok"]
    loss, budget, timing, memory, shapes = _gather(ok)
    env = next((r.get("env") for r in ok if r.get("env")), {}) or {}
    out = [f"Measured on {env.get('gpu') or env.get('cpu', '?')} (machine {env.get('machine_id', '?')}), torch "
           f"{env.get('torch', '?')}, commit {str(env.get('commit') or '?')[:10]}, {env.get('threads', '?')} thread(s).",
           "Wall-clock × to target = (steps PreNorm needs / steps the variant needs to reach PreNorm's mean final "
           "validation loss) ÷ step-time ratio; > 1 is faster. Intervals: 95%, percentile bootstrap over seeds and "
           "timing rounds together; step ×: distribution-free interval of the median per-round ratio; compute ×: seed "
           "bootstrap of the power-law fits; Δ loss: Welch.", ""]
    table = decision_rows(loss, timing, memory, shapes)
    if len(table) > 1:
        out += [tabulate(table[1:], headers=table[0], tablefmt="github", disable_numparse=True), ""]
    elif not budget:
        out += ["No decision: no finished loss record of this suite (the statuses below say why).", ""]
    if budget:
        out += ["Time-to-result (AlgoPerf): every variant trained for the same wall-clock seconds, then evaluated:", "",
                tabulate(budget_rows(budget), headers=["size", "variant", "seeds", "budget s", "steps done",
                                                       "final val loss ± 95% CI", "Δ vs prenorm [95% CI]"],
                         tablefmt="github", disable_numparse=True), ""]
    bad = [r for r in recs if r["status"] != "ok"]
    out += [f"- {r['cell']['label']} {r['cell']['workload']} {r['cell']['shape_name']} seed {r['cell']['seed']}: "
                    f"{r['status']} — {r.get('message')}" for r in bad]
    return "\n".join(out).rstrip() + "\n", (len(table) > 1 or bool(budget)) and not bad


@register("decision")
class Decision(Study):
    help = "loss, step time and memory vs the baseline joined: wall-clock to the baseline's loss, with intervals"

    def check(self, suite):
        if LOSS not in suite.workloads:
            raise ConfigError(f"a kind: decision suite joins the {LOSS} workload's curves with timings and memory: "
                              f"add workloads.{LOSS}")

    def analyse(self, records, suite, out):
        return render(records)
