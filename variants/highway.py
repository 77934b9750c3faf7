"""Highway (gated carry): x <- (1 - g) * x + g * f(x), g = sigmoid(W_g u + b_g), u = x / rms(x).

The gate reads the RMS-normalised stream without a gain: a gain would be absorbed by W_g anyway.
W_g starts at zero and b_g negative, so every sublayer starts biased to *carry* (g = sigmoid(-2)
~= 0.12). The carry multiplies across depth (prod(1 - g)): a geometric recency bias, kept visible.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import register
from .base import SingleStream, VariantError, check_choice, inv_rms


@register("highway")
class Highway(SingleStream):
    def __init__(self, d_model: int, n_layers: int, *, gate: str = "vector", gate_bias: float = -2.0):
        super().__init__(d_model, n_layers)
        check_choice("gate", gate, ("vector", "scalar"))
        if isinstance(gate_bias, bool) or not isinstance(gate_bias, (int, float)) or not math.isfinite(gate_bias):
            raise VariantError(f"gate_bias must be a finite number, got {gate_bias!r}")
        self.gate, self.gate_bias = gate, float(gate_bias)
        width = d_model if gate == "vector" else 1
        self.gates = nn.ModuleList(nn.Linear(d_model, width) for _ in range(n_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for g in self.gates:
            nn.init.zeros_(g.weight)
            nn.init.constant_(g.bias, self.gate_bias)

    def write(self, x, i, y):
        u = x * inv_rms(x).to(x.dtype)
        g = torch.sigmoid(self.gates[i](u))
        return torch.lerp(x, y.to(x.dtype), g.to(x.dtype))  # (1 - g) * x + g * y; autocast: y, g in bf16

    def residual_traffic(self) -> int:
        """The lerp reads x and f(x) and writes; a vector gate is one more d-vector written and read."""
        return self.n_layers * (5 if self.gate == "vector" else 3)

    def mixing_flops(self) -> int:
        return self.n_layers * 2 * self.d_model * (self.d_model if self.gate == "vector" else 1)

    def declared_extra_params(self) -> int:
        width = self.d_model if self.gate == "vector" else 1
        return self.n_layers * (self.d_model * width + width)
