"""PostNorm and DeepNorm: the normalisation after the residual sum instead of before the sublayer.

PostNorm (the original Transformer):  x <- RMSNorm_i(x + f_i(x)).
DeepNorm (DeepNet, arXiv 2203.00555): x <- RMSNorm_i(alpha * x + f_i(x)), and the weights of the
value and output projections and of both MLP matrices start scaled by beta (queries and keys by 1).
Decoder-only constants for N transformer blocks (DeepNet Fig. 2, its table of DeepNorm's
parameters, the decoder-only row; the authors' torchscale code uses the same):
    alpha = (2N)^(1/4),   beta = (8N)^(-1/4).
Options `alpha`, `beta` override them (null: the paper's). Each RMSNorm_i has its own gain.
beta scales the shared init's std and replaces GPT-2's 1/sqrt(2N) on the output projections:
DeepNet's analysis starts from an init without a depth rule of its own.

The shared sublayers keep their pre-RMSNorm (every variant runs on the same sublayers); under
PostNorm their input is already normalised, so that pre-norm acts as a second learnable gain.
The embedding enters unnormalised, as in the post-LN Transformer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import base, register
from .base import SingleStream, VariantError


def deepnet_constants(depth: int) -> tuple[float, float]:
    """(alpha, beta) of DeepNet's decoder-only architecture with depth layers."""
    return (2 * depth) ** 0.25, (8 * depth) ** -0.25


def _number(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise VariantError(f"{name} must be a positive number or null (the paper's), got {v!r}")
    return float(v)


class _PostNorm(SingleStream):
    def __init__(self, d_model: int, n_layers: int, alpha: float, beta: float):
        super().__init__(d_model, n_layers)
        self.alpha, self.beta = alpha, beta
        self.gain = nn.Parameter(torch.ones(n_layers, d_model))

    def write(self, x, i, y):
        s = self.alpha * x + y if self.alpha != 1.0 else x + y
        return F.rms_norm(s, (s.shape[-1],), self.gain[i].to(s.dtype), base.RMS_EPS)  # read at call time

    def declared_extra_params(self) -> int:
        return self.n_layers * self.d_model


@register("postnorm")
class PostNorm(_PostNorm):
    def __init__(self, d_model: int, n_layers: int):
        super().__init__(d_model, n_layers, 1.0, 1.0)


@register("deepnorm")
class DeepNorm(_PostNorm):
    def __init__(self, d_model: int, n_layers: int, *, alpha: float | None = None, beta: float | None = None):
        a, b = deepnet_constants(max(1, n_layers // 2))
        super().__init__(d_model, n_layers, a if alpha is None else _number("alpha", alpha),
                         b if beta is None else _number("beta", beta))

    def init_scale(self, role: str) -> float | None:
        return 1.0 if role in ("attn.q", "attn.k") else self.beta
