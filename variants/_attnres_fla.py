"""`impl: fla`: the depth read of Full and Block AttnRes by flash-linear-attention's fused Triton
kernel (`fla.ops.attnres.fused_attnres`, `pip install 'resbench[fla]'`): each source is read once
in the forward and once in the backward, where the equations stack and re-normalise them.

The kernel computes depth_attention's math as written: keys g * v / rms(v) (its rms_weight is
the reader's key gain, the same eps), logits w . key (scale 1), a softmax over the sources, the
raw sources summed with those weights. Only the read changes: the state is the equations' (a list
of sources and the block's partial sum), so completed(), pipelining and checkpointing work as with
`impl: reference`; ablations are refused as for every form but the equations.

fla runs its kernels on CUDA tensors only; on a CPU the cell fails with fla's own message.
tests/test_fla.py holds this form equal to the equations, forward and gradients, through
Triton's interpreter on the CPU.
"""
from __future__ import annotations

import torch

from .base import RMS_EPS, VariantError


def available() -> str | None:
    """None when fla's kernel can be imported, else why not (one line)."""
    try:
        from fla.ops.attnres import fused_attnres  # noqa: F401
    except ImportError as exc:
        return f"impl: fla needs flash-linear-attention's kernels: pip install 'resbench[fla]' ({exc})"
    return None


def depth_attention(sources: list[torch.Tensor], query: torch.Tensor, key_gain: torch.Tensor):
    """depth_attention (variants/attnres.py) by the fused kernel: h and alpha [n, B, T]."""
    why = available()
    if why:
        raise VariantError(why)
    from fla.ops.attnres import fused_attnres

    dt = sources[0].dtype
    h, alpha = fused_attnres(query.to(dt), list(sources), key_gain.to(dt), rms_eps=RMS_EPS, scale=1.0,
                             return_weights=True)
    return h, alpha
