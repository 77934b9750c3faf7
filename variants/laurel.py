"""LAuReL-LR (Learned Augmented Residual Layer, arXiv 2411.07501), low-rank form:
    x <- x + f_i(x) + B_i A_i x,   A_i in R^{r x d}, B_i in R^{d x r}, B_i = 0 at init.

The low-rank term widens the skip path from the identity to I + B A, so step 0 equals PreNorm
exactly. A_i starts N(0, 1/d) (from the variant's own seeded stream), so B_i's gradient is not
zero at init. Option `rank` r (capped at d).
"""
from __future__ import annotations

import torch

from . import register
from .base import SingleStream, VariantError, check_positive, per_layer


@register("laurel")
class LAuReL(SingleStream):
    def __init__(self, d_model: int, n_layers: int, *, rank: int = 16):
        super().__init__(d_model, n_layers)
        check_positive("rank", rank)
        if rank > d_model:
            raise VariantError(f"rank must be <= d_model ({d_model}), got {rank}")
        self.rank = rank
        self.down = per_layer(torch.randn(n_layers, rank, d_model) * d_model ** -0.5)  # A_i
        self.up = per_layer(torch.zeros(n_layers, d_model, rank))                      # B_i

    def write(self, x, i, y):
        low = (x @ self.down[i].to(x.dtype).t()) @ self.up[i].to(x.dtype).t()
        return x + y + low

    def declared_extra_params(self) -> int:
        return 2 * self.n_layers * self.rank * self.d_model

    def mixing_flops(self) -> int:
        return self.n_layers * 2 * (2 * self.rank * self.d_model)
