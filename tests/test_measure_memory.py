"""LiveBytesTracker exactness on known allocations; RSS, CUDA and NVML counters with fakes."""
import sys
import threading
import time
import types

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from resbench.measure import (
    LiveBytesTracker,
    NvmlSampler,
    cuda_memory_snapshot,
    peak_rss_bytes,
    reset_cuda_peak,
    rss_bytes,
)

F32 = 4


def track(fn):
    with LiveBytesTracker() as t:
        fn()
    return t


# -- tracker: known allocations ---------------------------------------------------------------

def test_single_allocation():
    t = track(lambda: torch.empty(1000, dtype=torch.float32))
    assert (t.peak, t.current, t.allocated_total) == (4000, 0, 4000)


def test_free_then_allocate_peak_is_exact():
    def fn():
        a = torch.empty(1000)  # 4000 B
        b = torch.empty(2000)  # 8000 B
        del a
        c = torch.empty(500)  # 2000 B, fits where A was
        return b, c

    t = track(fn)
    assert t.peak == 12000
    assert t.allocated_total == 14000
    assert t.current == 0  # everything died when fn returned


def test_views_do_not_add():
    x = torch.randn(10, 100)
    t = track(lambda: (x.view(1000), x[3:], x.t(), x.reshape(100, 10), x.unbind(0), x.expand(2, 10, 100)))
    assert t.peak == 0 and t.allocated_total == 0

    def fresh():
        a = torch.empty(1000)
        return a.view(10, 100), a[5:], a.unsqueeze(0), a.as_strided((10,), (2,))

    assert track(fresh).peak == 4000


def test_inplace_does_not_add():
    x = torch.randn(1000)

    def fn():
        x.add_(1).mul_(2).zero_()
        a = torch.ones(1000)
        a.add_(x).relu_()
        a[:10].fill_(3.0)  # (a[:10] = 3.0 would allocate a 4-byte scalar tensor first)

    t = track(fn)
    assert t.peak == 4000 and t.allocated_total == 4000


def test_matmul_output_counted():
    a, b = torch.randn(8, 16), torch.randn(16, 32)
    t = track(lambda: a @ b)
    assert t.peak == 8 * 32 * F32


def test_torch_tensor_constant_counted():
    # built below the dispatcher and handed over by aten.lift_fresh
    assert track(lambda: torch.tensor([1.0, 2.0, 3.0])).peak == 12


def test_out_resize_counts_growth():
    a, b = torch.randn(8, 16), torch.randn(16, 32)
    c = torch.empty(0)
    t = track(lambda: torch.mm(a, b, out=c))
    assert t.peak == t.current == 8 * 32 * F32  # c's storage grew and stays alive


def test_freed_preexisting_goes_negative():
    holder = {"x": torch.empty(10_000)}  # 40000 B, alive before entry

    def fn():
        y = holder.pop("x") * 2  # the op shows the tracker x's storage
        del y

    t = track(fn)
    assert t.peak == 40000
    assert t.freed_preexisting == 40000
    assert t.current == -40000


def test_nothing_counts_after_exit_or_on_error():
    with LiveBytesTracker() as t:
        kept = torch.empty(250)
    del kept  # dies after exit: must not move the numbers
    assert (t.peak, t.current) == (1000, 1000)
    with pytest.raises(RuntimeError), LiveBytesTracker() as t2:
        torch.empty(10)
        raise RuntimeError("boom")
    assert t2.peak == 40
    assert track(lambda: torch.empty(3)).peak == 12  # mode stack left clean


def test_linear_forward_backward_exact():
    B, I, O = 8, 64, 32
    lin = torch.nn.Linear(I, O)
    x = torch.randn(B, I)  # no grad: backward computes dW and db only
    grads = (O * I + O) * F32

    def step_keep_output():
        out = lin(x)
        out.sum().backward()

    # all alive at once at the end of backward: output, loss, ones seed, dW, db
    t = track(step_keep_output)
    assert t.peak == B * O * F32 + F32 + F32 + grads
    assert t.current == grads  # only .grad survives
    t = track(step_keep_output)  # .grad exists: new grads are added in place, then freed
    assert t.peak == B * O * F32 + F32 + F32 + grads and t.current == 0

    lin.zero_grad(set_to_none=True)
    # nobody keeps the output, and addmm's backward does not save it: freed right after sum()
    t = track(lambda: lin(x).sum().backward())
    assert t.peak == F32 + F32 + grads


