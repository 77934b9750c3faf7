"""The optimised depth-mixing forms against the references of their equations, and their memory.

test_equations.py holds the float64 references (AttnRes: the module's impl: reference); here the fast forms are checked on more
shapes (more sources, partial last blocks), in float32 against float64, with gradients of the
two-phase and Block(N=L) identities, in the numerically delicate corners of the partial-sum
reconstruction, and for live memory: inference keeps the declared state and no O(L^2 d) terms,
and training does not save the block partial sums."""
from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch

from conftest import make_model, tokens
from resbench.measure import LiveBytesTracker
from resbench.model import ModelConfig, Transformer
from test_equations import assert_matches, ref_attnres, ref_densenet
from resbench.variants._attnres_fast import _Attend, _SourceLogits, _Store

CFG = ModelConfig(vocab_size=64, d_model=32, depth=4, n_heads=4, mlp_ratio=2.0, seq_len=10)  # L = 8


def grads(model, idx, probe_seed=3):
    out = model(idx)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(probe_seed), dtype=torch.float64)
    probe = probe.to(out.dtype)  # the same direction in every dtype
    params = list(model.parameters())
    return out, torch.autograd.grad((out * probe).sum(), params)


FAST_CASES = [
    ("full-attnres", {}, ref_attnres),
    ("block-attnres", {"block_size": 3}, ref_attnres),  # blocks 3, 3, 2
    ("block-attnres", {"block_size": 3, "two_phase": True}, ref_attnres),
    ("block-attnres", {"n_blocks": 1}, ref_attnres),
    ("block-attnres", {"n_blocks": 1, "two_phase": True}, ref_attnres),
    ("block-attnres", {"block_size": 5, "two_phase": True}, ref_attnres),
    ("densenet", {}, ref_densenet),
    ("densenet", {"dilation": 3, "period": 1}, lambda m, x: ref_densenet(m, x, dilation=3)),
    ("densenet", {"period": 3}, lambda m, x: ref_densenet(m, x, period=3)),  # kept X_j without a DWA
]
IDS = [n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o, _ in FAST_CASES]


@pytest.mark.parametrize("name,options,ref", FAST_CASES, ids=IDS)
def test_fast_form_matches_naive_float64(name, options, ref):
    model = make_model(CFG, name, options, seed=5, perturb=True)
    assert_matches(model, ref, tokens(CFG, seed=8, batch=3))


@pytest.mark.parametrize("name,options,ref", FAST_CASES, ids=IDS)
def test_fast_form_float32_close_to_float64_reference(name, options, ref):
    m64 = make_model(CFG, name, options, seed=5, perturb=True)
    m32 = copy.deepcopy(m64).float()
    idx = tokens(CFG, seed=9)
    out32, g32 = grads(m32, idx)
    out64 = ref(m64, idx)
    probe = torch.randn(out64.shape, generator=torch.Generator().manual_seed(3), dtype=out64.dtype)
    g64 = torch.autograd.grad((out64 * probe).sum(), list(m64.parameters()))
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-5)
    for (n, _), a, b in zip(m64.named_parameters(), g32, g64):
        scale = b.abs().max().item() + 1e-12
        assert (a.double() - b).abs().max().item() <= 2e-4 * scale, n


@pytest.mark.parametrize("name,options,ref", FAST_CASES, ids=IDS)
def test_inference_path_equals_autograd_path(name, options, ref):
    """Without grad the readers run the same math without autograd nodes: same output, bitwise."""
    model = make_model(CFG, name, options, seed=5, perturb=True)
    idx = tokens(CFG, seed=8)
    with torch.no_grad():
        fast = model(idx)
    assert torch.equal(fast, model(idx))


