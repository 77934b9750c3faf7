"""The functional form of AttnRes (`impl: functional`, and what `impl: fast` runs under
torch.compile): the equations of variants/attnres.py in plain tensor ops, with no autograd node
of its own and no Python store shared between backward nodes, so the compiler traces the whole
depth loop into one graph, derives the backward and fuses each reader into a few kernels.

It keeps the one saving that does not need hand-written backward: queries do not depend on the
input, so a source's logits against every later reader are one small matmul when the source is
produced (key gain folded into the query, times 1/rms), never recomputed per reader. A reader is
a softmax over those columns (and the partial sum's logit) and a weighted sum of the sources.

In eager PyTorch this form saves every temporary for backward (autograd's own rules); the fast
form (variants/_attnres_fast.py) exists for that regime. tests/test_compile.py holds this form
against `impl: reference`, eager and compiled, forward and gradients.
"""
from __future__ import annotations

import torch

from .base import inv_rms, mix_dtype, no_autocast


def _source_logits(v: torch.Tensor, qk: torch.Tensor, first: int) -> torch.Tensor:
    """Logits [B, T, R] of source v against readers first..L (fp32; fp64 for fp64)."""
    mt = mix_dtype(v.dtype)
    return (v.to(mt) @ qk[first:].to(mt).t()) * inv_rms(v)


def _attend(m, values: list[torch.Tensor], cols: list[torch.Tensor]) -> torch.Tensor:
    """h = sum_k softmax(cols)_k v_k, accumulated in the mixing dtype, cast to the sources'."""
    a = torch.softmax(torch.stack(cols, dim=-1), dim=-1)  # [B, T, n]
    m._note_weights(a.movedim(-1, 0))  # dynamics only (off: a no-op the compiler drops)
    mt = a.dtype
    h = a[..., 0:1] * values[0].to(mt)
    for k in range(1, len(values)):
        h = h + a[..., k:k + 1] * values[k].to(mt)
    return h.to(values[0].dtype)


# The state is the equations' layout (variants/attnres.py: "sources", "partial") plus each
# source's logits against every later reader ("logits": one [B, T, R] tensor per source, column j
# = reader first + j) and the folded queries ("qk").

def begin(m, e):
    with no_autocast(e):
        qk = m.key_gain * m.query
        return {"sources": [e], "partial": None, "logits": [_source_logits(e, qk, 0)], "qk": qk}


def read(m, state, i):
    values = list(state["sources"])
    cols = [s[..., i - m.first_read[k]] for k, s in enumerate(state["logits"])]
    p = state["partial"]
    with no_autocast(values[0]):
        if p is not None:  # the running partial sum of the current block is a source too
            cols.append(_source_logits(p, state["qk"][i:i + 1], 0)[..., 0])
            values.append(p)
        return _attend(m, values, cols)


def write(m, state, i, y):
    state["partial"] = y if i == m.block_start[i] else state["partial"] + y
    if i + 1 == m.block_end[i]:  # block complete: a new source
        with no_autocast(y):
            state["logits"].append(_source_logits(state["partial"], state["qk"], i + 1))
        state["sources"].append(state["partial"])
        state["partial"] = None
    return state


def end(m, state):
    L = m.n_layers
    cols = [s[..., L - m.first_read[k]] for k, s in enumerate(state["logits"])]
    with no_autocast(state["sources"][0]):
        return _attend(m, state["sources"], cols)
