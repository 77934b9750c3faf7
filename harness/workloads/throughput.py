"""throughput: train step (fwd + bwd + AdamW) and no-grad prefill, every variant of a (shape,
precision, seed) in one process, repeats interleaved A B C A B C so ratios see the same machine
state; GEMM probes at the model's shapes, timed in the same rounds, give the CPU peak for MFU."""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass


from ..cells import BASELINE, Cell, is_baseline
from ..compiling import compile_model, steady
from ..errors import ConfigError, classify
from ..measure import count_flops, device_peak_flops, gemm_probe, matmul_probe, mfu, summarize, time_interleaved
from ..model import ModelConfig
from ..measure.rounds import Rounds, paired_ratio
from ..measure.roofline import TRAIN_PASSES, copy_probe, extra_bytes, roofline
from ..train import TrainConfig, make_optimizer, train_step
from .base import TIMING_SCHEMA, Workload, check_rounds, fmt_ms, median_present, num, register, rounds_notes
from .common import RunContext, fixed_batch, model_of, static_info


@dataclass(frozen=True)
class Params:
    batch: int = 8
    warmup: int = 2
    repeats: int = 7
    # "shape": every variant of a (shape, seed) in one process, interleaved. "pair": each variant
    # in its own process with the baseline only, for shapes where all models (with gradients and
    # AdamW state) do not fit in memory at once; ratios are then per pair.
    group: str = "shape"
    # adaptive rounds (harness/measure/rounds.py): with precision > 0, `repeats` is the most rounds, and
    # they stop once every ratio's 95% interval is within ±precision (relative), or at budget_s
    precision: float = 0.0
    budget_s: float = 0.0


GROUPS = ("shape", "pair")
# The GEMM probes run the same work in every round: an interquartile spread (q3 / q1, the median
# over the probes of one timing process) beyond this means the machine itself changed speed while
# it was being timed (another job, frequency steps), not one outlier round: ratios are then
# unreliable. A quiet run here keeps it near 1.1; the quick suite under load reached 2-10.
UNSTABLE_PROBE_SPREAD = 1.25


