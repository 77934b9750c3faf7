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
