"""PreNorm: x_{i+1} = x_i + f_i(x_i). The baseline every ratio is taken against."""
from __future__ import annotations

import torch

from . import register
from .base import SingleStream


@register("prenorm")
class PreNorm(SingleStream):
    def write(self, x: torch.Tensor, i: int, y: torch.Tensor) -> torch.Tensor:
        return x + y
