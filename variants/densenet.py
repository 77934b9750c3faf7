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
from torch import nn
from torch.autograd.function import once_differentiable

from . import register
from .base import Residual, VariantError, check_positive


class _DWA(torch.autograd.Function):
    """Y = sum_n alpha[n] * X_n; saves references to the X_n and alpha."""

    @staticmethod
    def forward(ctx, alpha, *xs):
        a = alpha.to(xs[0].dtype)
        y = xs[0] * a[0]
        for n in range(1, len(xs)):
            y.addcmul_(xs[n], a[n])
        ctx.save_for_backward(a, *xs)
        ctx.alpha_dtype = alpha.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        a, *xs = ctx.saved_tensors
        g = g.contiguous()
        flat = g.reshape(-1)
        if g.dtype in (torch.float32, torch.float64):
            ga = torch.stack([torch.dot(flat, x.reshape(-1)) for x in xs])
        else:  # low precision: accumulate the dot products in fp32
            ga = torch.stack([torch.dot(flat.float(), x.reshape(-1).float()) for x in xs])
        gx = [g * a[n] if ctx.needs_input_grad[1 + n] else None for n in range(len(xs))]
        return (ga.to(ctx.alpha_dtype), *gx)


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
        return {"x": e, "X": {0: e} if self.keep[0] else {}}

    def read(self, state, i):
        return state["x"]

    def write(self, state, i, y):
        x = state["x"] + y
        if i % 2 == 1:  # the MLP closes block k
            k = i // 2 + 1
            X = state["X"]
            if self.keep[k]:
                X[k] = x
            if self.sources[k] is not None:
                x = _DWA.apply(self.alpha[str(k)], *(x if j == k else X[j] for j in self.sources[k]))
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
