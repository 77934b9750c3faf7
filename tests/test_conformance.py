"""Properties every registered variant must have; parametrized over the registry, so a newly
registered variant is covered without touching this file."""
from __future__ import annotations

import pytest
import torch

from resbench import variants
from conftest import make_model, tokens
from resbench.model import count_params

NAMES = variants.names()
# a few non-default option sets, checked where they change the wiring or the parameter count
OPTION_CASES = [(n, {}) for n in NAMES] + [
    ("highway", {"gate": "scalar"}),
    ("densenet", {"dilation": 2, "period": 2}),
    ("block-attnres", {"n_blocks": 2}),
    ("block-attnres", {"block_size": 4, "two_phase": True}),
    ("full-attnres", {"impl": "reference"}),
    ("block-attnres", {"n_blocks": 2, "impl": "reference"}),
    ("densenet", {"dilation": 2, "period": 2, "impl": "reference"}),
    ("hc", {"dynamic": False}),
    ("hc", {"n": 2}),
    ("mhc", {"n": 2, "sinkhorn_iters": 3}),
    ("mhc-lite", {"n": 3}),
    ("deepnorm", {"alpha": 1.0, "beta": 0.5}),
    ("laurel", {"rank": 2}),
    # the paper's Table 4 ablations of AttnRes
    ("full-attnres", {"impl": "reference", "input_query": True}),
    ("full-attnres", {"impl": "reference", "static_mixing": True}),
    ("full-attnres", {"impl": "reference", "sigmoid": True, "window": 2}),
    ("block-attnres", {"n_blocks": 2, "impl": "reference", "key_norm": False, "heads": 4}),
    ("block-attnres", {"block_size": 2, "impl": "reference", "static_mixing": True, "sigmoid": True}),
]
CASE_IDS = [n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in OPTION_CASES]
# Variant parameters whose gradient is exactly zero by the math: AttnRes reader 0 (the first
# sublayer) attends over one source, the embedding, so its softmax is constant 1 (a sigmoid is not).
def dead_rows(name: str, options: dict) -> dict[str, list]:
    if "attnres" not in name or options.get("sigmoid"):
        return {}
    return {"residual.query": [0], "residual.key_gain": [0], "residual.query_proj": [0],
            "residual.mix_logits.0": [...]}


def test_registry_has_the_five_mission_variants():
    assert {"prenorm", "highway", "densenet", "full-attnres", "block-attnres"} <= set(NAMES)


def test_deepnorm_scales_the_shared_draw_by_beta(tiny_cfg):
    """DeepNet's decoder-only beta = (8N)^(-1/4) on v, out, and both MLP matrices; q, k as drawn."""
    beta = (8 * tiny_cfg.depth) ** -0.25
    d, gpt2 = tiny_cfg.d_model, (2 * tiny_cfg.depth) ** -0.5
    ref, got = make_model(tiny_cfg, "prenorm", seed=3), make_model(tiny_cfg, "deepnorm", seed=3)
    assert got.residual.beta == pytest.approx(beta) and got.residual.alpha == pytest.approx((2 * tiny_cfg.depth) ** 0.25)
    qkv, qkv0 = got.sublayers[0].qkv.weight, ref.sublayers[0].qkv.weight
    assert torch.equal(qkv[:2 * d], qkv0[:2 * d])
    torch.testing.assert_close(qkv[2 * d:], qkv0[2 * d:] * beta)
    torch.testing.assert_close(got.sublayers[0].proj.weight, ref.sublayers[0].proj.weight * beta / gpt2)
    torch.testing.assert_close(got.sublayers[1].fc.weight, ref.sublayers[1].fc.weight * beta)
    torch.testing.assert_close(got.sublayers[1].proj.weight, ref.sublayers[1].proj.weight * beta / gpt2)


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_and_finite(tiny_cfg, name):
    model = make_model(tiny_cfg, name, perturb=True)
    out = model(tokens(tiny_cfg, seq=11))
    assert out.shape == (2, 11, tiny_cfg.vocab_size)
    assert out.dtype == torch.float64
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,options", OPTION_CASES, ids=CASE_IDS)
def test_causal(tiny_cfg, name, options):
    model = make_model(tiny_cfg, name, options, perturb=True)
    idx = tokens(tiny_cfg)
    base = model(idx)
    for t in (0, 5, tiny_cfg.seq_len - 1):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % tiny_cfg.vocab_size
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-12)
        # the change must be visible from t on, or the check above proves nothing
        assert (out[:, t] - base[:, t]).abs().max() > 1e-6


