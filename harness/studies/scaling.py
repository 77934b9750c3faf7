"""Depth-scaling memory study: `resbench scale` (measure, fit, classify, plot) and
`resbench project` (the same views under fake tensors, for shapes beyond this machine).

Cells run in-process, one after another: LiveBytesTracker counts only storages created inside
the measured call, so an earlier cell's leftovers cannot enter a later cell's number.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .. import variants
from ..variants.base import VariantError

from ..config import (MAX_SEED, ConfigError, VariantSpec, check_keys, coerce, parse_shapes, parse_variants,
                      check_name, parse_precision, read_yaml, resolve_suite_path, short)
from ..errors import classify
from ..provenance import environment
from ..model import ModelConfig, build_model
from ..precision import get as get_precision
from ..results import LOCAL_DIR, results_root
from ..measure import memory_views as V

SCALING_KEYS = ("kind", "name", "precision", "threads", "seed", "batch", "shape", "depths", "variants", "n_sweep",
                "views", "checkpoint_every", "pipeline_stages")
PROJECTION_KEYS = ("kind", "name", "precision", "batch", "shapes", "variants", "views", "checkpoint_every",
                   "pipeline_stages")
SHAPE_KEYS = tuple(f.name for f in fields(ModelConfig) if f.name != "n_blocks")


@dataclass(frozen=True)
class NSweep:
    variant: VariantSpec
    blocks: int
    values: tuple[int, ...]


@dataclass(frozen=True)
class Study:
    kind: str
    name: str
    precision: str
    batch: int
    variants: tuple[VariantSpec, ...]
    views: tuple[str, ...]
    checkpoint_every: int
    pipeline_stages: int
    shapes: tuple[tuple[str, ModelConfig], ...] = ()  # projection
    shape: dict = dataclasses.field(default_factory=dict)  # scaling: ModelConfig minus n_blocks
    depths: tuple[int, ...] = ()
    n_sweep: NSweep | None = None
    threads: int = 0
    seed: int = 0

    def config(self, n_blocks: int) -> ModelConfig:
        return ModelConfig(n_blocks=n_blocks, **self.shape)


# -- the YAML schema --------------------------------------------------------------------------

def load_study(spec: str, kind: str) -> Study:
    path = resolve_suite_path(spec)
    return parse_study(read_yaml(path), kind, default_name=path.stem)


def _int_list(where: str, raw, at_least: int = 1) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) < at_least or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw):
        raise ConfigError(f"{where} must be a list of at least {at_least} positive integers, got {short(raw)}")
    if len(set(raw)) != len(raw):
        raise ConfigError(f"{where} has duplicates: {short(raw)}")
    return tuple(sorted(raw))


def _positive_int(where: str, raw) -> int:
    v = coerce(where, raw, int)
    if v < 1:
        raise ConfigError(f"{where} must be >= 1, got {short(v)}")
    return v


def _check_builds(spec: VariantSpec, cfg: ModelConfig, where: str):
    try:
        with torch.device("meta"):
            return variants.build(spec.name, cfg.d_model, cfg.n_layers, spec.options)
    except VariantError as exc:
        raise ConfigError(f"variants[{spec.label}] at {where}: {exc}") from None


def parse_study(raw: Any, kind: str, default_name: str = "study") -> Study:
    if raw is None:
        raise ConfigError("suite is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"suite must be a mapping, got {type(raw).__name__}")
    got = raw.get("kind")
    if got != kind:  # checked first: a suite of another kind should say so, not list its keys
        raise ConfigError(f"kind must be {short(kind)} for `resbench {'scale' if kind == 'scaling' else 'project'}`, "
                          f"got {short(got)}")
    check_keys("suite", raw, SCALING_KEYS if kind == "scaling" else PROJECTION_KEYS)
    required = ("shape", "depths", "variants") if kind == "scaling" else ("shapes", "variants")
    for key in required:
        if key not in raw:
            raise ConfigError(f"suite: missing key {short(key)}")
    precision = parse_precision(raw)
    views = raw.get("views", list(V.VIEWS))
    if not isinstance(views, list) or not views or any(v not in V.VIEWS for v in views):
        raise ConfigError(f"views must be a non-empty list of {', '.join(V.VIEWS)}; got {short(views)}")
    common = dict(
        kind=kind, name=check_name("name", raw.get("name", default_name)), precision=precision,
        batch=_positive_int("batch", raw.get("batch", 1)), variants=parse_variants(raw["variants"]),
        views=tuple(v for v in V.VIEWS if v in views),
        checkpoint_every=_positive_int("checkpoint_every", raw.get("checkpoint_every", 1)),
        pipeline_stages=_positive_int("pipeline_stages", raw.get("pipeline_stages", 4)),
    )
    if kind == "projection":
        shapes = parse_shapes(raw["shapes"])
        for spec in common["variants"]:
            for name, cfg in shapes:
                _check_builds(spec, cfg, f"shape {short(name)}")
        return Study(shapes=shapes, **common)

    check_keys("shape", raw["shape"], SHAPE_KEYS)
    shape = {k: coerce(f"shape.{k}", v, float if k == "mlp_ratio" else int) for k, v in raw["shape"].items()}
    depths = _int_list("depths", raw["depths"], at_least=2)
    threads, seed = coerce("threads", raw.get("threads", 0), int), coerce("seed", raw.get("seed", 0), int)
    if threads < 0:
        raise ConfigError(f"threads must be >= 0 (0 = torch default), got {threads}")
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be in 0 .. 2**63 - 1 (the generator's range), got {short(seed)}")
    study = Study(shape=shape, depths=depths, threads=threads, seed=seed, n_sweep=_parse_n_sweep(raw.get("n_sweep")),
                  **common)
    try:
        cfgs = [study.config(b) for b in depths]
    except VariantError as exc:
        raise ConfigError(f"shape: {exc}") from None
    for spec in study.variants:
        for cfg in cfgs:
            _check_builds(spec, cfg, f"depth {cfg.n_blocks} blocks")
    if study.n_sweep:
        ns = study.n_sweep
        for n in ns.values:
            res = _check_builds(dataclasses.replace(ns.variant, options={**ns.variant.options, "n_blocks": n}),
                                study.config(ns.blocks), f"n_sweep value {n}")
            if getattr(res, "n_blocks", None) != n:  # a sweep must vary what it claims to sweep
                raise ConfigError(f"n_sweep: {ns.variant.name} with n_blocks={n} builds N="
                                  f"{getattr(res, 'n_blocks', '?')} AttnRes blocks, so N would not vary")
    if common["pipeline_stages"] > depths[0]:
        raise ConfigError(f"pipeline_stages ({common['pipeline_stages']}) must be <= the smallest depth ({depths[0]} blocks)")
    return study


def _parse_n_sweep(raw) -> NSweep | None:
    if raw is None:
        return None
    check_keys("n_sweep", raw, ("variant", "options", "blocks", "values"))
    for key in ("blocks", "values"):
        if key not in raw:
            raise ConfigError(f"n_sweep: missing key {short(key)}")
    spec = parse_variants([{"name": raw.get("variant", "block-attnres"), "options": raw.get("options") or {}}])[0]
    for key in ("n_blocks", "block_size"):  # n_sweep.values sets N; block_size would fix it instead
        if key in spec.options:
            raise ConfigError(f"n_sweep.options must not set {key}: n_sweep.values sets the number of "
                              "AttnRes blocks N (n_sweep.blocks is the transformer depth)")
    return NSweep(spec, _positive_int("n_sweep.blocks", raw["blocks"]), _int_list("n_sweep.values", raw["values"], 2))


# -- measuring ------------------------------------------------------------------------------

def measure_cell(study: Study, cfg: ModelConfig, spec: VariantSpec) -> dict:
    """All views of one (variant, shape), real tensors, this process."""
    prec = get_precision(study.precision)
    model = build_model(cfg, spec.name, spec.options, study.seed, "cpu", prec.param_dtype)
    g = torch.Generator().manual_seed(study.seed)
    tok = torch.randint(0, cfg.vocab_size, (study.batch, cfg.seq_len + 1), generator=g)
    idx, targets = tok[:, :-1], tok[:, 1:]
    t0 = time.perf_counter()
    out, extra = V.measure(model, idx, targets, study.views, study.checkpoint_every, study.pipeline_stages,
                           precision=prec)
    return {
        "label": spec.label, "variant": spec.name, "options": spec.options, "n_blocks": cfg.n_blocks,
        "L": cfg.n_layers, "d_model": cfg.d_model, "seq_len": cfg.seq_len, "batch": study.batch,
        "precision": study.precision, "itemsize": prec.param_itemsize,
        "state_vectors": model.residual.state_vectors(), "checkpoint_every": study.checkpoint_every,
        "pipeline_stages": study.pipeline_stages, "bytes": out, **extra, "seconds": round(time.perf_counter() - t0, 3),
    }


def cells(study: Study) -> list[tuple[str, ModelConfig, VariantSpec, int | None]]:
    """(sweep, shape, variant, N) in run order: the depth sweep, then the N sweep. N-sweep cells
    keep the sweep's label, so they fit as one series."""
    out = [("depth", study.config(b), spec, None) for spec in study.variants for b in study.depths]
    if study.n_sweep:
        ns = study.n_sweep
        for n in ns.values:
            spec = dataclasses.replace(ns.variant, options={**ns.variant.options, "n_blocks": n})
            out.append(("N", study.config(ns.blocks), spec, n))
    return out


