"""The shared decoder-only transformer. Its depth wiring belongs entirely to a residual variant.

Every variant runs on exactly these sublayers: embedding (+ learned positions), causal
self-attention (F.scaled_dot_product_attention), a GELU MLP, RMSNorm, a final norm and an LM head.
`depth` counts transformer blocks; a block is two sublayers (attention, MLP), so L = 2 * depth.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.checkpoint import checkpoint

from . import variants
from .errors import ConfigError
from .variants.base import RMS_EPS, Residual


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 256
    d_model: int = 128
    depth: int = 4  # transformer blocks (L = 2 * depth sublayers)
    n_heads: int = 4
    mlp_ratio: float = 4.0
    seq_len: int = 128

    def __post_init__(self):
        for key in ("vocab_size", "d_model", "depth", "n_heads", "seq_len"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{key} must be a positive integer, got {v!r}")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or self.mlp_ratio <= 0:
            raise ConfigError(f"mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    @property
    def n_layers(self) -> int:
        """L: sublayers, attention and MLP counted separately."""
        return 2 * self.depth

    @property
    def d_hidden(self) -> int:
        return int(round(self.mlp_ratio * self.d_model))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, RMS_EPS)


def take(h):
    """A sublayer's input, possibly handed over as a one-item list: the module call then does not
    keep it alive, and once the pre-norm has read it, it is freed. (AttnRes's h is a fresh
    d-vector per token that nothing else holds; PreNorm's is the stream, which the state keeps.)
    The sublayers below chain their temporaries for the same reason: each dies as soon as the
    next op has read it, so a no-grad forward holds the residual state and one op's operands."""
    return h.pop() if isinstance(h, list) else h


class KVCache:
    """Keys and values of every attention sublayer for the tokens seen so far, preallocated for
    `max_len` positions ([depth, B, H, max_len, d_head] each). `length` is the positions
    filled; Transformer.forward advances it after each call. This is all incremental decoding
    keeps between tokens: every registered variant mixes depth within a token (see
    Residual.token_local), so its depth state is rebuilt per token and dies with it.

    `static`: the form torch.compile wants (as gpt-fast does). The filled length is a tensor the
    graph reads and advances, new keys go in by index_copy_, and attention runs over all
    max_len positions with a mask, so every decode step has the same shapes and one compiled
    graph serves them all. Eager decoding slices the filled positions instead (less work per
    step). A static cache cannot check overflow inside a compiled graph: size it to the prompt
    plus the new tokens."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int | None = None, dtype=torch.float32,
                 device: torch.device | str = "cpu", static: bool = False):
        self.max_len = max_len or cfg.seq_len
        shape = (cfg.depth, batch, cfg.n_heads, self.max_len, cfg.d_model // cfg.n_heads)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.static = static
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # static: the filled length
        self._length = 0

    @property
    def length(self) -> int:
        return int(self.pos) if self.static else self._length

    @length.setter
    def length(self, n: int) -> None:
        if self.static:
            self.pos.fill_(n)
        else:
            self._length = n

    def start(self):
        """Position of the next token: an int, or (static) the length tensor itself."""
        return self.pos if self.static else self._length

    def advance(self, n: int) -> None:
        if self.static:
            self.pos.add_(n)
        else:
            self._length += n

    def extend(self, block: int, k: torch.Tensor, v: torch.Tensor):
        """Store this call's keys/values [B, H, T, dh] after the filled positions. Returns the keys
        and values to attend over (views, no copy), the boolean mask [T, positions] or None, and
        whether attention is plainly causal: the new tokens sit at positions past .. past+T-1,
        each sees the cache and itself."""
        T = k.shape[2]
        if self.static:
            at = self.pos + torch.arange(T, device=k.device)
            self.k[block].index_copy_(2, at, k)
            self.v[block].index_copy_(2, at, v)
            mask = torch.arange(self.max_len, device=k.device) <= at.unsqueeze(1)
            return self.k[block], self.v[block], mask, False
        past = self._length
        end = past + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; this call needs {end}")
        self.k[block, :, :, past:end] = k
        self.v[block, :, :, past:end] = v
        mask = None
        if past and T > 1:
            mask = torch.ones(T, end, dtype=torch.bool, device=k.device).tril(past)
        return self.k[block, :, :, :end], self.v[block, :, :, :end], mask, past == 0 and T > 1

    def nbytes(self, length: int | None = None) -> int:
        """Bytes of keys and values for `length` positions (default: those filled)."""
        n = self.length if length is None else length
        return 2 * self.k[:, :, :, :n].numel() * self.k.element_size()


class Attention(nn.Module):
    """Sublayer f(h) = Attn(norm(h)): causal multi-head self-attention."""

    def __init__(self, cfg: ModelConfig, block: int = 0):
        super().__init__()
        self.n_heads, self.block = cfg.n_heads, block
        self.norm = RMSNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, h, cache: KVCache | None = None):
        u = self.norm(take(h))
        B, T, D = u.shape
        qkv = self.qkv(u).view(B, T, 3, self.n_heads, D // self.n_heads).transpose(1, 3)  # [B, H, 3, T, dh]
        del u
        q, k, v = qkv.unbind(2)
        del qkv
        mask, causal = None, T > 1
        if cache is not None:
            k, v, mask, causal = cache.extend(self.block, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        del q, k, v
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    """Sublayer f(h) = MLP(norm(h))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, cfg.d_hidden, bias=False)
        self.proj = nn.Linear(cfg.d_hidden, cfg.d_model, bias=False)

    def forward(self, h, cache: KVCache | None = None):  # noqa: ARG002 - per token: nothing to cache
        return self.proj(F.gelu(self.fc(self.norm(take(h))), approximate="tanh"))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, residual: Residual):
        super().__init__()
        if residual.d_model != cfg.d_model or residual.n_layers != cfg.n_layers:
            raise ConfigError(
                f"residual built for d_model={residual.d_model}, L={residual.n_layers}; "
                f"model has d_model={cfg.d_model}, L={cfg.n_layers}"
            )
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.sublayers = nn.ModuleList(
            Attention(cfg, i // 2) if i % 2 == 0 else MLP(cfg) for i in range(cfg.n_layers)
        )
        self.norm_f = RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.residual = residual

    def shared_modules(self) -> list[nn.Module]:
        """Everything but the residual variant: identical across variants for one seed."""
        return [self.tok_emb, self.pos_emb, self.sublayers, self.norm_f, self.head]

    @torch.no_grad()
    def init_shared(self, generator: torch.Generator) -> None:
        """GPT-2 style init of the shared parts only (never touches the variant's own init)."""
        std = 0.02
        for top in self.shared_modules():
            for name, m in top.named_modules():
                if isinstance(m, RMSNorm):
                    m.weight.fill_(1.0)
                elif isinstance(m, (nn.Linear, nn.Embedding)):
                    # projections write into the residual stream: GPT-2's 1/sqrt(2 * blocks)
                    scale = (2 * self.cfg.depth) ** -0.5 if name.endswith("proj") else 1.0
                    m.weight.normal_(0.0, std * scale, generator=generator)
        self._apply_init_scales()

    def _apply_init_scales(self) -> None:
        """The variant's init_scale per role (e.g. DeepNorm's beta), on the weights just drawn."""
        d, gpt2 = self.cfg.d_model, (2 * self.cfg.depth) ** -0.5
        for i, sub in enumerate(self.sublayers):
            if isinstance(sub, Attention):
                parts = [("attn.q", sub.qkv.weight[:d], 1.0), ("attn.k", sub.qkv.weight[d:2 * d], 1.0),
                         ("attn.v", sub.qkv.weight[2 * d:], 1.0), ("attn.out", sub.proj.weight, gpt2)]
            else:
                parts = [("mlp.in", sub.fc.weight, 1.0), ("mlp.out", sub.proj.weight, gpt2)]
            for role, w, default in parts:
                scale = self.residual.init_scale(role)
                if scale is not None:
                    w.mul_(scale / default)

    def embed(self, idx: torch.Tensor, start=0) -> torch.Tensor:
        """Token plus position embeddings; `start` is the first position (an int, or a [1] tensor)."""
        pos = torch.arange(idx.shape[1], device=idx.device) + start
        return self.tok_emb(idx) + self.pos_emb(pos)

    def forward(self, idx: torch.Tensor, checkpoint_every: int = 0, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """idx [B, T] int64 → logits [B, T, vocab] (last_only: [B, 1, vocab]). checkpoint_every=k
        > 0: activation checkpointing by segments of k blocks (only the residual state at segment
        boundaries is kept for backward; each segment is recomputed in backward). With a cache,
        idx continues the cached tokens: prefill (T > 1) or one decode step (T = 1)."""
        # no local keeps the embedding or the final state alive: only what the residual keeps lives
        start = 0 if cache is None else cache.start()
        if checkpoint_every and cache is not None:
            raise ConfigError("checkpoint_every recomputes a training forward; a KV cache is for decoding, not both")
        if checkpoint_every:
            x = self.residual.end(self._checkpointed(self.residual.begin(self.embed(idx)), checkpoint_every))
        else:
            x = self.residual.end(self.run_sublayers(self.residual.begin(self.embed(idx, start)), 0,
                                                     self.cfg.n_layers, cache))
        if cache is not None:
            cache.advance(idx.shape[1])
        return self.head(self.norm_f(x[:, -1:] if last_only else x))

    def run_sublayers(self, state: Any, start: int, stop: int, cache: KVCache | None = None) -> Any:
        """Sublayers [start, stop) on a residual state: one pipeline stage or checkpoint segment."""
        for i in range(start, stop):
            # h = read(state, i); state = write(state, i, f_i(h)), with h handed over (see take)
            state = self.residual.write(state, i, self.sublayers[i]([self.residual.read(state, i)], cache))
        return state

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor, cache: KVCache, chunk: int = 0, last_only: bool = True,
                forward=None) -> torch.Tensor:
        """Run a prompt into the cache, `chunk` tokens per forward (0: all at once); the logits of
        its last token (or of every token). `forward`: what runs each chunk (default this module;
        a torch.compile wrapper of it)."""
        step, forward = chunk or idx.shape[1], self if forward is None else forward
        out = [forward(idx[:, s:s + step], cache=cache, last_only=last_only) for s in range(0, idx.shape[1], step)]
        return out[-1] if last_only else torch.cat(out, dim=1)

    def _segment(self, spec, start: int, stop: int, *leaves):
        # Fresh containers on every call: variants mutate their state (dicts, lists) in place, and
        # the recomputation in backward must start from the boundary state, not the later one.
        return self.run_sublayers(tree_unflatten(list(leaves), spec), start, stop)

    def _checkpointed(self, state: Any, every: int) -> Any:
        """The state's tensors are the segment's saved inputs: a variant must not write into
        them in place in a later segment (tests/test_scaling.py checks loss and grads)."""
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"checkpoint_every must be a positive integer, got {every!r}")
        step = 2 * every  # k blocks = 2k sublayers
        for start in range(0, self.cfg.n_layers, step):
            leaves, spec = tree_flatten(state)
            bad = [type(x).__name__ for x in leaves if x is not None and not isinstance(x, (torch.Tensor, int, float, bool))]
            if bad:
                raise ConfigError(f"checkpointing needs the residual state to be a pytree of tensors; "
                                   f"{self.residual.name!r} holds {bad[0]} (register it with torch.utils._pytree)")
            # no dropout anywhere in the model, so no RNG state needs saving for the recompute
            state = checkpoint(self._segment, spec, start, min(start + step, self.cfg.n_layers), *leaves,
                               use_reentrant=False, preserve_rng_state=False)
        return state

    def param_groups(self, weight_decay: float) -> list[dict]:
        """nanoGPT's rule, made explicit: decay Linear/Embedding weights only; never gains,
        biases, pseudo-queries or mixing weights (the variant says which of its own are exempt)."""
        exempt = {id(p) for p in self.residual.no_decay_parameters()}
        decay, no_decay = [], []
        for mod in self.modules():
            for name, p in mod.named_parameters(recurse=False):
                wants = isinstance(mod, (nn.Linear, nn.Embedding)) and name == "weight" and id(p) not in exempt
                (decay if wants else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]


