"""Depth-scaling memory study (`kind: scaling`; `resbench run scaling`, or `resbench scale`):
sweep depth L (and the AttnRes block count N), measure every memory view, fit, classify, plot.
projection.py runs the same views under fake tensors at shapes beyond this machine.

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


from ..config import (ConfigError, VariantSpec, check_builds, check_keys, check_name, coerce, int_list,
                      model_config, parse_precision, parse_seed, parse_threads, parse_variants,
                      positive, short)
from ..errors import classify
from ..provenance import environment
from ..model import ModelConfig, build_model
from ..precision import get as get_precision
from ..measure import memory_views as V
from .base import Study, register

SCALING_KEYS = ("kind", "name", "precision", "threads", "seed", "batch", "shape", "depths", "variants", "n_sweep",
                "views", "checkpoint_every", "pipeline_stages")
SHAPE_KEYS = tuple(f.name for f in fields(ModelConfig) if f.name != "n_blocks")


@dataclass(frozen=True)
class NSweep:
    variant: VariantSpec
    blocks: int
    values: tuple[int, ...]


@dataclass(frozen=True)
class MemorySuite:
    """A validated scaling or projection suite."""
    kind: str
    name: str
    precision: str
    batch: int
    variants: tuple[VariantSpec, ...]
    views: tuple[str, ...]
    checkpoint_every: int
    pipeline_stages: int
    shapes: tuple[tuple[str, ModelConfig], ...] = ()  # projection
    prefill_chunk: int = 0  # projection: tokens per forward of the prefill_chunked view
    shape: dict = dataclasses.field(default_factory=dict)  # scaling: ModelConfig minus n_blocks
    depths: tuple[int, ...] = ()
    n_sweep: NSweep | None = None
    threads: int = 0
    seed: int = 0

    def config(self, n_blocks: int) -> ModelConfig:
        return ModelConfig(n_blocks=n_blocks, **self.shape)


# -- the YAML schema --------------------------------------------------------------------------

def parse_common(raw: Any, kind: str, keys: tuple[str, ...], required: tuple[str, ...], default_name: str,
                 allowed_views: tuple[str, ...] = V.VIEWS) -> dict:
    """The keys scaling and projection share: name, precision, batch, variants, views, checkpointing."""
    if raw is None:
        raise ConfigError("suite is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"suite must be a mapping, got {type(raw).__name__}")
    got = raw.get("kind")
    if got != kind:  # checked first: a suite of another kind should say so, not list its keys
        raise ConfigError(f"kind must be {short(kind)} here, got {short(got)}")
    check_keys("suite", raw, keys)
    for key in required:
        if key not in raw:
            raise ConfigError(f"suite: missing key {short(key)}")
    views = raw.get("views", list(V.VIEWS))
    if not isinstance(views, list) or not views or any(v not in allowed_views for v in views):
        raise ConfigError(f"views must be a non-empty list of {', '.join(allowed_views)}; got {short(views)}")
    return dict(
        kind=kind, name=check_name("name", raw.get("name", default_name)), precision=parse_precision(raw),
        batch=positive("batch", raw.get("batch", 1)), variants=parse_variants(raw["variants"]),
        views=tuple(v for v in allowed_views if v in views),
        checkpoint_every=positive("checkpoint_every", raw.get("checkpoint_every", 1)),
        pipeline_stages=positive("pipeline_stages", raw.get("pipeline_stages", 4)),
    )


def parse_study(raw: Any, default_name: str = "study") -> MemorySuite:
    """A scaling suite (each study module owns its kind's schema)."""
    common = parse_common(raw, "scaling", SCALING_KEYS, ("shape", "depths", "variants"), default_name)
    check_keys("shape", raw["shape"], SHAPE_KEYS)
    shape = {k: coerce(f"shape.{k}", v, float if k == "mlp_ratio" else int) for k, v in raw["shape"].items()}
    depths = int_list("depths", raw["depths"], at_least=2)
    study = MemorySuite(shape=shape, depths=depths, threads=parse_threads(raw), seed=parse_seed("seed", raw.get("seed", 0)),
                  n_sweep=_parse_n_sweep(raw.get("n_sweep")), **common)
    cfgs = [model_config("shape", {**shape, "n_blocks": b}) for b in depths]
    for spec in study.variants:
        for cfg in cfgs:
            check_builds(spec, cfg, f"depth {cfg.n_blocks} blocks")
    if study.n_sweep:
        ns = study.n_sweep
        for n in ns.values:
            res = check_builds(dataclasses.replace(ns.variant, options={**ns.variant.options, "n_blocks": n}),
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
    return NSweep(spec, positive("n_sweep.blocks", raw["blocks"]), int_list("n_sweep.values", raw["values"], 2))


# -- measuring ------------------------------------------------------------------------------

def measure_cell(study: MemorySuite, cfg: ModelConfig, spec: VariantSpec) -> dict:
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
        "state_vectors": model.residual.state_vectors(), "streams": model.residual.streams(),
        "checkpoint_every": study.checkpoint_every,
        "pipeline_stages": study.pipeline_stages, "bytes": out, **extra, "seconds": round(time.perf_counter() - t0, 3),
    }


def cells(study: MemorySuite) -> list[tuple[str, ModelConfig, VariantSpec, int | None]]:
    """(sweep, shape, variant, N) in run order: the depth sweep, then the N sweep. N-sweep cells
    keep the sweep's label, so they fit as one series."""
    out = [("depth", study.config(b), spec, None) for spec in study.variants for b in study.depths]
    if study.n_sweep:
        ns = study.n_sweep
        for n in ns.values:
            spec = dataclasses.replace(ns.variant, options={**ns.variant.options, "n_blocks": n})
            out.append(("N", study.config(ns.blocks), spec, n))
    return out


def run_study(study: MemorySuite, progress: bool = True) -> list[dict]:
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


# -- the studies ------------------------------------------------------------------------------

def out_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"output directory {out} is not writable")
    return out


