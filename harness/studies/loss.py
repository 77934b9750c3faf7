"""The short-run loss study: records of a loss suite (seeds × sizes) → statistics, plots, report.

- final validation loss per variant and size: mean ± 95% CI over seeds, Welch vs PreNorm, verdict
  from the CI of the difference;
- compute-equivalence: loss vs training FLOPs fitted per variant (power law over sizes), the
  multiplier C_prenorm / C_variant at a loss both reach, with a bootstrap CI over seeds;
- time-to-target at the largest size: steps, FLOPs and training seconds to first reach PreNorm's
  mean final validation loss;
- training dynamics (when recorded): per-sublayer input RMS, gradient norms, depth weights.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from .. import variants
from ..cells import BASELINE, label_of
from ..errors import UserError
from ..model import ModelConfig, step_flops
from ..results import newest_per_cell, newest_producer_only
from ..palette import colour, dashes, legend_outside, plain_ticks
from ..stats import bootstrap_multiplier, first_reach, fit_power_law, mean_ci, welch_compare
from .base import Study, register

BASE = BASELINE  # the baseline cell's row name (cells.label_of)


def _size_key(shape: dict) -> tuple:
    return shape["d_model"], shape["depth"]


def collect(records: list[dict], rederive_flops: bool = True) -> dict:
    """{size: {label: [metrics per seed, ordered by seed]}} of ok loss records; with
    `rederive_flops`, the FLOPs are today's analytic count (step_flops_of), else as recorded."""
    out: dict = defaultdict(lambda: defaultdict(list))
    loss = newest_producer_only([r for r in records if r["cell"]["workload"] == "loss"], "loss study")
    recs = sorted(newest_per_cell(loss), key=lambda r: r["cell"]["seed"])
    for r in recs:
        if r["status"] == "ok":
            out[_size_key(r["cell"]["shape"])][label_of(r["cell"])].append(
                {**r["metrics"], **(step_flops_of(r["cell"], r["metrics"]) if rederive_flops else {}),
                 "seed": r["cell"]["seed"]})
    if not out:
        raise UserError("no finished loss records in the given results")
    return out


def step_flops_of(cell: dict, metrics: dict) -> dict:
    """The compute axis, re-derived at report time from the cell's shape and the variant's declared
    mixing FLOPs (model.step_flops, equal to FlopCounterMode's count): records measured before
    the count included attention keep their losses and get today's FLOPs."""
    cfg = ModelConfig(**cell["shape"])
    with torch.device("meta"):
        mixing = variants.build(cell["variant"], cfg.d_model, cfg.n_layers, cell["options"]).mixing_flops()
    per_step = step_flops(cfg, mixing, cell["params"]["batch"] * cfg.seq_len, train=True)
    return {"flops_per_step": per_step, "train_flops": per_step * len(metrics["train_loss"]),
            "counted_flops_per_step": metrics.get("flops_per_step")}


def _base_label(by_label: dict) -> str | None:
    return next((lab for lab in by_label if lab == BASE), None)


def final_loss_table(data: dict) -> list[list]:
    rows = []
    for size in sorted(data):
        by_label = data[size]
        base = _base_label(by_label)
        base_vals = [m["final_val_loss"] for m in by_label[base]] if base else []
        for label, runs in by_label.items():
            vals = [m["final_val_loss"] for m in runs]
            ci = mean_ci(vals)
            if base and label != base:
                c = welch_compare(vals, base_vals)
                diff = f"{c.diff:+.4f} [{c.lo:+.4f}, {c.hi:+.4f}]"
                p, verdict = f"{c.p_value:.3g}", c.verdict
            else:
                diff, p, verdict = "—", "—", "baseline" if label == base else "—"
            rows.append([f"d{size[0]}×{size[1]}b", label, len(vals), f"{ci.mean:.4f} ± {ci.half_width:.4f}",
                         f"{runs[0]['params'] / 1e6:.3f}", diff, p, verdict])
    return rows


