"""Numeric precision as people train: which dtype the weights (and AdamW state) are kept in, and
which dtype the matrix products run in.

  fp32            weights fp32, compute fp32
  bf16-autocast   fp32 master weights and AdamW state, forward under torch.autocast(bfloat16)
  bf16-pure       weights and AdamW state in bfloat16 (no master copy)
  fp16-autocast   fp32 master weights, forward under torch.autocast(float16), loss scaled by a
                  GradScaler (fp16's range would otherwise flush small gradients to zero)

Depth-mixing math (AttnRes logits and softmax, Highway's gate norm) stays fp32 in every mode.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    name: str
    param_dtype: torch.dtype
    compute_dtype: torch.dtype
    autocast: bool = False
    grad_scaler: bool = False

    def context(self, device) -> contextlib.AbstractContextManager:
        """The forward's context: autocast to the compute dtype, or nothing."""
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.compute_dtype)

    @contextlib.contextmanager
    def inference(self, device):
        """A forward without gradients, in this precision: the one place inference enters
        autocast (training enters it in train.lm_loss)."""
        with torch.no_grad(), self.context(device):
            yield

    def scaler(self, device):
        """A GradScaler for fp16-autocast, else None."""
        return torch.amp.GradScaler(torch.device(device).type) if self.grad_scaler else None

    @property
    def compute_itemsize(self) -> int:
        return torch.empty((), dtype=self.compute_dtype).element_size()

    @property
    def param_itemsize(self) -> int:
        return torch.empty((), dtype=self.param_dtype).element_size()


PRECISIONS = {p.name: p for p in (
    Precision("fp32", torch.float32, torch.float32),
    Precision("bf16-autocast", torch.float32, torch.bfloat16, autocast=True),
    Precision("bf16-pure", torch.bfloat16, torch.bfloat16),
    Precision("fp16-autocast", torch.float32, torch.float16, autocast=True, grad_scaler=True),
)}
FP32 = PRECISIONS["fp32"]


def get(name: str) -> Precision:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}") from None
