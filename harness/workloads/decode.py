"""decode: inference as a server runs it. Per (context, batch): prefill a prompt into the KV
cache (time-to-first-token), then decode `new_tokens` tokens one forward each (inter-token
latency, every token timed). Every variant of a (shape, precision, seed) runs in one process,
round-robin per round as throughput does, so the ratios to the baseline see the same machine.

Memory per point: the KV cache (2 x blocks x batch x positions x d), the depth state a variant
holds *within* a token (declared: state_vectors x batch x d; nothing is kept between tokens, see
Residual.token_local) and the measured peak of one decode step at that context, held against it.

Compiled cells (a suite's `compile:`) decode through torch.compile with a static KV cache (one
graph per point for the prompt, one for every decode step); each point compiles before its
rounds, the seconds recorded per point, and a compile during a timed round fails the variant.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from .. import variants
from ..cells import BASELINE, Cell, is_baseline
from ..compiling import cannot_run, compile_model, guarded, warm
from ..errors import ConfigError, classify
from ..measure import (LiveBytesTracker, cuda_memory_snapshot, reset_cuda_peak, summarize, synchronize,
                       time_interleaved, time_once)
from ..model import KVCache, ModelConfig
from ..measure.rounds import Rounds, paired_ratio
from ..measure.roofline import copy_probe, extra_bytes, roofline
from .base import Workload, check_rounds, num, register, rounds_notes
from .common import RunContext, model_of, static_info


@dataclass(frozen=True)
class Params:
    contexts: tuple = (64, 256)  # prompt lengths; each + new_tokens must fit the shape's seq_len
    batches: tuple = (1, 4)
    new_tokens: int = 16  # decode steps timed after each prefill
    warmup: int = 1
    repeats: int = 7  # rounds: each runs every variant once per (context, batch), rotated
    chunk: int = 0  # prefill chunk in tokens (0: the whole prompt in one forward)
    # adaptive rounds per (context, batch) point (harness/measure/rounds.py): with precision > 0, repeats
    # is the most, and a point's rounds stop once its TTFT and per-token ratios are that precise
    precision: float = 0.0
    budget_s: float = 0.0


def _ms(samples: list[float]) -> dict:
    s = {k: (v * 1e3 if k != "n" else v) for k, v in summarize(samples).items()}
    a = np.asarray(samples) * 1e3
    s["p90"], s["p99"] = float(np.percentile(a, 90)), float(np.percentile(a, 99))
    s["samples"] = [float(x) for x in a]  # raw, for compare's test
    return s


def _per_round(samples: list[float], per_round: int) -> list[float]:
    """A round's median of its `per_round` samples (a round times `new_tokens` decode steps)."""
    return [float(np.median(samples[i:i + per_round])) for i in range(0, len(samples) - per_round + 1, per_round)]


def _ratio(samples: list[float], base: list[float], per_round: int,
           rounds: Rounds | None = None) -> tuple[float | None, list | None]:
    """Median of per-round ratios of the rounds' medians, and its distribution-free 95% interval
    (valid at whichever planned look adaptive `rounds` stopped at)."""
    mine, theirs = _per_round(samples, per_round), _per_round(base, per_round)
    if not mine or not theirs:
        return None, None
    r = paired_ratio(mine, theirs, rounds)
    return r["median"], r["ci"]


