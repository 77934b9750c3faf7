"""ddp, fsdp: the train step (forward, backward, gradient sync, AdamW) of every variant under
data parallelism on the ranks of a torchrun launch: DistributedDataParallel, or FSDP2's
`fully_shard` on each sublayer and the root. Each rank steps its own batch (the cell's `batch`
per rank); every variant of a shape shares the job, steps interleaved and started together on
all ranks, so the ratio to PreNorm is per round and taken under the same launcher. Per cell: the
slowest rank's step time, tokens/s in total and per rank, and each rank's peak memory."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from ..cells import BASELINE, is_baseline
from ..measure import summarize
from ..model import build_model
from ..parallel.launch import gather, peak_memory, time_rounds, writes_result
from ..train import TrainConfig, make_optimizer, train_step
from ..measure.rounds import Rounds
from .base import RATIO_SCHEMA, TIMING_SCHEMA, Workload, check_rounds, fmt_ms, num, register
from ..measure.rounds import paired_ratio
from .common import build_on_every_rank, fixed_batch, grouped_jobs, progress_counter, rank_context


@dataclass(frozen=True)
class Params:
    batch: int = 4   # per rank
    warmup: int = 1  # >= 1: the first step builds DDP's buckets / FSDP's groups
    repeats: int = 7
    # adaptive rounds (harness/measure/rounds.py): with precision > 0, repeats is the most, and they
    # stop once every ratio to the baseline (slowest rank per round) is within ±precision, or at budget_s
    precision: float = 0.0
    budget_s: float = 0.0


def wrap(model, how: str, device: str):
    if how == "ddp":
        return DistributedDataParallel(model, device_ids=[torch.device(device).index] if device.startswith("cuda")
                                       else None)
    from torch.distributed.fsdp import fully_shard
    for sub in model.sublayers:
        fully_shard(sub)
    fully_shard(model)
    return model


class DataParallel(Workload):
    Params = Params
    order = 60
    distributed = True
    timed_calls = True
    timed = True
    positive = ("batch", "warmup", "repeats")
    unkeyed_defaults = {"precision": 0.0, "budget_s": 0.0}
    how = "?"
    metrics_schema = {"ranks": int, "step_ms": TIMING_SCHEMA, "x_prenorm": RATIO_SCHEMA, "tokens_per_s": float,
                      "rank_tokens_per_s": list, "slowest_rank": int,
                      "memory": {"counter": str, "max": int, "min": int}}

    def check(self, params, variant_names):
        check_rounds(self.name, params)

    def jobs(self, cells, todo):
        return grouped_jobs(cells, todo, lambda c: (c.shape_name, c.precision, c.seed))

    def run(self, cells, ctx, progress=None):
        rank, world, p, cfg = rank_context(cells)
        device, prec = ctx.device, ctx.precision
        x, y = fixed_batch(cfg, p["batch"], cells[0].seed + rank, device)  # each rank its own data
        def build(cell):
            model = build_model(cfg, cell.variant, cell.options, cell.seed, device, prec.param_dtype)
            wrapped = wrap(model, self.how, device)
            opt, scaler = make_optimizer(model, TrainConfig()), ctx.scaler()
            return lambda: train_step(wrapped, opt, x, y, TrainConfig(), prec, scaler)

        fns, failed = build_on_every_rank(cells, build)
        plan = Rounds(p["repeats"], p.get("precision", 0.0), p.get("budget_s", 0.0))
        base = next((c.key for c in cells if is_baseline(c) and c.key in fns), None)
        times = time_rounds(fns, p["warmup"], p["repeats"], device,
                            progress=None if progress is None or rank else progress_counter(progress, len(fns), p),
                            plan=plan, baseline=base)
        every = gather({"times": times, "memory": peak_memory(device)})
        if not writes_result():
            return {}
        ok = [c for c in cells if c.key in fns]
        return {**failed, **{c.key: ("ok", None, self._metrics(c, cfg, every, ok, world, plan)) for c in ok}}

    def _metrics(self, cell, cfg, every, cells, world, plan):
        p = cell.params
        per = [e["times"][cell.key] for e in every]
        slowest = [max(t[i] for t in per) for i in range(len(per[0]))]
        base = next((c for c in cells if is_baseline(c)), None)
        ratio = None
        if base is not None:
            b = [max(e["times"][base.key][i] for e in every) for i in range(len(slowest))]
            ratio = paired_ratio(slowest, b, plan)
        tokens = p["batch"] * cfg.seq_len
        mem = [e["memory"]["bytes"] for e in every]
        return {
            "ranks": world, "wrap": self.how, "tokens_per_step": tokens * world,
            "step_ms": summarize([s * 1e3 for s in slowest]),
            "x_prenorm": ratio,
            "tokens_per_s": tokens * world / statistics.median(slowest),
            "rank_tokens_per_s": [tokens / statistics.median(t) for t in per],
            "slowest_rank": max(range(world), key=lambda r: statistics.median(per[r])),
            "memory": {"counter": every[0]["memory"]["counter"], "max": max(mem), "min": min(mem)},
            "rounds": plan.record(),
        }

    def summary(self, metrics):
        if len(metrics) != 1:
            return {self.name: None}
        m = metrics[0]
        return {self.name: f"{fmt_ms(m['step_ms'])} ms, x{num((m['x_prenorm'] or {}).get('median'), '.3f')}, "
                           f"{m['tokens_per_s']:.0f} tok/s"}

    @property
    def columns(self):
        return ((f"{self.name} step", lambda r, k=self.name: r.get(k) or "-"),)


@register("ddp")
class DDP(DataParallel):
    how = "ddp"


@register("fsdp")
class FSDP(DataParallel):
    how = "fsdp"