def test_optimizer_state_counted():
    lin = torch.nn.Linear(64, 32)
    lin(torch.randn(4, 64)).sum().backward()
    p_bytes = sum(p.numel() * F32 for p in lin.parameters())
    sgd = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9, foreach=False)
    t = track(sgd.step)  # momentum buffer = clone of grad, update in place
    assert t.peak == t.current == p_bytes
    adam = torch.optim.Adam(lin.parameters(), foreach=False)
    t = track(adam.step)  # exp_avg, exp_avg_sq and a float32 step scalar per parameter
    assert t.current == 2 * p_bytes + 2 * F32


def test_other_threads_not_tracked():
    # dispatch modes are thread-local; a stray thread must not disturb the count
    with LiveBytesTracker() as t:
        th = threading.Thread(target=lambda: torch.empty(10**6))
        th.start()
        th.join()
        torch.empty(10)
    assert t.peak == 40


# -- tracker under fake tensors ------------------------------------------------------------

def test_fake_tensor_huge_shapes_without_storage():
    with FakeTensorMode():
        with LiveBytesTracker() as t:
            a = torch.empty(10**9)  # 4 GB, never allocated
            b = a * 2
            del a, b
    assert t.peak == 8 * 10**9 and t.current == 0


def test_fake_mode_entered_inside_tracker_also_works():
    with LiveBytesTracker() as t:
        with FakeTensorMode():
            a = torch.empty(10**9, dtype=torch.bfloat16)
            del a
    assert t.peak == 2 * 10**9


def _model_step_peak(model, params, idx):
    def step():
        logits = torch.func.functional_call(model, params, (idx,))
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()

    return track(step)


def test_fake_model_matches_real_model():
    from resbench.model import ModelConfig, build_model

    cfg = ModelConfig(vocab_size=64, d_model=32, depth=2, n_heads=2, seq_len=16)
    model = build_model(cfg, "prenorm")
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    real = _model_step_peak(model, dict(model.named_parameters()), idx)
    p_bytes = sum(p.numel() * F32 for p in model.parameters())
    assert real.peak > p_bytes and real.current == p_bytes  # grads survive

    model.zero_grad(set_to_none=True)  # from_tensor would copy real .grad into the fakes
    with FakeTensorMode() as fm:
        params = {k: fm.from_tensor(v) for k, v in model.named_parameters()}
        fake = _model_step_peak(model, params, fm.from_tensor(idx))
    assert (fake.peak, fake.current) == (real.peak, real.current)

    with torch.no_grad():
        inf = track(lambda: model(idx))
    assert 0 < inf.peak < real.peak and inf.current == 0