@pytest.mark.parametrize("name,options", OPTION_CASES, ids=CASE_IDS)
def test_gradients_reach_every_parameter(tiny_cfg, name, options):
    model = make_model(tiny_cfg, name, options, perturb=True)
    model(tokens(tiny_cfg)).logsumexp(-1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        if pname.startswith("residual."):
            # every element of the variant's own parameters is used (e.g. no reader's query is dead)
            grad = p.grad.clone()
            for row in dead_rows(name, options).get(pname, []):
                assert (grad[row] == 0).all(), f"{pname}[{row}] should get no gradient"
                grad[row] = 1.0
            assert (grad != 0).all(), f"{pname}: {(grad == 0).sum().item()} elements with zero gradient"
        else:
            assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_bitwise_identical(tiny_cfg, name):
    idx = tokens(tiny_cfg)
    a = make_model(tiny_cfg, name, seed=5, dtype=torch.float32)
    b = make_model(tiny_cfg, name, seed=5, dtype=torch.float32)
    torch.manual_seed(123)  # the global RNG must not matter
    c = make_model(tiny_cfg, name, seed=5, dtype=torch.float32)
    out_a = a(idx)
    assert torch.equal(out_a, b(idx))
    assert torch.equal(out_a, c(idx))
    for (ka, pa), (kc, pc) in zip(a.state_dict().items(), c.state_dict().items()):
        assert ka == kc and torch.equal(pa, pc), ka
    assert not torch.equal(out_a, make_model(tiny_cfg, name, seed=6, dtype=torch.float32)(idx))


@pytest.mark.parametrize("name,options", OPTION_CASES, ids=CASE_IDS)
def test_declared_extra_params_match_count(tiny_cfg, name, options):
    model = make_model(tiny_cfg, name, options)
    counted = sum(p.numel() for p in model.residual.parameters())
    assert model.residual.declared_extra_params() == counted
    # and the model holds nothing beyond the shared parts and the variant
    base = count_params(make_model(tiny_cfg, "prenorm"))
    assert count_params(model) == base + counted


def declared_scales(residual, cfg, key):
    """[rows] multipliers a variant's init_scale puts on prenorm's draw of shared weight `key`,
    from the roles' definition (docs/VARIANTS.md): qkv rows are q, k, v; "proj" replaces GPT-2's
    1/sqrt(2 depth)."""
    d, gpt2 = cfg.d_model, (2 * cfg.depth) ** -0.5
    parts = key.split(".")
    if parts[0] != "sublayers":
        return None
    attn = int(parts[1]) % 2 == 0
    rows = {"qkv": [("attn.q", d, 1.0), ("attn.k", d, 1.0), ("attn.v", d, 1.0)],
            "proj": [("attn.out" if attn else "mlp.out", None, gpt2)],
            "fc": [("mlp.in", None, 1.0)]}.get(parts[2])
    if rows is None:
        return None
    scale = [(residual.init_scale(role) or default) / default for role, _, default in rows]
    return scale if any(s != 1.0 for s in scale) else None


def test_shared_weights_identical_across_variants(tiny_cfg):
    """Identical for one seed, up to the scale a variant declares per role (DeepNorm's beta):
    the draw is the same."""
    def shared(model):
        return {k: v for k, v in model.state_dict().items() if not k.startswith("residual.")}

    ref = shared(make_model(tiny_cfg, "prenorm", seed=3))
    assert ref, "no shared weights found"
    for name, options in OPTION_CASES:
        model = make_model(tiny_cfg, name, options, seed=3)
        got = shared(model)
        assert got.keys() == ref.keys(), name
        for k in ref:
            want = ref[k]
            scale = declared_scales(model.residual, tiny_cfg, k)
            if scale is not None:
                want = torch.cat([c * s for c, s in zip(want.chunk(len(scale)), scale)])
            # exact draws; a scaled one was rescaled in fp32 before the fp64 cast
            torch.testing.assert_close(got[k], want, rtol=0 if scale is None else 1e-6, atol=0,
                                       msg=lambda m, n=name, k=k: f"{n}: shared weight {k}: {m}")
    other = shared(make_model(tiny_cfg, "prenorm", seed=4))
    assert not torch.equal(other["sublayers.0.qkv.weight"], ref["sublayers.0.qkv.weight"])


@pytest.mark.parametrize("name", NAMES)
def test_runs_in_bfloat16_close_to_float32(tiny_cfg, name):
    idx = tokens(tiny_cfg)
    low = make_model(tiny_cfg, name, perturb=True, dtype=torch.bfloat16)(idx)
    ref = make_model(tiny_cfg, name, perturb=True, dtype=torch.float32)(idx)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert ((low.float() - ref).norm() / ref.norm()) < 0.05


def test_depth_mixing_precision_is_at_least_fp32():
    from resbench.variants.base import inv_rms

    for dtype, want in [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                        (torch.float32, torch.float32), (torch.float64, torch.float64)]:
        assert inv_rms(torch.ones(2, 4, dtype=dtype)).dtype == want
        res = variants.build("full-attnres", 4, 2).to(dtype)
        assert res.logits(torch.ones(3, 4, dtype=dtype)).dtype == want, dtype


@pytest.mark.parametrize("name,options", OPTION_CASES, ids=CASE_IDS)
def test_streams_are_part_of_the_declared_state(tiny_cfg, name, options):
    res = make_model(tiny_cfg, name, options).residual
    assert 1 <= res.streams() <= res.state_vectors()
