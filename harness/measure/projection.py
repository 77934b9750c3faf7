"""Project peak memory for shapes beyond this machine: the same model under fake tensors.

The model's modules are built on the meta device (no storage, no init cost), and its parameters
are handed in as FakeTensorMode tensors on the target device type through
torch.func.functional_call. Every op then runs its shape-only implementation, choosing the same
kernels as a real CPU run (e.g. the flash SDPA path, O(T) memory), and LiveBytesTracker sees
exactly the storages a real run would create. (build_model itself cannot run under fake mode: its
init and .to() need real storage.)
"""
from __future__ import annotations

import time

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from .. import variants
from ..model import ModelConfig, Transformer
from ..precision import Precision
from . import memory_views as V


def meta_model(cfg: ModelConfig, variant: str, options: dict | None = None) -> Transformer:
    with torch.device("meta"):
        return Transformer(cfg, variants.build(variant, cfg.d_model, cfg.n_layers, options))


def fake_params(model: Transformer, dtype: torch.dtype, device: str = "cpu") -> dict:
    """Fake stand-ins for every parameter and buffer; call inside the FakeTensorMode."""
    out = {k: torch.empty(p.shape, dtype=dtype, device=device).requires_grad_(p.requires_grad)
           for k, p in model.named_parameters()}
    for k, b in model.named_buffers():
        out[k] = torch.empty(b.shape, dtype=b.dtype if not b.is_floating_point() else dtype, device=device)
    return out


def param_bytes(model: Transformer, dtype: torch.dtype) -> int:
    return sum(p.numel() for p in model.parameters()) * torch.tensor([], dtype=dtype).element_size()


def project(cfg: ModelConfig, variant: str, options: dict | None, batch: int, precision: Precision,
            views: tuple[str, ...], checkpoint_every: int = 1, stages: int = 4, chunk: int = 0) -> tuple[dict, Transformer]:
    """(projected {"bytes": {view: bytes}, details, "param_bytes", "seconds"}, the meta model): the
    same functions and tracker as the real measurement (measure.memory_views.measure)."""
    model = meta_model(cfg, variant, options)
    dtype = precision.param_dtype
    t0 = time.perf_counter()
    with FakeTensorMode():
        params = fake_params(model, dtype)
        idx = torch.zeros(batch, cfg.seq_len, dtype=torch.long)
        bytes_, extra = V.measure(model, idx, idx, views, checkpoint_every, stages, params, precision, chunk)
    return {"bytes": bytes_, **extra, "param_bytes": param_bytes(model, dtype),
            "seconds": round(time.perf_counter() - t0, 3)}, model
