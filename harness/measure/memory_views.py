"""The memory views of one model, each an exact live-tensor peak (LiveBytesTracker).

Every function takes the model and, optionally, a `params` dict for torch.func.functional_call:
real tensors measure, fake tensors (FakeTensorMode, see harness/measure/projection.py) project.
Numbers are bytes *created inside* the measured call: parameters, gradients and optimizer state
are excluded (they scale with L·d², not with tokens, and are reported apart).

  inference     no-grad forward (prefill)
  checkpointed  forward + backward with activation checkpointing every k blocks
  train         forward + backward, plain autograd (everything saved)
  pipeline      bytes per token of the residual state handed from one pipeline stage to the next

and, for serving (not in the default VIEWS of the scaling study):

  prefill          a prompt run into a KV cache in one forward: the cache plus the forward's peak
  prefill_chunked  the same prompt in chunks of `chunk` tokens: the cache plus one chunk's peak
"""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils._pytree import tree_leaves

from .memory import LiveBytesTracker
from ..precision import FP32, Precision

VIEWS = ("inference", "checkpointed", "pipeline", "train")
PREFILL_VIEWS = ("prefill", "prefill_chunked")


def _call(module: nn.Module, params: dict | None, *args, **kwargs):
    if params is None:
        return module(*args, **kwargs)
    return functional_call(module, params, args, kwargs)


def inference_bytes(model, idx, params=None, precision: Precision = FP32) -> int:
    with precision.inference(idx.device), LiveBytesTracker() as t:
        _call(model, params, idx)
    return t.peak


class _Step(nn.Module):
    """Forward + loss + backward as one module call: under functional_call, checkpointing's
    recomputation in backward must still see the substituted parameters."""

    def __init__(self, model, precision: Precision):
        super().__init__()
        self.model, self.precision = model, precision

    def forward(self, idx, targets, checkpoint_every: int):
        with self.precision.context(idx.device):
            logits = self.model(idx, checkpoint_every=checkpoint_every)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        del logits
        loss.backward()


