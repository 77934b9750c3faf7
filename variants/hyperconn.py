"""Hyper-Connections (arXiv 2409.19606): n residual streams, mixed by learned, token-dependent weights.

State H in R^{n x d} per token (n copies of the embedding at the start). Sublayer i, with
dynamic weights (DHC, the paper's Eqs. 10-14):
    Hbar   = H / rms(H)                               per stream
    beta   = s_beta  * tanh(Hbar w_beta)  + B_i        [n]     output -> stream weights
    a_m    = s_alpha * tanh(Hbar w_m)     + A_m,i      [n]     streams -> sublayer input
    A_r    = s_alpha * tanh(Hbar W_r)     + A_r,i      [n, n]  stream -> stream carry
    h      = sum_j a_m[j] H_j                          (read)
    H'_k   = beta_k f_i(h) + sum_j A_r[j, k] H_j       (write)
and the output is the sum of the streams. The norm has no gain (a gain is absorbed by the W's).
Init (the paper's): W = 0, s_alpha = s_beta = 0.01, B = 1, A_m = e_{i mod n}, A_r = I. Every stream
then starts as the embedding and receives every f_i(h), so the streams stay equal and step 0 equals
PreNorm (the final norm removes the factor n, up to its eps). `dynamic: false` is static HC (no W, s).
Depth-mixing math in fp32 (fp64 for fp64), like every variant here.
"""
from __future__ import annotations

import torch

from . import register
from .base import Streams, VariantError, inv_rms, mix_dtype, no_autocast, per_layer


@register("hc")
class HyperConnections(Streams):
    def __init__(self, d_model: int, n_layers: int, *, n: int = 4, dynamic: bool = True):
        super().__init__(d_model, n_layers, n)
        if not isinstance(dynamic, bool):
            raise VariantError(f"dynamic must be true or false, got {dynamic!r}")  # bool("no") is True: never coerce
        self.dynamic = dynamic
        L, d = n_layers, d_model
        self.static_beta = per_layer(torch.ones(L, n))                                        # B
        self.static_am = per_layer(torch.eye(n)[torch.arange(L) % n])                         # A_m = e_{i mod n}
        self.static_ar = per_layer(torch.eye(n).repeat(L, 1, 1))                              # A_r = I
        if dynamic:
            self.w = per_layer(torch.zeros(L, d, n + 2))  # [w_beta | w_m | W_r] in one matrix
            self.s_alpha = per_layer(torch.full((L,), 0.01))
            self.s_beta = per_layer(torch.full((L,), 0.01))

    def _weights(self, H, i):
        """(beta [.., n], a_m [.., n], A_r [.., n, n]) for sublayer i, in the mixing dtype."""
        dt = mix_dtype(H.dtype)
        B, am, ar = self.static_beta[i].to(dt), self.static_am[i].to(dt), self.static_ar[i].to(dt)
        if not self.dynamic:
            return B, am, ar
        z = torch.tanh((H.to(dt) * inv_rms(H)) @ self.w[i].to(dt))  # [.., n, n + 2]
        beta = self.s_beta[i].to(dt) * z[..., 0] + B
        am = self.s_alpha[i].to(dt) * z[..., 1] + am
        ar = self.s_alpha[i].to(dt) * z[..., 2:] + ar
        return beta, am, ar

    def read(self, state, i):
        H = state["streams"]
        with no_autocast(H):
            beta, am, ar = self._weights(H, i)
            h = (am.unsqueeze(-2) @ H.to(am.dtype)).squeeze(-2)  # sum_j a_m[j] H_j
        state["beta"], state["ar"] = beta, ar
        return h.to(H.dtype)

    def write(self, state, i, y):
        H, beta, ar = state.pop("streams"), state.pop("beta"), state.pop("ar")
        with no_autocast(H):
            dt = beta.dtype
            carry = ar.transpose(-1, -2) @ H.to(dt)  # [.., k, d] = sum_j A_r[j, k] H_j
            out = beta.unsqueeze(-1) * y.to(dt).unsqueeze(-2) + carry
        return {"streams": out.to(H.dtype)}

    def declared_extra_params(self) -> int:
        n, d, L = self.n, self.d_model, self.n_layers
        static = n + n + n * n
        return L * (static + (d * (n + 2) + 2 if self.dynamic else 0))

    def mixing_flops(self) -> int:
        """Per sublayer: the weights' projection (n streams x d x (n + 2)), the read (n x d) and
        the carry (n x n x d); beta_k f(h) is elementwise."""
        n, d = self.n, self.d_model
        per = 2 * n * d + 2 * n * n * d + (2 * n * d * (n + 2) if self.dynamic else 0)
        return self.n_layers * per
