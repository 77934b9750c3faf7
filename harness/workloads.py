"""The three measurements, as run inside a cell's own process (see worker.py).

throughput: train step (fwd + bwd + AdamW) and no-grad prefill, every variant of a (shape, seed)
            in one process, repeats interleaved A B C A B C so ratios see the same machine state.
memory:     peak live bytes per view (inference prefill, train step), with the counters labelled.
loss:       K steps of byte-level LM on the corpus, held-out validation loss, curve kept.
"""
from __future__ import annotations

import math

import torch

from .config import BASELINE, Cell
from .data import batch_at, load_corpus, val_batches
from .dynamics import probe
from .errors import classify
from .measure import (
    LiveBytesTracker,
    NvmlSampler,
    count_flops,
    cuda_memory_snapshot,
    device_peak_flops,
    gemm_probe,
    matmul_probe,
    mfu,
    peak_rss_bytes,
    reset_cuda_peak,
    rss_bytes,
    summarize,
    synchronize,
    time_interleaved,
)
from .model import ModelConfig, build_model, count_params
from .precision import get as get_precision
from .stats import median_ci
from .train import TrainConfig, lm_loss, make_optimizer, train, train_step


def _model(cell: Cell):
    cfg = ModelConfig(**cell.shape)
    model = build_model(cfg, cell.variant, cell.options, cell.seed, cell.device, get_precision(cell.precision).param_dtype)
    return cfg, model


def gemm_shapes(cfg: ModelConfig, tokens: int) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of the shared model's matrix products in a step: the forward ones, and the
    weight gradients (k = tokens) of the widest layers."""
    d, h, V, M = cfg.d_model, cfg.d_hidden, cfg.vocab_size, tokens
    return {"qkv": (M, d, 3 * d), "attn-out": (M, d, d), "mlp-up": (M, d, h), "mlp-down": (M, h, d),
            "head": (M, d, V), "grad mlp-up": (d, M, h), "grad mlp-down": (h, M, d)}


def _fixed_batch(cfg: ModelConfig, batch: int, seed: int, device: str):
    """Token content does not change the work; a fixed random batch keeps data loading out of timing."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len + 1), generator=g)
    return x[:, :-1].to(device), x[:, 1:].to(device)


def _static_info(cell: Cell, cfg: ModelConfig, model) -> dict:
    return {
        "params": count_params(model),
        "extra_params": count_params(model.residual),
        "declared_extra_params": model.residual.declared_extra_params(),
        "state_vectors": model.residual.state_vectors(),
        "n_layers": cfg.n_layers,
        "tokens_per_step": cell.params["batch"] * cfg.seq_len,
    }


def run_throughput(cells: list[Cell], progress=None) -> dict[str, tuple[str, str | None, dict]]:
    """All cells share shape, seed and workload params. Returns {key: (status, message, metrics)}.
    ``progress(done, total)`` is called after every timed call (warm-up included)."""
    first = cells[0]
    device, wl = first.device, first.params
    prec = get_precision(first.precision)
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
    train_fns, prefill_fns, info = {}, {}, {}
    for cell in cells:
        try:
            cfg, model = _model(cell)
            x, y = _fixed_batch(cfg, wl["batch"], cell.seed, device)
            opt = make_optimizer(model, TrainConfig())
            scaler = prec.scaler(device)

            def train_fn(model=model, opt=opt, x=x, y=y, scaler=scaler):
                return train_step(model, opt, x, y, TrainConfig(), prec, scaler)

            def prefill_fn(model=model, x=x):
                with torch.no_grad(), prec.context(device):
                    return model(x)

            # counting runs each once: this is also the first warm-up call and catches OOM early
            flops_train = count_flops(train_fn)
            flops_prefill = count_flops(prefill_fn)
            info[cell.key] = {**_static_info(cell, cfg, model), "train_flops": flops_train,
                              "prefill_flops": flops_prefill, "peak_flops_source": peak_source}
            train_fns[cell.key], prefill_fns[cell.key] = train_fn, prefill_fn
        except Exception as exc:  # noqa: BLE001 - one bad variant must not stop the group
            out[cell.key] = classify(exc)
    if train_fns:
        # cell keys are hex digests: no clash with the probes' names
        timed_train = {**train_fns, **{name: fn for name, ((fn, _), _) in probes.items()}}
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

        times = {"train": time_interleaved(timed_train, device, wl["warmup"], wl["repeats"], tick, drop),
                 "prefill": time_interleaved({k: f for k, f in prefill_fns.items() if k not in failed}, device,
                                             wl["warmup"], wl["repeats"], tick, drop)}
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
        base_key = next((c.key for c in cells if c.variant == BASELINE and c.key in train_fns), None)
        if base_key in failed:
            base_key = None  # no ratios against a baseline that did not finish
        for cell in cells:
            if cell.key not in train_fns or cell.key in failed:
                continue
            m = info[cell.key]
            m["peak_flops"] = peak
            if probe_info:
                m["peak_probes"] = probe_info
            for view in ("train", "prefill"):
                samples = times[view][cell.key]
                s = summarize(samples)
                m[f"{view}_ms"] = {k: (v * 1e3 if k != "n" else v) for k, v in s.items()}
                m[f"{view}_ms"]["samples"] = [t * 1e3 for t in samples]  # raw, for compare's test
                m[f"{view}_tokens_per_s"] = m["tokens_per_step"] / s["median"]
                m[f"{view}_mfu"] = mfu(m[f"{view}_flops"], s["median"], peak)
                if base_key is not None:
                    # median of per-round ratios (each pair ran back to back, so slow drift
                    # cancels) and its distribution-free 95% interval
                    ratios = [a / b for a, b in zip(samples, times[view][base_key])]
                    med, lo, hi = median_ci(ratios)
                    m[f"{view}_ratio_vs_{BASELINE}"] = med
                    m[f"{view}_ratio_ci"] = [lo, hi] if math.isfinite(lo) else None
            out[cell.key] = ("ok", None, m)
    return out