class _Prefill(nn.Module):
    """Allocate the KV cache and prefill into it, as one module call (functional_call reaches
    the parameters through it): the cache's bytes count, as a server's do."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx, chunk: int, dtype):
        from ..model import KVCache

        cache = KVCache(self.model.cfg, idx.shape[0], idx.shape[1], dtype, idx.device)
        self.model.prefill(idx, cache, chunk)
        return cache.nbytes()


def prefill_bytes(model, idx, chunk: int = 0, params=None, precision: Precision = FP32) -> tuple[int, int]:
    """(peak bytes, KV cache bytes) of a prefill into a fresh cache, `chunk` tokens per forward."""
    with precision.inference(idx.device), LiveBytesTracker() as t:
        kv = _call(_Prefill(model), _prefixed(params), idx, chunk, precision.param_dtype)
    return t.peak, kv


def _prefixed(params: dict | None) -> dict | None:
    return None if params is None else {f"model.{k}": v for k, v in params.items()}


def train_bytes(model, idx, targets, checkpoint_every: int = 0, params=None, precision: Precision = FP32) -> int:
    """Peak of forward + loss + backward. Gradients are allocated *before* the tracked region
    (as in a steady-state step): backward then accumulates in place, and the peak is activations
    plus transients instead of also counting L·d² of new gradient storage."""
    weights = [p for p in (params.values() if params is not None else model.parameters()) if p.requires_grad]
    for p in weights:
        p.grad = torch.zeros_like(p)
    try:
        with LiveBytesTracker() as t:
            _call(_Step(model, precision), _prefixed(params), idx, targets, checkpoint_every)
    finally:
        for p in weights:
            p.grad = None
    return t.peak


class _Split(nn.Module):
    """Runs the model's forward stage by stage and sizes the residual state at each cut: what a
    pipeline stage ending there hands to the next one (sized on the spot, before later
    sublayers can mutate the state in place)."""

    def __init__(self, model, width: int | None):
        super().__init__()
        self.model, self.width = model, width

    def forward(self, idx, cuts: list[int]) -> list[int]:
        m, out, done = self.model, [], 0
        state = m.residual.begin(m.embed(idx))
        for c in cuts:
            state = m.run_sublayers(state, done, c)
            out.append(state_bytes(state, self.width))
            done = c
        return out


def state_bytes(state, width: int | None = None) -> int:
    """Bytes of the tensors in a residual state (pytree leaves); with `width`, only leaves of 3+
    dims whose last is `width` (the d-vectors, [.., B, T, d]). Leaves that share storage count
    once: views are merged by byte range, so slices of one buffer count as slices, and the same
    tensor listed twice counts once."""
    spans: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for t in tree_leaves(state):
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue
        if width is not None and (t.dim() < 3 or t.shape[-1] != width):  # [.., B, T, d] only
            continue
        es = t.element_size()
        lo = t.storage_offset() * es
        extent = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))  # the slab a strided view spans
        spans[t.untyped_storage()._cdata].append((lo, lo + extent * es))
    total = 0
    for ranges in spans.values():
        end = -1
        for lo, hi in sorted(ranges):
            if hi > end:
                total += hi - max(lo, end)
                end = hi
    return total


def stage_boundaries(depth: int, stages: int) -> list[int]:
    """Sublayer indices where a P-stage split by whole blocks hands over (P - 1 of them)."""
    cuts = sorted({round(j * depth / stages) for j in range(1, stages)} - {0, depth})
    return [2 * c for c in cuts]


def boundary_bytes(model, idx, cuts: list[int], params=None, width: int | None = None) -> list[int]:
    """Residual-state bytes after sublayers [0, c) for each cut c: a real split of the forward."""
    with torch.no_grad():
        return _call(_Split(model, width), _prefixed(params), idx, sorted(cuts))


def pipeline_bytes(model, idx, stages: int, params=None) -> dict:
    """Residual-state bytes at every boundary of a P-stage split, per token and per step.

    The split runs at batch B and again at 2B: the difference is what scales with tokens
    ('boundaries', bytes at batch B; 'max' is the busiest link), the rest is a per-step constant
    that the state happens to carry ('fixed', e.g. query vectors folded from parameters, which a
    real stage would rebuild from its own weights rather than receive). 'vectors' is the part
    held in d-wide tensors; the rest of 'boundaries' is per-token scalars (e.g. cached logits)."""
    cuts = stage_boundaries(model.cfg.depth, stages)
    idx2 = torch.cat([idx, idx])
    one, two = (boundary_bytes(model, x, cuts, params) for x in (idx, idx2))
    v1, v2 = (boundary_bytes(model, x, cuts, params, width=model.cfg.d_model) for x in (idx, idx2))
    tok = {c: b - a for c, a, b in zip(cuts, one, two)}
    return {"boundaries": tok, "vectors": {c: b - a for c, a, b in zip(cuts, v1, v2)},
            "fixed": {c: 2 * a - b for c, a, b in zip(cuts, one, two)}, "max": max(tok.values(), default=0)}


def measure(model, idx, targets, views, checkpoint_every: int, stages: int, params=None,
            precision: Precision = FP32, chunk: int = 0) -> tuple[dict, dict]:
    """({view: bytes}, details) for the requested views; 'pipeline' bytes are the
    token-proportional part at the busiest boundary."""
    out, extra = {}, {}
    for view in views:
        if view in PREFILL_VIEWS:
            out[view], extra["kv_cache_bytes"] = prefill_bytes(model, idx, chunk if view == "prefill_chunked" else 0,
                                                               params, precision)
        elif view == "inference":
            out[view] = inference_bytes(model, idx, params, precision)
        elif view == "checkpointed":
            out[view] = train_bytes(model, idx, targets, checkpoint_every, params, precision)
        elif view == "train":
            out[view] = train_bytes(model, idx, targets, 0, params, precision)
        elif view == "pipeline":
            with precision.context(idx.device):
                pipe = pipeline_bytes(model, idx, stages, params)
            out[view] = pipe["max"]
            extra.update({f"pipeline_{k}": {str(c): b for c, b in pipe[k].items()} for k in ("boundaries", "vectors", "fixed")})
        else:
            raise ValueError(f"unknown view {view!r}; views: {', '.join(VIEWS + PREFILL_VIEWS)}")
    return out, extra
