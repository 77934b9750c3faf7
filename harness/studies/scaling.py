"""Depth-scaling memory study (`kind: scaling`; `resbench run scaling`, or `resbench scale`): the
`memory_views` records of a depth sweep (a shape whose depth is a list) and of an N sweep
(AttnRes block counts at one depth) → fits of bytes per token vs L and N, their growth classes
against each variant's declared state, a table, a CSV and plots.

A series is found in the records, not declared: every label measured at two or more depths is a
depth series; every variant measured at one shape with two or more AttnRes block counts N (its
other options alike) is an N series.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..cells import VariantSpec
from ..errors import ConfigError
from .base import Study, have_matplotlib, register

N_OPTIONS = ("n_blocks", "block_size")  # the options that set N: an N series varies only them


def rows_of(record: dict, sweep: str, label: str) -> dict:
    """A `memory_views` record as one point of a series (the fields scaling_report reads)."""
    c, m = record["cell"], record["metrics"]
    return {"sweep": sweep, "label": label, "variant": c["variant"], "options": c["options"],
            "depth": c["shape"]["depth"], "d_model": c["shape"]["d_model"], "seq_len": c["shape"]["seq_len"],
            "batch": c["params"]["batch"], "precision": c["precision"], "checkpoint_every": c["params"]["checkpoint_every"],
            "pipeline_stages": c["params"]["pipeline_stages"], **m}


def series(records: list[dict]) -> list[dict]:
    """Every ok `memory_views` record once per series it belongs to: depth series first (in the
    order labels were measured), then N series. A record may be in both (N = 8 at the deepest shape)."""
    ok = [r for r in records if r["status"] == "ok" and r["cell"]["workload"] == "memory_views"]
    depth: dict[tuple, list[dict]] = defaultdict(list)
    by_n: dict[tuple, list[dict]] = defaultdict(list)
    for r in ok:
        c = r["cell"]
        rest = tuple(sorted((k, v) for k, v in c["shape"].items() if k != "depth"))
        depth[(c["label"], rest)].append(r)
        other = {k: v for k, v in c["options"].items() if k not in N_OPTIONS}
        if r["metrics"]["N"] is not None:
            by_n[(c["shape_name"], c["variant"], tuple(sorted(other.items())))].append(r)
    out = []
    for (label, _), rs in depth.items():
        if len({r["metrics"]["L"] for r in rs}) > 1:
            out += [rows_of(r, "depth", label) for r in rs]
    for (_, variant, other), rs in by_n.items():
        if len({r["metrics"]["N"] for r in rs}) > 1:
            label = VariantSpec(variant, dict(other)).label
            out += [rows_of(r, "N", label) for r in sorted(rs, key=lambda r: r["metrics"]["N"])]
    return out


@register("scaling")
class Scaling(Study):
    help = "depth-scaling memory study: sweep L (and N), fit, classify, plot"
    command, default_suite = "scale", "scaling"

    def check(self, suite) -> None:
        if "memory_views" not in suite.workloads:
            raise ConfigError("a kind: scaling suite measures workloads.memory_views: add it")

    def analyse(self, records: list[dict], suite, out: Path) -> tuple[str, bool]:
        from .scaling_report import analyse, plot_depth, plot_n, render_table, write_csv

        mine = [r for r in records if r["cell"]["workload"] == "memory_views"]
        failed = [f"{r['cell']['shape_name']} {r['cell']['label']}: {r['status']}: {r.get('message')}"
                  for r in mine if r["status"] != "ok"]
        points = series(mine)
        rows = analyse(points)
        out.mkdir(parents=True, exist_ok=True)
        if rows:
            write_csv(out / f"{suite.name}_fits.csv", rows)
        table = render_table(rows, points)
        (out / f"{suite.name}_table.md").write_text(table + "\n")
        files = [f"{suite.name}_fits.csv"] * bool(rows) + [f"{suite.name}_table.md"]
        if points and have_matplotlib():
            if any(p["sweep"] == "depth" for p in points):
                files.append(plot_depth(points, rows, out / f"{suite.name}_vs_depth.png").name)
            if any(p["sweep"] == "N" for p in points):
                files.append(plot_n(points, rows, out / f"{suite.name}_vs_n.png").name)
        text = table + f"\n\nfiles in {out}: {', '.join(files)}"
        if failed:
            text += "\n\nNot measured (left out of the fits): " + "; ".join(failed)
        return text, not failed
