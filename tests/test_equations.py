"""Each variant against a reference of its equations (docs/VARIANTS.md). PreNorm, Highway and
DenseNet: naive references written here, explicit loops over sublayers, no reuse of variant
internals (only the shared parts of the model and the variant's parameters, read by name).
AttnRes: its module is the equations (`impl: reference`, run with the same parameters); its one
formula, depth attention, is held here against explicit per-source loops, and its block layout
against the paper's (test_paper_layout_...)."""
from __future__ import annotations

import math

import pytest
import torch

import resbench.variants.base
from conftest import make_model, perturb_variant, tokens
from resbench.model import ModelConfig

TOL = dict(rtol=1e-10, atol=1e-12)


# -- naive references ------------------------------------------------------------------------

def rms_normalize(v):
    """v / rms(v) over the width, with the library's eps (read at call time)."""
    return v / torch.sqrt((v * v).mean(-1, keepdim=True) + resbench.variants.base.RMS_EPS)


def finish(model, x):
    return model.head(model.norm_f(x))


def ref_prenorm(model, idx):
    x = model.embed(idx)
    for i in range(len(model.sublayers)):
        x = x + model.sublayers[i](x)
    return finish(model, x)


def ref_highway(model, idx):
    x = model.embed(idx)
    for i in range(len(model.sublayers)):
        y = model.sublayers[i](x)
        W = model.residual.gates[i].weight  # [width, d], width = d (vector) or 1 (scalar)
        b = model.residual.gates[i].bias
        u = rms_normalize(x)
        g = torch.sigmoid(u @ W.T + b)
        x = (1 - g) * x + g * y
    return finish(model, x)


def ref_densenet(model, idx, dilation=1, period=1):
    L_b = len(model.sublayers) // 2
    X = [model.embed(idx)]  # X_0 = e
    Y = X[0]
    for i in range(1, L_b + 1):
        x = Y
        x = x + model.sublayers[2 * (i - 1)](x)  # attention, PreNorm inside the block
        x = x + model.sublayers[2 * (i - 1) + 1](x)  # MLP
        X.append(x)  # X_i = Block_i(Y_{i-1})
        if i % period == 0:
            alpha = model.residual.alpha[str(i)]
            js = [j for j in range(i + 1) if (i - j) % dilation == 0]
            assert alpha.shape == (len(js),)
            Y = 0
            for n, j in enumerate(js):
                Y = Y + alpha[n] * X[j]
        else:
            Y = x
    return finish(model, Y)


def depth_attention(model, reader, sources):
    """h = sum_i softmax_i(w_l . RMSNorm_l(v_i)) v_i, RMSNorm_l with gain g_l; one token at a time
    would be the most naive, per-source loops over [B, T] tensors are as explicit."""
    w = model.residual.query[reader]
    gain = model.residual.key_gain[reader]
    logits = [(w * (gain * rms_normalize(v))).sum(-1) for v in sources]  # each [B, T]
    m = logits[0]
    for s in logits[1:]:
        m = torch.maximum(m, s)
    weights = [torch.exp(s - m) for s in logits]
    total = sum(weights)
    h = 0
    for a, v in zip(weights, sources):
        h = h + (a / total).unsqueeze(-1) * v
    return h


def ref_module(model, idx):
    """The variant module's own equations (impl: reference) on this model's parameters."""
    res = model.residual
    saved = res.impl, getattr(res, "two_phase", False)
    res.impl = "reference"
    if hasattr(res, "two_phase"):
        res.two_phase = False
    try:
        return model(idx)
    finally:
        res.impl = saved[0]
        if hasattr(res, "two_phase"):
            res.two_phase = saved[1]


ref_attnres = ref_module