def _param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _optimizer_bytes(opt) -> int:
    return sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
               if isinstance(t, torch.Tensor))


def _tracked(device: str, fn) -> dict:
    """Run fn once under every counter this device has; bytes are live-tensor peaks above entry."""
    reset_cuda_peak(device)
    with NvmlSampler(device) as nvml, LiveBytesTracker() as tracker:
        fn()
        synchronize(device)
    return {"tracker_peak_bytes": tracker.peak, **cuda_memory_snapshot(device),
            "nvml_peak_bytes": nvml.peak_bytes, "nvml_status": nvml.status}


def run_memory(cell: Cell) -> tuple[str, str | None, dict]:
    cfg, model = _model(cell)
    x, y = _fixed_batch(cfg, cell.params["batch"], cell.seed, cell.device)
    params = _param_bytes(model)
    m = _static_info(cell, cfg, model)
    m["param_bytes"] = params
    prec = get_precision(cell.precision)

    def prefill():
        with torch.no_grad(), prec.context(cell.device):
            model(x)

    inf = _tracked(cell.device, prefill)
    inf["peak_bytes"] = params + inf["tracker_peak_bytes"]  # the tracker sees only what fn allocates
    inf["rss_peak_bytes"] = peak_rss_bytes()
    m["inference"] = inf

    opt = make_optimizer(model, TrainConfig())
    scaler = prec.scaler(cell.device)
    train_step(model, opt, x, y, TrainConfig(), prec, scaler)  # creates AdamW state: steady-state step follows
    opt.zero_grad(set_to_none=True)
    static = params + _optimizer_bytes(opt)
    tr = _tracked(cell.device, lambda: train_step(model, opt, x, y, TrainConfig(), prec, scaler))
    tr["peak_bytes"] = static + tr["tracker_peak_bytes"]
    tr["static_bytes"] = static
    tr["rss_peak_bytes"] = peak_rss_bytes()
    m["train"] = tr
    m["rss_bytes"] = rss_bytes()
    return "ok", None, m


def run_loss(cell: Cell) -> tuple[str, str | None, dict]:
    p = cell.params
    corpus = load_corpus(p["corpus"], max_bytes=p["corpus_bytes"])
    cfg, model = _model(cell)
    if corpus.vocab_size > cfg.vocab_size:
        return "error", f"corpus vocab {corpus.vocab_size} > shape vocab_size {cfg.vocab_size}", {}
    tcfg = TrainConfig(steps=p["steps"], batch=p["batch"], lr=p["lr"], weight_decay=p["weight_decay"],
                       warmup=p["warmup"], schedule=p["schedule"], eval_every=p["eval_every"],
                       eval_batches=p["eval_batches"])
    x, y = batch_at(corpus.train, 0, tcfg.batch, cfg.seq_len, cell.seed)
    x, y = x.to(cell.device), y.to(cell.device)
    # FLOPs of fwd + bwd (what FlopCounterMode sees of a step), counted without an optimizer
    # step so the training that follows is untouched.
    prec = get_precision(cell.precision)
    flops = count_flops(lambda: lm_loss(model, x, y, prec).backward())
    model.zero_grad(set_to_none=True)
    result = train(model, corpus, tcfg, seed=cell.seed, device=cell.device, precision=prec)
    m = {**_static_info(cell, cfg, model), **result, "corpus": corpus.describe(),
         "flops_per_step": flops, "train_flops": flops * tcfg.steps}
    if p.get("dynamics"):
        vx, vy = val_batches(corpus, tcfg.batch, cfg.seq_len, 1)[0]
        m["dynamics"] = probe(model, vx.to(cell.device), vy.to(cell.device))
    return "ok", None, m
