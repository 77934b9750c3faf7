import math

import pytest
import torch

from resbench import variants
from resbench import train as train_mod
from resbench.data import batch_at, load_corpus
from resbench.errors import UserError
from resbench.model import ModelConfig, build_model
from resbench.errors import Diverged
from resbench.train import TrainConfig, lr_at, make_optimizer, train, train_step

CFG = ModelConfig(d_model=32, depth=2, n_heads=2, seq_len=32)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("stdlib", max_bytes=400_000)


# -- schedule --------------------------------------------------------------------------------

def test_warmup_is_a_linear_ramp():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3)
    ramp = [lr_at(s, cfg) for s in range(10)]
    assert ramp == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert lr_at(10, cfg) == pytest.approx(1e-3)


def test_cosine_ends_at_min_lr():
    cfg = TrainConfig(steps=101, warmup=10, lr=1e-3, min_lr_ratio=0.1)  # decay over steps 10..100
    lrs = [lr_at(s, cfg) for s in range(10, 101)]
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lr_at(55, cfg) == pytest.approx(0.55e-3)  # midpoint of the decay: halfway
    assert lr_at(500, cfg) == pytest.approx(1e-4)  # past the end it stays at the floor


def test_wsd_shape():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1, schedule="wsd")
    assert all(lr_at(s, cfg) == 1e-3 for s in range(10, 80))  # stable
    decay = [lr_at(s, cfg) for s in range(80, 100)]
    assert decay[-1] == pytest.approx(1e-4)
    diffs = [a - b for a, b in zip(decay, decay[1:])]
    assert all(d == pytest.approx(diffs[0]) and d > 0 for d in diffs)  # linear


def test_constant_and_bad_config():
    cfg = TrainConfig(steps=20, warmup=5, schedule="constant")
    assert all(lr_at(s, cfg) == cfg.lr for s in range(5, 20))
    for bad in ({"schedule": "linear"}, {"steps": 0}, {"lr": -1.0}, {"betas": (0.9,)}, {"warmup": 1.5}):
        with pytest.raises(UserError):
            TrainConfig(**bad)


# -- optimizer -------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", variants.names())
def test_weight_decay_groups(variant):
    model = build_model(CFG, variant, seed=0)
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    assert len(decayed) + len(no_decay["params"]) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        if p.dim() < 2 or name.endswith(("bias", "query", "key_gain")) or ".norm" in name:
            assert id(p) not in decayed, name
    assert not decayed & {id(p) for p in model.residual.no_decay_parameters()}
    assert id(model.head.weight) in decayed and id(model.tok_emb.weight) in decayed


def test_attnres_pseudo_queries_not_decayed():
    model = build_model(CFG, "full-attnres", seed=0)
    decay, no_decay = model.param_groups(0.1)
    nd = {id(p) for p in no_decay["params"]}
    assert id(model.residual.query) in nd and id(model.residual.key_gain) in nd


# -- training --------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["prenorm", "full-attnres"])
def test_same_seed_is_bit_for_bit(corpus, variant):
    cfg = TrainConfig(steps=8, batch=4, warmup=2, eval_every=4, eval_batches=2)
    runs = []
    for _ in range(2):
        model = build_model(CFG, variant, seed=3)
        out = train(model, corpus, cfg, seed=5)
        runs.append((out, [p.detach().clone() for p in model.parameters()]))
    (a, pa), (b, pb) = runs
    assert a["train_loss"] == b["train_loss"]
    assert a["val_loss"] == b["val_loss"]
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    # and a different data seed is a different run
    other = train(build_model(CFG, variant, seed=3), corpus, cfg, seed=6)
    assert other["train_loss"] != a["train_loss"]


