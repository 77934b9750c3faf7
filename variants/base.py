"""The residual protocol every variant implements, and helpers shared by variants.

A residual variant decides how the L sublayers of a transformer are wired across depth.
The model drives it like this (see harness/model.py):

    state = residual.begin(e)                  # token embedding enters
    for i, f in enumerate(sublayers):          # attn, mlp, attn, mlp, ...
        h = residual.read(state, i)            # input of sublayer i
        state = residual.write(state, i, f(h)) # f includes its own pre-RMSNorm
    x = residual.end(state)                    # goes to the final norm and the head

Variants import only torch and this module; they know nothing about measuring.

The calls see tensors [B, T, d] and mix across depth only, token by token (`token_local`): the
same calls serve a whole sequence, a prefill chunk, or one decode step (T = 1), and between
tokens a variant keeps nothing beyond the attention's KV cache (the model's).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

RMS_EPS = 1e-6


class VariantError(ValueError):
    """A bad variant name or option; the message is one line naming the culprit."""


class Residual(nn.Module):
    """Base class: subclasses set `name` (via @register) and implement the four calls.

    Constructor: `__init__(self, d_model, n_layers, *, <options with defaults>)` where
    `n_layers` is L, the number of sublayers (attention and MLP counted separately).
    Options must be keyword-only with defaults; their defaults document the variant.
    """

    name: str = "?"
    # Depth mixing reads only the same token's states, so incremental decoding runs the protocol
    # per token and keeps no depth state between tokens. A variant that mixes across tokens
    # (e.g. a causal convolution over positions) sets False: decoding then refuses it, since it
    # would need a cache of its own that this protocol does not carry.
    token_local: bool = True
    # Options that ablate the published form (e.g. AttnRes's paper Table 4): `resbench list` counts
    # them instead of spelling them out.
    ablations: tuple[str, ...] = ()

    def __init__(self, d_model: int, n_layers: int):
        super().__init__()
        check_positive("d_model", d_model)
        check_positive("n_layers", n_layers)
        self.d_model = d_model
        self.n_layers = n_layers

    # -- the protocol -------------------------------------------------------------------
    def begin(self, e: torch.Tensor) -> Any:
        raise NotImplementedError

    def read(self, state: Any, i: int) -> torch.Tensor:
        raise NotImplementedError

    def write(self, state: Any, i: int, y: torch.Tensor) -> Any:
        raise NotImplementedError

    def end(self, state: Any) -> torch.Tensor:
        raise NotImplementedError

    def completed(self, state: Any) -> list[torch.Tensor]:
        """Tensors of `state` that, once there, are never changed or dropped, in the order they
        arrived (AttnRes's completed blocks). A pipeline rank that has received them may keep them
        instead of receiving them again (the AttnRes paper's cross-stage caching, §4.1). Default:
        none, so every stage transition sends the whole state."""
        return []

    # -- analytic costs (per token; the harness holds measurements against these) --------
    def declared_extra_params(self) -> int:
        """Parameters this variant adds on top of the shared model."""
        return 0

    def state_vectors(self) -> int:
        """d-vectors per token the residual state keeps alive across depth."""
        return 1

    def streams(self) -> int:
        """Parallel residual streams the state carries from sublayer to sublayer (HC, mHC: n), in
        d-vectors per token: what a checkpoint boundary must keep at least (the depth study's floor)."""
        return 1

    def residual_traffic(self) -> int:
        """d-vectors per token the residual path reads and writes in one forward over the whole
        depth, as few as a fused implementation must move: x + f(x) reads x and f(x) and writes
        the sum, 3 per sublayer. What the sublayers themselves read and write is every
        variant's alike and not counted. Beside mixing_flops it sets the roofline of the
        variant's overhead (docs/MEASURING.md)."""
        return 3 * self.n_layers

    def mixing_flops(self) -> int:
        """FLOPs per token of the variant's own matrix products in one forward (2 per
        multiply-add; elementwise mixing, norms and softmax count nothing, as in MFU). Backward
        costs twice this. The harness holds FlopCounterMode's count against it."""
        return 0

    def init_scale(self, role: str) -> float | None:
        """Std multiplier for one kind of shared weight at init, replacing the model's own depth
        rule (GPT-2's 1/sqrt(2 depth) on output projections); None keeps the model's rule.
        Roles: "attn.q", "attn.k", "attn.v", "attn.out", "mlp.in", "mlp.out". The draw itself
        is the same for every variant: only its scale differs (DeepNorm's beta needs this)."""
        return None

    # -- optimiser hygiene -----------------------------------------------------------------
    def no_decay_parameters(self) -> list[nn.Parameter]:
        """Parameters that must never be weight-decayed (queries, gains, mixing weights,
        biases): decaying them pulls the variant back to its identity/uniform start.
        Default: everything except the weights of nn.Linear submodules."""
        decayed = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        return [p for p in self.parameters() if id(p) not in decayed]

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        sig = inspect.signature(cls.__init__)
        return {
            n: p.default
            for n, p in sig.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

    def options(self) -> dict[str, Any]:
        """The option values this instance was built with (after resolution)."""
        return {k: getattr(self, k) for k in self.option_defaults()}


# -- implementations: faster forms of a variant's equations ------------------------------

FORMS: dict[tuple[str, str], Any] = {}  # (equations' module, impl) -> the form's module, once loaded


def implementation(owner: type, impl: str):
    """The form computing `owner`'s equations as `impl` (`impl: fast`, ...): the module
    `_<module>_<impl>` beside the module that defines `owner` (variants/_attnres_fast.py is
    AttnRes's `fast`), with the protocol's calls as functions of the module it serves. An
    equations module imports none of its forms: a module built with one loads it here, and
    `source_of` hashes every `_<module>_*` form with the variant (variants/__init__.py)."""
    key = (owner.__module__, impl)
    if key not in FORMS:
        pkg, _, stem = owner.__module__.rpartition(".")
        FORMS[key] = importlib.import_module(f"{pkg}._{stem}_{impl}" if pkg else f"_{stem}_{impl}")
    return FORMS[key]


# -- helpers shared by variants ---------------------------------------------------------

def check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise VariantError(f"{name} must be a positive integer, got {value!r}")


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise VariantError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def mix_dtype(dtype: torch.dtype) -> torch.dtype:
    """Depth-mixing math runs in at least fp32: bf16/fp16 go up to fp32, fp64 stays fp64."""
    return torch.promote_types(dtype, torch.float32)


def no_autocast(t: torch.Tensor):
    """A context in which autocast leaves depth-mixing math alone (fp32 logits and softmax, the
    sources' own dtypes otherwise), on the device of `t`."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def inv_rms(v: torch.Tensor) -> torch.Tensor:
    """1/rms(v) over the last dim, in fp32 (fp64 for fp64 input), keepdim; the key normalisation of AttnRes."""
    v32 = v.to(mix_dtype(v.dtype))
    return torch.rsqrt(v32.pow(2).mean(-1, keepdim=True) + RMS_EPS)


def fast_inv_rms(v: torch.Tensor) -> torch.Tensor:
    """inv_rms in one pass and without a squared temporary (a vector norm); same value, keepdim."""
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True, dtype=mix_dtype(v.dtype))
    return torch.rsqrt(norm * norm / v.shape[-1] + RMS_EPS)


def leafless_pytree_node(cls):
    """Class decorator: instances ride along in a state pytree as a node without leaves, so
    activation checkpointing can carry a per-forward scratch store (the fast forms' backward
    bookkeeping) without treating it as a tensor."""
    pytree.register_pytree_node(cls, lambda s: ([], s), lambda _, s: s,
                                serialized_type_name=f"{cls.__module__}.{cls.__qualname__}")
    return cls


def per_layer(stacked: torch.Tensor) -> nn.ParameterList:
    """One parameter per layer from a stacked init [L, ...] (indexed as before: p[i]). Slices of
    one stacked parameter would make autograd sum every slice's full-size gradient in one buffer
    until the leaf accumulates it: a parameter-sized transient, growing with depth, that the
    memory views would count as depth memory (per-layer parameters, as the papers write them)."""
    return nn.ParameterList(nn.Parameter(t.clone()) for t in stacked.unbind(0))


class SingleStream(Residual):
    """A scheme whose state is one stream x (PreNorm and its kin): begin, read and end are the
    identity, and a subclass writes only its update, x_{i+1} = write(x_i, i, f_i(x_i))."""

    def begin(self, e: torch.Tensor) -> torch.Tensor:
        return e

    def read(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return x

    def end(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Streams(Residual):
    """A scheme with n parallel residual streams (Hyper-Connections and its kin): the state
    {"streams": [.., n, d]} starts as n copies of the embedding and ends as their sum; a
    subclass reads h from the streams and writes them back (its read may leave the write what
    it computed, beside "streams")."""

    def __init__(self, d_model: int, n_layers: int, n: int):
        super().__init__(d_model, n_layers)
        check_positive("n", n)
        self.n = n

    def begin(self, e: torch.Tensor) -> dict:
        return {"streams": e.unsqueeze(-2).expand(*e.shape[:-1], self.n, e.shape[-1])}  # [B, T, n, d]

    def end(self, state: dict) -> torch.Tensor:
        return state["streams"].sum(-2)

    def state_vectors(self) -> int:
        return self.n

    def streams(self) -> int:
        return self.n

    def residual_traffic(self) -> int:
        """Per sublayer the read takes the n streams and writes h (n + 1), the write takes the n
        streams and f(h) and writes n (2n + 1); the end sums the n streams into one."""
        return (3 * self.n + 2) * self.n_layers + self.n + 1
