"""ReZero (arXiv 2003.04887): x <- x + a_i * f_i(x), one scalar a_i per sublayer, a_i = 0 at init.

At init every sublayer is switched off, so the network is the identity map from the embedding to
the final norm. The paper drops the pre-norm; here f_i keeps the shared model's pre-RMSNorm (every
variant runs on identical sublayers), so this is "ReZero on a PreNorm block".
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import register
from .base import SingleStream, VariantError


@register("rezero")
class ReZero(SingleStream):
    def __init__(self, d_model: int, n_layers: int, *, init: float = 0.0):
        super().__init__(d_model, n_layers)
        if isinstance(init, bool) or not isinstance(init, (int, float)) or not math.isfinite(init):
            raise VariantError(f"init must be a finite number, got {init!r}")
        self.init = float(init)
        self.alpha = nn.Parameter(torch.full((n_layers,), self.init))

    def write(self, x, i, y):
        return x + self.alpha[i].to(y.dtype) * y

    def declared_extra_params(self) -> int:
        return self.n_layers
