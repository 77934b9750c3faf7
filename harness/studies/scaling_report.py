"""Fits, table, CSV and plots of the scaling study; the projection table."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from tabulate import tabulate

from ..measure.memory_views import VIEWS
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


def render_table(rows: list[dict], records: list[dict], study) -> str:
    sh = study.shape
    head = (f"Shape: d={sh.get('d_model')}, seq={sh.get('seq_len')}, batch={study.batch}, {study.precision}; "
            f"checkpoint every {study.checkpoint_every} block(s); pipeline split into {study.pipeline_stages} "
            f"stages. Slope = bytes per token per added sublayer (depth sweep) or per added AttnRes block "
            f"(N sweep); 'd-vec' = slope / (d · itemsize); 'floor' = what any residual net keeps in that view.")
    table = tabulate(
        [[r["sweep"], r["variant"], r["view"], f"{r['slope_bytes_per_token']:.1f}", f"{r['slope_dvec']:.3f}",
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


def render_projection(records: list[dict], study) -> str:
    views = list(study.views)
    out = []
    for shape in dict.fromkeys(r["shape"] for r in records):
        recs = [r for r in records if r["shape"] == shape]
        r0 = recs[0]
        out.append(f"Projected (fake tensors, no storage) — shape {shape!r}: d={r0['d_model']}, "
                   f"{r0['n_blocks']} blocks (L={2 * r0['n_blocks']}), heads={r0['n_heads']}, "
                   f"seq={r0['seq_len']}, batch={r0['batch']}, vocab={r0['vocab_size']}, {r0['precision']}; "
                   f"checkpoint every {r0['checkpoint_every']} block(s), {r0['pipeline_stages']} pipeline stages. "
                   f"GiB for the whole batch ({r0['batch'] * r0['seq_len']:,} tokens): peaks of live tensors created by "
                   f"the step (weights apart, column 'weights'; gradients and optimizer state excluded); pipeline = "
                   f"bytes crossing the busiest stage boundary."
                   + (f" The prefill views hold the KV cache ({_gib(r0['kv_cache_bytes'])} GiB, the same for every "
                      f"variant) plus the forward's peak; chunked: {r0.get('prefill_chunk', 0):,} tokens per forward "
                      "(each chunk's chunk x context attention mask included)." if "kv_cache_bytes" in r0 else "")
                   + "\n")
        out.append(tabulate(
            [[r["label"], r["state_vectors"], _gib(r["param_bytes"])] + [_gib(r[v]) for v in views]
             + [f"{r['seconds']:.0f}"] for r in recs],
            headers=["variant", "state d-vecs", "weights"] + [VIEW_TITLES[v] for v in views] + ["s"],
            tablefmt="github", disable_numparse=True))
        out.append("")
    return "\n".join(out).rstrip()
