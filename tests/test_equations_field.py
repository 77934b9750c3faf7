"""The field's variants against naive references of their equations, written here from each module's
docstring: ReZero, LayerScale, LAuReL-LR, PostNorm / DeepNorm, Hyper-Connections (HC), mHC and
mHC-lite. No reuse of variant internals: only the shared parts of the model and the variant's
parameters and options, read by name. Explicit loops over sublayers, streams j, k, Sinkhorn
iterations and permutations; sigmoid, tanh and RMS written out."""
from __future__ import annotations

import itertools

import pytest
import torch

import resbench.variants.base
from conftest import make_model, tokens
from test_equations import CFG, TOL, assert_matches, finish, ref_prenorm


# -- explicit scalar formulas ------------------------------------------------------------------

def sigmoid(u):
    return 1 / (1 + torch.exp(-u))


def tanh(u):
    return 1 - 2 / (torch.exp(2 * u) + 1)  # (e^{2u} - 1) / (e^{2u} + 1), stable for either sign


def rms(v):
    """rms(v) over the width, with the library's eps (read at call time); no rsqrt."""
    return torch.sqrt((v * v).mean(-1, keepdim=True) + resbench.variants.base.RMS_EPS)


def dot(v, w):
    """sum_e v[.., e] w[e]: a [B, T] tensor."""
    return (v * w).sum(-1)


def col(s):
    """A per-token scalar [B, T] (or a 0-dim parameter) as a factor of [B, T, d] vectors."""
    return s.unsqueeze(-1) if s.dim() else s


# -- naive references ------------------------------------------------------------------------

def ref_rezero(model, idx):
    """x <- x + a_i f_i(x)."""
    x = model.embed(idx)
    for i in range(len(model.sublayers)):
        x = x + model.residual.alpha[i] * model.sublayers[i](x)
    return finish(model, x)


def ref_layerscale(model, idx):
    """x <- x + diag(gamma_i) f_i(x)."""
    x = model.embed(idx)
    for i in range(len(model.sublayers)):
        x = x + model.residual.gamma[i] * model.sublayers[i](x)  # gamma_i [d], one scale per channel
    return finish(model, x)


def ref_laurel(model, idx):
    """x <- x + f_i(x) + B_i A_i x, A_i = down[i] [r, d], B_i = up[i] [d, r]."""
    x = model.embed(idx)
    for i in range(len(model.sublayers)):
        y = model.sublayers[i](x)
        A, B = model.residual.down[i], model.residual.up[i]
        low = sum(dot(x, A[q]).unsqueeze(-1) * B[:, q] for q in range(A.shape[0]))  # sum_q (A x)_q B[:, q]
        x = x + y + low
    return finish(model, x)


def ref_postnorm(model, idx, alpha=None):
    """x <- RMSNorm_i(alpha x + f_i(x)), each with its own gain; PostNorm: alpha = 1."""
    alpha = getattr(model.residual, "alpha", 1.0) if alpha is None else alpha
    x = model.embed(idx)
    for i in range(len(model.sublayers)):
        s = alpha * x + model.sublayers[i](x)
        x = model.residual.gain[i] * (s / rms(s))
    return finish(model, x)


def ref_hc(model, idx, transpose_ar=False):
    """Hyper-Connections, the docstring's Eqs.: per stream Hbar_j = H_j / rms(H_j),
    beta_j = s_beta tanh(Hbar_j w_beta) + B[j], a_m[j] = s_alpha tanh(Hbar_j w_m) + A_m[j],
    A_r[j, k] = s_alpha tanh(Hbar_j W_r[:, k]) + A_r,i[j, k]; h = sum_j a_m[j] H_j;
    H'_k = beta_k f_i(h) + sum_j A_r[j, k] H_j. Output: sum of the streams."""
    res = model.residual
    n = res.n
    H = [model.embed(idx)] * n  # n copies of the embedding
    for i in range(len(model.sublayers)):
        beta = [res.static_beta[i][j] for j in range(n)]
        am = [res.static_am[i][j] for j in range(n)]
        ar = [[res.static_ar[i][j, k] for k in range(n)] for j in range(n)]
        if res.dynamic:
            w = res.w[i]  # [d, n + 2]: column 0 w_beta, column 1 w_m, columns 2.. W_r
            for j in range(n):
                z = tanh((H[j] / rms(H[j])) @ w)  # tanh(Hbar_j w), [B, T, n + 2]
                beta[j] = res.s_beta[i] * z[..., 0] + beta[j]
                am[j] = res.s_alpha[i] * z[..., 1] + am[j]
                for k in range(n):
                    ar[j][k] = res.s_alpha[i] * z[..., 2 + k] + ar[j][k]
        h = sum(col(am[j]) * H[j] for j in range(n))
        y = model.sublayers[i](h)
        carry = (lambda j, k: ar[k][j]) if transpose_ar else (lambda j, k: ar[j][k])
        H = [col(beta[k]) * y + sum(col(carry(j, k)) * H[j] for j in range(n)) for k in range(n)]
    return finish(model, sum(H))


