"""The cost of depth mixing over the baseline, per shape, checked against a suite's `targets`.

Per variant: train, prefill and decode time ratios (median of interleaved per-round ratios), train
peak memory ratio, MFU, and `infer_state`: the inference bytes a variant holds beyond the baseline
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



def columns() -> list[tuple[str, str, bool]]:
    """(metric, header, exact) of every workload's cost columns, in workload order; `targets:`
    bound them by metric."""
    return [(k, h, w.cost_exact) for w in workloads.registered() for k, h in w.cost_columns]


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
            for w in workloads.registered():
                m.update(w.relative_cost(m, base) if base is not None else {})
    return out


def verdict(value: float | None, ci, bound: float, exact: bool = False) -> str:
    """met / missed / unresolved. Timed ratios carry a 95% interval: met only if all of it is
    within the bound, missed only if all of it is beyond; otherwise this run's noise cannot tell
    (too few rounds for an interval: it cannot tell either). Memory figures are exact counts:
    the value decides."""
    if value is None:
        return "missing"
    if not exact and not ci:
        return "unresolved"
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
    out, any_exact = [], False
    for shape in sorted(set(metrics) | set(targets)):
        per, bounds = metrics.get(shape, {}), targets.get(shape, {})
        # a column only where something was measured or bounded (a suite without decode: no decode ×)
        cols = [(k, h, x) for k, h, x in columns() if any(m.get(k) is not None for m in per.values())
                or any(k in b for b in bounds.values())]
        any_exact |= any(x for _, _, x in cols)
        mfus = [k for k in ("train_mfu", "prefill_mfu") if any(m.get(k) is not None for m in per.values())]
        rows = []
        for label in list(per) + [x for x in bounds if x not in per]:
            m = per.get(label, {})
            row = [label]
            for key, _, exact in cols:
                value, ci, bound = m.get(key), m.get(f"{key}_ci"), bounds.get(label, {}).get(key)
                text = "-" if value is None else f"{value:.3f}"
                if ci and value is not None and m["variant"] != BASELINE:
                    text += f" [{ci[0]:.3f}–{ci[1]:.3f}]"
                if bound is not None:
                    v = verdict(value, ci, bound, exact)
                    counts[v] += 1
                    text += f" (≤ {bound:g} {MARK[v]})"
                row.append(text)
            for key in mfus:
                row.append("-" if m.get(key) is None else f"{m[key]:.1%}")
            rows.append(row)
        out.append(f"### shape {shape}: cost vs {BASELINE}")
        out.append("")
        out.append(tabulate(rows, headers=["variant", *(h for _, h, _ in cols),
                                           *({"train_mfu": "MFU train", "prefill_mfu": "MFU prefill"}[k] for k in mfus)],
                            disable_numparse=True, tablefmt="github"))
        out.append("")
    out.append("Timed ratios: median of per-round ratios [distribution-free 95% interval]"
               + ("; memory: exact live-tensor peaks." if any_exact else "."))
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
                check_keys(f"targets.{shape}.{label}", bounds, [k for k, _, _ in columns()])
                out[shape][label] = {m: positive(f"targets.{shape}.{label}.{m}", b, float) for m, b in bounds.items()}
        return {"targets": out}

    def analyse(self, records, suite, out):
        return render_overhead(records, suite.study.get("targets"))
