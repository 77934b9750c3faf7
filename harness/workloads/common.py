"""What every workload builds the same way: the cell's model, a fixed batch, the static facts."""
from __future__ import annotations

import torch

from ..cells import Cell
from ..model import ModelConfig, build_model, count_params
from ..precision import get as get_precision


def model_of(cell: Cell):
    cfg = ModelConfig(**cell.shape)
    model = build_model(cfg, cell.variant, cell.options, cell.seed, cell.device, get_precision(cell.precision).param_dtype)
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
        "n_layers": cfg.n_layers,
        "tokens_per_step": cell.params["batch"] * cfg.seq_len if "batch" in cell.params else None,
    }
