"""FLOP counting, the matmul peak, the datasheet table and MFU."""
import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from resbench.measure import time_once
from resbench.measure import count_flops, device_peak_flops, matmul_probe, mfu


def test_count_flops_matmul():
    M, K, N = 8, 16, 32
    a, b = torch.randn(M, K), torch.randn(K, N)
    assert count_flops(lambda: a @ b) == 2 * M * K * N


def test_count_flops_linear_train_step():
    B, I, O = 8, 64, 32
    lin = torch.nn.Linear(I, O)
    x = torch.randn(B, I, requires_grad=True)
    # forward, grad wrt input, grad wrt weight: 3 matmuls
    assert count_flops(lambda: lin(x).sum().backward()) == 3 * 2 * B * I * O


def test_count_flops_under_fake_tensors():
    with FakeTensorMode():
        a, b = torch.empty(4096, 8192), torch.empty(8192, 1024)
        assert count_flops(lambda: a @ b) == 2 * 4096 * 8192 * 1024


def test_matmul_probe_rate_is_positive_finite():
    for kwargs in ({"n": 128}, {"n": None, "target_s": 0.005}):
        fn, flops = matmul_probe(torch.float32, "cpu", **kwargs)
        peak = flops / time_once(fn, "cpu")
        assert math.isfinite(peak) and peak > 0
    with pytest.raises(ValueError):
        matmul_probe(n=0)


@pytest.fixture
def gpu_named(monkeypatch):
    def set_name(name):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: name)

    return set_name


@pytest.mark.parametrize(
    "name, dtype, expected",
    [
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.5e12),
        ("NVIDIA H100 80GB HBM3", torch.float16, 989.5e12),
        ("NVIDIA H100 PCIe", torch.bfloat16, 756.5e12),
        ("NVIDIA H100 NVL", torch.bfloat16, None),  # not in the table: caller measures
        ("NVIDIA H200", torch.bfloat16, 989.5e12),
        ("NVIDIA H200 NVL", torch.bfloat16, 835.5e12),
        ("NVIDIA GH200 480GB", torch.bfloat16, None),
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312e12),
        ("NVIDIA A100 80GB PCIe", torch.float16, 312e12),
        ("NVIDIA L4", torch.bfloat16, 121e12),
        ("NVIDIA L40S", torch.bfloat16, 362.05e12),
        ("NVIDIA GeForce RTX 4090", torch.bfloat16, 165.2e12),
        ("Tesla V100-SXM2-16GB", torch.float16, 125e12),
        ("Tesla V100-SXM2-16GB", torch.bfloat16, None),  # no bf16 on Volta
        ("NVIDIA H100 80GB HBM3", torch.int8, None),
        ("Some Future GPU", torch.bfloat16, None),
    ],
)
def test_device_peak_flops_table(gpu_named, name, dtype, expected):
    gpu_named(name)
    assert device_peak_flops("cuda", dtype) == expected


def test_device_peak_flops_fp32_follows_tf32_setting(gpu_named):
    gpu_named("NVIDIA H100 80GB HBM3")
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert device_peak_flops("cuda:0", torch.float32) == 67e12
        torch.set_float32_matmul_precision("high")
        assert device_peak_flops("cuda:0", torch.float32) == 494.5e12
    finally:
        torch.set_float32_matmul_precision(before)


def test_device_peak_flops_off_cuda(monkeypatch):
    assert device_peak_flops("cpu", torch.float32) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_peak_flops("cuda", torch.bfloat16) is None


def test_mfu():
    assert mfu(1e12, 0.5, 4e12) == pytest.approx(0.5)
    assert mfu(0, 1.0, 1e12) == 0.0
    for bad in ((1e12, 0.0, 1e12), (1e12, 1.0, 0.0), (1e12, float("nan"), 1e12), (1e12, 1.0, None)):
        with pytest.raises(ValueError):
            mfu(*bad)


def test_matmul_probe_counts_2n3_and_runs_the_product():
    fn, flops = matmul_probe(torch.float32, "cpu", n=64)
    assert flops == 2 * 64**3
    out = fn()
    assert out.shape == (64, 64) and torch.isfinite(out).all()


# -- the model's FLOPs against an analytic count ------------------------------------------------

def analytic_shared_flops(cfg, tokens: int) -> tuple[int, int]:
    """(prefill, train step) FLOPs of the shared model from its shapes alone: every Linear is
    2·in·out per token forward and twice that backward (input and weight gradients); attention
    scores and values are 2·T·d each per token (full T x T, as torch counts it), backward five such
    products (recomputed scores, grad of scores, V, Q, K)."""
    d, h, V, T, blocks = cfg.d_model, cfg.d_hidden, cfg.vocab_size, cfg.seq_len, cfg.depth
    linear = blocks * (2 * d * 3 * d + 2 * d * d + 2 * d * h + 2 * h * d) + 2 * d * V
    attn = blocks * 2 * (2 * T * d)
    return tokens * (linear + attn), tokens * (3 * linear + attn + blocks * 5 * (2 * T * d))


