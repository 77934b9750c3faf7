"""mHC (arXiv 2512.24880) and mHC-lite (arXiv 2601.05732): hyper-connections whose stream-to-stream
carry is (near) doubly stochastic, so the carry neither grows nor shrinks the streams across depth.

State x in R^{n x d} per token (n copies of the embedding at the start). Sublayer i:
    x'     = vec(x) / rms(vec(x))                     one RMSNorm over all n*d entries
    H_pre  = sigmoid(a_pre  * x' phi_pre  + b_pre)    [n]     streams -> sublayer input
    H_post = 2 sigmoid(a_post * x' phi_post + b_post) [n]     output -> streams
    H_res  = a doubly stochastic map of the carry logits [n, n]
    h      = sum_j H_pre[j] x_j                                          (read)
    x'_k   = sum_j H_res[k, j] x_j + H_post[k] f_i(h)                    (write)
and the output is the sum of the streams.
mHC:      H_res = Sinkhorn-Knopp(exp(cap * tanh(R / cap))), R = a_res * mat(x' phi_res) + b_res:
          `sinkhorn_iters` (20) alternate row and column normalisations, in fp32. A fixed count
          makes it approximate: the columns sum to 1 exactly (the last step), the rows to within
          the iterations' residual. The soft cap bounds the logit range, so no entry of exp(.)
          underflows and its gradient vanishes.
mHC-lite: H_res = sum_p w_p P_p over the n! permutation matrices, w = softmax(a_res * x' phi_res
          + b_res): exactly doubly stochastic, no iterations.
Init: the paper's a = 0.01; phi = 0 and the biases are resbench's choice, made so step 0 equals
PreNorm: H_pre = 1/n (b_pre = logit(1/n)), H_post = 1 (b_post = 0), H_res near the identity
(b_res: 0 on the identity, -8 elsewhere). Every stream starts as the embedding and receives every
f_i(h), so the streams stay equal (any doubly stochastic carry keeps equal streams equal) and the
final norm removes the factor n, up to its eps. No RMSNorm gain: phi absorbs it.
"""
from __future__ import annotations

import itertools
import math

import torch

from . import register
from .base import Streams, VariantError, check_positive, inv_rms, mix_dtype, no_autocast, per_layer

OFF_IDENTITY = -8.0  # initial carry logit off the identity


def sinkhorn(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """Doubly stochastic matrix from logits [.., n, n]: rows, then columns, `iters` times."""
    m = torch.exp(logits - logits.amax((-2, -1), keepdim=True))
    for _ in range(iters):
        m = m / m.sum(-1, keepdim=True)
        m = m / m.sum(-2, keepdim=True)
    return m


class _ManifoldHC(Streams):
    """The streams, H_pre and H_post; subclasses map their `n_res` carry logits to H_res."""

    n_res: int

    def __init__(self, d_model: int, n_layers: int, n: int):
        super().__init__(d_model, n_layers, n)
        L, k = n_layers, 2 * n + self.n_res
        self.phi = per_layer(torch.zeros(L, n * d_model, k))  # [phi_pre | phi_post | phi_res]
        self.scale = per_layer(torch.full((L, 3), 0.01))      # a_pre, a_post, a_res
        self.b_pre = per_layer(torch.full((L, n), -math.log(n - 1) if n > 1 else 10.0))  # sigmoid = 1/n
        self.b_post = per_layer(torch.zeros(L, n))
        self.b_res = per_layer(self._res_bias_init().repeat(L, 1))

    def read(self, state, i):
        x = state["streams"]
        with no_autocast(x):
            dt = mix_dtype(x.dtype)
            flat = x.reshape(*x.shape[:-2], -1)
            z = (flat.to(dt) * inv_rms(flat)) @ self.phi[i].to(dt)  # [.., 2n + n_res]
            a, n = self.scale[i].to(dt), self.n
            pre = torch.sigmoid(a[0] * z[..., :n] + self.b_pre[i].to(dt))
            state["post"] = 2 * torch.sigmoid(a[1] * z[..., n:2 * n] + self.b_post[i].to(dt))
            state["res"] = self.res_map(a[2] * z[..., 2 * n:] + self.b_res[i].to(dt))  # [.., n, n]
            h = (pre.unsqueeze(-2) @ x.to(dt)).squeeze(-2)
        return h.to(x.dtype)

    def write(self, state, i, y):
        x, post, res = state.pop("streams"), state.pop("post"), state.pop("res")
        with no_autocast(x):
            out = res @ x.to(res.dtype) + post.unsqueeze(-1) * y.to(res.dtype).unsqueeze(-2)
        return {"streams": out.to(x.dtype)}

    def declared_extra_params(self) -> int:
        n, d = self.n, self.d_model
        return self.n_layers * (n * d * (2 * n + self.n_res) + 3 + 2 * n + self.n_res)

    def mixing_flops(self) -> int:
        """Per sublayer: the mappings' projection (n*d x (2n + n_res)), the read (n x d), the carry
        (n x n x d); H_post f(h), Sinkhorn and the permutation mix are elementwise."""
        n, d = self.n, self.d_model
        return self.n_layers * (2 * n * d * (2 * n + self.n_res) + 2 * n * d + 2 * n * n * d)


@register("mhc")
class MHC(_ManifoldHC):
    def __init__(self, d_model: int, n_layers: int, *, n: int = 4, sinkhorn_iters: int = 20,
                 logit_cap: float = 16.0):
        self.n_res = n * n
        check_positive("sinkhorn_iters", sinkhorn_iters)
        if isinstance(logit_cap, bool) or not isinstance(logit_cap, (int, float)) or not logit_cap > -OFF_IDENTITY:
            raise VariantError(f"logit_cap must be a number > {-OFF_IDENTITY:g} (the initial logit range), got {logit_cap!r}")
        self.sinkhorn_iters, self.logit_cap = sinkhorn_iters, float(logit_cap)
        super().__init__(d_model, n_layers, n)

    def _res_bias_init(self):
        return (torch.full((self.n, self.n), OFF_IDENTITY) * (1 - torch.eye(self.n))).reshape(1, -1)

    def res_map(self, r):
        r = r.unflatten(-1, (self.n, self.n))
        return sinkhorn(self.logit_cap * torch.tanh(r / self.logit_cap), self.sinkhorn_iters)


@register("mhc-lite")
class MHCLite(_ManifoldHC):
    def __init__(self, d_model: int, n_layers: int, *, n: int = 4):
        check_positive("n", n)
        if n > 5:
            raise VariantError(f"mhc-lite mixes all n! permutations: n must be <= 5, got {n}")
        perms = list(itertools.permutations(range(n)))  # the identity first
        self.n_res = len(perms)
        super().__init__(d_model, n_layers, n)
        eye = torch.eye(n)
        self.register_buffer("perms", torch.stack([eye[list(p)] for p in perms]).reshape(len(perms), n * n),
                             persistent=False)

    def _res_bias_init(self):
        b = torch.full((1, self.n_res), OFF_IDENTITY)
        b[0, 0] = 0.0
        return b

    def res_map(self, r):
        w = torch.softmax(r, dim=-1)
        # a weighted sum of constant 0/1 matrices: elementwise (as a matmul its backward would
        # count 1x, not 2x, breaking the 3x-forward rule the FLOP axis relies on)
        return (w.unsqueeze(-1) * self.perms.to(w.dtype)).sum(-2).unflatten(-1, (self.n, self.n))
