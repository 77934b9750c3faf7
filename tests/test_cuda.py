"""The CUDA paths: skipped without a GPU, run by scripts/gpu_acceptance.sh on one."""
import pytest
import torch

from resbench import variants
from resbench.measure import (
    LiveBytesTracker,
    NvmlSampler,
    count_flops,
    cuda_memory_snapshot,
    device_peak_flops,
    reset_cuda_peak,
    time_once,
)
from resbench.model import ModelConfig, build_model
from resbench.precision import PRECISIONS
from resbench.provenance import environment, matmul_fp32_precision
from resbench.train import TrainConfig, make_optimizer, train_step

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

CFG = ModelConfig(vocab_size=256, d_model=128, depth=2, n_heads=4, mlp_ratio=4.0, seq_len=64)


@pytest.mark.parametrize("name", variants.names())
def test_every_variant_on_cuda_equals_cpu(name):
    x = torch.randint(0, 256, (2, CFG.seq_len), generator=torch.Generator().manual_seed(0))
    cpu = build_model(CFG, name, seed=1, dtype=torch.float64)
    gpu = build_model(CFG, name, seed=1, device="cuda", dtype=torch.float64)
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", variants.names())
def test_decode_on_cuda_equals_the_full_forward(name):
    from resbench.model import KVCache

    x = torch.randint(0, 256, (2, CFG.seq_len), generator=torch.Generator().manual_seed(0)).cuda()
    model = build_model(CFG, name, seed=1, device="cuda", dtype=torch.float64)
    with torch.no_grad():
        full = model(x)
        cache = KVCache(CFG, 2, dtype=torch.float64, device="cuda")
        steps = [model.prefill(x[:, :8], cache, last_only=False)]
        steps += [model(x[:, t:t + 1], cache=cache) for t in range(8, CFG.seq_len)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_train_step_in_every_precision_on_cuda(precision):
    prec = PRECISIONS[precision]
    model = build_model(CFG, "block-attnres", device="cuda", dtype=prec.param_dtype)
    opt = make_optimizer(model, TrainConfig())
    x = torch.randint(0, 256, (2, CFG.seq_len), device="cuda")
    loss = train_step(model, opt, x, x, TrainConfig(), prec, prec.scaler("cuda"))
    assert torch.isfinite(torch.tensor(loss))


def test_cuda_counters_see_what_the_tracker_sees():
    model = build_model(CFG, "full-attnres", device="cuda")
    x = torch.randint(0, 256, (4, CFG.seq_len), device="cuda")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    reset_cuda_peak("cuda")
    with NvmlSampler("cuda") as nvml, LiveBytesTracker() as t, torch.no_grad():
        model(x)
        torch.cuda.synchronize()
    snap = cuda_memory_snapshot("cuda")
    # allocator peaks are absolute and rounded up to 512-byte blocks; the tracker is exact
    assert snap["cuda_peak_allocated"] - base >= t.peak > 0
    assert snap["cuda_peak_allocated"] - base < 1.5 * t.peak + 2**20
    assert nvml.status == "ok" or nvml.status.startswith("unavailable"), nvml.status


def test_datasheet_peak_bounds_the_measured_rate():
    dtype = torch.bfloat16
    peak = device_peak_flops("cuda", dtype)
    if peak is None:
        pytest.skip(f"{torch.cuda.get_device_name()} not in the datasheet table")
    a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    fn = lambda: a @ a  # noqa: E731
    fn()
    flops = count_flops(fn)
    rate = flops / min(time_once(fn, "cuda") for _ in range(5))
    assert 0.2 * peak < rate <= peak


def test_tf32_state_is_recorded():
    env = environment("cuda")
    assert env["gpu"] and env["cuda"] and env["machine"]["gpu_capability"]
    assert env["fp32_matmul"] == matmul_fp32_precision() in ("tf32", "ieee")