def run_decode(cells: list[Cell], ctx: RunContext, progress=None) -> dict[str, tuple[str, str | None, dict]]:
    first = cells[0]
    device, wl, prec = ctx.device, first.params, ctx.precision
    out: dict[str, tuple[str, str | None, dict]] = {}
    models, runs, info = {}, {}, {}
    mode = ctx.compile  # one mode per group (jobs)
    for cell in cells:
        try:
            cfg, model = model_of(cell, ctx)
            info[cell.key] = {**static_info(cell, cfg, model), "points": [],
                              "kv_cache": "dynamic" if mode == "none" else "static"}
            if mode != "none":
                info[cell.key]["compile"] = {"mode": mode, "points": []}
            models[cell.key] = model.eval()
            runs[cell.key] = compile_model(model, mode)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - one bad variant must not stop the group
            out[cell.key] = classify(exc)
    cfg = ModelConfig(**first.shape)
    g = torch.Generator().manual_seed(first.seed)
    points = [(c, b) for b in wl["batches"] for c in wl["contexts"]]
    row = (max(wl["contexts"]), min(wl["batches"]))  # the point `headline` shows, and targets bound
    bounds = {c.key: c.params.get("bounds", {}).get("decode") for c in cells}
    copy_fn, copy_bytes = copy_probe(device)  # the bandwidth, timed once per round (the roofline)
    copies: list[float] = []
    rounds = wl["warmup"] + wl["repeats"] + (0 if mode == "none" else 2)  # compiled: ~2 warm-up calls per point
    calls = len(points) * rounds * len(models) * (1 + wl["new_tokens"])
    done, failed = 0, {}
    itemsize = prec.param_itemsize

    def tick(n=1):
        nonlocal done
        done += n
        if progress is not None:
            progress(done, calls)

    for context, batch in points:
        prompt = torch.randint(0, cfg.vocab_size, (batch, context), generator=g).to(device)
        cont = torch.randint(0, cfg.vocab_size, (batch, wl["new_tokens"]), generator=g).to(device)
        # compiled: a static cache, so every decode step of this point has the same shapes
        caches = {k: KVCache(cfg, batch, context + wl["new_tokens"], prec.param_dtype, device, static=mode != "none")
                  for k in models}
        ttft, itl = defaultdict(list), defaultdict(list)

        def generate(key: str, timed: bool) -> None:
            model, run, cache = models[key], runs[key], caches[key]
            cache.length = 0
            with prec.inference(device):
                t = time_once(lambda: model.prefill(prompt, cache, wl["chunk"], forward=run), device)
                if timed:
                    ttft[key].append(t)
                tick()
                for j in range(wl["new_tokens"]):
                    t = time_once(lambda: run(cont[:, j:j + 1], cache=cache, last_only=True), device)
                    if timed:
                        itl[key].append(t)
                    tick()

        live = [k for k in models if k not in failed]
        if mode != "none":  # compile this point's graphs (prefill, one decode step) before any round
            for key in live:
                try:
                    cost = warm(lambda key=key: generate(key, timed=False), at_least=1)
                    info[key]["compile"]["points"].append({"context": context, "batch": batch, **cost})
                except (Exception, SystemExit) as exc:  # noqa: BLE001 - the variant leaves; the others finish
                    failed[key] = cannot_run(mode, "decode", exc)
        timed_generate = guarded("decode", generate)  # a compile in a round fails the variant
        plan = Rounds(wl["repeats"], wl.get("precision", 0.0), wl.get("budget_s", 0.0))
        base = next((c.key for c in cells if is_baseline(c) and c.key in live), None)
        calls_of = dict.fromkeys(live, 0)

        def call(key):  # a variant's first `warmup` calls are time_interleaved's untimed warm-up rounds
            calls_of[key] += 1
            timed_generate(key, timed=calls_of[key] > wl["warmup"])

        def after_round(done, _):  # time_interleaved's whole-call times go unused: generate times its own
            copies.append(time_once(copy_fn, device))
            if base is None or base in failed:
                return False

            # per round: each variant's TTFT and median decode step over the baseline's
            def ratios():  # the row's point (headline) carries each variant's decode bound
                return [([a / b for a, b in zip(_per_round(series[k], n), _per_round(series[base], n))],
                         bounds.get(k) if series is itl and (context, batch) == row else None)
                        for series, n in ((ttft, 1), (itl, wl["new_tokens"]))
                        for k in live if k != base and k not in failed]

            return plan.check(done, ratios)

        # no progress hook: generate ticks once per forward, which is what `calls` counts
        time_interleaved({k: (lambda k=k: call(k)) for k in live if k not in failed}, device, wl["warmup"],
                         wl["repeats"], on_error=failed.__setitem__, stop=after_round)
        for key in live:
            if key in failed:
                continue
            # one more decode step at this context, under the tracker: what the step itself allocates
            # (eager: the tracker sees tensors at dispatch, which a compiled graph hides)
            cache = caches[key]
            cache.length = context
            reset_cuda_peak(device)
            with prec.inference(device), LiveBytesTracker() as tracker:
                models[key](cont[:, :1], cache=cache, last_only=True)
                synchronize(device)
            cuda = cuda_memory_snapshot(device)  # on a GPU: the allocator's peak, weights and caches included
            state_vectors = info[key]["state_vectors"]
            info[key]["points"].append({
                "context": context, "batch": batch, "new_tokens": wl["new_tokens"], "chunk": wl["chunk"],
                "ttft_ms": _ms(ttft[key]), "itl_ms": _ms(itl[key]),
                "tokens_per_s": batch / (float(np.median(itl[key]))),
                "kv_cache_bytes": cache.nbytes(context + wl["new_tokens"]),
                "depth_state_bytes": state_vectors * batch * cfg.d_model * itemsize,
                "step_peak_bytes": tracker.peak, **cuda, "rounds": plan.record(),
            })
        del caches
    base_key = next((c.key for c in cells if is_baseline(c) and c.key in models and c.key not in failed), None)
    bandwidth = copy_bytes / min(copies) if copies else None
    act_bytes, param_bytes = prec.compute_itemsize, prec.param_itemsize
    for cell in cells:
        if cell.key not in models:
            continue
        if cell.key in failed:
            out[cell.key] = classify(failed[cell.key])
            continue
        m = info[cell.key]
        for p, bp in zip(m["points"], info[base_key]["points"] if base_key else [None] * len(m["points"])):
            if bp is None:
                continue
            plan = Rounds(wl["repeats"], wl.get("precision", 0.0))
            p[f"itl_ratio_vs_{BASELINE}"], p["itl_ratio_ci"] = _ratio(p["itl_ms"]["samples"], bp["itl_ms"]["samples"],
                                                                      wl["new_tokens"], plan)
            p[f"ttft_ratio_vs_{BASELINE}"], p["ttft_ratio_ci"] = _ratio(p["ttft_ms"]["samples"],
                                                                        bp["ttft_ms"]["samples"], 1, plan)
            p["step_extra_bytes"] = p["step_peak_bytes"] - bp["step_peak_bytes"]
            # bytes only: decode's extra FLOPs (~0.5 per byte moved) cannot outweigh its extra bytes;
            # a step reads the variant's own weights once too
            moved = (extra_bytes(m["residual_traffic"], info[base_key]["residual_traffic"], p["batch"], cfg.d_model,
                                 act_bytes) + (m["extra_params"] - info[base_key]["extra_params"]) * param_bytes)
            p["itl_roofline"] = roofline(bp["itl_ms"]["median"] / 1e3, moved, bandwidth)
        if bandwidth:
            m["bandwidth"] = {"bytes": copy_bytes, "best_bytes_per_s": bandwidth, "copies": len(copies)}
        out[cell.key] = ("ok", None, m)
    return out


