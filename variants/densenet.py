"""DenseNet-style residual: DenseFormer's depth-weighted average (DWA), arXiv 2402.02622.

Transformer blocks (attention + MLP) stay PreNorm inside. After block i:
    X_i = Block_i(Y_{i-1}),   Y_i = sum_{j <= i} alpha_{i,j} X_j,   X_0 = e.
alpha_{i,i} = 1 and the rest 0 at init, so step 0 equals PreNorm exactly. Options: `dilation`
k keeps only j = i (mod k); `period` p applies DWA after every p-th block only.

This module is the equations, run as written with `impl: reference`. The default, `impl: fast`,
computes the same thing in eager PyTorch with one autograd node per DWA that saves no temporaries
(variants/_densenet_fast.py); under torch.compile, which cannot trace that node's shared store,
it runs the equations, which the compiler fuses. The tests hold the two equal, forward and
gradients, eager and compiled.
"""
from __future__ import annotations

import torch
from torch import nn

from . import register
from .base import FORMS, Residual, VariantError, check_choice, check_positive, implementation

IMPLS = ("fast", "reference")


@register("densenet")
class DenseFormerDWA(Residual):
    def __init__(self, d_model: int, n_layers: int, *, dilation: int = 1, period: int = 1, impl: str = "fast"):
        super().__init__(d_model, n_layers)
        check_choice("impl", impl, IMPLS)
        self.impl = impl
        if impl == "fast":
            implementation(DenseFormerDWA, "fast")  # its one form, loaded now
        if n_layers % 2:
            raise VariantError(f"densenet needs whole blocks (attn + mlp): n_layers={n_layers} is odd")
        check_positive("dilation", dilation)
        check_positive("period", period)
        self.dilation, self.period = dilation, period
        depth = n_layers // 2
        # sources[i] = the block indices j that block i's DWA mixes; None where no DWA runs.
        self.sources: list[list[int] | None] = [None] * (depth + 1)
        self.alpha = nn.ParameterDict()
        for i in range(period, depth + 1, period):
            self.sources[i] = [j for j in range(i + 1) if (i - j) % dilation == 0]
            self.alpha[str(i)] = nn.Parameter(torch.zeros(len(self.sources[i])))
        # X_j must be stored only if a later DWA reads it.
        self.keep = [any(s is not None and j in s for s in self.sources[j + 1:]) for j in range(depth + 1)]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Identity init lives here, not in a model-wide nn.Linear re-init (DenseFormer pitfall).
        for a in self.alpha.values():
            with torch.no_grad():
                a.zero_()
                a[-1] = 1.0  # alpha_{i,i}

    # -- the equations (impl: reference); impl: fast runs begin/write in _densenet_fast -------
    # state: the running stream x (= Y after a DWA) and the kept block outputs X_j
    def _fast(self) -> bool:
        return self.impl == "fast" and not torch.compiler.is_compiling()

    def begin(self, e):
        if self._fast():
            return FORMS[(__name__, "fast")].begin(self, e)
        return {"x": e, "X": {0: e} if self.keep[0] else {}}

    def read(self, state, i):
        return state["x"]

    def write(self, state, i, y):
        if self._fast():
            return FORMS[(__name__, "fast")].write(self, state, i, y)
        x = state["x"] + y  # PreNorm inside the block
        if i % 2 == 1:  # the MLP closes block k: X_k = x, then Y_k = sum_j alpha_{k,j} X_j
            k = i // 2 + 1
            X = {**state["X"], k: x}
            if self.keep[k]:  # a later DWA reads X_k
                state["X"][k] = x
            if self.sources[k] is not None:
                alpha = self.alpha[str(k)].to(x.dtype)
                x = sum(alpha[n] * X[j] for n, j in enumerate(self.sources[k]))
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

    def residual_traffic(self) -> int:
        """x + f(x) per sublayer (3), and each DWA reads the block outputs it mixes and writes one."""
        return 3 * self.n_layers + sum(len(s) + 1 for s in self.sources if s is not None)

    def state_vectors(self) -> int:
        # stored block outputs X_j that a later DWA still reads, plus the running stream.
        return sum(self.keep[:-1]) + 1
