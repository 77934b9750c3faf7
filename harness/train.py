"""The short-run training loop: one optimizer, schedule and data order for every variant.

Fairness rules (docs/MEASURING.md, "Loss"): AdamW groups come from `Transformer.param_groups`, so gains,
pseudo-queries and mixing weights are never decayed; lr and schedule are the same for all variants.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .data import Corpus, batch_at, val_batches
from .errors import Diverged, UserError
from .precision import FP32, Precision

SCHEDULES = ("cosine", "wsd", "constant")
WSD_DECAY_FRACTION = 0.2  # warmup-stable-decay: the final 20% of steps decay linearly


@dataclass
class TrainConfig:
    steps: int = 50
    batch: int = 8
    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup: int = 10  # steps
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # 0 = off
    eval_every: int = 10  # steps; 0 = only at the end
    eval_batches: int = 4
    # > 0: stop once this many seconds of training (evaluation excluded) are spent, as MLCommons
    # AlgoPerf's time-to-result does; `steps` stays the schedule's horizon
    budget_s: float = 0.0

    def __post_init__(self):
        def bad(key, want):
            raise UserError(f"train.{key} must be {want}, got {getattr(self, key)!r}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for key in ("steps", "batch", "eval_batches"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 1:
                bad(key, "a positive integer")
        for key in ("warmup", "eval_every"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 0:
                bad(key, "a non-negative integer")
        if not is_num(self.lr) or self.lr <= 0:
            bad("lr", "a positive number")
        for key in ("weight_decay", "grad_clip", "budget_s"):
            if not is_num(getattr(self, key)) or getattr(self, key) < 0:
                bad(key, "a non-negative number")
        if not is_num(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            bad("min_lr_ratio", "in [0, 1]")
        if self.schedule not in SCHEDULES:
            bad("schedule", "one of " + ", ".join(SCHEDULES))
        betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else ()
        if len(betas) != 2 or not all(is_num(b) and 0 <= b < 1 for b in betas):
            bad("betas", "two numbers in [0, 1)")
        self.betas = (float(betas[0]), float(betas[1]))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for 0-based `step`. Warmup ramps linearly to the peak, reached at step
    warmup-1 (step 0 is never lr 0, which would waste a step); the decay ends at min_lr on the
    last step, steps-1."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup:
        return peak * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return peak
    last = cfg.steps - 1
    if cfg.schedule == "cosine":
        p = min(1.0, (step - cfg.warmup) / max(1, last - cfg.warmup))
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
    # wsd: hold the peak, then decay linearly over the final fraction (never into the warmup)
    n_decay = max(1, round(WSD_DECAY_FRACTION * cfg.steps))
    start = max(cfg.warmup, cfg.steps - n_decay)
    if step < start:
        return peak
    p = min(1.0, (step - start + 1) / max(1, cfg.steps - start))
    return peak + (floor - peak) * p


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.param_groups(cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def lm_loss(model, x: torch.Tensor, y: torch.Tensor, precision: Precision = FP32) -> torch.Tensor:
    """Mean next-token cross-entropy; the forward under the precision's autocast, the loss in fp32."""
    with precision.context(x.device):
        logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))


def train_step(model, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
               precision: Precision = FP32, scaler=None) -> float:
    """One optimizer step at the optimizer's current lr; returns the (pre-step) loss. `scaler`
    (fp16-autocast: precision.scaler(device)) scales the loss and skips steps with inf grads."""
    model.train()
    opt.zero_grad(set_to_none=True)
    loss = lm_loss(model, x, y, precision)
    if scaler is None:
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
    else:
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(opt)  # clip the true gradients
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
    return loss.item()


@torch.no_grad()
def evaluate(model, batches: list[tuple[torch.Tensor, torch.Tensor]], precision: Precision = FP32) -> float:
    was_training = model.training
    model.eval()
    try:
        total = sum(lm_loss(model, x, y, precision).item() for x, y in batches)
    finally:
        model.train(was_training)
    return total / len(batches)


def train(model, corpus: Corpus, cfg: TrainConfig, seed: int, device="cpu",
          progress: Callable[[int, float], None] | None = None, precision: Precision = FP32) -> dict:
    """Train for cfg.steps steps on batch_at(corpus.train, step, ...), evaluating held-out loss
    every eval_every steps and at the end. Raises Diverged on a non-finite train or val loss.

    val_loss entries are [steps completed, loss]; val_train_seconds holds, for each, the training
    wall-clock spent so far (evaluation excluded), kept apart so the curve stays bit-reproducible."""
    if corpus.vocab_size > model.cfg.vocab_size:
        raise UserError(f"corpus {corpus.name} has vocab {corpus.vocab_size}, "
                        f"model vocab_size is {model.cfg.vocab_size}")
    seq_len = model.cfg.seq_len
    val = [(x.to(device), y.to(device)) for x, y in val_batches(corpus, cfg.batch, seq_len, cfg.eval_batches)]
    opt = make_optimizer(model, cfg)
    scaler = precision.scaler(device)
    train_loss: list[float] = []
    val_loss: list[list] = []

    train_seconds = 0.0
    val_seconds: list[float] = []

    def eval_at(done: int) -> None:
        v = evaluate(model, val, precision)
        if not math.isfinite(v):
            raise Diverged(done, v, "val")
        val_loss.append([done, v])
        val_seconds.append(train_seconds)  # for time-to-target

    t0 = time.perf_counter()
    done = cfg.steps
    for step in range(cfg.steps):
        if cfg.budget_s and train_seconds >= cfg.budget_s:
            done = step
            break
        t_step = time.perf_counter()
        x, y = batch_at(corpus.train, step, cfg.batch, seq_len, seed)
        set_lr(opt, lr_at(step, cfg))
        loss = train_step(model, opt, x.to(device), y.to(device), cfg, precision, scaler)
        if not math.isfinite(loss):
            raise Diverged(step, loss)
        train_loss.append(loss)
        train_seconds += time.perf_counter() - t_step
        if progress is not None:
            progress(step, loss)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 != cfg.steps:
            eval_at(step + 1)
    if not val_loss or val_loss[-1][0] != done:
        eval_at(done)
    seconds = time.perf_counter() - t0

    tail = train_loss[-max(1, math.ceil(0.1 * len(train_loss))):]
    return {
        "train_loss": train_loss,
        "val_loss": val_loss,
        "final_val_loss": val_loss[-1][1],
        "final_train_loss": sum(tail) / len(tail),
        "steps_done": done,
        "tokens_seen": done * cfg.batch * seq_len,
        "seconds": seconds,
        "train_seconds": train_seconds,
        "val_train_seconds": val_seconds,
    }
