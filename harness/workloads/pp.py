"""pp: a train step (forward, backward, AdamW) pipelined over the ranks of a torchrun launch
with torch.distributed.pipelining (harness/parallel/pipeline.py). Every variant of one schedule
shares the job, steps interleaved as in throughput, so its ratio to PreNorm is per round. Per
cell: the slowest rank's step time, the bytes every stage transition sent (forward activations,
backward gradients; receives counted as a check), in d-vectors per token beside what the layout
predicts (harness/parallel/comm.py: exact, and the paper's Eq. 7/8), and the bubble each rank saw."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from .. import variants
from ..cells import BASELINE, is_baseline
from ..errors import ConfigError
from ..measure import summarize
from ..model import build_model
from ..parallel import comm as comm_model
from ..parallel.launch import gather, peak_memory, time_rounds, writes_result
from ..parallel.pipeline import COMMS, MULTI_STAGE, SCHEDULES, bubble, build_pipeline, chunk_bounds
from ..variants.base import Residual
from ..measure.rounds import Rounds
from .base import RATIO_SCHEMA, TIMING_SCHEMA, Workload, check_rounds, fmt_ms, num, register
from ..measure.rounds import paired_ratio
from .common import build_on_every_rank, fixed_batch, grouped_jobs, progress_counter, rank_context


@dataclass(frozen=True)
class Params:
    batch: int = 8            # the global batch, split into microbatches
    microbatches: int = 4
    schedule: str = "1f1b"    # gpipe | 1f1b | interleaved-1f1b; a list: one cell per schedule
    virtual: int = 2          # V chunks per rank, interleaved schedules only (the others run 1); a list too
    comm: str = "naive"       # naive | cached (the paper's cross-stage caching) | cached-all (keeps what it made too)
    warmup: int = 1           # >= 1: the first step infers the stages' shapes
    repeats: int = 5
    # adaptive rounds (harness/measure/rounds.py): with precision > 0, repeats is the most, and they
    # stop once every ratio to the baseline (slowest rank per round) is within ±precision, or at budget_s
    precision: float = 0.0
    budget_s: float = 0.0


@register("pp")
class PipelineParallel(Workload):
    Params = Params
    order = 70
    distributed = True
    timed_calls = True
    timed = True
    axes = ("schedule", "virtual", "comm")
    positive = ("batch", "microbatches", "virtual", "warmup", "repeats")
    choices = {"schedule": tuple(SCHEDULES), "comm": COMMS}
    unkeyed_defaults = {"precision": 0.0, "budget_s": 0.0}

    def check(self, params, variant_names):
        check_rounds(self.name, params)
        if params.batch % params.microbatches:
            raise ConfigError(f"workloads.pp.batch ({params.batch}) must be a multiple of microbatches "
                              f"({params.microbatches})")

    def check_run(self, params, launch, shapes, precisions):
        """What torch.distributed.pipelining's schedules require, named before any rank starts."""
        if "fp16-autocast" in precisions:
            raise ConfigError("workloads.pp does not scale fp16 losses (no GradScaler across stages): "
                              "use fp32, bf16-autocast or bf16-pure")
        listed = lambda v: v if isinstance(v, tuple) else (v,)  # noqa: E731 - an axis or one value
        m, ranks = params.microbatches, launch.world
        for s in listed(params.schedule):
            if s in MULTI_STAGE and m % max(1, m // ranks):
                raise ConfigError(f"workloads.pp.microbatches ({m}) must be a multiple of microbatches // ranks "
                                  f"({m // ranks}) for {s}")
            if s == "1f1b" and m < ranks:
                raise ConfigError(f"workloads.pp.microbatches ({m}) must be >= the ranks ({ranks}) for 1f1b")
            for v in listed(params.virtual) if s in MULTI_STAGE else (1,):
                if s in MULTI_STAGE and v < 2:
                    raise ConfigError(f"workloads.pp.virtual must be >= 2 for {s}, got {v}")
                for cfg in shapes:
                    chunk_bounds(cfg.depth, launch.world * v)

    def normalize(self, params):
        return {**params, "virtual": params["virtual"] if params["schedule"] in MULTI_STAGE else 1}

    def skips(self, params, variant):
        """Caching needs declared completed sources (Residual.completed) and a rank that runs a later chunk
        (V >= 2); without them it is the naive form."""
        if params["comm"] == "naive":
            return False
        return params["virtual"] == 1 or variants.get(variant).completed is Residual.completed

    def jobs(self, cells, todo):
        return grouped_jobs(cells, todo, lambda c: (c.shape_name, c.precision, c.seed, c.params["schedule"], c.params["virtual"]))

    def run(self, cells, ctx, progress=None):
        rank, world, p, cfg = rank_context(cells)
        device, prec = ctx.device, ctx.precision
        x, y = fixed_batch(cfg, p["batch"], cells[0].seed, device)
        busy = {c.key: [] for c in cells}

        def build(cell):
            model = build_model(cfg, cell.variant, cell.options, cell.seed, "cpu", prec.param_dtype)
            return build_pipeline(model, p["schedule"], world, p["virtual"], p["microbatches"],
                                  cell.params["comm"], rank, device, prec)

        pipes, failed = build_on_every_rank(cells, build)
        fns = {}
        for key, pipe in pipes.items():
            opt = torch.optim.AdamW(pipe.parameters(), lr=1e-4)

            def step(pipe=pipe, opt=opt, key=key):
                opt.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                pipe.step(x, y)  # the schedule: the bubble is its time less this rank's compute
                busy[key].append((pipe.counts()["busy_s"], time.perf_counter() - t0))
                opt.step()

            fns[key] = step
        plan = Rounds(p["repeats"], p.get("precision", 0.0), p.get("budget_s", 0.0))
        base = next((c.key for c in cells if is_baseline(c) and c.params["comm"] == "naive" and c.key in fns), None)
        times = time_rounds(fns, p["warmup"], p["repeats"], device,
                            progress=None if progress is None or rank else progress_counter(progress, len(fns), p),
                            plan=plan, baseline=base)
        mine = {k: {"times": times[k], "busy": busy[k][p["warmup"]:], "counts": pipes[k].counts(),
                    "per_chunk_elems": {s.chunk.c: s.elems for s in pipes[k].stages}} for k in fns}
        every = gather({"cells": mine, "memory": peak_memory(device)})
        if not writes_result():
            return {}
        ok = [c for c in cells if c.key in pipes]
        return {**failed, **{c.key: ("ok", None, self._metrics(c, cfg, every, ok, plan)) for c in ok}}

    def _metrics(self, cell, cfg, every, cells, plan):
        p, world = cell.params, len(every)
        per = [e["cells"][cell.key] for e in every]
        slowest = [max(r["times"][i] for r in per) for i in range(len(per[0]["times"]))]
        base = next((c for c in cells if is_baseline(c) and c.params["comm"] == "naive"), None)
        ratio = None
        if base is not None:
            b = [max(e["cells"][base.key]["times"][i] for e in every) for i in range(len(slowest))]
            ratio = paired_ratio(slowest, b, plan)
        tokens = p["batch"] * cfg.seq_len
        chunks = world * p["virtual"]
        elems = {}
        for r in per:
            elems.update({int(c): n for c, n in r["per_chunk_elems"].items()})
        fwd = sum(r["counts"]["fwd_send"] for r in per)
        m = {
            "ranks": world, "chunks": chunks, "tokens_per_step": tokens,
            "step_ms": summarize([s * 1e3 for s in slowest]),
            "rank_step_ms": [statistics.median(r["times"]) * 1e3 for r in per],
            "x_prenorm": ratio,
            "tokens_per_s": tokens / statistics.median(slowest),
            "bytes": {k: sum(r["counts"][k] for r in per) for k in ("fwd_send", "fwd_recv", "bwd_send", "bwd_recv")},
            "fwd_bytes_per_token": fwd / tokens,
            "transition_vectors": [elems.get(c, 0) / (tokens * cfg.d_model) for c in range(chunks - 1)],
            "bubble": [statistics.median(1 - busy / span for busy, span in r["busy"]) for r in per],
            "bubble_ideal": bubble(world, p["virtual"], p["microbatches"]),
            "memory": [e["memory"] for e in every],
            "rounds": plan.record(),
        }
        m["vectors_per_token"] = sum(m["transition_vectors"])
        m.update(self._predicted(cell, cfg, p, world))
        return m

    @staticmethod
    def _predicted(cell, cfg, p, world) -> dict:
        """What the layout predicts for AttnRes (blocks known): exact and the paper's Eq. 7/8."""
        with torch.device("meta"):
            res = variants.build(cell.variant, cfg.d_model, cfg.n_layers, cell.options)
        starts = getattr(res, "starts", None)
        if starts is None:
            return {}
        chunks = world * p["virtual"]
        cuts = [s for s, _ in chunk_bounds(cfg.depth, chunks)]
        ex = comm_model.exact(list(starts), cfg.n_layers, cuts, world, p["comm"])
        return {"expected": ex, "paper_eq": comm_model.paper(world, p["virtual"], len(starts), p["comm"]),
                "n_sources_blocks": len(starts)}

    # -- reading records ----------------------------------------------------------------------
    def summary(self, metrics):
        if len(metrics) != 1:
            return {"pp": f"{len(metrics)} cells (resbench report --suite distributed)" if metrics else None}
        m = metrics[0]
        return {"pp": f"{fmt_ms(m['step_ms'])} ms, x{num((m['x_prenorm'] or {}).get('median'), '.3f')}, "
                            f"{m['vectors_per_token']:.2f} vec/token"}

    columns = (("pp step", lambda r: r.get("pp") or "-"),)
    metrics_schema = {"ranks": int, "step_ms": TIMING_SCHEMA, "x_prenorm": RATIO_SCHEMA, "tokens_per_s": float,
                      "vectors_per_token": float, "transition_vectors": list, "bubble": list, "bubble_ideal": float,
                      "bytes": {"fwd_send": int, "fwd_recv": int, "bwd_send": int, "bwd_recv": int}}

