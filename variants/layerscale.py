"""LayerScale (CaiT, arXiv 2103.17239): x <- x + diag(gamma_i) f_i(x), a per-channel scale per sublayer.

gamma_i starts at a small eps, chosen by depth as CaiT does (Sec. 3.1): 0.1 up to 18 transformer
blocks, 1e-5 up to 24, 1e-6 beyond. Option `init` overrides it.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import register
from .base import SingleStream, VariantError


def cait_init(depth: int) -> float:
    return 0.1 if depth <= 18 else 1e-5 if depth <= 24 else 1e-6


@register("layerscale")
class LayerScale(SingleStream):
    def __init__(self, d_model: int, n_layers: int, *, init: float | None = None):
        super().__init__(d_model, n_layers)
        if init is None:
            init = cait_init(max(1, n_layers // 2))
        if isinstance(init, bool) or not isinstance(init, (int, float)) or not math.isfinite(init):
            raise VariantError(f"init must be a finite number or null (CaiT's rule by depth), got {init!r}")
        self.init = float(init)
        self.gamma = nn.Parameter(torch.full((n_layers, d_model), self.init))

    def write(self, x, i, y):
        return x + self.gamma[i].to(y.dtype) * y

    def declared_extra_params(self) -> int:
        return self.n_layers * self.d_model
