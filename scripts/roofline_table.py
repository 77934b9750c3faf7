"""The roofline × of each variant at a paper-like shape on a datasheet GPU, per regime: what a
perfect implementation of each variant's equations would cost over PreNorm's, from the variant's
declared residual traffic and mixing FLOPs alone (no measurement; docs/MEASURING.md, "Roofline ×").

    python scripts/roofline_table.py                    # d 4096, 32 blocks, T 4096, H100 SXM, bf16
    python scripts/roofline_table.py --d-model 1024 --depth 12

PreNorm's own time in each regime is its roofline too: a train step or prefill is compute-bound
(FLOPs / peak), a decode step reads every weight and the KV cache once per step (bytes /
bandwidth) unless the batch makes it compute-bound. A measured run (`resbench run overhead`)
puts the machine's own measured bandwidth and peak in place of the datasheet's.
"""
from __future__ import annotations

import argparse

import torch
from tabulate import tabulate

from resbench import variants
from resbench.measure.roofline import TRAIN_PASSES, extra_bytes
from resbench.model import ModelConfig, step_flops

# NVIDIA H100 SXM5 datasheet: HBM3 bandwidth, dense BF16 tensor-core peak
DATASHEETS = {"h100-sxm": (3.35e12, 989.5e12)}
VARIANTS = [("highway", {}), ("densenet", {}), ("full-attnres", {}), ("block-attnres", {"n_blocks": 8}),
            ("block-attnres", {"n_blocks": 8, "two_phase": True}), ("hc", {}), ("mhc", {})]


def regimes(cfg: ModelConfig, batch: int, bandwidth: float, peak: float, itemsize: int):
    """{regime: (tokens per step, the baseline's step seconds)} at its roofline."""
    T, d = cfg.seq_len, cfg.d_model
    weights = (cfg.depth * (4 * d * d + 2 * d * cfg.d_hidden) + 2 * d * cfg.vocab_size) * itemsize
    out = {"train": (batch * T, step_flops(cfg, 0, batch * T, True) / peak),
           "prefill": (batch * T, step_flops(cfg, 0, batch * T, False) / peak)}
    for b in (1, 64):  # one new token per sequence against a context of T
        kv = 2 * cfg.depth * b * T * d * itemsize
        flops = b * (cfg.depth * (8 * d * d + 4 * d * cfg.d_hidden + 4 * T * d) + 2 * d * cfg.vocab_size)
        out[f"decode b{b}"] = (b, max((weights + kv) / bandwidth, flops / peak))
    return out


def table(args) -> str:
    cfg = ModelConfig(d_model=args.d_model, depth=args.depth, n_heads=args.heads, seq_len=args.seq_len,
                      vocab_size=args.vocab)
    bandwidth, peak = DATASHEETS[args.gpu]
    with torch.device("meta"):
        base = variants.build("prenorm", cfg.d_model, cfg.n_layers, {})
        built = [(name, opts, variants.build(name, cfg.d_model, cfg.n_layers, opts)) for name, opts in VARIANTS]
    reg = regimes(cfg, args.batch, bandwidth, peak, 2)
    rows = []
    for name, opts, res in built:
        label = name + "".join(f" {k}={v}" for k, v in opts.items())
        row = [label, res.residual_traffic() - base.residual_traffic()]
        for regime, (tokens, base_s) in reg.items():
            passes = TRAIN_PASSES if regime == "train" else 1
            moved = extra_bytes(res.residual_traffic(), base.residual_traffic(), tokens, cfg.d_model, 2, passes)
            if regime.startswith("decode"):  # a decode step also reads the variant's own weights once
                moved += (res.declared_extra_params() - base.declared_extra_params()) * 2
            flops = (res.mixing_flops() - base.mixing_flops()) * tokens * passes
            row.append(f"{(base_s + moved / bandwidth + flops / peak) / base_s:.3f}")
        rows.append(row)
    head = (f"d {cfg.d_model}, {cfg.depth} blocks (L = {cfg.n_layers}), T {cfg.seq_len}, batch {args.batch} "
            f"(decode: context T), bf16, {args.gpu}: {bandwidth / 1e12:.2f} TB/s, {peak / 1e12:.1f} TFLOP/s")
    return head + "\n\n" + tabulate(rows, headers=["variant", "extra d-vectors / token", *reg], tablefmt="github",
                                    disable_numparse=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=4096, help="model width d (default 4096)")
    p.add_argument("--depth", type=int, default=32, help="transformer blocks, L = 2x sublayers (default 32)")
    p.add_argument("--heads", type=int, default=32, help="attention heads (default 32)")
    p.add_argument("--seq-len", type=int, default=4096, help="sequence length; decode's context (default 4096)")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size (default 32000)")
    p.add_argument("--batch", type=int, default=1, help="sequences per train step or prefill (default 1)")
    p.add_argument("--gpu", choices=sorted(DATASHEETS), default="h100-sxm", help="datasheet bandwidth and peak")
    print(table(p.parse_args()))


if __name__ == "__main__":
    main()