def headline(m: dict) -> dict | None:
    """The point a table row shows: batch 1 (else the smallest), the longest context."""
    pts = m.get("points") or []
    if not pts:
        return None
    b = min(p["batch"] for p in pts)
    return max((p for p in pts if p["batch"] == b), key=lambda p: p["context"])


def _itl(m: dict):
    p = headline(m)
    return (p["itl_ms"]["median"], p["itl_ms"]["samples"]) if p else (None, None)


def _ratio_text(p: dict) -> str:
    r, ci = p.get(f"itl_ratio_vs_{BASELINE}"), p.get("itl_ratio_ci")
    if r is None:
        return "-"
    return f"{r:.3f}" + (f" [{ci[0]:.3f}–{ci[1]:.3f}]" if ci else "")


@register("decode")
class Decode(Workload):
    Params = Params
    order = 3
    positive = ("new_tokens", "repeats")
    timed_calls = True
    timed = True
    columns = (
        ("decode ms/token", lambda r: num(r["decode_ms"], ".2f")),
        ("× prenorm", lambda r: num(r["decode_ratio"], ".3f")),
        ("TTFT ms", lambda r: num(r["ttft_ms"], ".1f")),
    )
    compiles = True
    compare_metrics = {"decode_ms": (_itl, "{:.3f}")}
    metrics_schema = {"points": list, "params?": int, "state_vectors?": int, "bandwidth?": dict}
    unkeyed_defaults = {"precision": 0.0, "budget_s": 0.0}
    cost_columns = (("decode", "decode ×"),)

    def check(self, params, variant_names):
        check_rounds(self.name, params)
        for key in ("contexts", "batches"):
            v = getattr(params, key)
            if not isinstance(v, (list, tuple)) or not v or not all(
                    isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v) or len(set(v)) != len(v):
                raise ConfigError(f"workloads.{self.name}.{key} must be a list of distinct positive integers, "
                                  f"got {v!r}")
        for name in variant_names:
            if not variants.get(name).token_local:
                raise ConfigError(f"workloads.{self.name}: variant {name!r} mixes across tokens (token_local "
                                  "False); incremental decoding would need its own cache")

    def preflight(self, params, shapes):
        for name, cfg in shapes:
            need = max(params.contexts) + params.new_tokens
            if need > cfg.seq_len:
                raise ConfigError(f"workloads.{self.name}: the longest context {max(params.contexts)} + new_tokens "
                                  f"{params.new_tokens} = {need} positions exceed shapes[{name}].seq_len "
                                  f"{cfg.seq_len} (the learned position table)")

    def jobs(self, cells, todo):
        """Every variant of a (shape, precision, seed) in one process: its ratios need the
        baseline interleaved beside it."""
        groups: dict[tuple, list[Cell]] = defaultdict(list)
        for cell in cells:
            groups[(cell.shape_name, cell.compile, cell.precision, cell.seed)].append(cell)
        return [g for g in groups.values() if any(c.key in todo for c in g)]

    def run(self, cells, ctx, progress=None):
        return run_decode(cells, ctx, progress)

    def summary(self, metrics):
        p = headline(metrics[0]) if metrics else None
        return {"decode_ms": p and p["itl_ms"]["median"], "decode_ratio": p and p.get(f"itl_ratio_vs_{BASELINE}"),
                "ttft_ms": p and p["ttft_ms"]["median"], "decode_points": (metrics[0]["points"] if metrics else [])}

    def cost(self, records):
        p = headline(records[0]["metrics"]) if records else None
        return {"decode": p.get(f"itl_ratio_vs_{BASELINE}"), "decode_ci": p.get("itl_ratio_ci"),
                "decode_roofline": p.get("itl_roofline"),
                "decode_stopped": (p.get("rounds") or {}).get("stopped")} if p else {}

    def footnotes(self, metrics, rows):
        """The whole sweep, one line per (variant, batch, context): the table a reader of
        decode wants, under the summary."""
        if not metrics:
            return []
        lines = [f"Decode (the row: batch 1 at the longest context; × {BASELINE} = median of per-round ratios of "
                 "median inter-token latency [95% interval]; TTFT = prefill of the prompt; cache = KV cache at "
                 "context + new tokens; depth state = declared per-token bytes; step extra = measured peak of one "
                 f"decode step minus {BASELINE}'s):", "",
                 "| variant | batch | context | TTFT ms | ms/token p50 | p90 | p99 | × prenorm [95% CI] | tok/s | "
                 "KV cache MiB | depth state KiB | step extra KiB |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            for p in r.get("decode_points") or []:
                extra = p.get("step_extra_bytes")
                lines.append(
                    f"| {r['variant']} | {p['batch']} | {p['context']} | {p['ttft_ms']['median']:.1f} | "
                    f"{p['itl_ms']['median']:.2f} | {p['itl_ms']['p90']:.2f} | {p['itl_ms']['p99']:.2f} | "
                    f"{_ratio_text(p)} | {p['tokens_per_s']:,.0f} | {p['kv_cache_bytes'] / 2**20:.2f} | "
                    f"{p['depth_state_bytes'] / 1024:.1f} | {'-' if extra is None else f'{extra / 1024:.1f}'} |")
        # adaptive rounds, per (context, batch) point: one view each
        points = [{f"{p['context']}x{p['batch']}_rounds": p["rounds"]} for m in metrics for p in m.get("points", [])
                  if p.get("rounds")]
        views = tuple(dict.fromkeys(k.removesuffix("_rounds") for pt in points for k in pt))
        notes = rounds_notes(points, views)
        return lines + ([""] + [n.replace("Adaptive rounds", "Decode: adaptive rounds (per context x batch)")
                                for n in notes] if notes else [])
