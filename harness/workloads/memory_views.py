"""memory_views: bytes per view of one (variant, shape) — what inference, checkpointed training,
a pipeline boundary and plain training must hold (harness/measure/memory_views.py), and for
serving a prefill into the KV cache. Real tensors measure; `tensors: fake` projects the same views
under fake tensors at shapes beyond this machine (harness/measure/projection.py). The scaling and
projection studies read these records."""
from __future__ import annotations

import time
from dataclasses import dataclass

from ..cells import Cell
from ..errors import ConfigError
from ..measure import memory_views as V
from ..model import ModelConfig, count_params
from .base import Workload, num, register
from .common import RunContext, fixed_batch, grouped_jobs, model_of

KiB = 1024


@dataclass(frozen=True)
class Params:
    batch: int = 1
    views: tuple = V.VIEWS  # any of V.VIEWS + V.PREFILL_VIEWS (serving: prefill into a KV cache)
    checkpoint_every: int = 1  # blocks per checkpointed segment
    pipeline_stages: int = 4  # stages of the pipeline split, by whole blocks
    tensors: str = "real"  # real: measure here; fake: project (no storage)
    prefill_chunk: int = 16384  # tokens per forward of the prefill_chunked view


def residual_blocks(residual) -> int | None:
    """N, the depth-attention blocks of an AttnRes-like residual (None for the others)."""
    n = getattr(residual, "n_blocks", None)
    return n if isinstance(n, int) else None


def measure_cell(cell: Cell, ctx: RunContext) -> dict:
    p, prec = cell.params, ctx.precision
    views = tuple(p["views"])
    if p["tensors"] == "fake":
        from ..measure.projection import project

        cfg = ModelConfig(**cell.shape)
        out, model = project(cfg, cell.variant, cell.options, p["batch"], prec, views, p["checkpoint_every"],
                             p["pipeline_stages"], p.get("prefill_chunk", 0))
    else:
        cfg, model = model_of(cell, ctx)
        idx, targets = fixed_batch(cfg, p["batch"], cell.seed, ctx.device)
        t0 = time.perf_counter()
        bytes_, extra = V.measure(model, idx, targets, views, p["checkpoint_every"], p["pipeline_stages"],
                                  precision=prec, chunk=p.get("prefill_chunk", 0))
        out = {"bytes": bytes_, **extra, "param_bytes": sum(t.numel() * t.element_size() for t in model.parameters()),
               "seconds": round(time.perf_counter() - t0, 3)}
    return {**out, "params": count_params(model), "tokens": p["batch"] * cfg.seq_len, "L": cfg.n_layers,
            "N": residual_blocks(model.residual), "itemsize": prec.param_itemsize,
            "state_vectors": model.residual.state_vectors(), "streams": model.residual.streams()}


def _per_token(view: str):
    def show(row):
        b = (row.get("view_bytes") or {}).get(view)
        return num(b and b / row["view_tokens"] / KiB, ".1f")
    return show


@register("memory_views")
class MemoryViews(Workload):
    Params = Params
    order = 2
    positive = ("batch", "checkpoint_every", "pipeline_stages", "prefill_chunk")
    choices = {"tensors": ("real", "fake")}
    # the scaling views; the prefill views are the projection report's (harness/studies/projection.py)
    columns = tuple((f"{view} KiB/token", _per_token(view)) for view in V.VIEWS)
    compare_metrics = {f"{view}_bytes": (lambda m, v=view: (m["bytes"].get(v), None), "{:.0f}")
                       for view in V.VIEWS + V.PREFILL_VIEWS}
    metrics_schema = {"bytes": dict, "L": int, "N": (int, None), "itemsize": int, "state_vectors": int,
                      "streams": int, "param_bytes": int, "seconds": float, "tokens": int, "params": int}

    def check(self, params, variant_names):
        allowed, views = V.VIEWS + V.PREFILL_VIEWS, params.views
        if not isinstance(views, (list, tuple)) or not views or any(v not in allowed for v in views) \
                or len(set(views)) != len(views):
            raise ConfigError(f"workloads.memory_views.views must be a non-empty list of distinct views of "
                              f"{', '.join(allowed)}; got {views!r}"[:300])

    def check_run(self, params, launch, shapes, precisions):
        stages = params.pipeline_stages
        if "pipeline" in params.views and any(stages > cfg.depth for cfg in shapes):
            raise ConfigError(f"workloads.memory_views.pipeline_stages ({stages}) must be <= the blocks of every "
                              f"shape (the smallest has {min(cfg.depth for cfg in shapes)})")

    def normalize(self, params):
        views = [v for v in V.VIEWS + V.PREFILL_VIEWS if v in params["views"]]  # one order: one key
        params = {**params, "views": views}
        if "prefill_chunked" not in views:
            params.pop("prefill_chunk")  # moot: the key must not depend on it
        return params

    def jobs(self, cells, todo):
        # one process per shape: the tracker counts only storages made inside a measured call,
        # so cells after one another in a process cannot see each other's bytes
        return grouped_jobs(cells, todo, key=lambda c: (c.shape_name, c.precision, c.seed))

    def run_cell(self, cell, ctx):
        return "ok", None, measure_cell(cell, ctx)

    def summary(self, metrics):
        m = metrics[0] if metrics else None
        return {"view_bytes": m and m["bytes"], "view_tokens": m and m.get("tokens")}