FLOP_CASES = [(n, {}) for n in __import__("resbench.variants", fromlist=["names"]).names()] + [
    ("highway", {"gate": "scalar"}),
    ("densenet", {"dilation": 2, "period": 2}),
    ("block-attnres", {"n_blocks": 2}),  # paper layout: uneven blocks, partial sums
    ("block-attnres", {"block_size": 3}),
    ("block-attnres", {"block_size": 3, "two_phase": True}),
    # every form of AttnRes counts the same declared mixing: the equations, and the functional form
    # (what a compiled model runs; the harness counts a compiled model's eager twin)
    *[(n, {**o, "impl": impl}) for impl in ("reference", "functional")
      for n, o in (("full-attnres", {}), ("block-attnres", {"n_blocks": 2}), ("block-attnres", {"block_size": 3}))],
    ("hc", {"dynamic": False}),
    ("mhc", {"n": 2}),
    # the Table 4 ablations (reference form; their logits are einsums, whose backward is counted)
    ("full-attnres", {"impl": "reference", "input_query": True, "heads": 4}),
    ("full-attnres", {"impl": "reference", "window": 2, "sigmoid": True}),
    ("block-attnres", {"n_blocks": 2, "impl": "reference", "static_mixing": True}),
    ("block-attnres", {"block_size": 3, "impl": "reference", "key_norm": False}),
]


@pytest.mark.parametrize("name,options", FLOP_CASES, ids=[f"{n}{o or ''}" for n, o in FLOP_CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_train_and_prefill_flops_equal_the_analytic_count(name, options, dtype):
    from resbench.model import ModelConfig, build_model
    from resbench.train import TrainConfig, make_optimizer, train_step

    cfg = ModelConfig(vocab_size=64, d_model=32, depth=3, n_heads=4, mlp_ratio=2.0, seq_len=16)
    model = build_model(cfg, name, options, dtype=dtype)
    B = 2
    x = torch.randint(0, cfg.vocab_size, (B, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    prefill, train = analytic_shared_flops(cfg, B * cfg.seq_len)
    mixing = model.residual.mixing_flops() * B * cfg.seq_len
    with torch.no_grad():
        got_prefill = count_flops(lambda: model(x))
    opt = make_optimizer(model, TrainConfig())
    got_train = count_flops(lambda: train_step(model, opt, x, x, TrainConfig()))
    assert got_prefill == pytest.approx(prefill + mixing, rel=0.01)
    assert got_train == pytest.approx(train + 3 * mixing, rel=0.01)
    assert got_prefill == prefill + mixing and got_train == train + 3 * mixing  # exact, in fact


def test_attention_flops_are_counted_on_cpu():
    """The CPU flash kernel (and its backward) count as their CUDA twins do: without them a step
    would be exactly 6·N_matmul·tokens."""
    q = torch.randn(2, 4, 16, 8, requires_grad=True)
    fwd = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True))
    assert fwd == 2 * (2 * 2 * 4 * 16 * 16 * 8)
    both = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward())
    assert both == fwd * 7 // 2


def test_in_place_and_vector_products_count_like_their_out_of_place_forms():
    a, b, c = torch.randn(8, 16), torch.randn(16, 4), torch.randn(8, 4)
    assert count_flops(lambda: c.addmm_(a, b)) == count_flops(lambda: torch.addmm(c, a, b)) == 2 * 8 * 16 * 4
    v = torch.randn(16)
    assert count_flops(lambda: a @ v) == 2 * 8 * 16
    assert count_flops(lambda: v @ b) == 2 * 16 * 4


@pytest.mark.parametrize("name,options", FLOP_CASES, ids=[f"{n}{o or ''}" for n, o in FLOP_CASES])
def test_the_libraries_analytic_step_flops_equal_the_count(name, options):
    """model.step_flops (what the loss study's compute axis uses) against FlopCounterMode."""
    from resbench.model import ModelConfig, build_model, step_flops
    from resbench.train import lm_loss

    cfg = ModelConfig(vocab_size=64, d_model=48, depth=2, n_heads=4, mlp_ratio=3.0, seq_len=8)
    model = build_model(cfg, name, options)
    x = torch.randint(0, cfg.vocab_size, (3, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    mixing = model.residual.mixing_flops()
    assert count_flops(lambda: lm_loss(model, x, x).backward()) == step_flops(cfg, mixing, x.numel(), train=True)
    with torch.no_grad():
        assert count_flops(lambda: model(x)) == step_flops(cfg, mixing, x.numel(), train=False)