def run_study(study: Study, progress: bool = True) -> list[dict]:
    if study.threads:
        torch.set_num_threads(study.threads)
    records = []
    env = environment("cpu")  # what produced these numbers: code, machine, torch
    todo = cells(study)
    for n, (sweep, cfg, spec, N) in enumerate(todo, 1):
        try:
            rec = {"sweep": sweep, "N": N, "status": "ok", **measure_cell(study, cfg, spec)}
        except Exception as exc:  # noqa: BLE001 - a cell too big for this machine is a status, not the end
            status, msg, _ = classify(exc)
            rec = {"sweep": sweep, "N": N, "status": status, "message": msg, "label": spec.label, "variant": spec.name,
                   "options": spec.options, "n_blocks": cfg.n_blocks, "L": cfg.n_layers, "bytes": {}, "seconds": 0.0}
        records.append({**rec, "env": env})
        gc.collect()
        if progress:
            print(f"[{n}/{len(todo)}] {sweep:5s} {rec['label']:28s} L={rec['L']:<3d}"
                  f"{'' if N is None else f' N={N}':6s} {rec['seconds']:.1f}s"
                  + ("" if rec["status"] == "ok" else f" {rec['status']}: {rec['message']}"), file=sys.stderr)
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    os.replace(tmp, path)


