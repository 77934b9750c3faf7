"""Where does a variant's extra time go? Profile one train step (or prefill, or one decode token)
of a variant and of prenorm at the same shape and print the ops whose self time differs most.

    python scripts/profile_overhead.py full-attnres --d-model 512 --depth 16 --heads 8 --batch 8
    python scripts/profile_overhead.py block-attnres --option block_size=4 --view prefill
    python scripts/profile_overhead.py block-attnres --option block_size=4 --view decode --batch 1

decode: 16 decode tokens after a prompt of --seq tokens in the KV cache (the cache rewound each call).
--compile MODE profiles the torch.compile'd step as the compiled cells run it (fullgraph, static
shapes, warmed to steady state first; decode with the static cache); inductor's fused C++ kernels
are named in the profile (cpp.enable_kernel_profile), so the table shows which fused kernels the
variant adds. Their names differ between graphs: read the variant's own kernels, not the Δ alone.

Self CPU time per op from torch.profiler, median-free (one profiled step after warm-up), so read
the shares, not the absolute milliseconds; `resbench run overhead` gives the timed ratios.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
import yaml
from tabulate import tabulate

from resbench.compiling import MODES, compile_model, steady
from resbench.model import KVCache, ModelConfig, build_model
from resbench.train import TrainConfig, make_optimizer, train_step


def step_fn(variant: str, options: dict, cfg: ModelConfig, batch: int, view: str, mode: str = "none"):
    model = build_model(cfg, variant, options, seed=0)
    run = compile_model(model, mode)
    fn = _step(model, run, cfg, batch, view, static=mode != "none")
    return steady({view: fn}, mode)[0][view]


def _step(model, run, cfg: ModelConfig, batch: int, view: str, static: bool):
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    if view == "prefill":
        def fn():
            with torch.no_grad():
                run(x)
        return fn
    if view == "decode":
        prompt = cfg.seq_len - 16
        cache = KVCache(cfg, batch, static=static)
        with torch.no_grad():
            model.prefill(x[:, :prompt], cache, forward=run)

        def fn():
            cache.length = prompt
            with torch.no_grad():
                for j in range(16):
                    run(x[:, j:j + 1], cache=cache, last_only=True)
        return fn
    opt = make_optimizer(model, TrainConfig())
    return lambda: train_step(run, opt, x, x, TrainConfig())


def kernel_kind(name: str) -> str:
    """A fused kernel's name without its graph and serial numbers (`graph_0_cpp_fused_add_mul_7`
    -> `cpp_fused_add_mul`), so the same fusion in two graphs shares a row."""
    if "cpp_fused" not in name:
        return name
    return re.sub(r"_\d+$", "", re.sub(r"^graph_\d+_", "", name))


def self_times(fn, warmup: int = 2) -> dict[str, float]:
    """Self CPU ms per op name (fused kernels: per kind) over one call."""
    for _ in range(warmup):
        fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    out: dict[str, float] = {}
    for e in prof.key_averages():
        out[kernel_kind(e.key)] = out.get(kernel_kind(e.key), 0.0) + e.self_cpu_time_total / 1e3
    return out


CATEGORIES = (("matmuls", lambda k: k in ("aten::mm", "aten::addmm", "aten::bmm")),
              ("fused kernels", lambda k: "cpp_fused" in k),
              ("attention", lambda k: "scaled_dot_product" in k))


def mean_times(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = set().union(*runs)
    return {k: sum(r.get(k, 0.0) for r in runs) / len(runs) for k in keys}


def per_round(base: list[dict[str, float]], var: list[dict[str, float]], variant: str) -> str:
    """Each round's self time by category, variant / prenorm: identical work (the same GEMMs)
    moving between rounds is the machine, not the variant."""
    def split(t):
        out = {name: sum(v for k, v in t.items() if test(k)) for name, test in CATEGORIES}
        out["other"] = sum(t.values()) - sum(out.values())
        out["total"] = sum(t.values())
        return out
    names = [n for n, _ in CATEGORIES] + ["other", "total"]
    rows = []
    for i, (b, v) in enumerate(zip(base, var)):
        sb, sv = split(b), split(v)
        rows.append([str(i), *(f"{sv[n]:.0f} / {sb[n]:.0f} = {sv[n] / sb[n]:.2f}" if sb[n] else f"{sv[n]:.0f} / 0"
                               for n in names)])
    return tabulate(rows, headers=["round", *(f"{n} ms ({variant} / prenorm)" for n in names)],
                    tablefmt="github", disable_numparse=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="variant option (YAML value)")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--view", choices=("train", "prefill", "decode"), default="train")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=1,
                    help="profile each step this many times, alternating the order; the table is the mean, "
                         "and a second table shows each round by category (default 1)")
    ap.add_argument("--compile", choices=MODES, default="none",
                    help="profile the torch.compile'd step in this mode (default none: eager)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.compile != "none":
        import torch._inductor.config as inductor_config
        inductor_config.cpp.enable_kernel_profile = True  # fused kernels as named profiler events
    options = dict(kv.split("=", 1) for kv in args.option)
    options = {k: yaml.safe_load(v) for k, v in options.items()}
    seq = args.seq + (16 if args.view == "decode" else 0)  # room for the decoded tokens' positions
    cfg = ModelConfig(d_model=args.d_model, depth=args.depth, n_heads=args.heads, seq_len=seq)
    fns = {"base": step_fn("prenorm", {}, cfg, args.batch, args.view, args.compile),
           "var": step_fn(args.variant, options, cfg, args.batch, args.view, args.compile)}
    # rounds alternate the order (A B, B A, ...) so a slow moment of the machine falls on both
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in fns}
    for r in range(args.rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            runs[name].append(self_times(fns[name], warmup=2 if r == 0 else 0))
    base, var = (mean_times(runs[name]) for name in fns)
    tb, tv = sum(base.values()), sum(var.values())
    rows = sorted(((k, base.get(k, 0.0), var.get(k, 0.0)) for k in set(base) | set(var)),
                  key=lambda r: -abs(r[2] - r[1]))[: args.top]
    what = (f"16 decode tokens after a {args.seq}-token prompt" if args.view == "decode"
            else f"{args.view} step, seq {cfg.seq_len}")
    what += "" if args.compile == "none" else f", torch.compile {args.compile}"
    calls = "one call" if args.rounds == 1 else f"mean of {args.rounds} calls, alternating"
    print(f"{what}, d {cfg.d_model}, L {cfg.n_layers}, batch {args.batch}, "
          f"{args.threads} threads: prenorm {tb:.0f} ms, {args.variant} {tv:.0f} ms self CPU "
          f"({tv / tb:.3f}x; profiled, {calls})")
    print(tabulate([(k, f"{b:.1f}", f"{v:.1f}", f"{v - b:+.1f}", f"{(v - b) / tb:+.1%}") for k, b, v in rows],
                   headers=["op", "prenorm ms", f"{args.variant} ms", "Δ ms", "Δ / prenorm step"],
                   tablefmt="github", disable_numparse=True))
    if args.rounds > 1:
        print()
        print(per_round(runs["base"], runs["var"], args.variant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