def test_loss_decreases_and_result_shape(corpus):
    cfg = TrainConfig(steps=30, batch=8, eval_every=10, eval_batches=2)
    seen = []
    out = train(build_model(CFG, "prenorm", seed=0), corpus, cfg, seed=0,
                progress=lambda s, l: seen.append((s, l)))
    assert len(out["train_loss"]) == 30 and [s for s, _ in seen] == list(range(30))
    assert [s for s, _ in out["val_loss"]] == [10, 20, 30]
    assert out["final_val_loss"] == out["val_loss"][-1][1]
    assert out["final_train_loss"] == pytest.approx(sum(out["train_loss"][-3:]) / 3)
    assert out["tokens_seen"] == 30 * 8 * CFG.seq_len and out["seconds"] > 0
    assert out["train_loss"][0] > math.log(256) - 0.5  # starts near uniform
    assert out["final_train_loss"] < out["train_loss"][0] - 1.0
    assert out["val_loss"][-1][1] < out["val_loss"][0][1]


def test_eval_only_at_end(corpus):
    out = train(build_model(CFG, "prenorm", seed=0), corpus,
                TrainConfig(steps=3, batch=2, warmup=1, eval_every=0, eval_batches=1), seed=0)
    assert [s for s, _ in out["val_loss"]] == [3]


def test_absurd_lr_diverges(corpus):
    with pytest.raises(Diverged) as e:
        train(build_model(CFG, "prenorm", seed=0), corpus,
              TrainConfig(steps=30, lr=1e6, warmup=0, grad_clip=0.0), seed=0)
    assert 0 <= e.value.step < 30 and not math.isfinite(e.value.value)
    assert f"step {e.value.step}" in str(e.value)


def test_nan_loss_reports_its_step(corpus, monkeypatch):
    calls = []
    real = train_mod.train_step

    def flaky(*args):
        calls.append(1)
        return float("nan") if len(calls) == 4 else real(*args)

    monkeypatch.setattr(train_mod, "train_step", flaky)
    with pytest.raises(Diverged) as e:
        train(build_model(CFG, "prenorm", seed=0), corpus, TrainConfig(steps=10, batch=2), seed=0)
    assert e.value.step == 3 and math.isnan(e.value.value) and len(calls) == 4


def test_train_step_standalone_and_vocab_check(corpus):
    model = build_model(CFG, "prenorm", seed=0)
    cfg = TrainConfig()
    opt = make_optimizer(model, cfg)
    x, y = batch_at(corpus.train, 0, 2, CFG.seq_len, seed=0)
    first = train_step(model, opt, x, y, cfg)
    assert isinstance(first, float) and math.isfinite(first)
    assert train_step(model, opt, x, y, cfg) < first  # same batch twice: it must fit it a little

    small = build_model(ModelConfig(vocab_size=100, d_model=32, depth=1, n_heads=2, seq_len=32), "prenorm")
    with pytest.raises(UserError):
        train(small, corpus, cfg, seed=0)


def test_time_budget_stops_training_and_evaluates_there(corpus):
    """AlgoPerf's time-to-result: the same seconds for every variant, then the loss reached; the
    schedule keeps `steps` as its horizon. A budget this small stops after the first step."""
    model = build_model(ModelConfig(d_model=32, depth=1, n_heads=2, seq_len=32), "prenorm", seed=0)
    cfg = TrainConfig(steps=40, batch=2, eval_every=10, eval_batches=1, budget_s=1e-9)
    out = train(model, corpus, cfg, seed=0)
    assert out["steps_done"] == 1 and len(out["train_loss"]) == 1
    assert out["val_loss"][-1][0] == 1 and out["tokens_seen"] == 2 * 32
    full = train(build_model(ModelConfig(d_model=32, depth=1, n_heads=2, seq_len=32), "prenorm", seed=0),
                 corpus, TrainConfig(steps=12, batch=2, eval_every=5, eval_batches=1), seed=0)
    assert full["steps_done"] == 12 and [s for s, _ in full["val_loss"]] == [5, 10, 12]
    with pytest.raises(UserError, match="budget_s must be a non-negative number"):
        TrainConfig(budget_s=-1.0)
