"""PreNorm: x_{i+1} = x_i + f_i(x_i). The baseline every ratio is taken against."""
from __future__ import annotations

import torch

from . import register
from .base import Residual


@register("prenorm")
class PreNorm(Residual):
    def begin(self, e: torch.Tensor) -> torch.Tensor:
        return e

    def read(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return x

    def write(self, x: torch.Tensor, i: int, y: torch.Tensor) -> torch.Tensor:
        return x + y

    def end(self, x: torch.Tensor) -> torch.Tensor:
        return x
