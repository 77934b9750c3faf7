"""FLOP counting and the peak FLOP/s that MFU is measured against.

Convention (FlopCounterMode's): 2 FLOPs per multiply-add of a matrix product (mm, addmm, bmm,
mv, attention); elementwise work, norms, softmax and reductions count nothing. Attention is
counted as torch counts it on CUDA, on CPU too: the full T x T scores (causality not discounted),
backward = the recomputed scores plus four products (2.5 x forward).
"""
from __future__ import annotations

import math
import re
from typing import Callable

import torch
from torch.utils import flop_counter as fc
from torch.utils.flop_counter import FlopCounterMode

from ..provenance import matmul_fp32_precision
from .timing import synchronize, time_once

__all__ = ["count_flops", "matmul_probe", "gemm_probe", "device_peak_flops", "mfu"]

aten = torch.ops.aten


# Formulas over shapes (FlopCounterMode turns the op's tensors into their shapes).
def _sdpa(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_flop_count(q, k, v)


def _sdpa_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_backward_flop_count(grad_out, q, k, v)


def _addmm(self_shape, a, b, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0] * a[1] * b[1]


def _baddbmm(self_shape, a, b, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0] * a[1] * a[2] * b[2]


def _mv(a, v, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0] * a[1]


def _addmv(self_shape, a, v, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0] * a[1]


# What torch's own table misses: the CPU attention kernel (its CUDA twins are in the table),
# in-place addmm_/baddbmm_ (the out-of-place ones are: without these the count would depend on
# which form a kernel happens to call), and matrix-vector products.
_EXTRA = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward,
    aten.addmm_: _addmm,
    aten.baddbmm_: _baddbmm,
    aten.mv: _mv,
    aten.addmv: _addmv,
    aten.addmv_: _addmv,
}


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (forward, backward and optimizer alike) under the convention
    above. Works under FakeTensorMode too."""
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA)
    with counter:
        fn()
    return int(counter.get_total_flops())


def matmul_probe(dtype: torch.dtype = torch.float32, device="cpu", n: int | None = None,
                 target_s: float = 0.1) -> tuple[Callable[[], object], float]:
    """(fn, flops): an n x n @ n x n matmul (2 n^3 FLOPs) ready to time, warmed up. The CPU
    "peak" for MFU is its measured rate in the same process, dtype and thread count as the
    model: a practical ceiling, not a datasheet number. With ``n=None``, n is grown until one
    call takes about ``target_s`` seconds."""
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    dev = torch.device(device)
    cap = 16384 if dev.type == "cuda" else 8192  # keeps 3 n^2 buffers within a few GiB

    def make(size):
        g = torch.Generator(device="cpu").manual_seed(0)
        a = torch.randn(size, size, generator=g).to(device=dev, dtype=dtype)
        b = torch.randn(size, size, generator=g).to(device=dev, dtype=dtype)
        return a, b, torch.empty(size, size, device=dev, dtype=dtype)

    if n is None:
        n = 256
        while True:
            a, b, c = make(n)
            torch.mm(a, b, out=c)  # first call pays for lazy init
            t = time_once(lambda: torch.mm(a, b, out=c), dev)
            if t >= target_s / 2 or n >= cap:
                break
            # time grows ~n^3: jump most of the way, at most 4x per step, in multiples of 64
            grow = min(4.0, (target_s / max(t, 1e-6)) ** (1 / 3))
            n = min(cap, max(n + 64, int(n * grow) // 64 * 64))
    else:
        a, b, c = make(n)
    torch.mm(a, b, out=c)
    synchronize(dev)
    return (lambda: torch.mm(a, b, out=c)), 2.0 * n**3


def gemm_probe(m: int, k: int, n: int, dtype: torch.dtype = torch.float32, device="cpu",
               target_s: float = 0.02) -> tuple[Callable[[], object], float]:
    """(fn, flops): [m, k] @ [k, n] repeated so that one call takes about ``target_s``, warmed
    up. Timed at the model's own GEMM shapes beside its steps, the best rate of these probes is
    a ceiling for the work measured: a step does these products and more."""
    for v in (m, k, n):
        if v < 1:
            raise ValueError(f"gemm_probe sizes must be >= 1, got {(m, k, n)}")
    dev = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(m, k, generator=g).to(device=dev, dtype=dtype)
    b = torch.randn(k, n, generator=g).to(device=dev, dtype=dtype)
    c = torch.empty(m, n, device=dev, dtype=dtype)
    torch.mm(a, b, out=c)  # lazy init
    reps = max(1, math.ceil(target_s / max(time_once(lambda: torch.mm(a, b, out=c), dev), 1e-7)))

    def fn():
        for _ in range(reps):
            torch.mm(a, b, out=c)

    fn()
    synchronize(dev)
    return fn, 2.0 * m * k * n * reps


# Dense (no structured sparsity) peak FLOP/s, from NVIDIA's datasheets; they print the sparse
# figure with an asterisk, the dense one is half of it. fp32 = CUDA cores, no tensor cores.
#   H100: "NVIDIA H100 Tensor Core GPU" datasheet (SXM5 and PCIe columns)
#   H200: "NVIDIA H200 Tensor Core GPU" datasheet (SXM and NVL columns)
#   A100: "NVIDIA A100 Tensor Core GPU" datasheet (same figures for PCIe and SXM4)
#   L4, L40S: their product datasheets; RTX 4090: "NVIDIA Ada GPU Architecture" whitepaper,
#   Appendix A (tensor figures with FP32 accumulate, which torch uses)
#   V100: "NVIDIA Tesla V100 GPU" datasheet (SXM2 and PCIe)
# First match wins; a name that matches nothing (e.g. H100 NVL, GH200) gives None.
_PEAKS: list[tuple[str, dict[str, float]]] = [
    (r"\bH100 PCIe\b", {"fp32": 51e12, "tf32": 378e12, "bf16": 756.5e12, "fp16": 756.5e12}),
    (r"\bH100\b.*\b(HBM3|SXM5?)\b", {"fp32": 67e12, "tf32": 494.5e12, "bf16": 989.5e12, "fp16": 989.5e12}),
    (r"\bH200 NVL\b", {"fp32": 60e12, "tf32": 417.5e12, "bf16": 835.5e12, "fp16": 835.5e12}),
    (r"\bH200\b", {"fp32": 67e12, "tf32": 494.5e12, "bf16": 989.5e12, "fp16": 989.5e12}),
    (r"\bA100\b", {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12}),
    (r"\bL40S\b", {"fp32": 91.6e12, "tf32": 183e12, "bf16": 362.05e12, "fp16": 362.05e12}),
    (r"\bL4\b", {"fp32": 30.3e12, "tf32": 60e12, "bf16": 121e12, "fp16": 121e12}),
    (r"\bRTX 4090\b(?! D)", {"fp32": 82.6e12, "tf32": 82.6e12, "bf16": 165.2e12, "fp16": 165.2e12}),
    (r"\bV100-SXM2\b", {"fp32": 15.7e12, "fp16": 125e12}),
    (r"\bV100-PCIE\b", {"fp32": 14e12, "fp16": 112e12}),
]


def _dtype_key(dtype: torch.dtype) -> str | None:
    if dtype == torch.float32:  # fp32 matmuls run on tensor cores as TF32 when that is allowed
        return "tf32" if matmul_fp32_precision() == "tf32" else "fp32"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype)


def peak_flops_for_name(name: str, dtype: torch.dtype) -> float | None:
    """Datasheet dense peak for a GPU name as torch.cuda.get_device_name reports it."""
    key = _dtype_key(dtype)
    for pattern, peaks in _PEAKS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return peaks.get(key) if key else None
    return None


def device_peak_flops(device, dtype: torch.dtype) -> float | None:
    """Dense datasheet peak FLOP/s of a CUDA device for ``dtype``; None off CUDA or when the
    device or dtype is not in the table (the caller then times matmul_probe)."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(dev), dtype)


def mfu(flops_per_step: float, seconds_per_step: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over peak FLOP/s."""
    for label, v in (("seconds_per_step", seconds_per_step), ("peak_flops", peak_flops)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{label} must be a positive finite number, got {v!r}")
    return float(flops_per_step) / (float(seconds_per_step) * float(peak_flops))
