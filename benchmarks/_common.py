"""What every asv module shares: the variant × depth grid, the tiny shape, the device, and the
harness imports.

asv runs this suite against *old* commits too, so nothing here imports the harness at module
level: `need()` imports it inside setup and turns a missing API into NotImplementedError, which
asv records as "skipped" (no data for that commit) instead of a failure. Nothing here may be
named time_*/track_*/peakmem_*: asv would take it for a benchmark.
"""
from __future__ import annotations

import importlib
import os
import time

# variant label -> (registered name, options); labels are asv parameter values
VARIANTS = {
    "prenorm": ("prenorm", {}),
    "highway": ("highway", {}),
    "densenet": ("densenet", {}),
    "full-attnres": ("full-attnres", {}),
    "block-attnres": ("block-attnres", {"n_blocks": 2}),
}
DEPTHS = [2, 4]  # transformer blocks (L = 2 x blocks sublayers)
PARAMS = [list(VARIANTS), DEPTHS]
PARAM_NAMES = ["variant", "blocks"]

# small on purpose: one commit's whole suite must run in a minute or two on 2 CPU cores
SHAPE = {"vocab_size": 256, "d_model": 64, "n_heads": 4, "mlp_ratio": 4.0, "seq_len": 64}
BATCH = 4
SEED = 0
LOSS_STEPS = 20


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


_clock = [time.perf_counter]


def step_clock() -> float:
    """asv's timer for time_*: this process's CPU time on CPU, where the run is single-threaded
    and a busy neighbour then costs little; wall clock on a GPU, whose work the CPU only waits on."""
    return _clock[0]()


def use_clock_for(dev: str) -> None:
    _clock[0] = time.process_time if dev == "cpu" else time.perf_counter


def model_config(blocks: int):
    ModelConfig = need("model", "ModelConfig")
    return ModelConfig(n_blocks=blocks, **SHAPE)


def build(variant: str, blocks: int, dev: str):
    """The harness's model for one grid point (same seed → same shared weights for every variant)."""
    build_model = need("model", "build_model")
    name, options = VARIANTS[variant]
    cfg = model_config(blocks)
    return cfg, build_model(cfg, name, dict(options), SEED, dev)


def fixed_batch(cfg, dev: str):
    """Random tokens: content does not change the work, and no data loading enters the timing."""
    import torch

    g = torch.Generator().manual_seed(SEED)
    x = torch.randint(0, cfg.vocab_size, (BATCH, cfg.seq_len + 1), generator=g)
    return x[:, :-1].to(dev), x[:, 1:].to(dev)


def sync_fn(dev: str):
    """The harness's synchronize; before it existed only CPU (where it is a no-op) is measurable."""
    try:
        return need("measure", "synchronize")
    except NotImplementedError:
        if dev != "cpu":
            raise
        return lambda _dev: None


def grid():
    for variant in VARIANTS:
        for blocks in DEPTHS:
            yield variant, blocks


def cached_grid(fn) -> dict:
    """{"variant/blocks": fn(variant, blocks)} for a setup_cache: one interpreter measures the whole
    grid (these values are deterministic, so nothing is lost) instead of one spawn per point.
    A commit without the needed API stores the reason instead, and `cached()` skips on it."""
    out = {}
    for variant, blocks in grid():
        try:
            out[f"{variant}/{blocks}"] = fn(variant, blocks)
        except NotImplementedError as exc:
            out[f"{variant}/{blocks}"] = str(exc)
    return out


def cached(cache: dict, variant: str, blocks: int):
    value = cache[f"{variant}/{blocks}"]
    if isinstance(value, str):
        raise NotImplementedError(value)
    return value
