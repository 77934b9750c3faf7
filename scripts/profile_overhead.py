"""Where does a variant's extra time go? Profile one train step (or prefill, or one decode token)
of a variant and of prenorm at the same shape and print the ops whose self time differs most.

    python scripts/profile_overhead.py full-attnres --d-model 512 --blocks 16 --heads 8 --batch 8
    python scripts/profile_overhead.py block-attnres --option block_size=4 --view prefill
    python scripts/profile_overhead.py block-attnres --option block_size=4 --view decode --batch 1

decode: 16 decode tokens after a prompt of --seq tokens in the KV cache (the cache rewound each call).

Self CPU time per op from torch.profiler, median-free (one profiled step after warm-up), so read
the shares, not the absolute milliseconds; `resbench run overhead` gives the timed ratios.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml
from tabulate import tabulate

from resbench.model import KVCache, ModelConfig, build_model
from resbench.train import TrainConfig, make_optimizer, train_step


def step_fn(variant: str, options: dict, cfg: ModelConfig, batch: int, view: str):
    model = build_model(cfg, variant, options, seed=0)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    if view == "prefill":
        def fn():
            with torch.no_grad():
                model(x)
        return fn
    if view == "decode":
        prompt = cfg.seq_len - 16
        cache = KVCache(cfg, batch)
        with torch.no_grad():
            model.prefill(x[:, :prompt], cache)

        def fn():
            cache.length = prompt
            with torch.no_grad():
                for j in range(16):
                    model(x[:, j:j + 1], cache=cache, last_only=True)
        return fn
    opt = make_optimizer(model, TrainConfig())
    return lambda: train_step(model, opt, x, x, TrainConfig())


def self_times(fn, warmup: int = 2) -> dict[str, float]:
    """Self CPU ms per op name over one call."""
    for _ in range(warmup):
        fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="variant option (YAML value)")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--view", choices=("train", "prefill", "decode"), default="train")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    options = dict(kv.split("=", 1) for kv in args.option)
    options = {k: yaml.safe_load(v) for k, v in options.items()}
    seq = args.seq + (16 if args.view == "decode" else 0)  # room for the decoded tokens' positions
    cfg = ModelConfig(d_model=args.d_model, n_blocks=args.blocks, n_heads=args.heads, seq_len=seq)
    base = self_times(step_fn("prenorm", {}, cfg, args.batch, args.view))
    var = self_times(step_fn(args.variant, options, cfg, args.batch, args.view))
    tb, tv = sum(base.values()), sum(var.values())
    rows = sorted(((k, base.get(k, 0.0), var.get(k, 0.0)) for k in set(base) | set(var)),
                  key=lambda r: -abs(r[2] - r[1]))[: args.top]
    what = (f"16 decode tokens after a {args.seq}-token prompt" if args.view == "decode"
            else f"{args.view} step, seq {cfg.seq_len}")
    print(f"{what}, d {cfg.d_model}, L {cfg.n_layers}, batch {args.batch}, "
          f"{args.threads} threads: prenorm {tb:.0f} ms, {args.variant} {tv:.0f} ms self CPU "
          f"({tv / tb:.3f}x; profiled, one call)")
    print(tabulate([(k, f"{b:.1f}", f"{v:.1f}", f"{v - b:+.1f}", f"{(v - b) / tb:+.1%}") for k, b, v in rows],
                   headers=["op", "prenorm ms", f"{args.variant} ms", "Δ ms", "Δ / prenorm step"],
                   tablefmt="github", disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
