"""Shared fixtures: a tiny model shape, a near-zero RMSNorm eps, helpers for random inputs and
non-trivial variant parameters, and variants of a test's own registered for its duration."""
from __future__ import annotations

import sys

import pytest
import torch

import resbench.model
import resbench.variants.base
from resbench.model import ModelConfig, build_model

# vocab 64, d 32, 3 blocks (L = 6 sublayers), 4 heads, seq 16: every test runs in milliseconds.
TINY = ModelConfig(vocab_size=64, d_model=32, depth=3, n_heads=4, mlp_ratio=2.0, seq_len=16)
BATCH = 2


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return TINY


@pytest.fixture
def tiny_eps(monkeypatch):
    # PreNorm-equivalence of AttnRes holds up to the eps only (its mean of sources has a smaller RMS).
    monkeypatch.setattr(resbench.variants.base, "RMS_EPS", 1e-30)
    monkeypatch.setattr(resbench.model, "RMS_EPS", 1e-30)
    return 1e-30


def tokens(cfg: ModelConfig, seed: int = 0, batch: int = BATCH, seq: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, seq or cfg.seq_len), generator=g)


@torch.no_grad()
def perturb_variant(model, seed: int = 1, scale: float = 0.3) -> None:
    """Add N(0, scale) noise to every parameter of the residual variant, so no gate/query/mixing
    weight sits at its symmetric init (at init e.g. AttnRes key gains get exactly zero gradient)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.residual.parameters():
        p.add_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale)


def make_model(cfg: ModelConfig, variant: str, options: dict | None = None, seed: int = 0,
               perturb: bool = False, dtype: torch.dtype = torch.float64):
    model = build_model(cfg, variant, options, seed=seed, dtype=dtype)
    if perturb:
        perturb_variant(model, seed=seed + 17)
    return model


def planted_metrics(workload: str, **values) -> dict:
    """The least an ok record of `workload` must hold to be read back (its metrics_schema's
    required fields, each a placeholder), with `values` on top: for tests that plant records."""
    from resbench import workloads

    def fill(spec):
        if isinstance(spec, tuple):
            return fill(next(s for s in spec if s is not None))
        if isinstance(spec, dict):
            return {k: fill(v) for k, v in spec.items() if not k.endswith("?")}
        return {float: 1.0, int: 1, str: "planted", list: [], dict: {}}[spec]

    return {**fill(workloads.get(workload).metrics_schema), **values}


@pytest.fixture
def plugin_variants(tmp_path, monkeypatch):
    """`load(module, source)`: write `source` as tmp_path/<module>.py and register its variants in
    a copy of the registry that this test alone sees; worker processes import it too (PYTHONPATH,
    and the runner hands loaded modules on). Returns the folder."""
    from resbench import variants

    loaded = []

    def load(module: str, source: str):
        (tmp_path / f"{module}.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setenv("PYTHONPATH", str(tmp_path))
        variants.names()  # the package's own first, so the copy is complete
        monkeypatch.setattr(variants, "_REGISTRY", dict(variants._REGISTRY))
        monkeypatch.setattr(variants, "loaded_modules", list(variants.loaded_modules))
        monkeypatch.delitem(sys.modules, module, raising=False)  # register afresh into this registry
        variants.load_module(module)
        loaded.append(module)
        return tmp_path

    yield load
    for module in loaded:
        sys.modules.pop(module, None)
