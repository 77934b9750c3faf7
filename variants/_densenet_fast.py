"""The fast form of DenseFormer's DWA (`impl: fast`, the default): the same equations as
variants/densenet.py, with block outputs kept as references (no copies, nothing re-stacked) and
each DWA one autograd node (`_DWA`): forward accumulates in place into one fresh tensor, backward
saves no temporaries (alpha gradients are full dot products <g, X_j>).

begin/write below are the protocol calls of a `DenseFormerDWA` module `m` (m.sources, m.keep,
m.alpha); read and end are the reference's.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .base import leafless_pytree_node


@leafless_pytree_node
class _Store:
    """Per-forward store for the backward of the block outputs X_j. Each DWA i leaves its output
    gradient g_i and weights here; X_j's gradient sum_i alpha_{i,j} g_i over the DWAs that read
    it is summed once, by the node that hands X_j on (DWA j itself, or a `_Tap` where block j
    has no DWA), which autograd runs after every later DWA. One pass over each g_i per X_j,
    instead of a fresh alpha * g tensor and a gradient-buffer update per (i, j) pair. Carried in
    the state as a pytree node without leaves, so activation checkpointing can carry it."""

    def __init__(self):
        self.dwa: dict[int, tuple[torch.Tensor, torch.Tensor, list[int]]] = {}

    def grad_of(self, j: int, g: torch.Tensor | None = None) -> torch.Tensor | None:
        """sum_i alpha_{i,j} g_i over the stored DWAs i reading X_j (+ g, the direct gradient)."""
        out, owned = g, False
        for i in sorted(self.dwa):
            g_i, a, src = self.dwa[i]
            if j not in src:
                continue
            w = a[src.index(j)]
            if out is None:
                out, owned = g_i * w, True
            elif not owned:  # never write into autograd's incoming gradient
                out, owned = torch.addcmul(out, g_i, w), True
            else:
                out.addcmul_(g_i, w)
        return out



class _DWA(torch.autograd.Function):
    """Y_i = sum_n alpha[n] * X_{src[n]}, the last source being X_i itself. Saves references to the
    X_j and alpha; returns the alpha gradient (<g, X_j>, full dot products) and X_i's whole
    gradient, leaving the older X_j to the store."""

    @staticmethod
    def forward(ctx, store, i, src, alpha, *xs):
        a = alpha.to(xs[0].dtype)
        y = xs[0] * a[0]
        for n in range(1, len(xs)):
            y.addcmul_(xs[n], a[n])
        ctx.save_for_backward(a, *xs)
        ctx.store, ctx.i, ctx.src, ctx.alpha_dtype = store, i, src, alpha.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        a, *xs = ctx.saved_tensors
        g = g.contiguous()
        ctx.store.dwa[ctx.i] = (g, a.detach(), ctx.src)
        flat = g.reshape(-1)
        if g.dtype in (torch.float32, torch.float64):
            ga = torch.stack([torch.dot(flat, x.reshape(-1)) for x in xs])
        else:  # low precision: accumulate the dot products in fp32
            ga = torch.stack([torch.dot(flat.float(), x.reshape(-1).float()) for x in xs])
        g_new = ctx.store.grad_of(ctx.i)
        return (None, None, None, ga.to(ctx.alpha_dtype), *(None,) * (len(xs) - 1), g_new)


class _Tap(torch.autograd.Function):
    """Identity on a kept X_j that no DWA of its own mixes; backward adds the later DWAs' part."""

    @staticmethod
    def forward(ctx, store, j, x):
        ctx.store, ctx.j = store, j
        return x.view_as(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        return None, None, ctx.store.grad_of(ctx.j, g)


def _tap(store, j, x):
    return _Tap.apply(store, j, x) if torch.is_grad_enabled() else x


def begin(m, e):
    store = _Store()
    if m.keep[0]:
        e = _tap(store, 0, e)
    return {"x": e, "X": {0: e} if m.keep[0] else {}, "store": store}


def write(m, state, i, y):
    x = state["x"] + y
    if i % 2 == 1:  # the MLP closes block k
        k = i // 2 + 1
        X, src = state["X"], m.sources[k]
        if src is None and m.keep[k]:
            x = _tap(state["store"], k, x)
        if m.keep[k]:
            X[k] = x
        if src is not None:
            x = _DWA.apply(state["store"], k, src, m.alpha[str(k)], *(x if j == k else X[j] for j in src))
    state["x"] = x
    return state