def compute_equivalence(data: dict) -> list[list]:
    """Per variant: power-law fit over sizes, multiplier vs PreNorm at a loss both reach."""
    per_label: dict = defaultdict(dict)
    for size, by_label in data.items():
        for label, runs in by_label.items():
            per_label[label][size] = [(m["train_flops"], m["final_val_loss"]) for m in runs]
    if BASE not in per_label or len(per_label[BASE]) < 2:
        return []
    base_runs = per_label[BASE]

    def best(runs):  # mean final loss at the largest size
        return float(np.mean([p[1] for p in runs[max(runs)]]))

    rows = []
    for label, runs in per_label.items():
        if len(runs) < 2:
            continue
        fit = fit_power_law(*zip(*[p for v in runs.values() for p in v]))
        if label == BASE:
            rows.append([label, f"{fit.a:.3g}", f"{fit.b:.4f}", f"{fit.r2:.3f}", "—", "—"])
            continue
        target = max(best(base_runs), best(runs))  # a loss both reach inside the measured range
        point, lo, hi = bootstrap_multiplier(base_runs, runs, target)
        rows.append([label, f"{fit.a:.3g}", f"{fit.b:.4f}", f"{fit.r2:.3f}", f"{target:.4f}",
                     f"{point:.3f} [{lo:.3f}, {hi:.3f}]"])
    return rows


def time_to_target(data: dict) -> tuple[tuple, float, list[list]]:
    size = max(data)
    by_label = data[size]
    base = _base_label(by_label)
    if base is None:
        return size, math.nan, []
    target = float(np.mean([m["final_val_loss"] for m in by_label[base]]))
    rows = []
    for label, runs in by_label.items():
        steps, flops, secs = [], [], []
        for m in runs:
            hit = first_reach(m["val_loss"], target)
            if hit is None:
                continue
            idx = [s for s, _ in m["val_loss"]].index(hit[0])
            steps.append(hit[0])
            flops.append(hit[0] * m["flops_per_step"])
            secs.append(m["val_train_seconds"][idx])
        if not steps:
            rows.append([label, f"0/{len(runs)}", "not reached", "—", "—"])
            continue

        def fmt(v, f):
            ci = mean_ci(v)
            return f"{format(ci.mean, f)} ± {format(ci.half_width, f)}" if ci.n > 1 else format(ci.mean, f)

        rows.append([label, f"{len(steps)}/{len(runs)}", fmt(steps, ".0f"), fmt([f / 1e12 for f in flops], ".3f"),
                     fmt(secs, ".1f")])
    return size, target, rows


# -- plots ----------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(data: dict, out: Path) -> list[str]:
    """loss_curves.png (mean over seeds, band: min–max over them) and loss_vs_compute.png (each
    seed's final loss and the power-law fit), one colour per variant (palette.py) in both."""
    plt = _plt()
    files = []
    sizes = sorted(data)
    labels = sorted({lab for s in data for lab in data[s]})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.6 * len(sizes) + 2.2, 4), squeeze=False)
    seeds = sorted({m.get("seed") for s in sizes for runs in data[s].values() for m in runs} - {None})
    for ax, size in zip(axes[0], sizes):
        for label in labels:
            runs = data[size].get(label)
            if not runs:
                continue
            steps = [s for s, _ in runs[0]["val_loss"]]
            curves = np.array([[v for _, v in m["val_loss"]] for m in runs])
            ax.plot(steps, curves.mean(0), label=label, color=colour(label), ls=dashes(label, labels), lw=1.4)
            if len(runs) > 1:
                ax.fill_between(steps, curves.min(0), curves.max(0), color=colour(label), alpha=0.12, lw=0)
        ax.set(title=f"d{size[0]}, {size[1]} blocks", xlabel="training step",
               ylabel="validation loss (nats/byte)")
        ax.grid(alpha=0.3)
    legend_outside(axes[0][-1], title=f"mean of {len(seeds)} seeds;\nband: min–max")
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=110)
    plt.close(fig)
    files.append("loss_curves.png")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label in labels:
        pts = [(m["train_flops"], m["final_val_loss"]) for s in sizes for m in data[s].get(label, [])]
        c, y = np.array(pts).T
        ax.scatter(c, y, s=12, color=colour(label), label=label)
        if len({s for s in sizes if label in data[s]}) >= 2:
            fit = fit_power_law(c, y)
            grid = np.geomspace(c.min(), c.max(), 50)
            ax.plot(grid, fit.loss_at(grid), color=colour(label), ls=dashes(label, labels), lw=1)
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel="final validation loss (nats/byte)",
           title="loss vs compute: one point per seed and size; line: loss = a·C^−b")
    plain_ticks(ax, "y")
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax)
    fig.tight_layout()
    fig.savefig(out / "loss_vs_compute.png", dpi=110)
    plt.close(fig)
    files.append("loss_vs_compute.png")
    return files


