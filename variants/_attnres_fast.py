"""The fast form of Attention Residuals (`impl: fast`, the default): the same equations as
variants/attnres.py, computed without re-reading or re-stacking anything (docs/OVERHEAD.md).

- Sources are stored once, as references; nothing is re-stacked per sublayer.
- Queries do not depend on the input, so a source's logits against *every* later reader are
  computed once, when it is produced (`_SourceLogits`: one small matmul with the key gain folded
  into the query, times 1/rms). Keys are never stored; logits and softmax are fp32 (fp64 for fp64).
- A reader (`_Attend`) is one autograd node: one softmax over the completed sources and the
  block's partial sum, a weighted sum read straight from the stored sources. It saves references
  and per-token scalars only; not even the partial sum, which backward rebuilds from h.
- The source side of the backward (per-token dots and source gradients) runs once per source in
  its `_SourceLogits` node (see `_Store`), not once per (reader, source) pair in the readers.
- Inference (no grad) runs the same math without autograd nodes.
- Block `two_phase`: the completed-source part of every sublayer of a block is computed at the
  block's start, then merged with the partial sum by online softmax (exact).

begin/read/write/end below are the protocol calls of a `DepthAttention` module `m` (its layout:
m.block_start, m.block_end, m.first_read, m.starts; its parameters: m.query, m.key_gain).
tests/test_fast_forms.py and tests/test_equations.py hold them against `impl: reference`.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .base import fast_inv_rms, leafless_pytree_node, mix_dtype, no_autocast


def _weighted_sum(values, weights: torch.Tensor) -> torch.Tensor:
    """sum_i weights[i] * values[i], a fresh tensor; weights [n, ..] fp32, one scalar per token."""
    ws = weights.unsqueeze(-1).to(values[0].dtype).unbind(0)
    out = values[0] * ws[0]
    for v, a in zip(values[1:], ws[1:]):
        out.addcmul_(v, a)
    return out


def _softmax_stats(cols) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax weights [n, B, T] over sources and their log-sum-exp [B, T]."""
    s = torch.stack(cols)
    lse = torch.logsumexp(s, dim=0)
    return torch.exp(s - lse), lse


