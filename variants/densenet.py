"""DenseNet-style residual: DenseFormer's depth-weighted average (DWA), arXiv 2402.02622.

Transformer blocks (attention + MLP) stay PreNorm inside. After block i:
    X_i = Block_i(Y_{i-1}),   Y_i = sum_{j <= i} alpha_{i,j} X_j,   X_0 = e.
alpha_{i,i} = 1 and the rest 0 at init, so step 0 equals PreNorm exactly. Options: `dilation`
k keeps only j = i (mod k); `period` p applies DWA after every p-th block only.

Efficient form: block outputs are kept as references (no copies, nothing re-stacked) and each DWA
is one autograd node (`_DWA`): forward accumulates in place into one fresh tensor, backward saves
no temporaries (alpha gradients are full dot products <g, X_j>).
"""
from __future__ import annotations

import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.autograd.function import once_differentiable

from . import register
from .base import Residual, VariantError, check_positive


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


pytree.register_pytree_node(_Store, lambda s: ([], s), lambda _, s: s,
                            serialized_type_name="variants.densenet._Store")


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


@register("densenet")
class DenseFormerDWA(Residual):
    def __init__(self, d_model: int, n_layers: int, *, dilation: int = 1, period: int = 1):
        super().__init__(d_model, n_layers)
        if n_layers % 2:
            raise VariantError(f"densenet needs whole blocks (attn + mlp): n_layers={n_layers} is odd")
        check_positive("dilation", dilation)
        check_positive("period", period)
        self.dilation, self.period = dilation, period
        n_blocks = n_layers // 2
        # sources[i] = the block indices j that block i's DWA mixes; None where no DWA runs.
        self.sources: list[list[int] | None] = [None] * (n_blocks + 1)
        self.alpha = nn.ParameterDict()
        for i in range(period, n_blocks + 1, period):
            self.sources[i] = [j for j in range(i + 1) if (i - j) % dilation == 0]
            self.alpha[str(i)] = nn.Parameter(torch.zeros(len(self.sources[i])))
        # X_j must be stored only if a later DWA reads it.
        self.keep = [any(s is not None and j in s for s in self.sources[j + 1:]) for j in range(n_blocks + 1)]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Identity init lives here, not in a model-wide nn.Linear re-init (DenseFormer pitfall).
        for a in self.alpha.values():
            with torch.no_grad():
                a.zero_()
                a[-1] = 1.0  # alpha_{i,i}

    def begin(self, e):
        store = _Store()
        if self.keep[0]:
            e = self._tap(store, 0, e)
        return {"x": e, "X": {0: e} if self.keep[0] else {}, "store": store}

    @staticmethod
    def _tap(store, j, x):
        return _Tap.apply(store, j, x) if torch.is_grad_enabled() else x

    def read(self, state, i):
        return state["x"]

    def write(self, state, i, y):
        x = state["x"] + y
        if i % 2 == 1:  # the MLP closes block k
            k = i // 2 + 1
            X, src = state["X"], self.sources[k]
            if src is None and self.keep[k]:
                x = self._tap(state["store"], k, x)
            if self.keep[k]:
                X[k] = x
            if src is not None:
                x = _DWA.apply(state["store"], k, src, self.alpha[str(k)], *(x if j == k else X[j] for j in src))
        state["x"] = x
        return state

    def end(self, state):
        return state["x"]

    def depth_weights(self) -> list[list[float]]:
        """alpha as a matrix: one row per DWA block i, columns j = 0..i (0 where dilation skips)."""
        rows = []
        for i, src in enumerate(self.sources):
            if src is not None:
                row = [0.0] * (i + 1)
                for n, j in enumerate(src):
                    row[j] = float(self.alpha[str(i)][n].detach())
                rows.append(row)
        return rows

    def declared_extra_params(self) -> int:
        return sum(len(s) for s in self.sources if s is not None)

    def state_vectors(self) -> int:
        # stored block outputs X_j that a later DWA still reads, plus the running stream.
        return sum(self.keep[:-1]) + 1
