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
]
CASE_IDS = [n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in OPTION_CASES]
# Variant parameters whose gradient is exactly zero by the math: AttnRes reader 0 (the first
# sublayer) attends over one source, the embedding, so its softmax is constant 1.
DEAD_ROWS = {"full-attnres": {"residual.query": [0], "residual.key_gain": [0]},
             "block-attnres": {"residual.query": [0], "residual.key_gain": [0]}}


def test_registry_has_the_five_mission_variants():
    assert {"prenorm", "highway", "densenet", "full-attnres", "block-attnres"} <= set(NAMES)


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
            for row in DEAD_ROWS.get(name, {}).get(pname, []):
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


def test_shared_weights_identical_across_variants(tiny_cfg):
    def shared(model):
        return {k: v for k, v in model.state_dict().items() if not k.startswith("residual.")}

    ref = shared(make_model(tiny_cfg, "prenorm", seed=3))
    assert ref, "no shared weights found"
    for name, options in OPTION_CASES:
        got = shared(make_model(tiny_cfg, name, options, seed=3))
        assert got.keys() == ref.keys(), name
        for k in ref:
            assert torch.equal(got[k], ref[k]), f"{name}: shared weight {k} differs from prenorm's"
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