def paper_blocks(L, N):
    """Paper §3.2 / Fig. 2: N blocks of floor(L_b / N) transformer blocks (2 sublayers each), the
    last block also holding the L_b mod N left over."""
    per = (L // 2) // N
    sizes = [2 * per] * (N - 1) + [L - 2 * per * (N - 1)]
    starts = [sum(sizes[:k]) for k in range(N)]
    return [list(range(a, a + n)) for a, n in zip(starts, sizes)]


def ref_blocks(model, idx, blocks):
    """Block AttnRes over explicit lists of sublayers, with the per-source loops above."""
    L = len(model.sublayers)
    b = [model.embed(idx)]  # b_0 = e, then completed block sums
    for members in blocks:
        partial = None
        for pos, l in enumerate(members):
            sources = list(b) if pos == 0 else list(b) + [partial]
            y = model.sublayers[l](depth_attention(model, l, sources))
            partial = y if partial is None else partial + y
        b.append(partial)
    return finish(model, depth_attention(model, L, b))


def ablated_attention(model, reader, sources, o):
    """The paper's Table 4 ablations, one source and one head at a time (docs/VARIANTS.md):
    static_mixing = a learned logit per source position; input_query adds W_l v/rms(v) of the
    latest source to w_l; key_norm false drops 1/rms; heads split the channels; sigmoid gates."""
    res, H = model.residual, o.get("heads", 1)
    if o.get("window") and len(sources) > 1 + o["window"]:
        sources = [sources[0]] + sources[len(sources) - o["window"]:]
    d = sources[0].shape[-1]
    dh = d // H
    out = []
    for k in range(H):
        cols = slice(k * dh, (k + 1) * dh)
        logits = []
        for n, v in enumerate(sources):
            if o.get("static_mixing"):
                logits.append(res.mix_logits[reader][n].expand(v.shape[:-1]))
                continue
            key = res.key_gain[reader] * (rms_normalize(v) if o.get("key_norm", True) else v)
            q = res.query[reader].expand(v.shape)
            if o.get("input_query"):
                q = q + rms_normalize(sources[-1]) @ res.query_proj[reader].T
            logits.append((key[..., cols] * q[..., cols]).sum(-1))
        if o.get("sigmoid"):
            weights = [1 / (1 + torch.exp(-z)) for z in logits]
        else:
            total = sum(torch.exp(z) for z in logits)
            weights = [torch.exp(z) / total for z in logits]
        out.append(sum(a.unsqueeze(-1) * v[..., cols] for a, v in zip(weights, sources)))
    return torch.cat(out, -1)


def ref_ablated(model, idx, blocks, o):
    """ref_blocks with ablated_attention."""
    L = len(model.sublayers)
    b = [model.embed(idx)]
    for members in blocks:
        partial = None
        for pos, l in enumerate(members):
            sources = list(b) if pos == 0 else list(b) + [partial]
            y = model.sublayers[l](ablated_attention(model, l, sources, o))
            partial = y if partial is None else partial + y
        b.append(partial)
    return finish(model, ablated_attention(model, L, b, o))


def ablation_cases():
    full = [[i] for i in range(CFG.n_layers)]
    two = paper_blocks(CFG.n_layers, 2)
    cases = [("full-attnres", o, full) for o in ABLATED]
    cases += [("block-attnres", {"n_blocks": 2, **o}, two) for o in ABLATED]
    return [(n, {"impl": "reference", **o}, (lambda m, x, b=b, o=o: ref_ablated(m, x, b, o))) for n, o, b in cases]


ABLATED = [{"input_query": True}, {"static_mixing": True}, {"sigmoid": True}, {"key_norm": False},
           {"window": 2}, {"heads": 4}, {"window": 1, "heads": 2, "sigmoid": True, "input_query": True}]


def ref_block_n1(model, idx):
    """N = 1: a plain residual stream r = sum_{j<i} f_j, with e kept as a separate source."""
    L = len(model.sublayers)
    e = model.embed(idx)
    r = None
    for i in range(L):
        h = depth_attention(model, i, [e] if r is None else [e, r])
        y = model.sublayers[i](h)
        r = y if r is None else r + y
    return finish(model, depth_attention(model, L, [e, r]))


# -- comparison ------------------------------------------------------------------------------

def assert_matches(model, ref, idx, tol=TOL):
    """Forward logits and the gradients of every parameter agree with the reference."""
    params = [p for p in model.parameters()]
    g = torch.Generator().manual_seed(99)
    got = model(idx)
    want = ref(model, idx)
    torch.testing.assert_close(got, want, **tol)
    probe = torch.randn(got.shape, generator=g, dtype=got.dtype)  # random loss direction
    g_got = torch.autograd.grad((got * probe).sum(), params)
    g_want = torch.autograd.grad((want * probe).sum(), params)
    names = [n for n, _ in model.named_parameters()]
    for n, a, b in zip(names, g_got, g_want):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, n=n: f"gradient of {n}: {m}")


CFG = ModelConfig(vocab_size=64, d_model=32, depth=3, n_heads=4, mlp_ratio=2.0, seq_len=12)  # L = 6

