"""loss: K steps of byte-level LM on the corpus (AdamW, warm-up + schedule), held-out validation
loss every eval_every steps, the curve kept; optionally the training dynamics."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..cells import Cell
from ..data import batch_at, load_corpus, val_batches
from ..dynamics import probe
from ..errors import ConfigError
from ..measure import count_flops
from ..train import SCHEDULES, TrainConfig, lm_loss, train
from .base import Workload, register
from .common import RunContext, model_of, static_info


@dataclass(frozen=True)
class Params:
    steps: int = 60
    batch: int = 8
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 10
    schedule: str = "cosine"
    eval_every: int = 20
    eval_batches: int = 4
    corpus: str = "stdlib"
    corpus_bytes: int = 2_000_000
    dynamics: bool = False  # record per-sublayer RMS, gradient norms and depth-mixing weights
    budget_s: float = 0.0  # > 0: train this many seconds (same for every variant), then evaluate (AlgoPerf)


def _loss_cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} sd (n={len(values)})"


def run_loss(cell: Cell, ctx: RunContext) -> tuple[str, str | None, dict]:
    p = cell.params
    corpus = load_corpus(p["corpus"], max_bytes=p["corpus_bytes"])
    cfg, model = model_of(cell, ctx)
    device, prec = ctx.device, ctx.precision
    if corpus.vocab_size > cfg.vocab_size:
        return "error", f"corpus vocab {corpus.vocab_size} > shape vocab_size {cfg.vocab_size}", {}
    tcfg = TrainConfig(steps=p["steps"], batch=p["batch"], lr=p["lr"], weight_decay=p["weight_decay"],
                       warmup=p["warmup"], schedule=p["schedule"], eval_every=p["eval_every"],
                       eval_batches=p["eval_batches"], budget_s=p.get("budget_s", 0.0))
    x, y = batch_at(corpus.train, 0, tcfg.batch, cfg.seq_len, cell.seed)
    x, y = x.to(device), y.to(device)
    # FLOPs of fwd + bwd (what FlopCounterMode sees of a step), counted without an optimizer
    # step so the training that follows is untouched.
    flops = count_flops(lambda: lm_loss(model, x, y, prec).backward())
    model.zero_grad(set_to_none=True)
    result = train(model, corpus, tcfg, seed=cell.seed, device=device, precision=prec)
    m = {**static_info(cell, cfg, model), **result, "corpus": corpus.describe(),
         "flops_per_step": flops, "train_flops": flops * result["steps_done"]}
    if p.get("dynamics"):
        vx, vy = val_batches(corpus, tcfg.batch, cfg.seq_len, 1)[0]
        m["dynamics"] = probe(model, vx.to(device), vy.to(device))
    return "ok", None, m


@register("loss")
class Loss(Workload):
    Params = Params
    order = 2
    positive = ("batch", "steps", "lr", "eval_batches", "corpus_bytes")
    choices = {"schedule": SCHEDULES}
    deterministic = True  # bit-for-bit curves; not for timing, where it may pick slower kernels
    columns = (("val loss", lambda r: _loss_cell(r["val_loss"])),)
    compare_metrics = {"final_val_loss": (lambda m: (m.get("final_val_loss"), None), "{:.4f}")}
    metrics_schema = {"final_val_loss": float, "final_train_loss?": float, "train_loss": list, "val_loss": list,
                      "train_flops?": int, "flops_per_step?": int, "params?": int, "state_vectors?": int,
                      "seconds?": float, "train_seconds?": float, "val_train_seconds?": list}
    unkeyed_defaults = {"budget_s": 0.0}

    def preflight(self, params, shapes):
        """A missing corpus, one whose ids do not fit a shape's vocabulary, or one too short for a
        shape's sequence: once, before any cell runs."""
        corpus = load_corpus(params.corpus, max_bytes=params.corpus_bytes)
        where = f"workloads.{self.name}.corpus {params.corpus!r}"
        for name, cfg in shapes:
            if corpus.vocab_size > cfg.vocab_size:
                raise ConfigError(f"{where} has token ids up to {corpus.vocab_size - 1}: "
                                  f"shapes[{name}].vocab_size is {cfg.vocab_size}")
            for split, tokens in (("train", corpus.train), ("validation", corpus.val)):
                if tokens.numel() < cfg.seq_len + 1:
                    raise ConfigError(f"{where}: its {split} split has {tokens.numel()} "
                                      f"tokens, fewer than shapes[{name}].seq_len + 1 = {cfg.seq_len + 1}")

    def times(self, params):
        """A wall-clock budget (budget_s) makes a loss run a timing: how far it gets depends on the
        machine's speed while it runs."""
        return bool(params.get("budget_s"))

    def run_cell(self, cell, ctx):
        return run_loss(cell, ctx)

    def summary(self, metrics):
        return {"val_loss": [m["final_val_loss"] for m in metrics]}
