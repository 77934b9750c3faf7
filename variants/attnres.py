"""Attention Residuals (arXiv 2603.15031): softmax attention over depth.

Full AttnRes. Sources v_0 = e, v_i = f_i(h_i) (raw sublayer outputs). Sublayer l reads
    h_l = sum_{i<l} alpha_{i->l} v_i,   alpha_{i->l} = softmax_i( w_l . RMSNorm_l(v_i) )
with w_l a learned pseudo-query and RMSNorm_l a key norm with its own gain g_l. w_l = 0 at init
gives uniform weights: h_l is the mean of the sources, and after the sublayer's own pre-norm step 0
equals PreNorm up to the norms' eps (exactly only as eps -> 0: the mean's smaller RMS meets the same
eps). A final readout (its own query and gain) feeds the final norm and head.

Block AttnRes. The L sublayers form N blocks (the paper's layout: whole transformer blocks, the
last block taking the remainder; see BlockAttnRes). Sources are the embedding b_0, the completed
block sums b_1 .. b_{n-1}, and, from the second sublayer of a block on, the running partial sum
b_n^{i-1} of the current block. N = L is Full AttnRes.

Ablations (paper Table 4), options of both, run by the equations only (`impl: reference`):
    input_query    w_l + W_l v/rms(v) of the reader's most recent source (W_l = 0 at init)
    static_mixing  input-independent: one learned logit per (reader, source position), no keys
    sigmoid        alpha_i = sigmoid(logit_i), each source gated on its own, no normalisation
    key_norm       false: keys g_l * v_i without the RMS normalisation
    window W       the embedding and the W most recent sources only (the paper's "1 + 8")
    heads H        d split into H heads, each its own query slice and softmax over the sources

This module is the equations, run as written with `impl: reference`. The default, `impl: fast`,
computes the same thing without re-stacking or re-normalising a source per reader: in eager
PyTorch with hand-written autograd nodes (variants/_attnres_fast.py); under torch.compile, which
cannot trace those, in the functional form (variants/_attnres_functional.py, also selectable as
`impl: functional`), which the compiler fuses. `impl: fla` keeps the equations' state and reads
it with flash-linear-attention's fused Triton kernel (variants/_attnres_fla.py; CUDA). The tests
hold all of them equal, forward and gradients, eager and compiled.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import register
from .base import (FORMS, Residual, VariantError, check_choice, check_positive, implementation, inv_rms, mix_dtype,
                   no_autocast)

IMPLS = ("fast", "functional", "reference", "fla")
# the forms (variants/base.implementation) each impl runs: `fast` runs the functional one under torch.compile
FORMS_OF = {"fast": ("fast", "functional"), "functional": ("functional",), "reference": (), "fla": ("fla",)}


def _form(impl: str):
    """A loaded form of these equations (variants/_attnres_<impl>.py)."""
    return FORMS[(__name__, impl)]
# The paper's Table 4 ablations, as options (the defaults are AttnRes as published).
ABLATIONS = {"input_query": False, "static_mixing": False, "sigmoid": False, "key_norm": True,
             "window": None, "heads": 1}


def depth_attention(sources: list[torch.Tensor], query: torch.Tensor, key_gain: torch.Tensor):
    """h = sum_i alpha_i v_i, alpha = softmax_i(w . RMSNorm(v_i)), RMSNorm(v) = g * v / rms(v).
    Mixing math in fp32 (fp64 for fp64). Returns h (the sources' dtype) and alpha [n, B, T]."""
    with no_autocast(sources[0]):
        dt = mix_dtype(sources[0].dtype)
        v = torch.stack(sources).to(dt)                    # [n, B, T, d]
        keys = key_gain.to(dt) * v * inv_rms(v)            # RMSNorm with the reader's gain
        # q as a [d, 1] column: the keys' gradient g q^T is then a matrix product, counted like
        # the fast form's (a vector q's gradient is an elementwise outer product, counted as 0)
        logits = (keys @ query.to(dt).unsqueeze(-1)).squeeze(-1)
        alpha = torch.softmax(logits, dim=0)               # [n, B, T]: softmax over the sources
        h = (alpha.unsqueeze(-1) * v).sum(0)
    return h.to(sources[0].dtype), alpha


def ablated_depth_attention(sources: list[torch.Tensor], logits_of, weights: str, heads: int):
    """The paper's Table 4 ablations of depth_attention: `logits_of(v)` gives the logits of the
    stacked sources v [n, B, T, d] per head ([n, B, T, heads]); `weights` "softmax" normalises over
    the sources, "sigmoid" gates each on its own. With heads H, head k mixes channels k*d/H.. only."""
    with no_autocast(sources[0]):
        dt = mix_dtype(sources[0].dtype)
        v = torch.stack(sources).to(dt)
        z = logits_of(v)
        alpha = torch.softmax(z, dim=0) if weights == "softmax" else torch.sigmoid(z)
        h = (alpha.unsqueeze(-1) * v.unflatten(-1, (heads, -1))).sum(0).flatten(-2)
    return h.to(sources[0].dtype), alpha


class DepthAttention(Residual):
    """Full and Block AttnRes: one (query w_l, key gain g_l) per reader; reader L is the output.
    The layout (which sublayers form a block) is set by the subclass with `_set_blocks`."""

    ablations = tuple(ABLATIONS)

    def __init__(self, d_model: int, n_layers: int, impl: str = "fast", ablation: dict | None = None):
        super().__init__(d_model, n_layers)
        check_choice("impl", impl, IMPLS)
        for form in FORMS_OF[impl]:  # loaded now, not while torch.compile traces a read
            implementation(DepthAttention, form)
        if impl == "fla" and _form("fla").available():
            raise VariantError(_form("fla").available())
        self.impl = impl
        ab = {**ABLATIONS, **(ablation or {})}
        for k in ("input_query", "static_mixing", "sigmoid", "key_norm"):
            if not isinstance(ab[k], bool):  # bool("false") is True: never coerce
                raise VariantError(f"{k} must be true or false, got {ab[k]!r}")
        if ab["window"] is not None:
            check_positive("window", ab["window"])
        check_positive("heads", ab["heads"])
        if d_model % ab["heads"]:
            raise VariantError(f"heads ({ab['heads']}) must divide d_model ({d_model})")
        if ab["static_mixing"] and (ab["input_query"] or not ab["key_norm"] or ab["heads"] != 1):
            raise VariantError("static_mixing has no keys or queries: it excludes input_query, key_norm false and heads")
        changed = [k for k, v in ab.items() if v != ABLATIONS[k]]
        if changed and impl != "reference":
            raise VariantError(f"{changed[0]}={ab[changed[0]]!r} is an ablation (paper Table 4) that only the "
                               "equations run: add impl: reference")
        self.__dict__.update(ab)
        self.ablated = bool(changed)
        if not self.static_mixing:
            self.query = nn.Parameter(torch.zeros(n_layers + 1, d_model))
            self.key_gain = nn.Parameter(torch.ones(n_layers + 1, d_model))
        if self.input_query:  # w_l + W_l v/rms(v) of the reader's latest source, W_l = 0 at init
            self.query_proj = nn.Parameter(torch.zeros(n_layers + 1, d_model, d_model))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.query)
        nn.init.ones_(self.key_gain)

    def _set_blocks(self, starts) -> None:
        """Blocks begin at the sublayer indices `starts` (0 first): Full AttnRes is range(L)."""
        L = self.n_layers
        self.starts = tuple(starts)
        ends = self.starts[1:] + (L,)
        self.block_start = [s for s, e in zip(self.starts, ends) for _ in range(s, e)]  # block start of sublayer i
        self.block_end = [e for s, e in zip(self.starts, ends) for _ in range(s, e)]
        self.first_read = (0, *self.starts[1:], L)  # source k (0 = embedding, k = block k-1) is first read here
        if self.static_mixing:
            self.mix_logits = nn.ParameterList(nn.Parameter(torch.zeros(self.seen(i))) for i in range(L + 1))

    # -- the protocol. One state layout for every form: "sources" (the embedding, then each
    # completed block's sum: appended, never changed) and "partial" (the current block's running
    # sum; None between blocks). A form (impl) keeps what it derives from them beside these.
    two_phase = False

    def _form(self):
        """The module running the protocol, or None for the equations below. `fast` under
        torch.compile is the functional form: the compiler cannot trace the fast form's shared
        backward store, and does itself what the hand-written nodes do for eager."""
        if self.impl in ("reference", "fla"):  # fla: the equations' state, the kernel's read (_mix)
            return None
        if self.impl == "functional" or torch.compiler.is_compiling():
            if self.two_phase:
                raise VariantError("two_phase is an eager schedule of the fast form; under torch.compile the "
                                   "compiler schedules the block (drop two_phase)")
            return _form("functional")
        return _form("fast")

    def begin(self, e):
        form = self._form()
        if form is not None:
            return form.begin(self, e)
        return {"sources": [e], "partial": None}

    def read(self, state, i):
        form = self._form()
        if form is not None:
            return form.read(self, state, i)
        sources = state["sources"] + ([state["partial"]] if state["partial"] is not None else [])
        return self._mix(sources, i)

    def write(self, state, i, y):
        form = self._form()
        if form is not None:
            return form.write(self, state, i, y)
        state["partial"] = y if state["partial"] is None else state["partial"] + y
        if i + 1 == self.block_end[i]:  # the block is complete: its sum becomes a source
            state["sources"].append(state["partial"])
            state["partial"] = None
        return state

    def end(self, state):
        form = self._form()
        if form is not None:
            return form.end(self, state)
        return self._mix(state["sources"], self.n_layers)

    def completed(self, state):
        """The completed sources (embedding, block sums), in every form: the one state layout."""
        return state["sources"]

    def _mix(self, sources, i):
        if self.window is not None and len(sources) > 1 + self.window:
            sources = [sources[0]] + sources[-self.window:]  # the embedding and the W most recent
        if self.ablated:
            h, alpha = ablated_depth_attention(sources, lambda v: self._ablated_logits(v, i),
                                               "sigmoid" if self.sigmoid else "softmax", self.heads)
        else:
            read = _form("fla").depth_attention if self.impl == "fla" else depth_attention
            h, alpha = read(sources, self.query[i], self.key_gain[i])
        self._note_weights(alpha)
        return h

    def _ablated_logits(self, v, i):
        """Logits [n, B, T, heads] of reader i over the stacked sources v [n, B, T, d]."""
        if self.static_mixing:  # input-independent: one learned logit per source position
            return self.mix_logits[i].to(v.dtype).view(-1, 1, 1, 1).expand(*v.shape[:-1], 1)
        keys = self.key_gain[i].to(v.dtype) * (v * inv_rms(v) if self.key_norm else v)
        q = self.query[i].to(v.dtype)
        keys = keys.unflatten(-1, (self.heads, -1))
        if self.input_query:  # from the reader's most recent source: the previous output or partial sum
            q = q + (v[-1] * inv_rms(v[-1])) @ self.query_proj[i].to(v.dtype).t()
            return torch.einsum("nbthd,bthd->nbth", keys, q.unflatten(-1, (self.heads, -1)))
        return torch.einsum("nbthd,hd->nbth", keys, q.unflatten(-1, (self.heads, -1)))

    def seen(self, i: int) -> int:
        """Sources reader i (L: the output readout) attends over: the completed ones first read at
        or before i, the current block's partial sum, at most 1 + window."""
        L = self.n_layers
        n = sum(1 for f in self.first_read if f <= i) + (1 if i < L and i != self.block_start[i] else 0)
        return n if self.window is None else min(n, 1 + self.window)

    # -- declared costs ---------------------------------------------------------------------
    def declared_extra_params(self) -> int:
        L, d = self.n_layers, self.d_model
        if self.static_mixing:
            return sum(self.seen(i) for i in range(L + 1))
        return 2 * d * (L + 1) + (d * d * (L + 1) if self.input_query else 0)

    def residual_traffic(self) -> int:
        """Each reader (the output readout too) reads its sources once and writes its input; a
        block's partial sum adds each later output (3). two_phase reads a block's completed
        sources once for all of its S readers and writes their S terms, then each later reader
        merges its term with the partial sum (3)."""
        L = self.n_layers
        partial = 3 * sum(1 for i in range(L) if i != self.block_start[i])
        if not self.two_phase:
            return sum(self.seen(i) + 1 for i in range(L + 1)) + partial
        blocks = sum(self.seen(s) + size + 3 * (size - 1) for s, size in zip(self.starts, self.block_sizes()))
        return blocks + self.seen(L) + 1 + partial

    def mixing_flops(self) -> int:
        """Logits are the only matrix products: one d-long dot product per (reader, source) pair,
        the partial sum included (weighted sums and softmax are elementwise); input_query adds
        one d x d product per reader, static_mixing has no products at all."""
        L, d = self.n_layers, self.d_model
        if self.static_mixing:
            return 0
        return 2 * d * sum(self.seen(i) for i in range(L + 1)) + (2 * d * d * (L + 1) if self.input_query else 0)

    def logits(self, v: torch.Tensor, readers: slice | None = None) -> torch.Tensor:
        """fp32 logits of source v [.., d] against readers (default all): [.., n_readers]."""
        q = self.key_gain * self.query
        if readers is not None:
            q = q[readers]
        dt = mix_dtype(v.dtype)
        with no_autocast(v):
            return (v.to(dt) * inv_rms(v)) @ q.to(dt).t()

    # -- dynamics (opt-in, off the hot path): token-averaged softmax weights per reader ---------
    recorded_weights: list | None = None  # per read, token-averaged (record_weights)

    def record_weights(self, on: bool) -> None:
        self.recorded_weights = [] if on else None

    def depth_weights(self) -> list[list[float]] | None:
        """Rows = readers (sublayers, then the output readout); columns = that reader's sources
        in order: embedding, completed blocks, then the running partial sum when there is one."""
        return self.recorded_weights

    @torch.no_grad()
    def _note_weights(self, alpha: torch.Tensor) -> None:
        if self.recorded_weights is not None:
            self.recorded_weights.append(alpha.reshape(alpha.shape[0], -1).mean(1).tolist())


