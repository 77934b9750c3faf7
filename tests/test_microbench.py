"""pytest-benchmark micro-benchmarks: each registered variant's depth mixing alone, and a tiny
full train step.

The default test run passes --benchmark-disable (pyproject), so each runs once as a plain test.
Timed, with the JSON kept (the reference machine's: results/reference/xeon-2core/pytest-benchmark/cpu.json,
command in docs/RESULTS.md; write yours under results/local/):

    pytest tests/test_microbench.py --benchmark-enable --benchmark-timer time.process_time -o addopts="" \
        --benchmark-json FILE
"""
from __future__ import annotations

import math

import pytest
import torch

from resbench import variants
from resbench.model import ModelConfig, build_model
from resbench.train import TrainConfig, make_optimizer, train_step

CFG = ModelConfig(vocab_size=256, d_model=64, depth=4, n_heads=4, mlp_ratio=4.0, seq_len=64)
BATCH = 4


@pytest.fixture(autouse=True)
def one_thread():
    """One core: the numbers should not move with the neighbours (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mixing_pass(res, e: torch.Tensor, ys: list[torch.Tensor]) -> torch.Tensor:
    """The model's depth loop with each sublayer replaced by a precomputed output."""
    state = res.begin(e)
    for i, y in enumerate(ys):
        res.read(state, i)
        state = res.write(state, i, y)
    return res.end(state)


@pytest.mark.parametrize("name", variants.names())
def test_depth_mixing(benchmark, name):
    torch.manual_seed(0)
    res = variants.build(name, CFG.d_model, CFG.n_layers)
    g = torch.Generator().manual_seed(0)
    shape = (BATCH, CFG.seq_len, CFG.d_model)
    e = torch.randn(shape, generator=g)
    ys = [torch.randn(shape, generator=g) for _ in range(CFG.n_layers)]
    benchmark.group = "depth mixing (begin/read/write/end, no sublayers)"
    benchmark.extra_info.update(d_model=CFG.d_model, n_layers=CFG.n_layers, batch=BATCH, seq_len=CFG.seq_len)
    # fixed rounds keep the saved JSON small (it stores every round) and the run short
    with torch.no_grad():
        out = benchmark.pedantic(mixing_pass, (res, e, ys), rounds=60, iterations=10, warmup_rounds=3)
    assert out.shape == shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", variants.names())
def test_train_step_tiny(benchmark, name):
    model = build_model(CFG, name, seed=0)
    cfg = TrainConfig()
    opt = make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(0, CFG.vocab_size, (BATCH, CFG.seq_len + 1), generator=g)
    x, y = tok[:, :-1], tok[:, 1:]
    benchmark.group = "train step (fwd + bwd + AdamW), tiny model"
    benchmark.extra_info.update(d_model=CFG.d_model, depth=CFG.depth, batch=BATCH, seq_len=CFG.seq_len)
    loss = benchmark.pedantic(train_step, (model, opt, x, y, cfg), rounds=30, iterations=1, warmup_rounds=3)
    assert math.isfinite(loss)
