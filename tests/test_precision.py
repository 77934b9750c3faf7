"""Precision as people train: fp32 master weights under autocast, pure bf16, fp16 with a scaler."""
import pytest
import torch

from resbench import variants
from resbench.config import parse_suite
from resbench.data import load_corpus
from resbench.model import ModelConfig, build_model
from resbench.precision import PRECISIONS
from resbench.train import TrainConfig, lm_loss, make_optimizer, train, train_step

CFG = ModelConfig(vocab_size=256, d_model=32, depth=2, n_heads=4, mlp_ratio=2.0, seq_len=16)


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("name", variants.names())
def test_every_variant_trains_in_every_precision(name, precision):
    prec = PRECISIONS[precision]
    model = build_model(CFG, name, dtype=prec.param_dtype)
    assert all(p.dtype == prec.param_dtype for p in model.parameters())
    corpus = load_corpus("generated", max_bytes=20000)
    out = train(model, corpus, TrainConfig(steps=6, batch=2, warmup=1, eval_every=0, eval_batches=1), seed=0,
                precision=prec)
    assert all(torch.isfinite(torch.tensor(out["train_loss"])))
    assert out["train_loss"][-1] < out["train_loss"][0] + 0.5
    opt = make_optimizer(model, TrainConfig())
    x = torch.randint(0, 256, (2, 16))
    train_step(model, opt, x, x, TrainConfig(), prec, prec.scaler("cpu"))
    state = [t for st in opt.state.values() for t in st.values() if t.is_floating_point() and t.dim()]
    assert state and all(t.dtype == prec.param_dtype for t in state)  # master weights: fp32 AdamW state


def test_autocast_runs_the_matmuls_in_low_precision_and_depth_mixing_in_fp32():
    model = build_model(CFG, "full-attnres")
    x = torch.randint(0, 256, (2, 16))
    seen = {}

    def spy(mod, args, out):
        seen.setdefault(type(mod).__name__, out.dtype)

    model.sublayers[0].qkv.register_forward_hook(spy)
    with PRECISIONS["bf16-autocast"].context("cpu"):
        logits = model(x)
        depth_logits = model.residual.logits(model.embed(x))
    assert seen["Linear"] == torch.bfloat16 and logits.dtype == torch.bfloat16
    assert depth_logits.dtype == torch.float32


def test_fp16_autocast_uses_a_grad_scaler_and_bf16_pure_none():
    assert PRECISIONS["fp16-autocast"].scaler("cpu") is not None
    assert PRECISIONS["bf16-pure"].scaler("cpu") is None and PRECISIONS["fp32"].scaler("cpu") is None


def test_precision_is_part_of_the_cell_and_the_loss_is_fp32():
    raw = {"name": "t", "variants": ["prenorm"], "precision": "bf16-autocast",
           "shapes": [{"name": "s", "d_model": 16, "depth": 1, "n_heads": 2, "seq_len": 8}],
           "workloads": {"memory": {}}}
    suite = parse_suite(raw)
    assert suite.precisions == ("bf16-autocast",)
    both = parse_suite({**raw, "precision": ["fp32", "bf16-autocast"]})
    from resbench.config import expand_cells
    assert [c.precision for c in expand_cells(both, "cpu")] == ["fp32", "bf16-autocast"]
    model = build_model(CFG, "prenorm")
    x = torch.randint(0, 256, (2, 16))
    assert lm_loss(model, x, x, PRECISIONS["bf16-autocast"]).dtype == torch.float32