def gemm_shapes(cfg: ModelConfig, tokens: int) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of the shared model's matrix products in a step: the forward ones, and the
    weight gradients (k = tokens) of the widest layers."""
    d, h, V, M = cfg.d_model, cfg.d_hidden, cfg.vocab_size, tokens
    return {"qkv": (M, d, 3 * d), "attn-out": (M, d, d), "mlp-up": (M, d, h), "mlp-down": (M, h, d),
            "head": (M, d, V), "grad mlp-up": (d, M, h), "grad mlp-down": (h, M, d)}


def run_throughput(cells: list[Cell], ctx: RunContext, progress=None) -> dict[str, tuple[str, str | None, dict]]:
    """All cells share shape, seed and workload params. Returns {key: (status, message, metrics)}.
    ``progress(done, total)`` is called after every timed call (warm-up included)."""
    first = cells[0]
    device, wl, prec = ctx.device, first.params, ctx.precision
    out: dict[str, tuple[str, str | None, dict]] = {}
    peak = device_peak_flops(device, prec.compute_dtype)
    peak_source, probes = "datasheet (dense)", {}
    if peak is None:
        # Timed inside the train rounds (a peak measured once, up front, sees another machine
        # state than the steps do on a shared host), at the model's own GEMM shapes plus a large
        # square one; the peak is the best rate any of them reached in any round, so no step
        # doing these products (and more) can exceed it.
        cfg0 = ModelConfig(**first.shape)
        shapes = {**gemm_shapes(cfg0, wl["batch"] * cfg0.seq_len)}
        probes = {f"probe {name}": (gemm_probe(*mkn, prec.compute_dtype, device), mkn) for name, mkn in shapes.items()}
        fn, flops = matmul_probe(prec.compute_dtype, device, target_s=0.05)
        probes["probe square"] = ((fn, flops), None)
        peak_source = (f"best {prec.compute_dtype} GEMM rate over {len(probes)} probes (the model's shapes and a "
                       "square one), fastest call of each in the train rounds")
    # the memory bandwidth, timed in the same rounds as the GEMM probes: the roofline's other half
    copy_fn, copy_bytes = copy_probe(device)
    rounds = {view: Rounds(wl["repeats"], wl.get("precision", 0.0), wl.get("budget_s", 0.0))
              for view in ("train", "prefill")}
    train_fns, prefill_fns, info = {}, {}, {}
    for cell in cells:
        try:
            cfg, model = model_of(cell, ctx)
            x, y = fixed_batch(cfg, wl["batch"], cell.seed, device)
            opt = make_optimizer(model, TrainConfig())
            scaler = ctx.scaler()

            def train_fn(model=model, opt=opt, x=x, y=y, scaler=scaler):
                return train_step(model, opt, x, y, TrainConfig(), prec, scaler)

            def prefill_fn(model=model, x=x):
                with prec.inference(device):
                    return model(x)

            # counting runs each once, eager (the same math compiled or not; a compiled graph's
            # fused kernels are invisible to the counter): also a warm-up that catches OOM early
            flops_train = count_flops(train_fn)
            flops_prefill = count_flops(prefill_fn)
            run = compile_model(model, ctx.compile)
            fns, compiled = steady({"train": lambda run=run, f=train_fn: f(run),
                                    "prefill": lambda run=run, f=prefill_fn: f(run)}, ctx.compile)
            info[cell.key] = {**static_info(cell, cfg, model), "train_flops": flops_train,
                              "prefill_flops": flops_prefill, "peak_flops_source": peak_source,
                              **({"compile": compiled} if compiled else {})}
            train_fns[cell.key], prefill_fns[cell.key] = fns["train"], fns["prefill"]
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - one bad variant must not stop the group
            out[cell.key] = classify(exc)
    if train_fns:
        # cell keys are hex digests: no clash with the probes' names
        timed_train = {**train_fns, **{name: fn for name, ((fn, _), _) in probes.items()}, "probe copy": copy_fn}
        calls = (len(timed_train) + len(prefill_fns)) * (wl["warmup"] + wl["repeats"])
        done = 0

        def tick(n):
            nonlocal done
            done += n
            if progress is not None:
                progress(done, calls)

        failed: dict[str, Exception] = {}  # a variant that fails mid-way leaves; the others finish

        def drop(name, exc):
            failed.setdefault(name, exc)

        base_key = next((c.key for c in cells if is_baseline(c) and c.key in train_fns), None)
        others = [k for k in train_fns if k != base_key]

        def rule(view):  # adaptive rounds need the baseline's ratios to look at, and each one's bound
            bounds = {c.key: c.params.get("bounds", {}).get(view) for c in cells}
            return rounds[view].rule(base_key, others, bounds) if base_key is not None else None

        times = {"train": time_interleaved(timed_train, device, wl["warmup"], wl["repeats"], tick, drop, rule("train"))}
        times["prefill"] = time_interleaved({k: f for k, f in prefill_fns.items() if k not in failed}, device,
                                            wl["warmup"], wl["repeats"], tick, drop, rule("prefill"))
        for key, exc in failed.items():
            if key in train_fns:
                out[key] = classify(exc)
        probe_info = {}
        for name, ((_, flops), mkn) in probes.items():
            samples = times["train"].pop(name)
            if name in failed or not samples:
                continue
            probe_info[name.removeprefix("probe ")] = {"mkn": mkn, "flops": flops, "best_flops_per_s": flops / min(samples),
                                                       "ms": {k: (v * 1e3 if k != "n" else v) for k, v in summarize(samples).items()}}
        if probes:
            peak = max(p["best_flops_per_s"] for p in probe_info.values())
        copies = times["train"].pop("probe copy", [])
        bandwidth = {"bytes": copy_bytes, "best_bytes_per_s": copy_bytes / min(copies) if copies else None,
                     "ms": {k: (v * 1e3 if k != "n" else v) for k, v in summarize(copies).items()} if copies else None,
                     "source": "fastest copy of 256 MiB (GPU: 1 GiB) per round, read + written, in the train rounds"}
        if base_key in failed:
            base_key = None  # no ratios against a baseline that did not finish
        for cell in cells:
            if cell.key not in train_fns or cell.key in failed:
                continue
            m = info[cell.key]
            m["peak_flops"] = peak
            m["bandwidth"] = bandwidth
            if probe_info:
                m["peak_probes"] = probe_info
            for view in ("train", "prefill"):
                samples = times[view][cell.key]
                s = summarize(samples)
                m[f"{view}_ms"] = {k: (v * 1e3 if k != "n" else v) for k, v in s.items()}
                m[f"{view}_ms"]["samples"] = [t * 1e3 for t in samples]  # raw, for compare's test
                m[f"{view}_tokens_per_s"] = m["tokens_per_step"] / s["median"]
                m[f"{view}_mfu"] = mfu(m[f"{view}_flops"], s["median"], peak)
                m[f"{view}_rounds"] = rounds[view].record()
                if base_key is not None:
                    r = paired_ratio(samples, times[view][base_key], rounds[view])
                    m[f"{view}_ratio_vs_{BASELINE}"], m[f"{view}_ratio_ci"] = r["median"], r["ci"]
                    m[f"{view}_roofline"] = _roofline(view, m, info[base_key], times[view][base_key], bandwidth,
                                                      peak, prec.compute_itemsize)
            out[cell.key] = ("ok", None, m)
    return out


def _roofline(view: str, m: dict, base: dict, base_samples: list[float], bandwidth: dict, peak: float | None,
              itemsize: int) -> float | None:
    """The variant's roofline ×: the baseline's median step plus the variant's extra residual
    bytes over the copy probe's bandwidth and its extra counted FLOPs over the GEMM peak."""
    if bandwidth["best_bytes_per_s"] is None:
        return None
    moved = extra_bytes(m["residual_traffic"], base["residual_traffic"], m["tokens_per_step"], m["d_model"], itemsize,
                        TRAIN_PASSES if view == "train" else 1)
    flops = m[f"{view}_flops"] - base[f"{view}_flops"]
    return roofline(statistics.median(base_samples), moved, bandwidth["best_bytes_per_s"],
                    flops, peak)