@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 8])
def test_two_phase_equals_direct_with_gradients(block_size):
    direct = make_model(CFG, "block-attnres", {"block_size": block_size}, seed=1, perturb=True)
    two = make_model(CFG, "block-attnres", {"block_size": block_size, "two_phase": True}, seed=1, perturb=True)
    idx = tokens(CFG, seed=2)
    out_d, g_d = grads(direct, idx)
    out_t, g_t = grads(two, idx)
    torch.testing.assert_close(out_t, out_d, rtol=1e-12, atol=1e-13)
    for a, b in zip(g_t, g_d):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("two_phase", [False, True])
def test_block_n_equals_l_is_full_with_gradients(two_phase):
    full = make_model(CFG, "full-attnres", seed=7, perturb=True)
    block = make_model(CFG, "block-attnres", {"n_blocks": CFG.n_layers, "layout": "ceil", "two_phase": two_phase},
                       seed=7)
    block.residual.load_state_dict(full.residual.state_dict())
    idx = tokens(CFG, seed=1)
    out_f, g_f = grads(full, idx)
    out_b, g_b = grads(block, idx)
    assert torch.equal(out_b, out_f)
    for a, b in zip(g_b, g_f):
        assert torch.equal(a, b)


# -- the partial-sum reconstruction at its extremes ---------------------------------------------