def sinkhorn_naive(logits, iters):
    """logits: n x n nested lists of [B, T] tensors. exp(logits - max), then `iters` times: every
    row divided by its sum, then every column by its sum."""
    n = len(logits)
    m = logits[0][0]
    for k in range(n):
        for j in range(n):
            m = torch.maximum(m, logits[k][j])
    M = [[torch.exp(logits[k][j] - m) for j in range(n)] for k in range(n)]
    for _ in range(iters):
        rows = [sum(M[k][j] for j in range(n)) for k in range(n)]
        M = [[M[k][j] / rows[k] for j in range(n)] for k in range(n)]
        cols = [sum(M[k][j] for k in range(n)) for j in range(n)]
        M = [[M[k][j] / cols[j] for j in range(n)] for k in range(n)]
    return M


def ref_mhc(model, idx, lite=False, iters_offset=0, record=None):
    """mHC / mHC-lite, the docstring's Eqs.: x' = vec(x) / rms(vec(x)) (stream-major, no gain),
    z = x' phi_i; H_pre = sigmoid(a_pre z_pre + b_pre), H_post = 2 sigmoid(a_post z_post + b_post);
    mHC: R = a_res mat(z_res) + b_res (row-major), H_res = Sinkhorn(exp(cap tanh(R / cap)));
    mHC-lite: H_res = sum_p softmax(a_res z_res + b_res)_p P_p over itertools.permutations;
    h = sum_j H_pre[j] x_j; x'_k = sum_j H_res[k, j] x_j + H_post[k] f_i(h). Output: sum of streams.
    `record`: a list that receives H_res (n x n nested lists of [B, T]) per sublayer."""
    res = model.residual
    n, d = res.n, model.cfg.d_model
    eye = torch.eye(n, dtype=torch.float64)
    perms = [eye[list(p)] for p in itertools.permutations(range(n))]  # row r of P_p is e_{p[r]}
    x = [model.embed(idx)] * n
    for i in range(len(model.sublayers)):
        phi = res.phi[i]  # [n d, 2n + n_res]
        ms = sum((x[j] * x[j]).sum(-1, keepdim=True) for j in range(n)) / (n * d)
        r = torch.sqrt(ms + resbench.variants.base.RMS_EPS)  # rms of vec(x), [B, T, 1]
        xn = [x[j] / r for j in range(n)]

        zz = sum(xn[j] @ phi[j * d:(j + 1) * d] for j in range(n))  # x' phi: stream j meets rows j d ..

        def z(c):
            return zz[..., c]

        a_pre, a_post, a_res = res.scale[i][0], res.scale[i][1], res.scale[i][2]
        pre = [sigmoid(a_pre * z(j) + res.b_pre[i][j]) for j in range(n)]
        post = [2 * sigmoid(a_post * z(n + k) + res.b_post[i][k]) for k in range(n)]
        if lite:
            logit = [a_res * z(2 * n + p) + res.b_res[i][p] for p in range(len(perms))]
            m = logit[0]
            for s in logit[1:]:
                m = torch.maximum(m, s)
            e = [torch.exp(s - m) for s in logit]
            total = sum(e)
            wts = [s / total for s in e]
            Hres = [[sum(wts[p] * perms[p][k, j] for p in range(len(perms))) for j in range(n)] for k in range(n)]
        else:
            cap = res.logit_cap
            R = [[a_res * z(2 * n + k * n + j) + res.b_res[i][k * n + j] for j in range(n)] for k in range(n)]
            C = [[cap * tanh(R[k][j] / cap) for j in range(n)] for k in range(n)]
            Hres = sinkhorn_naive(C, res.sinkhorn_iters + iters_offset)
        if record is not None:
            record.append((Hres, wts if lite else None))
        h = sum(col(pre[j]) * x[j] for j in range(n))
        y = model.sublayers[i](h)
        x = [sum(col(Hres[k][j]) * x[j] for j in range(n)) + col(post[k]) * y for k in range(n)]
    return finish(model, sum(x))


