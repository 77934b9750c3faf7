"""What every asv module shares: the variant × depth grid, the shapes, the device, and the
harness imports.

asv runs this suite against *old* commits too, so nothing here needs the harness at module
level (the grid falls back to the mission five): `need()` imports it inside setup and turns a
missing API into NotImplementedError, which asv records as "skipped" (no data for that commit)
instead of a failure. Nothing here may be
named time_*/track_*/peakmem_*: asv would take it for a benchmark.

Every series is computed in a `setup_cache` (one process measures the whole grid, interleaved
where it is a timing) and read back per grid point by a `track_` method, so a commit's suite is
a handful of processes, not one per point.
"""
from __future__ import annotations

import dataclasses
import importlib
import os

MISSION = ["prenorm", "highway", "densenet", "full-attnres", "block-attnres"]
OPTIONS = {"block-attnres": {"n_blocks": 2}}  # measured with other options than its defaults


def _grid() -> dict[str, tuple[str, dict]]:
    """variant label -> (registered name, options): every variant shipped in the package of the
    commit being measured (asv imports this module in that commit's environment), so a variant
    joins the history as it lands; the mission five where the package predates the registry."""
    try:
        from resbench import variants

        names = [n for n in variants.names() if variants.get(n).__module__.startswith("resbench.variants")]
    except Exception:  # noqa: BLE001 - an old commit: its harness had another name or API
        names = MISSION
    ordered = [n for n in MISSION if n in names] + sorted(set(names) - set(MISSION))
    return {n: (n, OPTIONS.get(n, {})) for n in ordered}


VARIANTS = _grid()
BASELINE = "prenorm"
DEPTHS = [2, 4]  # transformer blocks (L = 2 x blocks sublayers)
PARAMS = [list(VARIANTS), DEPTHS]
PARAM_NAMES = ["variant", "blocks"]
# ratio series have no baseline row: PreNorm / PreNorm is 1 by construction
RATIO_PARAMS = [[v for v in VARIANTS if v != BASELINE], DEPTHS]

# the quick suite's `small` shape and batch (tests/test_asv_suite.py holds them equal), so that at
# 4 blocks the dashboard shows the quantities `resbench run quick` tabulates
SHAPE = {"vocab_size": 256, "d_model": 128, "n_heads": 4, "mlp_ratio": 4.0, "seq_len": 128}
BATCH = 8
# the short training run stays tiny: 20 steps x 26 grid points must fit a commit's budget
LOSS_SHAPE = {"vocab_size": 256, "d_model": 64, "n_heads": 4, "mlp_ratio": 4.0, "seq_len": 64}
LOSS_BATCH = 4
LOSS_STEPS = 20
SEED = 0


def need(module: str, *names: str):
    """Import `resbench.<module>` names (`harness.<module>` before the package was renamed);
    NotImplementedError (asv: skipped) if this commit lacks them."""
    mod = None
    for top in ("resbench", "harness"):
        try:
            mod = importlib.import_module(f"{top}.{module}")
            break
        except ImportError as exc:
            why = exc
    if mod is None:
        raise NotImplementedError(f"resbench.{module} not in this commit: {why}") from None
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        raise NotImplementedError(f"{mod.__name__} lacks {', '.join(missing)} in this commit")
    return [getattr(mod, n) for n in names] if len(names) != 1 else getattr(mod, names[0])


def device() -> str:
    """RESBENCH_ASV_DEVICE=cpu|cuda; default cuda when present (asv keeps a history per machine)."""
    import torch

    want = os.environ.get("RESBENCH_ASV_DEVICE", "auto")
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return want


def pin_threads() -> None:
    """One CPU thread: the history should move with the code, not with what the neighbours run."""
    import torch

    torch.set_num_threads(int(os.environ.get("RESBENCH_ASV_THREADS", "1")))


def model_config(blocks: int, shape: dict = SHAPE):
    ModelConfig = need("model", "ModelConfig")
    # commits before the shape field was named depth call it n_blocks
    field = "depth" if "depth" in {f.name for f in dataclasses.fields(ModelConfig)} else "n_blocks"
    return ModelConfig(**{field: blocks}, **shape)


def build(variant: str, blocks: int, dev: str, shape: dict = SHAPE):
    """The harness's model for one grid point (same seed → same shared weights for every variant)."""
    build_model = need("model", "build_model")
    name, options = VARIANTS[variant]
    cfg = model_config(blocks, shape)
    return cfg, build_model(cfg, name, dict(options), SEED, dev)


def fixed_batch(cfg, dev: str, batch: int = BATCH):
    """Random tokens: content does not change the work, and no data loading enters the timing."""
    import torch

    g = torch.Generator().manual_seed(SEED)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len + 1), generator=g)
    return x[:, :-1].to(dev), x[:, 1:].to(dev)


def grid():
    for variant in VARIANTS:
        for blocks in DEPTHS:
            yield variant, blocks


def cached_grid(fn) -> dict:
    """{"variant/blocks": fn(variant, blocks)} for a setup_cache. A commit without the needed API
    stores the reason instead, and `cached()` skips on it."""
    out = {}
    for variant, blocks in grid():
        try:
            out[f"{variant}/{blocks}"] = fn(variant, blocks)
        except NotImplementedError as exc:
            out[f"{variant}/{blocks}"] = str(exc)
    return out


def _skip(why: str) -> Exception:
    """asv counts NotImplementedError as "skipped" only in setup; inside a benchmark it needs
    asv_runner's subclass (present wherever asv runs a benchmark)."""
    try:
        from asv_runner.benchmarks.mark import SkipNotImplemented
    except ImportError:
        return NotImplementedError(why)
    return SkipNotImplemented(why)


def cached(cache: dict, variant: str, blocks: int, key: str | None = None):
    """One grid point's value from a setup_cache (`key`: one entry of a dict value); skipped
    where the commit could not measure it."""
    value = cache[f"{variant}/{blocks}"]
    if isinstance(value, dict) and key is not None:
        value = value.get(key, f"{key}: not measured in this commit")
    if isinstance(value, str):
        raise _skip(value)
    return value