def read_jsonl(paths: list[str]) -> list[dict]:
    out = []
    for p in paths:
        try:
            lines = Path(p).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read {p}: {exc.strerror}") from None
        for n, line in enumerate(lines, 1):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise ConfigError(f"{p}:{n}: not a JSON line") from None
    if not out:
        raise ConfigError(f"no records in {', '.join(paths)}")
    return out


def have_matplotlib() -> bool:
    """Plots need the [plot] extra; without it a study still writes its tables."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("resbench: warning: matplotlib is not installed (pip install 'resbench[plot]'): no plots", file=sys.stderr)
        return False
    return True


@register("scaling")
class Scaling(Study):
    help = "depth-scaling memory study: sweep L (and N), fit, classify, plot"
    own_schema = True
    command, default_suite = "scale", "scaling"

    def parse(self, raw, default_name):
        return parse_study(raw, default_name)

    def run(self, study, out, progress):
        t0, out = time.perf_counter(), out_dir(out)  # an unwritable directory fails before the run
        records = run_study(study, progress=progress)
        write_jsonl(out / f"{study.name}.jsonl", records)
        code = self._render(records, study, out)
        print(f"{len(records)} cells in {time.perf_counter() - t0:.0f} s; records: {out / f'{study.name}.jsonl'}",
              file=sys.stderr)
        return code

    def count_cells(self, study):
        return len(cells(study))

    def report(self, paths, study, out):
        return self._render(read_jsonl(paths), study, out_dir(out))

    def _render(self, records, study, out) -> int:
        from .scaling_report import analyse, plot_depth, plot_n, render_table, write_csv

        failed = [r for r in records if r["status"] != "ok"]
        for r in failed:
            print(f"resbench: warning: {r['sweep']} {r['label']} L={r['L']}: {r['status']}: {r['message']}",
                  file=sys.stderr)
        ok = [r for r in records if r["status"] == "ok"]
        rows = analyse(ok)
        if rows:
            write_csv(out / f"{study.name}_fits.csv", rows)
        table = render_table(rows, ok, study)
        (out / f"{study.name}_table.md").write_text(table + "\n")
        plots = []
        if ok and have_matplotlib():
            plots.append(plot_depth(ok, rows, out / f"{study.name}_vs_depth.png"))
            if study.n_sweep:
                plots.append(plot_n(ok, rows, out / f"{study.name}_vs_n.png"))
        print(table)
        print(f"outputs in {out}: {study.name}_fits.csv, {study.name}_table.md"
              + "".join(f", {p.name}" for p in plots), file=sys.stderr)
        return 1 if failed else 0