def _reader_inputs(dtype, gap, n=3, B=2, T=5, d=16, L=4, reader=2, seed=0):
    """Sources, partial sum and queries of one reader whose partial-sum logit sits `gap` above
    the log-sum-exp of the completed sources' logits: its weight is ~sigmoid(gap), from ~1e-40
    to 1 - 1e-22 for |gap| = 50. Sources are orthogonal to the query (logit 0), p is along it."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g, dtype=torch.float64)
    u = u / u.norm()
    values = [torch.randn(B, T, d, generator=g, dtype=torch.float64) for _ in range(n)]
    values = [v - (v @ u).unsqueeze(-1) * u for v in values]
    p = u * 3 + 0.05 * torch.randn(B, T, d, generator=g, dtype=torch.float64)
    qk = 0.1 * torch.randn(L + 1, d, generator=g, dtype=torch.float64)
    qk[reader] = (gap + math.log(n)) / math.sqrt(d) * u
    return [t.to(dtype).requires_grad_() for t in (qk, p, *values)]


def _fast_reader(reader, defer, qk, p, *values):
    store = _Store(defer)
    cols = [_SourceLogits.apply(v, qk, k, 0, store)[reader] for k, v in enumerate(values)]
    return _Attend.apply(reader, qk, p, None, store, *values, *cols)


def _naive_reader(reader, qk, p, *values):
    def logit(v):
        return (v @ qk[reader]) * torch.rsqrt((v * v).mean(-1) + 1e-6)
    a = torch.softmax(torch.stack([logit(v) for v in (*values, p)]), 0)
    return sum(a[i].unsqueeze(-1) * v for i, v in enumerate((*values, p)))


@pytest.mark.parametrize("defer", [False, True])
@pytest.mark.parametrize("gap", [-50.0, -12.0, 0.0, 12.0, 50.0])
def test_partial_reconstruction_is_stable(gap, defer):
    """The partial sum is rebuilt in backward from h, the sources and its weight w; float32
    gradients stay within float error of float64 ones even where w under- or overflows."""
    reader = 2
    t64, t32 = _reader_inputs(torch.float64, gap), _reader_inputs(torch.float32, gap)
    probe = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h64 = _naive_reader(reader, *t64)
    want = torch.autograd.grad((h64 * probe).sum(), t64)
    h32 = _fast_reader(reader, defer, *t32)
    got = torch.autograd.grad((h32 * probe.float()).sum(), t32)
    torch.testing.assert_close(h32.double(), h64, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        scale = max(b.abs().max().item(), 1.0)
        assert (a.double() - b).abs().max().item() <= 1e-4 * scale


# -- memory ---------------------------------------------------------------------------------------

MEM = dict(vocab_size=64, d_model=64, n_heads=4, mlp_ratio=2.0, seq_len=16)
B = 2


def _prefill_peak(cfg, name, options=None):
    model = make_model(cfg, name, options, dtype=torch.float32)
    idx = tokens(cfg, batch=B)
    with torch.no_grad():
        model(idx)  # warm: first-call allocations are not the method's
        with LiveBytesTracker() as t:
            model(idx)
    return t.peak


def _saved_bytes(cfg, name, options=None):
    """Live bytes the forward leaves for backward (the graph's saved tensors and the output)."""
    model = make_model(cfg, name, options, dtype=torch.float32, perturb=True)
    idx = tokens(cfg, batch=B)
    with LiveBytesTracker() as t:
        out = model(idx)
        kept = t.current
    out.logsumexp(-1).sum().backward()  # and the graph is usable
    return kept


@pytest.mark.parametrize("name,options", [("full-attnres", {}), ("block-attnres", {"block_size": 2})])
def test_inference_memory_is_baseline_plus_declared_state(name, options):
    """Extra prefill bytes over PreNorm = (state - 1) d-vectors per token, plus the fp32 logits of
    every source against its later readers (O(L^2) scalars per token, not d-vectors), within the
    few d-vectors by which the two models' transients differ; and linear in depth."""
    net = {}
    for depth in (4, 8):
        cfg = ModelConfig(depth=depth, **MEM)
        L, vec = cfg.n_layers, B * cfg.seq_len * cfg.d_model * 4
        res = make_model(cfg, name, options).residual
        logits = sum(L + 1 - res.first_read[k] for k in range(res.state_vectors())) * B * cfg.seq_len * 4
        declared = (res.state_vectors() - 1) * vec
        extra = _prefill_peak(cfg, name, options) - _prefill_peak(cfg, "prenorm")
        assert declared - 3 * vec <= extra <= declared + logits + 2 * vec, (L, extra / vec)
        net[L] = extra - logits
    # doubling L roughly doubles the d-vector part; O(L^2 d) would quadruple it
    assert 1.5 < net[16] / net[8] < 2.5, net


def test_block_training_does_not_save_partial_sums():
    """One block of L sublayers: the sources are e and the block sum, so the forward keeps O(1)
    extra d-vectors per token over PreNorm for backward, not one partial sum per sublayer."""
    cfg = ModelConfig(depth=8, **MEM)
    vec = B * cfg.seq_len * cfg.d_model * 4
    extra = _saved_bytes(cfg, "block-attnres", {"n_blocks": 1}) - _saved_bytes(cfg, "prenorm")
    # h_0 (a copy of e), the block sum, and per-token scalars (weights, logits: large next to
    # d = 64); saving the L - 1 partial sums would add 15 more
    assert extra <= 5 * vec, extra / vec


def test_checkpointing_carries_the_state():
    if "checkpoint_every" not in inspect.signature(Transformer.forward).parameters:
        pytest.skip("model has no activation checkpointing")
    idx = tokens(CFG, seed=3)
    for name, options in [("full-attnres", {}), ("block-attnres", {"block_size": 3}),
                          ("block-attnres", {"block_size": 3, "two_phase": True}), ("densenet", {}),
                          ("densenet", {"period": 3})]:
        model = make_model(CFG, name, options, seed=2, perturb=True)
        out, g = grads(model, idx)
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
        out_c = model(idx, checkpoint_every=1)
        g_c = torch.autograd.grad((out_c * probe).sum(), list(model.parameters()))
        torch.testing.assert_close(out_c, out, rtol=1e-12, atol=1e-13)
        for a, b in zip(g_c, g):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


STATE_CASES = [("full-attnres", {"impl": impl}) for impl in ("fast", "functional", "reference")] + [
    ("block-attnres", {**o, **form}) for o in ({"block_size": 1}, {"block_size": 2}, {"block_size": 3},
                                               {"block_size": 5}, {"n_blocks": 1}, {"n_blocks": 2})
    for form in ({}, {"two_phase": True}, {"impl": "functional"}, {"impl": "reference"})]


@pytest.mark.parametrize("depth", [3, 4, 5])  # L = 6, 8, 10
@pytest.mark.parametrize("name,options", STATE_CASES,
                         ids=[n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in STATE_CASES])
def test_declared_state_is_the_most_the_state_holds(depth, name, options):
    """state_vectors() is the most d-vectors per token the residual state holds at once, counted
    from the state itself after every sublayer (each storage once; two_phase's precomputed block
    outputs included). Both ways: an understated state hides memory, an overstated one
    misclassifies how it grows."""
    from resbench.measure.memory_views import boundary_bytes

    cfg = ModelConfig(vocab_size=64, d_model=24, depth=depth, n_heads=4, mlp_ratio=2.0, seq_len=4)
    L = cfg.n_layers
    model = make_model(cfg, name, options, perturb=True)
    idx = tokens(cfg, batch=2)
    vec = 2 * cfg.seq_len * cfg.d_model * 8  # float64
    held = boundary_bytes(model, idx, list(range(1, L + 1)), width=cfg.d_model)
    assert all(b % vec == 0 for b in held), held
    assert max(held) // vec == model.residual.state_vectors(), [b // vec for b in held]


def test_the_equations_import_no_form_and_a_record_still_names_every_form():
    """AttnRes's and DenseNet's equations modules import none of their forms (found by name,
    variants.base.implementation), yet source_of hashes every form with the variant."""
    import ast
    from pathlib import Path

    from resbench import variants

    for name, module, forms in (("full-attnres", "attnres", {"fast", "functional", "fla"}),
                                ("densenet", "densenet", {"fast"})):
        tree = ast.parse(Path(variants.__file__).with_name(f"{module}.py").read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {m for m in imported if m.startswith(f"_{module}_")}, imported
        files = {f.name for f in variants.source_files(name)}
        assert {f"_{module}_{f}.py" for f in forms} <= files, files


@pytest.mark.parametrize("name,options", [("full-attnres", {}), ("block-attnres", {"block_size": 3})],
                         ids=["full", "block-3"])
def test_every_form_keeps_the_one_state_layout(name, options):
    """Every AttnRes form carries the equations' "sources" and "partial" (derived entries beside
    them), so completed() names the same tensors, with the same values, at every sublayer."""
    idx = tokens(CFG, seed=8, batch=2)
    seen = {}
    for impl in ("reference", "fast", "functional"):
        model = make_model(CFG, name, {**options, "impl": impl}, seed=5, perturb=True)
        res, rows = model.residual, []
        with torch.no_grad():
            state = res.begin(model.embed(idx))
            for i in range(CFG.n_layers):
                rows.append([t.clone() for t in res.completed(state)])
                assert (state["partial"] is None) == (i == res.block_start[i]), (impl, i)
                state = model.run_sublayers(state, i, i + 1)
        seen[impl] = rows
    for impl in ("fast", "functional"):
        for i, (a, b) in enumerate(zip(seen[impl], seen["reference"])):
            assert len(a) == len(b), (impl, i)
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["fast", "functional"])
def test_a_pipeline_refuses_every_faster_form_alike(impl):
    """A stage boundary sends per-token tensors; the faster forms also keep folded queries (and the
    fast form a backward store), so both are refused with one message naming the equations."""
    from resbench.errors import ConfigError
    from resbench.parallel.pipeline import chunk_bounds, trace_boundaries

    model = make_model(CFG, "block-attnres", {"n_blocks": 2, "impl": impl}, seed=5)
    with pytest.raises(ConfigError, match=r"not per-token tensors, which a stage boundary cannot send: use impl: reference"):
        trace_boundaries(model, chunk_bounds(CFG.depth, 2))
    ref = make_model(CFG, "block-attnres", {"n_blocks": 2, "impl": "reference"}, seed=5)
    # the cut falls after the first of two blocks: the embedding, then the embedding and that block
    assert [b.completed for b in trace_boundaries(ref, chunk_bounds(CFG.depth, 2))] == [[0], [0, 1]]