CASES = [
    ("prenorm", {}, ref_prenorm),
    ("highway", {}, ref_highway),
    ("highway", {"gate": "scalar"}, ref_highway),
    ("highway", {"gate_bias": -1.0}, ref_highway),
    ("densenet", {}, ref_densenet),
    ("densenet", {"dilation": 2, "period": 2}, lambda m, x: ref_densenet(m, x, dilation=2, period=2)),
    ("densenet", {"dilation": 2}, lambda m, x: ref_densenet(m, x, dilation=2)),
    ("densenet", {"period": 2}, lambda m, x: ref_densenet(m, x, period=2)),
    # the module's own equations: against the naive loops, and the fast form against them
    ("densenet", {"dilation": 2, "period": 2, "impl": "reference"}, lambda m, x: ref_densenet(m, x, dilation=2, period=2)),
    ("densenet", {"dilation": 2, "period": 2}, ref_module),
    ("densenet", {}, ref_module),
    ("full-attnres", {}, ref_attnres),
    ("block-attnres", {"block_size": 2}, ref_attnres),
    ("block-attnres", {"block_size": 4}, ref_attnres),  # blocks [4, 2]
    ("block-attnres", {"block_size": 4, "two_phase": True}, ref_attnres),
    ("block-attnres", {"block_size": 3, "two_phase": True}, ref_attnres),
    # the paper's layout (default): L = 6, N = 2 -> blocks of 1 and 2 transformer blocks
    ("block-attnres", {"n_blocks": 2}, ref_attnres),
    ("block-attnres", {"n_blocks": 2, "two_phase": True}, ref_attnres),
    # and once end to end against explicit block lists, independent of the module's layout code
    ("block-attnres", {"n_blocks": 2, "impl": "reference"}, lambda m, x: ref_blocks(m, x, paper_blocks(6, 2))),
    ("block-attnres", {"block_size": 4, "impl": "reference"}, lambda m, x: ref_blocks(m, x, [[0, 1, 2, 3], [4, 5]])),
    ("block-attnres", {"n_blocks": 3}, ref_attnres),
    ("block-attnres", {}, ref_attnres),  # default N = min(8, L_b) = L_b = 3
    # resbench's other layout: blocks of ceil(L / N) sublayers
    ("block-attnres", {"n_blocks": 2, "layout": "ceil"}, ref_attnres),
    ("block-attnres", {"n_blocks": 6, "layout": "ceil"}, ref_attnres),
    # the default options through the ablation reference: it is AttnRes when nothing is ablated
    ("full-attnres", {}, lambda m, x: ref_ablated(m, x, [[i] for i in range(CFG.n_layers)], {})),
    ("block-attnres", {"n_blocks": 2}, lambda m, x: ref_ablated(m, x, paper_blocks(CFG.n_layers, 2), {})),
    *ablation_cases(),
]


@pytest.mark.parametrize("name,options,ref", CASES,
                         ids=[n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o, _ in CASES])
def test_matches_reference(name, options, ref):
    model = make_model(CFG, name, options, seed=2, perturb=True)
    # a perturbed d x d query projection makes near one-hot softmaxes: fp64 sums differ in the 12th digit
    tol = dict(rtol=1e-9, atol=1e-11) if options.get("input_query") else TOL
    assert_matches(model, ref, tokens(CFG, seed=4), tol)


def test_reference_is_sensitive():
    """The comparison can fail: a variant with perturbed params differs from the PreNorm formula,
    and the block reference with the wrong block size differs from the implementation."""
    model = make_model(CFG, "densenet", seed=2, perturb=True)
    idx = tokens(CFG, seed=4)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(model(idx), ref_prenorm(model, idx), **TOL)
    model = make_model(CFG, "block-attnres", {"block_size": 4}, seed=2, perturb=True)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(model(idx), ref_blocks(model, idx, [[0, 1, 2], [3, 4, 5]]), **TOL)
    other = make_model(CFG, "block-attnres", {"block_size": 3, "impl": "reference"}, seed=2)
    other.load_state_dict(model.state_dict())  # same parameters, another layout
    with pytest.raises(AssertionError):
        torch.testing.assert_close(model(idx), other(idx), **TOL)


def test_the_modules_depth_attention_is_the_formula():
    """attnres.depth_attention (the reference's one formula) against explicit per-source loops."""
    from resbench.variants.attnres import depth_attention as formula

    model = make_model(CFG, "full-attnres", seed=3, perturb=True)
    g = torch.Generator().manual_seed(0)
    sources = [torch.randn(2, 5, CFG.d_model, generator=g, dtype=torch.float64) * (k + 1) for k in range(4)]
    for reader in (1, 3, CFG.n_layers):
        h, alpha = formula(sources, model.residual.query[reader], model.residual.key_gain[reader])
        torch.testing.assert_close(h, depth_attention(model, reader, sources), **TOL)
        torch.testing.assert_close(alpha.sum(0), torch.ones(2, 5, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 5])
