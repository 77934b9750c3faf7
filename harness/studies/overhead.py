"""The cost of depth mixing over the baseline, per shape, checked against a suite's `targets`.

Per variant: train and prefill time ratios (median of interleaved per-round ratios), train peak
memory ratio, MFU, and `infer_state`: the inference bytes a variant holds beyond the baseline
divided by what its declared state predicts, (state_vectors - baseline's) x tokens x d x bytes.
1.0 means the extra memory is exactly the declared depth state; O(L^2 d) intermediates would
push it far above. A suite of `kind: overhead` may bound any of these with `targets:`.
"""
from __future__ import annotations

from collections import defaultdict

from tabulate import tabulate

from .. import workloads
from ..cells import BASELINE
from ..config import check_keys, positive
from ..results import newest_per_cell, newest_producer_only
from .base import Study, register

COLUMNS = (("train", "train ×"), ("prefill", "prefill ×"), ("train_memory", "train peak mem ×"),
           ("infer_state", "infer extra / declared state"))


def overhead_metrics(records: list[dict]) -> dict[str, dict[str, dict]]:
    """{shape name: {variant label: {metric: value}}} from the latest ok records."""
    by: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    names: dict[tuple, str] = {}
    for r in newest_per_cell(newest_producer_only(records, "overhead table")):
        if r["status"] != "ok":
            continue
        c = r["cell"]
        by[(c["shape_name"], c["label"])][c["workload"]].append(r)
        names[(c["shape_name"], c["label"])] = c["variant"]
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for (shape, label), wl in by.items():
        m = {"variant": names[(shape, label)]}
        for w in workloads.registered():  # each workload's cost fields (time ratios, peak bytes, ...)
            m.update(w.cost(wl.get(w.name, [])))
        out[shape][label] = m
    for shape, per in out.items():
        base = next((m for m in per.values() if m["variant"] == BASELINE), None)
        for m in per.values():
            m["train_memory"] = m["infer_state"] = None
            if base is None or "train_peak" not in m or "train_peak" not in base:
                continue
            m["train_memory"] = m["train_peak"] / base["train_peak"]
            extra_vectors = m["state_vectors"] - base["state_vectors"]
            if extra_vectors > 0:
                m["infer_state"] = (m["infer_peak"] - base["infer_peak"]) / (extra_vectors * m["vector_bytes"])
    return out


def verdict(value: float | None, ci, bound: float) -> str:
    """met / missed / unresolved. Timed ratios carry a 95% interval: met only if all of it is
    within the bound, missed only if all of it is beyond; otherwise this run's noise cannot tell.
    Memory figures are exact counts: the value decides."""
    if value is None:
        return "missing"
    lo, hi = ci if ci else (value, value)
    if hi <= bound:
        return "met"
    if lo > bound:
        return "missed"
    return "unresolved"


MARK = {"met": "✓", "missed": "✗", "unresolved": "?", "missing": "✗ (not measured)"}


def render_overhead(records: list[dict], targets: dict | None = None) -> tuple[str, bool]:
    """Markdown tables (one per shape) and whether no target was missed. A timed ratio reads
    `median [95% CI]`; with a target, `(≤ bound ✓|✗|?)`, ? = the interval straddles the bound."""
    targets = targets or {}
    metrics = overhead_metrics(records)
    counts = {k: 0 for k in MARK}
    out = []
    for shape in sorted(set(metrics) | set(targets)):
        per, bounds = metrics.get(shape, {}), targets.get(shape, {})
        rows = []
        for label in list(per) + [x for x in bounds if x not in per]:
            m = per.get(label, {})
            row = [label]
            for key, _ in COLUMNS:
                value, ci, bound = m.get(key), m.get(f"{key}_ci"), bounds.get(label, {}).get(key)
                text = "-" if value is None else f"{value:.3f}"
                if ci and value is not None and m["variant"] != BASELINE:
                    text += f" [{ci[0]:.3f}–{ci[1]:.3f}]"
                if bound is not None:
                    v = verdict(value, ci, bound)
                    counts[v] += 1
                    text += f" (≤ {bound:g} {MARK[v]})"
                row.append(text)
            for key in ("train_mfu", "prefill_mfu"):
                row.append("-" if m.get(key) is None else f"{m[key]:.1%}")
            rows.append(row)
        out.append(f"### shape {shape}: cost vs {BASELINE}")
        out.append("")
        out.append(tabulate(rows, headers=["variant", *(h for _, h in COLUMNS), "MFU train", "MFU prefill"],
                            disable_numparse=True, tablefmt="github"))
        out.append("")
    out.append("Timed ratios: median of per-round ratios [distribution-free 95% interval]; memory: exact "
               "live-tensor peaks.")
    if targets:
        out.append(f"targets: {counts['met']} met (✓), {counts['missed'] + counts['missing']} missed (✗), "
                   f"{counts['unresolved']} unresolved (?: the interval straddles the bound)")
    return "\n".join(out).rstrip() + "\n", counts["missed"] + counts["missing"] == 0


@register("overhead")
class Overhead(Study):
    help = "cost vs the baseline per shape (time, memory, MFU, declared state), checked against `targets:`"
    keys = ("targets",)

    def parse_keys(self, raw: dict, shapes: list[str], labels: list[str]) -> dict:
        """targets: {shape: {variant label: {metric: bound}}}; a bound is the largest acceptable
        ratio to the baseline (infer_state: measured extra inference bytes / declared state bytes)."""
        targets = raw.get("targets") or {}
        check_keys("targets", targets, shapes)
        out: dict = {}
        for shape, per_variant in targets.items():
            check_keys(f"targets.{shape}", per_variant, labels)
            out[shape] = {}
            for label, bounds in per_variant.items():
                check_keys(f"targets.{shape}.{label}", bounds, [k for k, _ in COLUMNS])
                out[shape][label] = {m: positive(f"targets.{shape}.{label}.{m}", b, float) for m, b in bounds.items()}
        return {"targets": out}

    def analyse(self, records, suite, out):
        return render_overhead(records, suite.study.get("targets"))