def ref_mhc_lite(model, idx):
    return ref_mhc(model, idx, lite=True)


# -- every variant against its reference -------------------------------------------------------

CASES = [
    ("rezero", {}, ref_rezero),
    ("layerscale", {}, ref_layerscale),
    ("layerscale", {"init": 0.5}, ref_layerscale),
    ("laurel", {}, ref_laurel),
    ("laurel", {"rank": 4}, ref_laurel),
    ("postnorm", {}, ref_postnorm),
    ("deepnorm", {}, ref_postnorm),
    ("deepnorm", {"alpha": 1.3}, ref_postnorm),
    ("hc", {}, ref_hc),
    ("hc", {"dynamic": False}, ref_hc),
    ("hc", {"n": 2}, ref_hc),
    ("mhc", {}, ref_mhc),
    ("mhc", {"n": 2, "sinkhorn_iters": 3}, ref_mhc),
    ("mhc", {"logit_cap": 9.0}, ref_mhc),
    ("mhc-lite", {}, ref_mhc_lite),
    ("mhc-lite", {"n": 3}, ref_mhc_lite),
]


@pytest.mark.parametrize("name,options,ref", CASES,
                         ids=[n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o, _ in CASES])
def test_matches_reference(name, options, ref):
    model = make_model(CFG, name, options, seed=2, perturb=True)
    for k, v in options.items():
        assert getattr(model.residual, k) == v, k  # the option reached the variant the reference reads
    assert_matches(model, ref, tokens(CFG, seed=4))


def test_reference_is_sensitive():
    """The comparison can fail: with perturbed parameters a wrong reading of the equations (HC's
    A_r transposed, mHC's Sinkhorn one iteration short or long, DeepNorm with alpha = 1, the
    variants as plain PreNorm) differs from the model beyond TOL."""
    idx = tokens(CFG, seed=4)

    def differs(model, ref):
        with torch.no_grad():
            got, want = model(idx), ref(model, idx)
        with pytest.raises(AssertionError):
            torch.testing.assert_close(got, want, **TOL)

    hc = make_model(CFG, "hc", seed=2, perturb=True)
    differs(hc, lambda m, x: ref_hc(m, x, transpose_ar=True))
    differs(hc, ref_prenorm)
    mhc = make_model(CFG, "mhc", {"n": 2, "sinkhorn_iters": 3}, seed=2, perturb=True)
    differs(mhc, lambda m, x: ref_mhc(m, x, iters_offset=-1))
    differs(mhc, lambda m, x: ref_mhc(m, x, iters_offset=1))
    differs(make_model(CFG, "mhc", seed=2, perturb=True), lambda m, x: ref_mhc(m, x, iters_offset=-1))
    differs(make_model(CFG, "deepnorm", seed=2, perturb=True), lambda m, x: ref_postnorm(m, x, alpha=1.0))
    for name in ("rezero", "layerscale", "laurel", "mhc-lite"):
        differs(make_model(CFG, name, seed=2, perturb=True), ref_prenorm)


# -- PreNorm-equivalence at init ---------------------------------------------------------------

EQUIV = [
    ("hc", {}),
    ("hc", {"n": 2}),
    ("mhc", {}),
    ("mhc-lite", {}),
    ("laurel", {}),
]


@pytest.mark.parametrize("name,options", EQUIV, ids=[n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in EQUIV])
def test_prenorm_equivalent_at_init(tiny_eps, name, options):
    idx = tokens(CFG, seed=6)
    want = make_model(CFG, "prenorm", seed=11)(idx)
    torch.testing.assert_close(make_model(CFG, name, options, seed=11)(idx), want, **TOL)


def test_rezero_is_the_identity_network_at_init():
    idx = tokens(CFG, seed=6)
    model = make_model(CFG, "rezero", seed=11)
    assert torch.equal(model.residual.alpha.detach(), torch.zeros(CFG.n_layers, dtype=torch.float64))
    torch.testing.assert_close(model(idx), finish(model, model.embed(idx)), **TOL)


# -- the carry's manifold ----------------------------------------------------------------------

def mhc_carries(model, idx, lite=False):
    """H_res of every sublayer from the naive reference, each [B, T, k, j], and mHC-lite's weights."""
    record = []
    with torch.no_grad():
        ref_mhc(model, idx, lite=lite, record=record)
    assert len(record) == CFG.n_layers
    return [(torch.stack([torch.stack(row, -1) for row in Hres], -2), wts) for Hres, wts in record]