def _timing(ms: dict | None):
    if not ms:
        return None, None
    samples = ms.get("samples") or ms.get("samples_ms")  # raw repeats: records since 5b4b198
    return ms.get("median"), (samples if samples and len(samples) >= 2 else None)


def _pairs(group: list[Cell], todo: set[str]) -> list[list[Cell]]:
    base = [c for c in group if is_baseline(c)][:1]
    others = [c for c in group if c not in base]
    pairs = [base + [c] for c in others if c.key in todo]
    if base and base[0].key in todo and not pairs:  # only the baseline is missing: any partner will do
        pairs = [base + others[:1]]
    return pairs


@register("throughput")
class Throughput(Workload):
    Params = Params
    order = 0
    positive = ("batch", "repeats")
    choices = {"group": GROUPS}
    unkeyed_defaults = {"precision": 0.0, "budget_s": 0.0}
    timed_calls = True
    timed = True
    columns = (
        ("train ms [min–max]", lambda r: fmt_ms(r["train_ms"])),
        ("train tok/s", lambda r: num(r["train_tokens_per_s"], ",.0f")),
        ("× prenorm", lambda r: num(r["train_ratio"], ".3f")),
        ("prefill ms [min–max]", lambda r: fmt_ms(r["prefill_ms"])),
        ("× prenorm", lambda r: num(r["prefill_ratio"], ".3f")),
        ("MFU train", lambda r: num(r["train_mfu"], ".1%")),
    )
    cost_columns = (("train", "train ×"), ("prefill", "prefill ×"))
    compiles = True
    compare_metrics = {
        "train_ms": (lambda m: _timing(m.get("train_ms")), "{:.2f}"),
        "prefill_ms": (lambda m: _timing(m.get("prefill_ms")), "{:.2f}"),
    }
    metrics_schema = {
        "train_ms": TIMING_SCHEMA, "prefill_ms": TIMING_SCHEMA,
        "train_tokens_per_s": float, "prefill_tokens_per_s?": float, "peak_flops": float, "peak_flops_source": str,
        "train_mfu": (float, None), "prefill_mfu?": (float, None), "peak_probes?": dict, "params?": int,
        "state_vectors?": int, f"train_ratio_vs_{BASELINE}?": (float, None),
        f"prefill_ratio_vs_{BASELINE}?": (float, None), "train_ratio_ci?": (list, None),
        "prefill_ratio_ci?": (list, None), "compile?": (dict, None), "train_rounds?": dict,
        "prefill_rounds?": dict, "bandwidth?": dict, "train_roofline?": (float, None),
        "prefill_roofline?": (float, None), "residual_traffic?": int,
    }

    def check(self, params, variant_names):
        check_rounds(self.name, params)
        if params.group == "pair" and BASELINE not in variant_names:
            raise ConfigError(f"workloads.{self.name}.group 'pair' times every variant against {BASELINE!r}; "
                              f"add {BASELINE!r} to variants")

    def jobs(self, cells, todo):
        """A group reruns whole when any of its cells is unfinished: its ratios need the baseline
        interleaved in the same process. With group "pair" a group is split into (baseline,
        variant) pairs."""
        groups: dict[tuple, list[Cell]] = defaultdict(list)
        for cell in cells:
            groups[(cell.shape_name, cell.compile, cell.precision, cell.seed)].append(cell)
        jobs = []
        for group in groups.values():
            if group[0].params.get("group", "shape") == "pair":
                jobs += _pairs(group, todo)
            elif any(c.key in todo for c in group):
                jobs.append(group)
        return jobs

    def run(self, cells, ctx, progress=None):
        return run_throughput(cells, ctx, progress)

    def summary(self, metrics):
        return {
            "train_ms": metrics[0]["train_ms"] if metrics else None,
            "train_tokens_per_s": median_present(m["train_tokens_per_s"] for m in metrics),
            "train_ratio": median_present(m.get(f"train_ratio_vs_{BASELINE}") for m in metrics),
            "prefill_ms": metrics[0]["prefill_ms"] if metrics else None,
            "prefill_ratio": median_present(m.get(f"prefill_ratio_vs_{BASELINE}") for m in metrics),
            "train_mfu": median_present(m["train_mfu"] for m in metrics),
            "compile": metrics[0].get("compile") if metrics else None,
        }

    def footnotes(self, metrics, rows):
        if not metrics:
            return []
        lo, hi = min(m["peak_flops"] for m in metrics) / 1e9, max(m["peak_flops"] for m in metrics) / 1e9
        against = f"{lo:,.1f} GFLOP/s" if hi - lo < 0.05 else f"{lo:,.1f}–{hi:,.1f} GFLOP/s (per timing process)"
        notes = [f"MFU against {against} ({metrics[0]['peak_flops_source']}); "
                 f"× {BASELINE} = median of per-round ratios, repeats interleaved in one process."]
        notes += rounds_notes(metrics, ("train", "prefill"))
        compiled = [(r["variant"], r["compile"]) for r in rows if r.get("compile")]
        if compiled:
            notes.append(f"torch.compile ({compiled[0][1]['mode']}, fullgraph; AdamW and the loss stay eager), "
                         "seconds of the warm-up calls that compiled, train + prefill, excluded from the times: "
                         + ", ".join(f"{v} {c['train']['compile_s']:.0f} + {c['prefill']['compile_s']:.0f}"
                                     for v, c in compiled) + ".")
        return notes

    def warning(self, records):
        """Why these timings cannot be trusted, or None (see UNSTABLE_PROBE_SPREAD)."""
        worst, where = 1.0, None
        for r in records:
            probes = (r.get("metrics") or {}).get("peak_probes") or {}
            spreads = sorted(p["ms"]["q3"] / p["ms"]["q1"] for p in probes.values() if (p.get("ms") or {}).get("q1"))
            if spreads and spreads[len(spreads) // 2] > worst:
                worst, where = spreads[len(spreads) // 2], r["cell"]["label"]
        if worst <= UNSTABLE_PROBE_SPREAD:
            return None
        return (f"the machine is unstable: the fixed GEMM probes timed beside {where} spread {worst:.2f}x between "
                "their quartiles across rounds; timings, ratios and MFU in this table are not reliable. "
                "Rerun on a quiet machine.")

    def machine_peak(self, metrics):
        measured = str(metrics.get("peak_flops_source", "")).startswith("measured")
        return metrics.get("peak_flops") if measured else None

    def cost(self, records):
        tp = [r["metrics"] for r in records]
        return {"train": median_present(t.get(f"train_ratio_vs_{BASELINE}") for t in tp),
                "prefill": median_present(t.get(f"prefill_ratio_vs_{BASELINE}") for t in tp),
                # the interval of a single seed's run (several seeds: the first one's)
                "train_ci": next((t.get("train_ratio_ci") for t in tp), None),
                "prefill_ci": next((t.get("prefill_ratio_ci") for t in tp), None),
                "train_roofline": median_present(t.get("train_roofline") for t in tp),
                "prefill_roofline": median_present(t.get("prefill_roofline") for t in tp),
                # why its rounds ended: an interval left straddling a bound is unresolved *at budget*
                "train_stopped": next(((t.get("train_rounds") or {}).get("stopped") for t in tp), None),
                "prefill_stopped": next(((t.get("prefill_rounds") or {}).get("stopped") for t in tp), None),
                "train_mfu": median_present(t.get("train_mfu") for t in tp),
                "prefill_mfu": median_present(t.get("prefill_mfu") for t in tp),
                # absolute medians: the baseline's eager vs compiled step (a footnote, not a column)
                "train_ms": median_present((t.get("train_ms") or {}).get("median") for t in tp),
                "prefill_ms": median_present((t.get("prefill_ms") or {}).get("median") for t in tp)}