# -- commands -------------------------------------------------------------------------------

def _out_dir(arg: str | None) -> Path:
    out = Path(arg) if arg else results_root() / LOCAL_DIR / "scaling"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"output directory {out} is not writable")
    return out


def cmd_scale(args) -> int:
    from .scaling_report import analyse, plot_depth, plot_n, render_table, write_csv

    study = load_study(args.suite, "scaling")
    out = _out_dir(args.out)
    t0 = time.perf_counter()
    records = run_study(study, progress=not args.quiet)
    failed = [r for r in records if r["status"] != "ok"]
    for r in failed:
        print(f"resbench: warning: {r['sweep']} {r['label']} L={r['L']}: {r['status']}: {r['message']}", file=sys.stderr)
    ok = [r for r in records if r["status"] == "ok"]
    rows = analyse(ok)
    write_jsonl(out / f"{study.name}.jsonl", records)
    write_csv(out / f"{study.name}_fits.csv", rows)
    table = render_table(rows, ok, study)
    (out / f"{study.name}_table.md").write_text(table + "\n")
    plots = []
    if ok and have_matplotlib():
        plots.append(plot_depth(ok, rows, out / f"{study.name}_vs_depth.png"))
        if study.n_sweep:
            plots.append(plot_n(ok, rows, out / f"{study.name}_vs_n.png"))
    print(table)
    print(f"{len(records)} cells in {time.perf_counter() - t0:.0f} s; outputs in {out}: "
          f"{study.name}.jsonl, {study.name}_fits.csv, {study.name}_table.md, "
          + ", ".join(p.name for p in plots), file=sys.stderr)
    return 1 if failed else 0


def have_matplotlib() -> bool:
    """Plots need the [plot] extra; without it a study still writes its tables."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("resbench: warning: matplotlib is not installed (pip install 'resbench[plot]'): no plots", file=sys.stderr)
        return False
    return True


def cmd_project(args) -> int:
    from ..measure.projection import project
    from .scaling_report import render_projection

    study = load_study(args.suite, "projection")
    out = _out_dir(args.out)
    records = []
    env = environment("cpu")
    for shape_name, cfg in study.shapes:
        for spec in study.variants:
            r = project(cfg, spec.name, spec.options, study.batch, get_precision(study.precision), study.views,
                        study.checkpoint_every, study.pipeline_stages)
            records.append({"env": env, "shape": shape_name, "label": spec.label, **cfg.to_dict(), "batch": study.batch,
                            "precision": study.precision, "checkpoint_every": study.checkpoint_every,
                            "pipeline_stages": study.pipeline_stages, **r})
            if not args.quiet:
                print(f"{shape_name} {spec.label}: projected in {r['seconds']:.1f} s", file=sys.stderr)
    write_jsonl(out / f"{study.name}.jsonl", records)
    table = render_projection(records, study)
    (out / f"{study.name}.md").write_text(table + "\n")
    print(table)
    print(f"outputs in {out}: {study.name}.jsonl, {study.name}.md", file=sys.stderr)
    return 0


def add_subcommands(sub) -> None:
    sc = sub.add_parser("scale", help="depth-scaling memory study: sweep L (and N), fit, classify, plot")
    sc.add_argument("suite", nargs="?", default="scaling", help="scaling YAML path or shipped name (default: scaling)")
    sc.add_argument("--out", help="output directory (default: results/local/scaling)")
    sc.add_argument("--quiet", action="store_true", help="no per-cell progress lines")
    sc.set_defaults(func=cmd_scale)

    pj = sub.add_parser("project", help="project peak memory at shapes beyond this machine (fake tensors)")
    pj.add_argument("suite", nargs="?", default="projection", help="projection YAML path or shipped name (default: projection)")
    pj.add_argument("--out", help="output directory (default: results/local/scaling)")
    pj.add_argument("--quiet", action="store_true", help="no per-shape progress lines")
    pj.set_defaults(func=cmd_project)