def test_mhc_carry_is_column_stochastic_after_perturbation():
    """Sinkhorn ends on a column normalisation: the columns of H_res sum to 1 exactly."""
    model = make_model(CFG, "mhc", seed=2, perturb=True)
    n = model.residual.n
    for M, _ in mhc_carries(model, tokens(CFG, seed=4)):
        assert (M >= 0).all()
        torch.testing.assert_close(M.sum(-2), torch.ones(M.shape[:-1], dtype=M.dtype), rtol=0, atol=1e-12)
        assert (M - torch.eye(n, dtype=M.dtype)).abs().max() > 1e-3  # perturbed: not the identity


def test_mhc_carry_rows_approach_one_as_sinkhorn_iterates():
    """Sinkhorn-Knopp ends on a column step: columns sum to 1 exactly, rows to the residual of a
    fixed iteration count, which more iterations shrink (the docstring's "approximately")."""
    resid = {}
    for iters in (3, 20):
        model = make_model(CFG, "mhc", {"sinkhorn_iters": iters}, seed=2, perturb=True)
        worst = 0.0
        for M, _ in mhc_carries(model, tokens(CFG, seed=4)):
            one = torch.ones(M.shape[:-1], dtype=M.dtype)
            torch.testing.assert_close(M.sum(-2), one, rtol=0, atol=1e-12)
            worst = max(worst, float((M.sum(-1) - 1).abs().max()))
        resid[iters] = worst
    assert resid[20] < resid[3] / 2, resid


def test_mhc_lite_carry_is_a_convex_mix_of_permutations():
    model = make_model(CFG, "mhc-lite", seed=2, perturb=True)
    n = model.residual.n
    eye = torch.eye(n, dtype=torch.float64)
    perms = [eye[list(p)] for p in itertools.permutations(range(n))]
    assert len(perms) == 24 and torch.equal(perms[0], eye)  # the identity first
    for P in perms:  # each a permutation matrix: one 1 in every row and column
        assert torch.equal(P.sum(0), torch.ones(n)) and torch.equal(P.sum(1), torch.ones(n))
    for M, wts in mhc_carries(model, tokens(CFG, seed=4), lite=True):
        W = torch.stack(wts, -1)  # [B, T, n!]
        assert (W > 0).all()
        torch.testing.assert_close(W.sum(-1), torch.ones(W.shape[:-1], dtype=W.dtype), rtol=0, atol=1e-14)
        mix = sum(W[..., p, None, None] * perms[p] for p in range(len(perms)))
        torch.testing.assert_close(M, mix, rtol=0, atol=1e-15)
        one = torch.ones(M.shape[:-1], dtype=M.dtype)
        torch.testing.assert_close(M.sum(-1), one, rtol=0, atol=1e-14)  # exactly, up to rounding
        torch.testing.assert_close(M.sum(-2), one, rtol=0, atol=1e-14)
        assert W[..., 1:].max() > 1e-3  # perturbed: not the identity


# -- DeepNorm's constants ----------------------------------------------------------------------

def test_deepnorm_constants_are_the_papers_decoder_only():
    N = CFG.depth
    model = make_model(CFG, "deepnorm", seed=11)
    assert model.residual.alpha == pytest.approx((2 * N) ** 0.25, rel=1e-15)
    assert model.residual.beta == pytest.approx((8 * N) ** -0.25, rel=1e-15)
    assert make_model(CFG, "postnorm", seed=11).residual.alpha == 1.0
    # beta replaces the shared init's scale on values, output projections and both MLP matrices
    # (GPT-2's 1/sqrt(2 depth) on the projections dropped); queries and keys keep theirs
    base = make_model(CFG, "prenorm", seed=11)
    beta, gpt2, d = model.residual.beta, (2 * N) ** -0.5, CFG.d_model
    close = dict(rtol=1e-6, atol=0)  # the rescale runs in fp32 before the cast to fp64
    for i, (sub, ref) in enumerate(zip(model.sublayers, base.sublayers)):
        if i % 2 == 0:
            assert torch.equal(sub.qkv.weight[:2 * d], ref.qkv.weight[:2 * d])
            torch.testing.assert_close(sub.qkv.weight[2 * d:], ref.qkv.weight[2 * d:] * beta, **close)
            torch.testing.assert_close(sub.proj.weight, ref.proj.weight * (beta / gpt2), **close)
        else:
            torch.testing.assert_close(sub.fc.weight, ref.fc.weight * beta, **close)
            torch.testing.assert_close(sub.proj.weight, ref.proj.weight * (beta / gpt2), **close)
