"""Attention Residuals (arXiv 2603.15031): softmax attention over depth.

Full AttnRes. Sources v_0 = e, v_i = f_i(h_i) (raw sublayer outputs). Sublayer l reads
    h_l = sum_{i<l} alpha_{i->l} v_i,   alpha_{i->l} = softmax_i( w_l . RMSNorm_l(v_i) )
with w_l a learned pseudo-query (zero at init: uniform weights, so after the sublayer's own
pre-norm step 0 equals PreNorm) and RMSNorm_l a key norm with its own gain g_l. A final readout
(its own query and gain) feeds the final norm and head.

Block AttnRes. The L sublayers form N blocks of S = ceil(L/N) (the last block partial). Sources
are the embedding b_0, the completed block sums b_1 .. b_{n-1}, and, from the second sublayer of
a block on, the running partial sum b_n^{i-1} of the current block. N = L is Full AttnRes.

Because queries do not depend on the input, a source's logits against *every* later reader are
computed once, when the source is produced: logit = (g_l * w_l) . (v / rms(v)), one small matmul.
Keys are never stored; logits and softmax are fp32.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import register
from .base import Residual, VariantError, check_positive, inv_rms, mix_dtype


class _DepthAttention(Residual):
    """Shared parameters and math: one (query, key gain) per reader; reader L is the output."""

    def __init__(self, d_model: int, n_layers: int):
        super().__init__(d_model, n_layers)
        self.query = nn.Parameter(torch.zeros(n_layers + 1, d_model))
        self.key_gain = nn.Parameter(torch.ones(n_layers + 1, d_model))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.query)
        nn.init.ones_(self.key_gain)

    def logits(self, v: torch.Tensor, readers: slice | None = None) -> torch.Tensor:
        """fp32 logits of source v [.., d] against readers (default all): [.., n_readers]."""
        q = self.key_gain * self.query
        if readers is not None:
            q = q[readers]
        dt = mix_dtype(v.dtype)
        return (v.to(dt) * inv_rms(v)) @ q.to(dt).t()

    @staticmethod
    def mix(values: list[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """sum_i softmax(logits)_i * values[i]; logits [.., n] fp32."""
        a = torch.softmax(logits, dim=-1).to(values[0].dtype)
        out = a[..., 0:1] * values[0]
        for n in range(1, len(values)):
            out = out + a[..., n : n + 1] * values[n]
        return out

    def declared_extra_params(self) -> int:
        return 2 * self.d_model * (self.n_layers + 1)


@register("full-attnres")
class FullAttnRes(_DepthAttention):
    def begin(self, e):
        return {"v": [e], "s": [self.logits(e)]}

    def read(self, state, i):
        logits = torch.stack([s[..., i] for s in state["s"]], dim=-1)
        return self.mix(state["v"], logits)

    def write(self, state, i, y):
        state["v"].append(y)
        state["s"].append(self.logits(y))
        return state

    def end(self, state):
        return self.read(state, self.n_layers)

    def state_vectors(self) -> int:
        return self.n_layers + 1


@register("block-attnres")
class BlockAttnRes(_DepthAttention):
    """Options: `n_blocks` N (default: the paper's 8, capped at L) or `block_size` S (overrides N).

    `two_phase`: at the start of each block, attend over the completed blocks for all of the
    block's sublayers at once, then merge each sublayer's partial-sum term by online softmax.
    Exact; reads each block representation once per block instead of once per sublayer.
    """

    def __init__(self, d_model: int, n_layers: int, *, n_blocks: int | None = None, block_size: int | None = None,
                 two_phase: bool = False):
        super().__init__(d_model, n_layers)
        if block_size is None:
            n_blocks = min(8, n_layers) if n_blocks is None else n_blocks
            check_positive("n_blocks", n_blocks)
            if n_blocks > n_layers:
                raise VariantError(f"n_blocks must be <= n_layers (L={n_layers}), got {n_blocks}")
            block_size = math.ceil(n_layers / n_blocks)
        check_positive("block_size", block_size)
        if block_size > n_layers:
            raise VariantError(f"block_size must be <= n_layers (L={n_layers}), got {block_size}")
        self.block_size = block_size
        self.n_blocks = math.ceil(n_layers / block_size)  # effective N; last block may be partial
        if not isinstance(two_phase, bool):  # bool("false") is True: never coerce
            raise VariantError(f"two_phase must be true or false, got {two_phase!r}")
        self.two_phase = two_phase

    def _block_of(self, i: int) -> tuple[int, int]:
        """(block start, position of sublayer i inside its block)."""
        start = (i // self.block_size) * self.block_size
        return start, i - start

    def begin(self, e):
        return {"b": [e], "s": [self.logits(e)], "partial": None, "phase1": None}

    def read(self, state, i):
        start, pos = self._block_of(i)
        if self.two_phase:
            return self._read_two_phase(state, i, start, pos)
        logits = [s[..., i] for s in state["s"]]
        values = list(state["b"])
        if pos > 0:
            values.append(state["partial"])
            logits.append(self.logits(state["partial"], slice(i, i + 1))[..., 0])
        return self.mix(values, torch.stack(logits, dim=-1))

    def _read_two_phase(self, state, i, start, pos):
        if pos == 0:
            # phase 1: all readers of this block against the completed blocks at once.
            stop = min(start + self.block_size, self.n_layers)
            s = torch.stack([s[..., start:stop] for s in state["s"]], dim=-2)  # [.., n_src, S]
            m = s.amax(dim=-2, keepdim=True)
            p = torch.exp(s - m)
            b = torch.stack(state["b"], dim=-1)  # [.., d, n_src]
            o = b @ p.to(b.dtype)  # unnormalised outputs [.., d, S]
            state["phase1"] = (o, m.squeeze(-2), p.sum(dim=-2))
            return o[..., 0] / state["phase1"][2][..., 0:1].to(o.dtype)
        o, m1, l1 = (t[..., pos] for t in state["phase1"])
        # phase 2: merge the one partial-sum source by online softmax (exact).
        s2 = self.logits(state["partial"], slice(i, i + 1))[..., 0]
        m = torch.maximum(m1, s2)
        c1, c2 = torch.exp(m1 - m), torch.exp(s2 - m)
        num = c1.unsqueeze(-1).to(o.dtype) * o + c2.unsqueeze(-1).to(o.dtype) * state["partial"]
        return num / (c1 * l1 + c2).unsqueeze(-1).to(o.dtype)

    def write(self, state, i, y):
        start, pos = self._block_of(i)
        state["partial"] = y if pos == 0 else state["partial"] + y
        if pos == self.block_size - 1 or i == self.n_layers - 1:  # block complete
            state["b"].append(state["partial"])
            state["s"].append(self.logits(state["partial"]))
            state["partial"] = state["phase1"] = None
        return state

    def end(self, state):
        return self.mix(state["b"], torch.stack([s[..., self.n_layers] for s in state["s"]], dim=-1))

    def state_vectors(self) -> int:
        return self.n_blocks + 1