def test_block_two_phase_equals_direct(block_size):
    direct = make_model(CFG, "block-attnres", {"block_size": block_size}, seed=1, perturb=True)
    two = make_model(CFG, "block-attnres", {"block_size": block_size, "two_phase": True}, seed=1, perturb=True)
    assert two.residual.two_phase and not direct.residual.two_phase
    idx = tokens(CFG, seed=2)
    torch.testing.assert_close(two(idx), direct(idx), **TOL)


def test_paper_layout_keeps_n_and_puts_boundaries_between_transformer_blocks():
    from resbench import variants

    for L, N in [(54, 8), (10, 4), (32, 8), (16, 4), (10, 5), (6, 1)]:
        res = variants.build("block-attnres", 8, L, {"n_blocks": N})
        want = paper_blocks(L, N)
        assert res.n_blocks == N and res.state_vectors() == N + 1
        assert list(res.starts) == [b[0] for b in want] and res.block_sizes() == [len(b) for b in want]
        assert all(s % 2 == 0 for s in res.starts), (L, N)  # never inside an attention + MLP pair
    assert variants.build("block-attnres", 8, 54, {"n_blocks": 8}).block_sizes() == [6] * 7 + [12]
    with pytest.raises(variants.VariantError, match="transformer blocks"):
        variants.build("block-attnres", 8, 10, {"n_blocks": 8})  # 5 transformer blocks cannot make 8
    with pytest.raises(variants.VariantError, match="makes 5 blocks"):
        variants.build("block-attnres", 8, 10, {"n_blocks": 8, "layout": "ceil"})  # never a silent N = 5
    with pytest.raises(variants.VariantError, match="not both"):
        variants.build("block-attnres", 8, 10, {"n_blocks": 2, "block_size": 5})


def test_block_n_equals_l_is_full_attnres_exactly():
    L = CFG.n_layers
    full = make_model(CFG, "full-attnres", seed=7, perturb=True)
    block = make_model(CFG, "block-attnres", {"n_blocks": L, "layout": "ceil"}, seed=7)
    assert block.residual.state_dict().keys() == full.residual.state_dict().keys()
    block.residual.load_state_dict(full.residual.state_dict())
    idx = tokens(CFG, seed=1)
    assert torch.equal(block(idx), full(idx))


def test_block_n1_is_plain_residual_with_separate_embedding():
    model = make_model(CFG, "block-attnres", {"n_blocks": 1}, seed=3, perturb=True)
    assert model.residual.state_vectors() == 2
    assert_matches(model, ref_block_n1, tokens(CFG, seed=5))


# -- PreNorm-equivalence at init ---------------------------------------------------------------

EQUIV = [
    ("densenet", {}),
    ("densenet", {"dilation": 2, "period": 2}),
    ("full-attnres", {}),
    ("block-attnres", {"n_blocks": 1}),
    ("block-attnres", {"n_blocks": 2}),
    ("block-attnres", {"n_blocks": 3}),
    ("block-attnres", {"block_size": 4}),
    ("block-attnres", {"n_blocks": 6, "layout": "ceil"}),
    ("block-attnres", {"block_size": 4, "two_phase": True}),
]


@pytest.mark.parametrize("name,options", EQUIV, ids=[n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in EQUIV])
def test_prenorm_equivalent_at_init(tiny_eps, name, options):
    idx = tokens(CFG, seed=6)
    want = make_model(CFG, "prenorm", seed=11)(idx)
    torch.testing.assert_close(make_model(CFG, name, options, seed=11)(idx), want, **TOL)


def test_prenorm_equivalence_breaks_once_trained(tiny_eps):
    idx = tokens(CFG, seed=6)
    want = make_model(CFG, "prenorm", seed=11)(idx)
    for name in ("densenet", "full-attnres", "block-attnres"):
        got = make_model(CFG, name, seed=11, perturb=True)(idx)
        assert (got - want).abs().max() > 1e-4, name


def test_highway_not_prenorm_equivalent_and_biased_to_carry():
    idx = tokens(CFG, seed=6)
    model = make_model(CFG, "highway", seed=11)
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(torch.sigmoid(o).detach()))
             for m in model.residual.gates]
    out = model(idx)
    for h in hooks:
        h.remove()
    assert len(seen) == CFG.n_layers
    bias = model.residual.gate_bias
    assert bias < 0
    for g in seen:
        assert g.shape[-1] == CFG.d_model
        torch.testing.assert_close(g, torch.full_like(g, 1 / (1 + math.exp(-bias))), rtol=0, atol=1e-15)
        assert (g < 0.5).all()
    assert (out - make_model(CFG, "prenorm", seed=11)(idx)).abs().max() > 1e-3
