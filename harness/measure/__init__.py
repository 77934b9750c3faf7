"""Measurement primitives: memory counters, synchronized timing, FLOPs and MFU."""
from .flops import count_flops, device_peak_flops, gemm_probe, matmul_probe, mfu, peak_flops_for_name
from .memory import (
    LiveBytesTracker,
    NvmlSampler,
    cuda_memory_snapshot,
    peak_rss_bytes,
    reset_cuda_peak,
    rss_bytes,
)
from .timing import summarize, synchronize, time_interleaved, time_once

__all__ = [
    "LiveBytesTracker", "NvmlSampler", "cuda_memory_snapshot", "reset_cuda_peak",
    "rss_bytes", "peak_rss_bytes",
    "synchronize", "time_once", "time_interleaved", "summarize",
    "count_flops", "matmul_probe", "gemm_probe", "device_peak_flops", "peak_flops_for_name", "mfu",
]