@register("full-attnres")
class FullAttnRes(DepthAttention):
    """Option `impl`: "fast" (default), "functional", "reference" (the equations above, run as
    written) or "fla" (flash-linear-attention's fused kernel reads the equations' state)."""

    def __init__(self, d_model: int, n_layers: int, *, impl: str = "fast", input_query: bool = False,
                 static_mixing: bool = False, sigmoid: bool = False, key_norm: bool = True,
                 window: int | None = None, heads: int = 1):
        super().__init__(d_model, n_layers, impl, dict(input_query=input_query, static_mixing=static_mixing,
                                                       sigmoid=sigmoid, key_norm=key_norm, window=window, heads=heads))
        self._set_blocks(range(n_layers))  # every sublayer output is its own source

    def state_vectors(self) -> int:
        return self.n_layers + 1


LAYOUTS = ("paper", "ceil")


@register("block-attnres")
class BlockAttnRes(DepthAttention):
    """Options: `n_blocks` N (default: the paper's 8, capped at the number of transformer
    blocks) laid out by `layout`, or `block_size` S (sublayers per block, the last block partial).

    layout "paper" (§3.2 and its Fig. 2 code): block sizes count transformer blocks (attention +
    MLP), so boundaries fall between transformer blocks: N blocks of floor(L_b / N) transformer
    blocks each, the last one also taking the L_b mod N left over. layout "ceil": blocks of
    S = ceil(L / N) sublayers; an N that this cannot make (L = 10, N = 8 gives 5 blocks) is an
    error, never a silently smaller N.

    `impl`: "fast" (default), "functional", "reference" (the equations, run as written) or "fla".

    `two_phase` (fast form only): at the start of each block, attend over the completed blocks for all of the
    block's sublayers at once, then merge each sublayer's partial-sum term by online softmax.
    Exact, and equal to the direct form. Off by default: in eager CPU PyTorch the S-1 batched
    outputs go out to memory and come back between sublayers, which costs about what the shared
    source reads save (shape A, 1 thread: 124 ms vs 114 ms of mixing per forward), and
    they hold S-1 extra d-vectors per token during the block (declared in `state_vectors`). A
    fused kernel would change that.
    """

    def __init__(self, d_model: int, n_layers: int, *, n_blocks: int | None = None, block_size: int | None = None,
                 layout: str = "paper", two_phase: bool = False, impl: str = "fast", input_query: bool = False,
                 static_mixing: bool = False, sigmoid: bool = False, key_norm: bool = True,
                 window: int | None = None, heads: int = 1):
        super().__init__(d_model, n_layers, impl, dict(input_query=input_query, static_mixing=static_mixing,
                                                       sigmoid=sigmoid, key_norm=key_norm, window=window, heads=heads))
        check_choice("layout", layout, LAYOUTS)
        L = n_layers
        if block_size is not None:
            if n_blocks is not None:
                raise VariantError("give n_blocks or block_size, not both")
            check_positive("block_size", block_size)
            if block_size > L:
                raise VariantError(f"block_size must be <= n_layers (L={L}), got {block_size}")
            starts = range(0, L, block_size)
        elif layout == "paper":
            if L % 2:
                raise VariantError(f"layout 'paper' counts whole transformer blocks (attention + MLP): L={L} is odd; "
                                   "use block_size")
            blocks = L // 2
            n = min(8, blocks) if n_blocks is None else n_blocks
            check_positive("n_blocks", n)
            if n > blocks:
                raise VariantError(f"n_blocks must be <= the number of transformer blocks ({blocks}, L={L}) under "
                                   f"layout 'paper', got {n}")
            starts = range(0, 2 * (blocks // n) * n, 2 * (blocks // n))
        else:
            n = min(8, L) if n_blocks is None else n_blocks
            check_positive("n_blocks", n)
            if n > L:
                raise VariantError(f"n_blocks must be <= n_layers (L={L}), got {n}")
            starts = range(0, L, math.ceil(L / n))
            if len(starts) != n:
                raise VariantError(f"layout 'ceil' (blocks of ceil(L/N) = {math.ceil(L / n)} sublayers) makes "
                                   f"{len(starts)} blocks of L={L}, not n_blocks={n}; ask for n_blocks={len(starts)} "
                                   "or use layout 'paper'")
        self._set_blocks(starts)
        self.block_size, self.layout = block_size, layout
        self.n_blocks = len(self.starts)  # = the requested N whenever one was given
        if not isinstance(two_phase, bool):  # bool("false") is True: never coerce
            raise VariantError(f"two_phase must be true or false, got {two_phase!r}")
        if two_phase and impl != "fast":
            raise VariantError("two_phase is a way of computing the fast form: it needs impl 'fast'")
        self.two_phase = two_phase

    def block_sizes(self) -> list[int]:
        """Sublayers per block, in order."""
        return [e - s for s, e in zip(self.starts, self.starts[1:] + (self.n_layers,))]

    def state_vectors(self) -> int:
        """The most d-vectors per token the state holds at once: the embedding, the completed
        blocks and the partial sum (N + 1 at most). two_phase also holds, through block b (0
        first) of S_b sublayers, its S_b - 1 precomputed outputs: 1 + b + S_b at most."""
        if self.two_phase:
            return max(b + 1 + s for b, s in enumerate(self.block_sizes()))
        return self.n_blocks + 1
