"""The physical limit of a variant's overhead (docs/MEASURING.md, "Roofline ×").

Depth mixing is memory traffic (a weighted sum does ~1 FLOP per 2 bytes read), so what it must
cost is set by the bytes it moves. A variant's roofline × is the baseline's measured time plus
the variant's extra bytes over the machine's memory bandwidth and its extra FLOPs over the GEMM
peak, over the baseline's time: what a perfect implementation of the same equations would pay
on this machine. The gap to the measured × is what a better implementation could still win.
"""
from __future__ import annotations

from typing import Callable

import torch

from .timing import synchronize

# A training step reads and writes the residual path's vectors about three times: the forward,
# then the backward reads the saved sources and the gradient and writes the sources' gradients
# (the same convention as FLOPs: backward = 2 x forward).
TRAIN_PASSES = 3


def copy_probe(device="cpu", nbytes: int | None = None) -> tuple[Callable[[], object], int]:
    """(fn, bytes moved): one copy of a buffer far larger than any cache (256 MiB on a CPU, 1 GiB
    on a GPU), read once and written once. Timed beside the steps like the GEMM probes; the
    fastest call gives the bandwidth the steps could have had."""
    dev = torch.device(device)
    nbytes = nbytes or (2**30 if dev.type == "cuda" else 2**28)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: page faults belong to no round
    synchronize(dev)
    return (lambda: dst.copy_(src)), 2 * src.numel() * src.element_size()


def extra_bytes(traffic: int, base_traffic: int, tokens: int, d_model: int, itemsize: int, passes: int = 1) -> float:
    """Bytes a step moves on the residual path beyond the baseline's: d-vectors per token
    (Residual.residual_traffic) x tokens x d x bytes per element x passes (a forward: 1; a
    training step: TRAIN_PASSES)."""
    return (traffic - base_traffic) * tokens * d_model * itemsize * passes


def roofline(base_s: float, extra_b: float, bandwidth: float, extra_flops: float = 0.0,
             peak: float | None = None) -> float | None:
    """(base + extra bytes / bandwidth + extra FLOPs / peak) / base; None without a bandwidth."""
    if not base_s or not bandwidth:
        return None
    flops_s = extra_flops / peak if peak else 0.0
    return (base_s + extra_b / bandwidth + flops_s) / base_s
