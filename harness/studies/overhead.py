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
from ..cells import BASELINE, label_of
from ..compiling import MODES
from ..config import check_keys, positive
from ..results import newest_per_cell, newest_producer_only
from .base import Study, register



def columns() -> list[tuple[str, str, bool]]:
    """(metric, header, exact) of every workload's cost columns, in workload order; `targets:`
    bound them by metric."""
    return [(k, h, w.cost_exact) for w in workloads.registered() for k, h in w.cost_columns]


def at(key: str, mode: str) -> str:
    """A metric's name under a compile mode: `train` eager, `train@default` compiled (default)."""
    return key if mode == "none" else f"{key}@{mode}"


def overhead_metrics(records: list[dict]) -> dict[str, dict[str, dict]]:
    """{shape name: {variant label: {metric: value}}} from the latest ok records; a compiled
    cell's metrics are named `at(metric, mode)`, each ratio taken against the baseline under the
    same mode."""
    by: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    names: dict[tuple, str] = {}
    for r in newest_per_cell(newest_producer_only(records, "overhead table")):
        if r["status"] != "ok":
            continue
        c = r["cell"]
        mode = c.get("compile", "none")
        by[(c["shape_name"], mode, label_of(c))][c["workload"]].append(r)
        names[(c["shape_name"], mode, label_of(c))] = c["variant"]
    per_mode: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for (shape, mode, label), wl in by.items():
        m = {"variant": names[(shape, mode, label)]}
        for w in workloads.registered():  # each workload's cost fields (time ratios, peak bytes, ...)
            m.update(w.cost(wl.get(w.name, [])))
        per_mode[(shape, mode)][label] = m
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for (shape, mode), per in sorted(per_mode.items(), key=lambda kv: (kv[0][0], MODES.index(kv[0][1]))):
        base = next((m for label, m in per.items() if label == BASELINE), None)
        for label, m in per.items():
            for w in workloads.registered():
                m.update(w.relative_cost(m, base) if base is not None else {})
            row = out[shape].setdefault(label, {"variant": m["variant"], "baseline": label == BASELINE, "modes": []})
            row["modes"].append(mode)
            row.update((at(k, mode), v) for k, v in m.items() if k not in ("variant", "baseline"))
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
MODE_HEADER = {"none": "", "default": "compiled", "max-autotune": "max-autotune"}


def render_overhead(records: list[dict], targets: dict | None = None) -> tuple[str, bool]:
    """Markdown tables (one per shape) and whether no target was missed. A timed ratio reads
    `median [95% CI]`; with a target, `(≤ bound ✓|✗|?)`, ? = the interval straddles the bound."""
    targets = targets or {}
    metrics = overhead_metrics(records)
    counts = {**{k: 0 for k in MARK}, "at budget": 0}
    out, any_exact = [], False
    for shape in sorted(set(metrics) | set(targets)):
        per, bounds = metrics.get(shape, {}), targets.get(shape, {})
        # a column only where something was measured or bounded (a suite without decode: no decode ×),
        # eager first, then each compile mode: (metric name under the mode, header, exact)
        cols = [(at(k, mode), h if mode == "none" else f"{h} {MODE_HEADER[mode]}", x)
                for mode in MODES for k, h, x in columns()
                if any(m.get(at(k, mode)) is not None for m in per.values()) or any(at(k, mode) in b for b in bounds.values())]
        any_exact |= any(x for _, _, x in cols)
        mfus = [at(k, mode) for mode in MODES for k in ("train_mfu", "prefill_mfu")
                if any(m.get(at(k, mode)) is not None for m in per.values())]
        rows = []
        for label in list(per) + [x for x in bounds if x not in per]:
            m = per.get(label, {})
            row = [label]
            for key, _, exact in cols:
                name, _, mode = key.partition("@")
                ci_key = at(f"{name}_ci", mode or "none")
                value, ci, bound = m.get(key), m.get(ci_key), bounds.get(label, {}).get(key)
                text = "-" if value is None else f"{value:.3f}"
                if ci and value is not None and not m["baseline"]:
                    text += f" [{ci[0]:.3f}–{ci[1]:.3f}]"
                if bound is not None:
                    v = verdict(value, ci, bound, exact)
                    counts[v] += 1
                    spent = v == "unresolved" and m.get(at(f"{name}_stopped", mode or "none")) in ("rounds", "budget")
                    counts["at budget"] += spent
                    text += f" (≤ {bound:g} {MARK[v]}{' at budget' if spent else ''})"
                row.append(text)
            for key in mfus:
                row.append("-" if m.get(key) is None else f"{m[key]:.1%}")
            rows.append(row)
        out.append(f"### shape {shape}: cost vs {BASELINE}")
        out.append("")
        mfu_header = {"train_mfu": "MFU train", "prefill_mfu": "MFU prefill"}
        out.append(tabulate(rows, headers=["variant", *(h for _, h, _ in cols),
                                           *(mfu_header[k.partition("@")[0]] + (f" {MODE_HEADER[k.partition('@')[2]]}"
                                             if "@" in k else "") for k in mfus)],
                            disable_numparse=True, tablefmt="github"))
        out.append("")
    out.extend(_compiled_baseline(metrics))
    out.extend(render_roofline(metrics, targets))
    out.append("Timed ratios: median of per-round ratios [distribution-free 95% interval]"
               + ("; memory: exact live-tensor peaks." if any_exact else "."))
    if targets:
        out.append(f"targets: {counts['met']} met (✓), {counts['missed'] + counts['missing']} missed (✗), "
                   f"{counts['unresolved']} unresolved (?: the interval straddles the bound"
                   + (f"; {counts['at budget']} of them when the rounds' budget ran out)" if counts["at budget"] else ")"))
    return "\n".join(out).rstrip() + "\n", counts["missed"] + counts["missing"] == 0