def build_model(cfg: ModelConfig, variant: str, options: dict | None = None, seed: int = 0,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Transformer:
    """Same seed → same shared weights for every variant: the shared parts draw from one
    generator, the variant's own init from another, so a variant cannot shift the shared ones."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1_000_003)  # the variant's own stream
        residual = variants.build(variant, cfg.d_model, cfg.n_layers, options)
    model = Transformer(cfg, residual)
    model.init_shared(torch.Generator().manual_seed(seed))
    return model.to(device=device, dtype=dtype)


def step_flops(cfg: ModelConfig, mixing_per_token: int, tokens: int, train: bool) -> int:
    """FLOPs of a prefill (train=False) or a train step (forward + backward) of the shared model
    plus a variant's declared mixing FLOPs, from shapes alone, in FlopCounterMode's convention
    (measure/flops.py): each Linear 2·in·out per token forward, twice that backward; attention
    scores and values 2·T·d each per token, backward five such products. Equal to the counted
    FLOPs exactly (tests/test_measure_flops.py)."""
    d, h, V, T, blocks = cfg.d_model, cfg.d_hidden, cfg.vocab_size, cfg.seq_len, cfg.depth
    linear = blocks * (8 * d * d + 4 * d * h) + 2 * d * V
    attn = blocks * 4 * T * d
    if not train:
        return tokens * (linear + attn + mixing_per_token)
    return tokens * (3 * linear + attn + blocks * 10 * T * d + 3 * mixing_per_token)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