def _profiler_peak(fn):
    """Peak and final live bytes from the profiler's CPU allocator events (alloc > 0, free < 0):
    it sees every allocation, kernel scratch included, so it is the reference here."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    cur = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak, cur


def test_tracker_agrees_with_profiler_allocator_events():
    from resbench.model import ModelConfig, build_model

    cfg = ModelConfig(vocab_size=128, d_model=64, depth=2, n_heads=4, seq_len=64)
    model = build_model(cfg, "prenorm")
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    opt = torch.optim.AdamW(model.parameters())  # default foreach path: many temporaries

    def train_step():
        logits = model(idx)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer():
        with torch.no_grad():
            model(idx)

    train_step()  # optimizer state exists from here on: both measurements start alike
    for fn in (train_step, infer):
        t = track(fn)
        assert (t.peak, t.current) == _profiler_peak(fn), fn.__name__


# -- RSS ------------------------------------------------------------------------------------

def test_rss():
    before = rss_bytes()
    x = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, touched
    assert rss_bytes() - before >= 48 * 2**20
    assert peak_rss_bytes() >= rss_bytes() > 0
    del x


# -- CUDA allocator counters, faked ------------------------------------------------------------

def test_cuda_snapshot_and_reset(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: 123)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d=None: 456)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: calls.append(d))
    assert cuda_memory_snapshot("cuda:0") == {"cuda_peak_allocated": 123, "cuda_peak_reserved": 456}
    assert cuda_memory_snapshot("cpu") == {}
    reset_cuda_peak("cuda:0")
    reset_cuda_peak("cpu")
    assert calls == ["cuda:0"]


def test_cuda_snapshot_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_memory_snapshot("cuda") == {}
    reset_cuda_peak("cuda")  # no raise


# -- NVML, faked ------------------------------------------------------------------------------

def fake_pynvml(values, fail_after=None, init_error=None):
    state = {"calls": 0, "returned": [], "index": None, "shutdown": 0}

    def init():
        if init_error:
            raise init_error

    def handle(i):
        state["index"] = i
        return "h"

    def meminfo(h):
        assert h == "h"
        if fail_after is not None and state["calls"] >= fail_after:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        v = values[min(state["calls"], len(values) - 1)]
        state["calls"] += 1
        state["returned"].append(v)
        return types.SimpleNamespace(used=v, total=10**12, free=10**12 - v)

    mod = types.SimpleNamespace(
        nvmlInit=init, nvmlDeviceGetHandleByIndex=handle, nvmlDeviceGetMemoryInfo=meminfo,
        nvmlShutdown=lambda: state.__setitem__("shutdown", state["shutdown"] + 1),
    )
    return mod, state


def test_nvml_peak(monkeypatch):
    values = [100, 200, 700, 300, 900, 400]  # then stays at 400
    mod, state = fake_pynvml(values)
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    with NvmlSampler(device=1, interval_s=0.001) as s:
        time.sleep(0.05)
    assert s.status == "ok"
    assert state["calls"] > len(values)  # the thread really sampled
    assert s.peak_bytes == max(state["returned"]) == 900
    assert s.baseline_bytes == 100
    assert state["index"] == 1 and state["shutdown"] == 1


def test_nvml_cuda_device_maps_index(monkeypatch):
    mod, state = fake_pynvml([5])
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with NvmlSampler(device="cuda:2") as s:
        pass
    assert state["index"] == 2 and s.peak_bytes == 5 and s.status == "ok"


def test_nvml_cpu_device_is_unavailable(monkeypatch):
    mod, state = fake_pynvml([5])
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    with NvmlSampler(torch.device("cpu")) as s:
        pass
    assert s.peak_bytes is None and s.status == "unavailable: ValueError: not a CUDA device: cpu"
    assert state["calls"] == 0


def test_nvml_missing_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    with NvmlSampler() as s:
        pass
    assert s.peak_bytes is None
    assert s.status.startswith("unavailable: ModuleNotFoundError") and "pynvml" in s.status


def test_nvml_init_fails(monkeypatch):
    mod, _ = fake_pynvml([1], init_error=RuntimeError("NVML Shared Library Not Found"))
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    with NvmlSampler() as s:
        pass
    assert s.peak_bytes is None
    assert s.status == "unavailable: RuntimeError: NVML Shared Library Not Found"


def test_nvml_sampling_fails_midway(monkeypatch):
    mod, state = fake_pynvml([100, 200], fail_after=3)
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    with NvmlSampler(interval_s=0.001) as s:
        time.sleep(0.03)
    assert s.peak_bytes is None and "sampling failed" in s.status
    assert state["shutdown"] == 1


def test_nvml_real_module_never_raises():
    with NvmlSampler() as s:  # no GPU on CI: must come back unavailable, quietly
        pass
    assert s.status == "ok" or (s.status.startswith("unavailable: ") and s.peak_bytes is None)


# -- the no-grad forward holds the residual state and one op's operands, nothing more ----------

@pytest.mark.parametrize("name,state", [("prenorm", 1), ("highway", 1), ("densenet", 5)])
def test_prefill_peak_is_the_state_plus_the_widest_sublayer_transient(name, state):
    """At the last MLP the forward must hold the residual state (PreNorm: the stream; DenseNet:
    the stream and the block outputs X_0 .. X_3 a later DWA reads) and the MLP's two hidden
    activations (fc output and GELU output, 2·h per token): exactly that, nothing kept from the
    embedding or the sublayer input. Checked exactly, in bytes."""
    from resbench.model import ModelConfig, build_model
    from resbench.measure.memory_views import inference_bytes

    cfg = ModelConfig(vocab_size=64, d_model=64, depth=4, n_heads=4, mlp_ratio=4.0, seq_len=32)
    B = 2
    vec = B * cfg.seq_len * cfg.d_model * 4
    model = build_model(cfg, name)
    idx = torch.randint(0, cfg.vocab_size, (B, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    assert model.residual.state_vectors() == state
    assert inference_bytes(model, idx) == state * vec + 2 * (B * cfg.seq_len * cfg.d_hidden * 4)


@pytest.mark.parametrize("name,options", [("full-attnres", {}), ("block-attnres", {"n_blocks": 2}),
                                          ("block-attnres", {"n_blocks": 4})])
def test_attnres_prefill_holds_its_sources_and_no_sublayer_input(name, options):
    """AttnRes's extra over PreNorm is its sources beyond the stream plus per-token scalars (the
    logits cached per source): the d-vector h it reads for a sublayer is not kept once the
    sublayer's norm has read it (it was one extra d-vector per token: 'infer extra / declared'
    read 1.17 for Block at shape A)."""
    from resbench.model import ModelConfig, build_model
    from resbench.measure.memory_views import inference_bytes

    cfg = ModelConfig(vocab_size=64, d_model=256, depth=4, n_heads=4, mlp_ratio=4.0, seq_len=16)
    B, L = 2, cfg.n_layers
    vec, row = B * cfg.seq_len * cfg.d_model * 4, B * cfg.seq_len * 4  # a d-vector, a scalar per token
    idx = torch.randint(0, cfg.vocab_size, (B, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    base = inference_bytes(build_model(cfg, "prenorm"), idx)
    res = build_model(cfg, name, options)
    extra = inference_bytes(res, idx) - base
    # at the peak (the last MLP) the sources are all but the last block's output; PreNorm holds
    # its stream instead of one of them. Besides: each live source's cached logits (one scalar
    # per token and later reader) and the folded queries (L + 1 vectors, not per token).
    r = res.residual
    alive = len(r.starts)  # e and the completed blocks, or e, the completed blocks and the partial sum
    alive += r.starts[-1] != L - 1  # ... a partial sum exists unless the last block is one sublayer
    rows = sum(L + 1 - f for f in r.first_read[:len(r.starts)])
    sources = alive - 1
    assert extra == sources * vec + rows * row + (L + 1) * cfg.d_model * 4, (name, options, extra / vec)
    assert extra < (r.state_vectors() - 0.5) * vec  # the old forward held one more d-vector: h


def test_per_layer_parameters_keep_a_gradient_buffer_out_of_the_checkpointed_view():
    """Slices of one stacked parameter make autograd hold a full-size gradient buffer through the
    backward (docs/SCALING.md). Under checkpointing every block, LAuReL with per-layer factors
    grows per transformer block by one d-vector per token, as PreNorm does (its floor); with
    its factors stacked it grows by its parameter bytes more."""
    from torch import nn

    from resbench.measure.memory_views import train_bytes
    from resbench.model import ModelConfig, build_model

    d, seq, batch, rank = 128, 128, 2, 16

    def growth(name, stacked=False):
        peaks = []
        for depth in (4, 8):
            cfg = ModelConfig(vocab_size=256, d_model=d, depth=depth, n_heads=4, seq_len=seq)
            model = build_model(cfg, name, {}, 0)
            if stacked:  # the same values, one leaf indexed per sublayer
                res = model.residual
                down, up = torch.stack(list(res.down)).detach(), torch.stack(list(res.up)).detach()
                del res.down, res.up
                res.down, res.up = nn.Parameter(down), nn.Parameter(up)
            idx = torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(0))
            peaks.append(train_bytes(model, idx, idx, checkpoint_every=1))
        return (peaks[1] - peaks[0]) / 4

    floor = batch * seq * d * 4  # one fp32 d-vector per token per checkpointed block
    assert growth("prenorm") == growth("laurel") == floor == 131_072
    assert growth("laurel", stacked=True) - floor == 2 * 2 * rank * d * 4  # 2 sublayers x (A_i, B_i): 32 KiB