def render_roofline(metrics: dict, targets: dict) -> list[str]:
    """Per shape: each timed ratio beside its roofline × (harness/measure/roofline.py), the gap between
    them (what a better implementation could still win here), and the targets that even the
    roofline misses (no implementation of these equations meets them on this machine)."""
    lines, beyond = [], []
    for shape, per in sorted(metrics.items()):
        keys = [(at(k, mode), h if mode == "none" else f"{h} {MODE_HEADER[mode]}") for mode in MODES
                for k, h, exact in columns() if not exact
                and any(m.get(at(f"{k}_roofline", mode)) is not None for m in per.values())]
        rows = []
        for label, m in per.items():
            if m["baseline"]:
                continue
            row = [label]
            for key, _ in keys:
                name, _, mode = key.partition("@")
                value, roof = m.get(key), m.get(at(f"{name}_roofline", mode or "none"))
                row += ["-" if value is None else f"{value:.3f}", "-" if roof is None else f"{roof:.3f}",
                        "-" if value is None or roof is None else f"{value - roof:+.3f}"]
                bound = targets.get(shape, {}).get(label, {}).get(key)
                if bound is not None and roof is not None and roof > bound:
                    beyond.append(f"{shape} {label} {key} ≤ {bound:g} (roofline {roof:.3f})")
            rows.append(row)
        if keys and rows:
            heads = [x for _, h in keys for x in (h, h.replace("×", "roofline ×"), "gap")]
            lines += [f"### shape {shape}: measured × vs roofline ×", "",
                      tabulate(rows, headers=["variant", *heads], disable_numparse=True, tablefmt="github"), ""]
    if lines:
        lines.append(f"Roofline ×: {BASELINE}'s measured time plus the variant's extra residual bytes over the copy "
                     "probe's bandwidth and its extra FLOPs over the GEMM peak, both timed in the same rounds "
                     "(docs/MEASURING.md); gap = measured − roofline, what a better implementation could still win.")
        if beyond:
            lines.append("Beyond the roofline (no implementation of the equations meets these here): "
                         + "; ".join(beyond) + ".")
        lines.append("")
    return lines


def _compiled_baseline(metrics: dict) -> list[str]:
    """Per shape and compile mode: the baseline's own compiled vs eager median step. Its two
    sides ran in separate processes, one after the other, so it is a plain ratio of medians
    without an interval, not an interleaved one."""
    lines = []
    for shape, per in sorted(metrics.items()):
        base = next((m for m in per.values() if m["baseline"]), {})
        for mode in base.get("modes", []):
            parts = [f"{k} {base[at(k + '_ms', mode)]:,.1f} vs {base[k + '_ms']:,.1f} ms "
                     f"({base[at(k + '_ms', mode)] / base[k + '_ms']:.2f}×)"
                     for k in ("train", "prefill") if mode != "none" and base.get(at(k + "_ms", mode)) and base.get(k + "_ms")]
            if parts:
                lines.append(f"shape {shape}: {BASELINE} under torch.compile {mode} vs eager, median step "
                             f"(separate processes, not interleaved): " + ", ".join(parts) + ".")
    return lines + ([""] if lines else [])


@register("overhead")
class Overhead(Study):
    help = "cost vs the baseline per shape (time, memory, MFU, declared state), checked against `targets:`"
    keys = ("targets",)

    def parse_keys(self, raw: dict, shapes: list[str], labels: list[str]) -> dict:
        """targets: {shape: {variant label: {metric: bound}}}; a bound is the largest acceptable
        ratio to the baseline (infer_state: measured extra inference bytes / declared state bytes).
        `metric@mode` bounds a compiled figure (train@default: the train ratio under torch.compile's
        default mode, vs the baseline compiled alike); memory figures are eager only."""
        targets = raw.get("targets") or {}
        check_keys("targets", targets, shapes)
        out: dict = {}
        for shape, per_variant in targets.items():
            check_keys(f"targets.{shape}", per_variant, labels)
            out[shape] = {}
            for label, bounds in per_variant.items():
                check_keys(f"targets.{shape}.{label}", bounds, [at(k, mode) for mode in MODES for k, _, exact in columns()
                                                                 if mode == "none" or not exact])
                out[shape][label] = {m: positive(f"targets.{shape}.{label}.{m}", b, float) for m, b in bounds.items()}
        return {"targets": out}

    def bounds(self, values):
        return {shape: {label: {tuple(m.partition("@")[::2]) if "@" in m else (m, "none"): b for m, b in per.items()}
                        for label, per in labels.items()}
                for shape, labels in values.get("targets", {}).items()}

    def analyse(self, records, suite, out):
        return render_overhead(records, suite.study_keys.get("targets"))
