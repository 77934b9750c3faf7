"""Fits, table, CSV and plots of the scaling study; the projection table."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from tabulate import tabulate

from ..measure.memory_views import PREFILL_VIEWS, VIEWS
from ..palette import colour, dashes, legend_outside
from .scaling_fit import declared_depth_class, declared_n_class, depth_class, fit_line, n_class

VIEW_TITLES = {
    "inference": "inference prefill (no grad)",
    "checkpointed": "training, checkpoint every k blocks",
    "pipeline": "pipeline traffic (busiest stage boundary)",
    "train": "plain training (everything saved)",
    "prefill": "prefill into KV cache",
    "prefill_chunked": "chunked prefill into KV cache",
}


def per_token(rec: dict, view: str) -> float:
    return rec["bytes"][view] / (rec["batch"] * rec["seq_len"])


def analyse(records: list[dict]) -> list[dict]:
    """One fit per (sweep, variant label, view): bytes per token against L (or N)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        for view in r["bytes"]:
            if view in VIEWS:
                groups[(r["sweep"], r["label"], view)].append(r)
    rows = []
    for (sweep, label, view), recs in groups.items():
        key = "L" if sweep == "depth" else "N"
        if len(recs) < 2:  # the other cells of the series did not finish: no line to fit
            continue
        recs = sorted(recs, key=lambda r: r[key])
        lo, hi = recs[0], recs[-1]
        unit = lo["d_model"] * lo["itemsize"]  # one d-vector per token
        fit = fit_line([r[key] for r in recs], [per_token(r, view) for r in recs])
        slope_dvec = fit.slope / unit
        if sweep == "depth":
            # every segment boundary keeps the streams (records before `streams` existed: one)
            floor = lo.get("streams", 1) / (2 * lo["checkpoint_every"]) if view == "checkpointed" else 0.0
            measured = depth_class(slope_dvec, floor)
            expected = "O(L·d)" if view == "train" else declared_depth_class(
                lo["state_vectors"], hi["state_vectors"], lo["L"], hi["L"])
        else:
            floor = 0.0
            measured = n_class(slope_dvec)
            expected = declared_n_class(lo["state_vectors"], hi["state_vectors"], lo["N"], hi["N"])
        rows.append({
            "sweep": sweep, "variant": label, "view": view, "x": key,
            "slope_bytes_per_token": fit.slope, "slope_dvec": slope_dvec, "floor_dvec": floor,
            "intercept_bytes_per_token": fit.intercept, "r2": fit.r2, "n_points": fit.n,
            "class": measured, "expected": expected, "agrees": measured == expected,
            "x_max": hi[key], "bytes_per_token_at_max": per_token(hi, view),
            "declared_state_bytes_per_token_at_max": hi["state_vectors"] * unit,
        })
    order = {v: i for i, v in enumerate(VIEWS)}
    return sorted(rows, key=lambda r: (r["sweep"] != "depth", order[r["view"]]))


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _fixed(x: float, places: int) -> str:
    """x to `places` decimals, never "-0.0": a flat fit's slope is a rounding error of either sign."""
    return f"{round(x, places) + 0.0:.{places}f}"


def render_table(rows: list[dict], records: list[dict]) -> str:
    """The fits, and pipeline traffic at each depth series' deepest point; `records` are the
    series points (scaling.series)."""
    if not records:
        return "No memory_views records of a depth or N series (two or more depths, or N values, per variant)."
    r0 = records[0]
    head = (f"Shape: d={r0['d_model']}, seq={r0['seq_len']}, batch={r0['batch']}, {r0['precision']}; "
            f"checkpoint every {r0['checkpoint_every']} block(s); pipeline split into {r0['pipeline_stages']} "
            f"stages. Slope = bytes per token per added sublayer (depth sweep) or per added AttnRes block "
            f"(N sweep); 'd-vec' = slope / (d · itemsize); 'floor' = what any residual net keeps in that view.")
    table = tabulate(
        [[r["sweep"], r["variant"], r["view"], _fixed(r["slope_bytes_per_token"], 1), _fixed(r["slope_dvec"], 3),
          f"{r['floor_dvec']:.2f}" if r["floor_dvec"] else "", r["class"], f"{r['r2']:.4f}", r["expected"],
          "yes" if r["agrees"] else "**NO**", f"{r['bytes_per_token_at_max'] / 1024:.1f}"] for r in rows],
        headers=["sweep", "variant", "view", "slope B/token", "d-vec", "floor", "class (fit)", "R²",
                 "declared", "agrees", "KiB/token at max"],
        tablefmt="github", disable_numparse=True)
    deepest = {}
    for r in records:  # the deepest cell of each variant's depth sweep
        if r["sweep"] == "depth" and "pipeline" in r["bytes"] and r["L"] >= deepest.get(r["label"], {"L": -1})["L"]:
            deepest[r["label"]] = r
    if not deepest:
        return head + "\n\n" + table
    prow = []
    for label, r in deepest.items():
        tokens = r["batch"] * r["seq_len"]
        unit = tokens * r["d_model"] * r["itemsize"]
        cut, b = max(r["pipeline_boundaries"].items(), key=lambda kv: (kv[1], int(kv[0])))
        vec = r["pipeline_vectors"][cut]
        prow.append([label, r["L"], f"after sublayer {cut}", f"{b / tokens:.0f}", f"{vec / unit:.2f}",
                     f"{(b - vec) / tokens:.0f}", r["state_vectors"], f"{r['pipeline_fixed'][cut]:,}"])
    ptable = tabulate(prow, headers=["variant", "L", "busiest boundary", "B/token", "d-vectors/token",
                                     "other B/token", "declared state (d-vectors, whole depth)",
                                     "per-step constant (B)"], tablefmt="github", disable_numparse=True)
    return (head + "\n\n" + table + "\n\nPipeline traffic at the deepest shape, held against the declared state "
            "(a boundary at 3/4 depth needs about 3/4 of a state that grows with depth; 'other' = per-token "
            "scalars such as cached depth-attention logits; the per-step constant does not scale with tokens "
            "and is left out of B/token):\n\n" + ptable)