def plot_dynamics(data: dict, out: Path) -> list[str]:
    """dynamics_depth.png and depth_weights.png: the first seed of the largest size (the one the
    dynamics probe ran on), named in the titles."""
    size = max(data)
    dyn = {lab: runs[0] for lab, runs in data[size].items() if runs and "dynamics" in runs[0]}
    if not dyn:
        return []
    plt = _plt()
    labels = list(dyn)
    seed = next(iter(dyn.values())).get("seed", 0)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for label, m in dyn.items():
        d = m["dynamics"]
        for ax, key in zip(axes, ("input_rms", "output_rms", "grad_norm")):
            ax.plot(d[key], label=label, color=colour(label), ls=dashes(label, labels), marker=".")
    for ax, title, ylabel in zip(axes, ["sublayer input h_i", "sublayer output f_i(h_i)", "gradient per sublayer"],
                                 ["RMS of h_i", "RMS of f_i(h_i)", "gradient norm"]):
        ax.set(title=title, xlabel="sublayer i", ylabel=ylabel, yscale="log")
        ax.xaxis.get_major_locator().set_params(integer=True)
        plain_ticks(ax, "y")
        ax.grid(alpha=0.3)
    legend_outside(axes[-1])
    fig.suptitle(f"Training dynamics at d{size[0]}, {size[1]} blocks, after training: seed {seed} only")
    fig.tight_layout()
    fig.savefig(out / "dynamics_depth.png", dpi=110)
    plt.close(fig)
    files = ["dynamics_depth.png"]
    mixers = {lab: m["dynamics"]["depth_weights"] for lab, m in dyn.items() if m["dynamics"].get("depth_weights")}
    if mixers:
        from matplotlib.ticker import MaxNLocator

        fig, axes = plt.subplots(1, len(mixers), figsize=(4.8 * len(mixers), 4), squeeze=False)
        for ax, (label, rows) in zip(axes[0], mixers.items()):
            width = max(len(r) for r in rows)
            mat = np.full((len(rows), width), np.nan)
            for i, r in enumerate(rows):
                mat[i, : len(r)] = r
            im = ax.imshow(mat, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0, vmax=1)
            ax.set(title=label, xlabel="source (0: embedding)", ylabel="reading sublayer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            fig.colorbar(im, ax=ax, fraction=0.046, label="softmax weight on the source")
        fig.suptitle(f"Depth-attention weights at d{size[0]}, {size[1]} blocks (seed {seed}; blank: not a source)")
        fig.tight_layout()
        fig.savefig(out / "depth_weights.png", dpi=110)
        plt.close(fig)
        files.append("depth_weights.png")
    return files


def findings(data: dict) -> list[str]:
    """Plain statements of whether the paper's qualitative dynamics appear at this scale."""
    size = max(data)
    dyn = {lab: runs[0]["dynamics"] for lab, runs in data[size].items() if runs and "dynamics" in runs[0]}
    out = []
    if BASE in dyn:
        r = dyn[BASE]["input_rms"]
        out.append(f"PreNorm residual-stream RMS, first → last sublayer: {r[0]:.3g} → {r[-1]:.3g} "
                   f"({'grows' if r[-1] > 1.5 * r[0] else 'does not grow much'} with depth).")
    for label, d in dyn.items():
        g = np.array(d["grad_norm"])
        spread = float(g.max() / max(g.min(), 1e-30))
        line = f"{label}: sublayer-input RMS max/min {max(d['input_rms']) / max(min(d['input_rms']), 1e-30):.2f}, " \
               f"gradient-norm max/min {spread:.2f}"
        w = d.get("depth_weights")
        if w and label.startswith(("full-attnres", "block-attnres")):
            emb = float(np.mean([row[0] for row in w[1:]]))
            line += f", mean weight on the embedding across readers {emb:.3f}"
        out.append(line + ".")
    return out


def measured_by(records: list[dict], rederive_flops: bool) -> str:
    """Who measured the records and who computed the FLOP axis: a re-rendered report says both."""
    from ..provenance import code_hash

    envs = [r.get("env") or {} for r in records]
    commits = sorted({str(e.get("commit") or "no git")[:10] + (" (dirty)" if e.get("dirty") else "") for e in envs})
    machines = sorted({f"{e.get('machine_id') or 'id not recorded'} ({e.get('cpu') or e.get('gpu') or '?'})" for e in envs})
    flops = (f"training FLOPs re-derived at report time by code {code_hash()} from each cell's shape and the "
             "variant's declared mixing FLOPs" if rederive_flops else "training FLOPs as recorded")
    return (f"Measured by: {len(records)} records, commit {', '.join(commits)}, machine {', '.join(machines)}; "
            f"{flops}.")


def report(records: list[dict], out: Path, rederive_flops: bool = True) -> str:
    data = collect(records, rederive_flops)
    out.mkdir(parents=True, exist_ok=True)
    from .base import have_matplotlib

    plots = plot_curves(data, out) + plot_dynamics(data, out) if have_matplotlib() else []
    lines = ["# Short-run loss study", "", measured_by(records, rederive_flops), ""]
    lines += ["## Final validation loss (mean ± 95% CI over seeds; difference vs PreNorm, Welch)", ""]
    lines.append(tabulate(final_loss_table(data), headers=["size", "variant", "seeds", "val loss ± 95% CI", "params (M)",
                                                           "Δ vs prenorm [95% CI]", "Welch p", "verdict"],
                          tablefmt="github", disable_numparse=True))
    ce = compute_equivalence(data)
    if ce:
        lines += ["", "## Compute-equivalence (loss = a·C^−b over sizes; multiplier = C_prenorm / C_variant)", ""]
        lines.append(tabulate(ce, headers=["variant", "a", "b", "R²", "at loss", "multiplier [95% bootstrap CI]"],
                              tablefmt="github", disable_numparse=True))
    size, target, ttt = time_to_target(data)
    if ttt:
        lines += ["", f"## Time to PreNorm's final val loss ({target:.4f}) at d{size[0]}×{size[1]} blocks", ""]
        lines += ["Steps, TFLOPs and seconds: mean ± 95% CI half-width over the seeds that reached it.", ""]
        lines.append(tabulate(ttt, headers=["variant", "seeds reaching", "steps", "TFLOPs", "train seconds"],
                              tablefmt="github", disable_numparse=True))
    facts = findings(data)
    if facts:
        lines += ["", "## Training dynamics (seed of the largest size)", ""] + [f"- {f}" for f in facts]
    lines += [""] + [f"![{p}]({p})" for p in plots]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


@register("loss")
class Loss(Study):
    help = "short-run loss over seeds × sizes: statistics, compute-equivalence, time-to-target, dynamics"

    def analyse(self, records, suite, out):
        text = report(records, out)
        return text + f"\nreport and plots: {out}", True
