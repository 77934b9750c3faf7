"""What every workload builds the same way: the job's run context, the cell's model, a fixed
batch, the static facts."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..cells import Cell
from ..model import ModelConfig, build_model, count_params
from ..precision import Precision
from ..precision import get as get_precision


@dataclass(frozen=True)
class RunContext:
    """How this process runs a job's cells, resolved once by the worker and passed to the
    workload: the device its tensors go to (under torchrun a rank's own GPU), the precision
    policy (dtypes, autocast, grad scaler), the compile mode and torch's threads."""
    device: str
    precision: Precision
    compile: str = "none"
    threads: int = 0

    @classmethod
    def of(cls, cells: list[Cell]) -> RunContext:
        """The context every cell of a job shares (the workloads' `jobs` group cells so)."""
        first = cells[0]
        how = {(c.device, c.precision, c.compile, c.threads) for c in cells}
        if len(how) > 1:
            raise ValueError(f"one job's cells must share device, precision, compile and threads; got {sorted(how)}")
        device = first.device
        if first.launch and device == "cuda":  # a rank: its local GPU (torchrun's LOCAL_RANK)
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        return cls(device, get_precision(first.precision), first.compile, first.threads)

    def scaler(self):
        """The grad scaler of a train step: fp16-autocast's, else None (every workload's, here)."""
        return self.precision.scaler(self.device)


def model_of(cell: Cell, ctx: RunContext):
    cfg = ModelConfig(**cell.shape)
    model = build_model(cfg, cell.variant, cell.options, cell.seed, ctx.device, ctx.precision.param_dtype)
    return cfg, model


def fixed_batch(cfg: ModelConfig, batch: int, seed: int, device: str):
    """Token content does not change the work; a fixed random batch keeps data loading out of timing."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len + 1), generator=g)
    return x[:, :-1].to(device), x[:, 1:].to(device)


def static_info(cell: Cell, cfg: ModelConfig, model) -> dict:
    return {
        "params": count_params(model),
        "extra_params": count_params(model.residual),
        "declared_extra_params": model.residual.declared_extra_params(),
        "state_vectors": model.residual.state_vectors(),
        "residual_traffic": model.residual.residual_traffic(),  # d-vectors per token per forward (roofline)
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "tokens_per_step": cell.params["batch"] * cfg.seq_len if "batch" in cell.params else None,
    }


def progress_counter(progress, calls: int, params: dict):
    """time_rounds' progress(1) per call → the worker's progress(done, total)."""
    total = calls * (params["warmup"] + params["repeats"])
    done = [0]

    def tick(k):
        done[0] += k
        progress(done[0], total)
    return tick


def grouped_jobs(cells: list[Cell], todo: set[str], key) -> list[list[Cell]]:
    """One job per key(cell) holding an unfinished cell: its cells share a process (or its ranks)."""
    groups: dict = {}
    for c in cells:
        groups.setdefault(key(c), []).append(c)
    return [g for g in groups.values() if any(c.key in todo for c in g)]


def rank_context(cells: list[Cell]):
    """(rank, world, params, ModelConfig) of a distributed job on this rank."""
    import torch.distributed as dist

    first = cells[0]
    return dist.get_rank(), dist.get_world_size(), first.params, ModelConfig(**first.shape)


def build_on_every_rank(cells: list[Cell], build) -> tuple[dict, dict]:
    """({key: build(cell)} of the cells every rank built, {key: outcome} of the others): a cell
    that fails to build on any rank is dropped on all of them, so their collectives stay in step;
    its status and message are the first failing rank's."""
    from ..errors import classify
    from ..parallel.launch import gather

    built, failed = {}, {}
    for cell in cells:
        try:
            built[cell.key] = build(cell)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - recorded as the cell's status
            failed[cell.key] = classify(exc)
    agreed: dict = {}
    for f in gather(failed):
        for key, outcome in f.items():
            agreed.setdefault(key, outcome)
    return {k: v for k, v in built.items() if k not in agreed}, agreed