def _plot(records, rows, path: Path, sweep: str, xkey: str, xlabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in records if r["sweep"] == sweep]
    views = [v for v in VIEWS if any(v in r["bytes"] for r in recs)]
    labels = list(dict.fromkeys(r["label"] for r in recs))
    fits = {(r["variant"], r["view"]): r for r in rows if r["sweep"] == sweep}
    fig, axes = plt.subplots(2, 2, figsize=(17, 9), squeeze=False)
    for ax, view in zip(axes.flat, views):
        for n, label in enumerate(labels):
            pts = sorted((r[xkey], per_token(r, view) / 1024) for r in recs if r["label"] == label)
            xs, ys = zip(*pts)
            f = fits[(label, view)]
            # distinct markers, shrinking: coinciding series (prenorm, highway) stay visible
            line, = ax.plot(xs, ys, marker="osD^v*"[n % 6], markersize=max(9 - n, 3), linestyle=dashes(label, labels),
                            label=f"{label}: {f['class']}", color=colour(label))
            ax.plot(xs, [(f["slope_bytes_per_token"] * x + f["intercept_bytes_per_token"]) / 1024 for x in xs],
                    "--", color=line.get_color(), alpha=0.5, linewidth=1)
        k = recs[0]["checkpoint_every"]
        ax.set_title(VIEW_TITLES[view].replace("every k blocks", f"every {k} block{'s' if k > 1 else ''}"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("KiB per token (peak live, excl. weights)" if view != "pipeline" else "KiB per token crossing")
        ax.grid(alpha=0.3)
        legend_outside(ax, fontsize=7)
    for ax in list(axes.flat)[len(views):]:
        ax.set_visible(False)
    r0 = recs[0]
    fig.suptitle(f"Memory per token vs {xlabel} — d={r0['d_model']}, seq={r0['seq_len']}, batch={r0['batch']}, "
                 f"{r0['precision']} (dashed: least-squares fit)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_depth(records, rows, path: Path) -> Path:
    return _plot(records, rows, path, "depth", "L", "L (sublayers)")


def plot_n(records, rows, path: Path) -> Path:
    return _plot(records, rows, path, "N", "N", "N (AttnRes blocks)")


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def render_projection(records: list[dict]) -> str:
    """One table per shape of `memory_views` records (projected, or measured at a small shape)."""
    out = []
    for shape in dict.fromkeys(r["cell"]["shape_name"] for r in records):
        recs = [r for r in records if r["cell"]["shape_name"] == shape]
        c0, m0 = recs[0]["cell"], recs[0]["metrics"]
        sh, p = c0["shape"], c0["params"]
        views = [v for v in VIEWS + PREFILL_VIEWS if v in p["views"]]
        how = "Projected (fake tensors, no storage)" if p["tensors"] == "fake" else "Measured"
        out.append(f"{how} — shape {shape!r}: d={sh['d_model']}, "
                   f"{sh['depth']} blocks (L={2 * sh['depth']}), heads={sh['n_heads']}, "
                   f"seq={sh['seq_len']}, batch={p['batch']}, vocab={sh['vocab_size']}, {c0['precision']}; "
                   f"checkpoint every {p['checkpoint_every']} block(s), {p['pipeline_stages']} pipeline stages. "
                   f"GiB for the whole batch ({m0['tokens']:,} tokens): peaks of live tensors created by "
                   f"the step (weights apart, column 'weights'; gradients and optimizer state excluded); pipeline = "
                   f"bytes crossing the busiest stage boundary."
                   + (f" The prefill views hold the KV cache ({_gib(m0['kv_cache_bytes'])} GiB, the same for every "
                      f"variant) plus the forward's peak; chunked: {p.get('prefill_chunk', 0):,} tokens per forward "
                      "(each chunk's chunk x context attention mask included)." if "kv_cache_bytes" in m0 else "")
                   + "\n")
        out.append(tabulate(
            [[r["cell"]["label"], r["metrics"]["state_vectors"], _gib(r["metrics"]["param_bytes"])]
             + [_gib(r["metrics"]["bytes"][v]) for v in views] + [f"{r['metrics']['seconds']:.0f}"] for r in recs],
            headers=["variant", "state d-vecs", "weights"] + [VIEW_TITLES[v] for v in views] + ["s"],
            tablefmt="github", disable_numparse=True))
        out.append("")
    return "\n".join(out).rstrip()