def _partial_logit(p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logit of the partial sum p for one reader (query q, key gain folded in) and 1/rms(p)."""
    mt = mix_dtype(p.dtype)
    r = fast_inv_rms(p).squeeze(-1)
    return (p.to(mt) @ q.to(mt)) * r, r


def _attend_math(reader, qk, p, pre, values, cols):
    """Forward math of a reader: (h, a, w, r, s_p) with a [n, B, T] the weights of the completed
    sources in h and w [B, T] that of the partial sum (None without one)."""
    dt = values[0].dtype
    if p is None:
        a = torch.softmax(torch.stack(cols), dim=0)
        return _weighted_sum(values, a), a, None, None, None
    s_p, r = _partial_logit(p, qk[reader])
    if pre is None:  # one softmax over the completed sources and the partial sum
        a = torch.softmax(torch.stack([*cols, s_p]), dim=0)
        a, w = a[:-1], a[-1]
        h = _weighted_sum(values, a)
        h.addcmul_(p, w.unsqueeze(-1).to(dt))
    else:  # two-phase: o and log-sum-exp were computed at the block's start; online softmax
        A, lse, o = pre
        w = torch.sigmoid(s_p - lse)
        a = A * (1 - w)
        h = torch.lerp(o, p, w.unsqueeze(-1).to(dt))
    return h, a, w, r, s_p


@leafless_pytree_node
class _Store:
    """Per-forward scratch shared by the backward nodes, for the source-side work of the softmax
    backward: per-token dots <g_l, v_k> (reader l's output gradient against source k) and the
    source gradients sum_l a_l[k] g_l. Every source's `_SourceLogits` node returns its gradient; autograd
    runs it after all of the source's readers (they consume its logits).

    defer=True (Full AttnRes, one source per sublayer): readers leave (g_l, a_l, <g_l, h_l>)
    here and each `_SourceLogits` backward does its source's work in one sweep over the g_l, with v_k in
    cache: one pass over each g_l per source instead of a pass over v_k and a read-modify-write
    of a gradient buffer per (reader, source) pair. It keeps every g_l until the embedding's
    turn, O(L d) like the sources themselves.
    defer=False (Block AttnRes): each reader does the dots and accumulates into one buffer per
    source at once, so backward holds O(N d), never O(L d), as the method promises (this is
    what activation checkpointing sees).

    Carried in the state as a pytree node without leaves, so checkpointing can carry it."""

    def __init__(self, defer: bool):
        self.defer = defer
        self.readers: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.grads: dict[int, torch.Tensor] = {}
        self._scratch: dict[int, torch.Tensor] = {}

    def scratch(self, slot: int, like: torch.Tensor) -> torch.Tensor:
        """A reusable buffer shaped like `like`: fresh multi-MB temporaries cost page faults on CPU."""
        buf = self._scratch.get(slot)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._scratch[slot] = torch.empty_like(like, memory_format=torch.contiguous_format)
        return buf

    def accumulate(self, k: int, g: torch.Tensor, wa: torch.Tensor) -> None:
        buf = self.grads.get(k)
        if buf is None:
            self.grads[k] = g * wa
        else:
            buf.addcmul_(g, wa)

    def clear(self) -> None:
        self.readers.clear()
        self.grads.clear()
        self._scratch.clear()



def _dot(g: torch.Tensor, v: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """<g, v> per token, through a reusable product buffer."""
    return torch.mul(g, v, out=buf).sum(-1)


def _source_logits_math(v, qk, first):
    """Logits [R, BT] of source v against readers first..L, and 1/rms(v) [BT]."""
    mt = mix_dtype(v.dtype)
    r = fast_inv_rms(v).reshape(-1)
    return (qk[first:].to(mt) @ v.reshape(-1, v.shape[-1]).to(mt).t()) * r, r


class _SourceLogits(torch.autograd.Function):
    """Logits of source k against readers first..L: s_l = (g_l * w_l) . v / rms(v), one [B, T]
    tensor per reader. Saves v (a reference), 1/rms and the logits. Backward returns the whole
    gradient of v: the softmax part from the store (see `_Store`), plus the logit part."""

    @staticmethod
    def forward(ctx, v, qk, k, first, store):
        s, r = _source_logits_math(v, qk, first)
        ctx.k, ctx.first, ctx.store = k, first, store
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(v, qk, r, s)
        return tuple(s.view(-1, *v.shape[:-1]).unbind(0))

    @staticmethod
    @once_differentiable
    def backward(ctx, *gs):
        v, qk, r, s = ctx.saved_tensors
        store, k, first = ctx.store, ctx.k, ctx.first
        d, dt, mt = v.shape[-1], v.dtype, s.dtype
        if store.defer:
            gv, gs = None, []
            buf = store.scratch(0, v)
            for l in range(first, first + s.shape[0]):
                if l not in store.readers:  # a reader that backward did not reach contributes nothing
                    gs.append(torch.zeros_like(r))
                    continue
                g, a, gh = store.readers[l]
                a = a[k]
                gs.append((a * (_dot(g, v, buf).to(mt) - gh)).reshape(-1))  # softmax grad of s_l
                wa = a.unsqueeze(-1).to(dt)
                gv = g * wa if gv is None else gv.addcmul_(g, wa)  # g_l again, now in cache
        else:
            gv = store.grads.pop(k, None)
            gs = [torch.zeros_like(r) if x is None else x.reshape(-1) for x in gs]
        if gv is None:
            gv = torch.zeros_like(v)
        if k == 0:  # the embedding is the last source: this backward pass is done
            store.clear()
        gs = torch.stack(gs)
        u = gs * r  # d loss / d (v . q_l)
        q = qk[first:].to(mt)
        v2 = v.reshape(-1, d).to(mt)
        coef = (-(r * r) / d * (gs * s).sum(0)).unsqueeze(-1)  # through 1/rms: d r / d v = -r^3 v / d
        if dt == mt:
            gv2 = gv.view(-1, d)
            gv2.addmm_(u.t(), q)
            gv2.addcmul_(v2, coef)
        else:
            gv.add_(torch.addcmul(u.t() @ q, v2, coef).view_as(v).to(dt))
        gq = torch.zeros_like(qk)
        gq[first:] = (u @ v2).to(qk.dtype)
        return gv, gq, None, None, None


class _Attend(torch.autograd.Function):
    """h = sum_i a_i v_i + w p: softmax attention over the completed sources v_i and the
    partial sum p of the current block (w = 0 without one).

    Saves the sources (references), the weights a and w, 1/rms(p), its logit and h (which the
    sublayer's norm keeps alive anyway). p itself is not kept: backward rebuilds it as
    (h - sum_i a_i v_i) / w. Its error, about eps|h|/w, only enters terms scaled by the logit
    gradient of p, itself proportional to w, so it stays near eps; w is floored at eps so a
    vanishing weight cannot turn 0/0 into NaN. Source gradients go to the sources' `_SourceLogits`
    nodes through the store."""

    @staticmethod
    def forward(ctx, reader, qk, p, pre, store, *args):
        n = len(args) // 2
        values, cols = args[:n], args[n:]
        h, a, w, r, s_p = _attend_math(reader, qk, p, pre, values, cols)
        ctx.reader, ctx.n, ctx.store, ctx.partial = reader, n, store, p is not None
        if p is None:
            ctx.save_for_backward(a, h, *values)
        else:
            ctx.save_for_backward(a, h, *values, w, r, s_p, qk)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        l, n, store = ctx.reader, ctx.n, ctx.store
        a, h, *rest = ctx.saved_tensors
        values = rest[:n]
        dt, mt = g.dtype, a.dtype
        g = g.contiguous()
        prod = store.scratch(0, g)
        gh = _dot(g, h, prod).to(mt)
        if store.defer:
            store.readers[l] = (g, a, gh)
        ws = a.unsqueeze(-1).to(dt).unbind(0)
        e, o = [], store.scratch(1, g) if ctx.partial else None
        for k, (v, wk) in enumerate(zip(values, ws)):  # one pass over each source while in cache
            if not store.defer:
                e.append(_dot(g, v, prod))
                store.accumulate(k, g, wk)
            if o is not None:  # sum_k a_k v_k, as in forward
                torch.mul(v, wk, out=o) if k == 0 else o.addcmul_(v, wk)
        g_cols = (None,) * n if store.defer else (a * (torch.stack(e).to(mt) - gh)).unbind(0)
        if not ctx.partial:
            return (None, None, None, None, None, *(None,) * n, *g_cols)
        w, r, s_p, qk = rest[n:]
        g_sp = (1 - w) * gh - _dot(g, o, prod).to(mt)  # = w (<g, p> - <g, h>), free of 1/w
        # p = (h - o) / w: keep nd = o - h = -w p and fold -1/w into its uses
        nd = o.sub_(h)
        inv_w = -1 / w.clamp_min(torch.finfo(dt).eps)
        c = g_sp * r  # d loss / d (p . q)
        gp = g * w.unsqueeze(-1).to(dt)
        # the logit's gradient c q: a rank-1 product, written as one (a matrix product, counted as such)
        gp.view(-1, gp.shape[-1]).addmm_(c.reshape(-1, 1).to(dt), qk[l:l + 1].to(dt))
        gp.addcmul_(nd, (-c * r * s_p / nd.shape[-1] * inv_w).unsqueeze(-1).to(dt))
        gq = torch.zeros_like(qk)
        gq[l] = ((c * inv_w).reshape(-1) @ nd.reshape(-1, nd.shape[-1]).to(mt)).to(qk.dtype)
        return (None, gq, gp, None, None, *(None,) * n, *g_cols)


def source_logits(v, qk, k, first, store):
    with no_autocast(v):
        if torch.is_grad_enabled():
            return _SourceLogits.apply(v, qk, k, first, store)
        return tuple(_source_logits_math(v, qk, first)[0].view(-1, *v.shape[:-1]).unbind(0))


def attend(reader, qk, p, pre, store, values, cols):
    with no_autocast(values[0]):
        if torch.is_grad_enabled():
            return _Attend.apply(reader, qk, p, pre, store, *values, *cols)
        return _attend_math(reader, qk, p, pre, values, cols)[0]  # inference: no autograd node


# -- the protocol calls of the fast form -------------------------------------------------------
# The state is the equations' layout (variants/attnres.py: "sources", "partial") plus what this
# form derives, all a pytree so activation checkpointing can carry it: each source's logits
# against every later reader ("logits", one tuple per source), the folded queries ("qk"), the
# two-phase precomputations ("pre") and the backward store. Source k is first read by reader
# m.first_read[k].

def begin(m, e):
    qk = m.key_gain * m.query
    store = _Store(defer=len(m.starts) == m.n_layers)  # one source per sublayer: Full
    return {"sources": [e], "partial": None, "logits": [source_logits(e, qk, 0, 0, store)], "qk": qk, "pre": None,
            "store": store}


def read(m, state, i):
    pos = i - m.block_start[i]
    values = state["sources"]
    cols = [s[i - m.first_read[k]] for k, s in enumerate(state["logits"])]
    pre = None
    if m.two_phase and pos == 0:
        state["pre"] = _phase_one(m, values, state["logits"], i + 1, m.block_end[i])
    elif m.two_phase:
        pre = state["pre"][pos - 1]
    _note_weights(m, state, i, cols)
    return attend(i, state["qk"], state["partial"], pre, state["store"], values, cols)


def write(m, state, i, y):
    state["partial"] = y if i == m.block_start[i] else state["partial"] + y
    if i + 1 == m.block_end[i]:  # block complete: a new source
        k = len(state["sources"])
        state["sources"].append(state["partial"])
        state["logits"].append(source_logits(state["partial"], state["qk"], k, i + 1, state["store"]))
        state["partial"] = state["pre"] = None
    return state


def end(m, state):
    L = m.n_layers
    cols = [s[L - m.first_read[k]] for k, s in enumerate(state["logits"])]
    _note_weights(m, state, L, cols)
    return attend(L, state["qk"], None, None, state["store"], state["sources"], cols)


@torch.no_grad()
def _phase_one(m, values, logits, start, stop):
    """(softmax weights, lse, o) for readers start..stop-1 over the completed sources, with one
    pass over each source for all of them."""
    if stop <= start:
        return []
    with no_autocast(values[0]):
        dt = values[0].dtype
        stats = [_softmax_stats([s[j - m.first_read[k]] for k, s in enumerate(logits)]) for j in range(start, stop)]
        A = torch.stack([a for a, _ in stats], dim=1)  # [n, readers, B, T]
        o = values[0].unsqueeze(0) * A[0].unsqueeze(-1).to(dt)
        for v, a in zip(values[1:], A[1:]):
            o.addcmul_(v.unsqueeze(0), a.unsqueeze(-1).to(dt))
        return [(a, lse, o[j]) for j, (a, lse) in enumerate(stats)]


@torch.no_grad()
def _note_weights(m, state, i, cols) -> None:
    """Dynamics (opt-in, off the hot path): token-averaged softmax weights of reader i."""
    if m.recorded_weights is None:
        return
    logits = [c.float() for c in cols]
    if state["partial"] is not None:
        logits.append(m.logits(state["partial"], slice(i, i + 1))[..., 0].float())
    a = torch.softmax(torch.stack(logits, dim=-1), dim=-1)
    m.recorded_weights.append(a.reshape(-1, a.shape[-1]).mean(0).tolist())
