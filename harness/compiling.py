"""The implementation axis: a cell runs its model eager (`compile: none`) or through
torch.compile (`default`, `max-autotune`), the same way for every variant, PreNorm included.

Compiled cells use fullgraph=True and static shapes: a graph break or a hit of the recompile
limit is an error recorded as the cell's status, never a silent fall-back to eager. Compilation
happens in the warm-up, timed on its own (`warm`); a compile during the timed calls is counted
(`CompileCounter`) and makes the cell an error, since its times would include compiling.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

MODES = ("none", "default", "max-autotune")
# Every variant, shape and workload of a timing process compiles the same code objects
# (Transformer.forward): a cache entry each, far more than dynamo's default limit of 8.
RECOMPILE_LIMIT = 256


def compile_model(model: torch.nn.Module, mode: str, backend: str = "inductor"):
    """The module a cell calls: `model` itself for mode none, else its torch.compile wrapper
    (parameters shared with `model`)."""
    if mode not in MODES:
        raise ValueError(f"compile must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "none":
        return model
    cfg = torch._dynamo.config
    cfg.cache_size_limit = max(cfg.cache_size_limit, RECOMPILE_LIMIT)
    if hasattr(cfg, "recompile_limit"):
        cfg.recompile_limit = max(cfg.recompile_limit, RECOMPILE_LIMIT)
    cfg.accumulated_cache_size_limit = max(cfg.accumulated_cache_size_limit, RECOMPILE_LIMIT)
    return torch.compile(model, fullgraph=True, dynamic=False, backend=backend,
                         mode=None if mode == "default" else mode)


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def cache_hits() -> dict[str, int]:
    """Inductor's FX-graph cache hits and misses so far: a warm on-disk cache makes compile
    times shorter than a first compile on a fresh machine."""
    c = torch._dynamo.utils.counters["inductor"]
    return {"hit": int(c["fxgraph_cache_hit"]), "miss": int(c["fxgraph_cache_miss"])}


class CompileCounter:
    """Graphs compiled while the block runs (`with CompileCounter() as w: ...; w.graphs`)."""

    def __enter__(self):
        self._start = graphs_compiled()
        self.graphs = 0
        return self

    def __exit__(self, *exc):
        self.graphs = graphs_compiled() - self._start
        return False


def warm(fn: Callable[[], object], at_least: int, most: int = 8) -> dict:
    """Call fn until it runs without compiling (after `at_least` calls): the steady state the
    timed calls then see. Returns the compile cost: seconds of the calls that compiled (compile
    plus one run each), how many graphs and calls that took."""
    compile_s, graphs, calls = 0.0, 0, 0
    while calls < most:
        t0 = time.perf_counter()
        with CompileCounter() as w:
            fn()
        calls += 1
        if w.graphs:
            compile_s += time.perf_counter() - t0
            graphs += w.graphs
        elif calls >= at_least:
            break
    else:
        raise RuntimeError(f"torch.compile still compiled on call {most}: no steady state")
    return {"compile_s": compile_s, "graphs": graphs, "warmup_calls": calls}


class CompileError(RuntimeError):
    """torch.compile could not run a cell's model as one graph, or recompiled while timed."""


def steady(fns: dict[str, Callable[[], object]], mode: str, at_least: int = 1) -> tuple[dict, dict]:
    """Warm each compiled fn to its steady state (`warm`), then return guarded fns that raise
    CompileError if a timed call compiles again, and the compile cost per fn plus the FX-graph
    cache's hits and misses meanwhile ({} for mode none: the fns come back as they are)."""
    if mode == "none":
        return fns, {}
    before = cache_hits()
    cost = {}
    for name, fn in fns.items():
        try:
            cost[name] = warm(fn, at_least)
        except Exception as exc:  # noqa: BLE001 - re-raised as what it means for the cell
            raise cannot_run(mode, name, exc) from exc
    after = cache_hits()
    info = {"mode": mode, **cost, "fxgraph_cache": {k: after[k] - before[k] for k in after}}
    return {name: guarded(name, fn) for name, fn in fns.items()}, info


def cannot_run(mode: str, name: str, exc: BaseException) -> CompileError:
    """The cell's error when torch.compile fails on `name` (a trace, a graph break, a refusal)."""
    return CompileError(f"torch.compile ({mode}, fullgraph) cannot run {name}: {why(exc)}")


def why(exc: BaseException) -> str:
    """One line for a compile failure: dynamo's summary plus, where it gives one, the error the
    traced code raised (its "debug context"), which names the real cause."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    head = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    context = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("Developer debug context:")), "")
    return (head + (f" ({context})" if context else ""))[:500]


def guarded(name: str, fn: Callable[..., object]) -> Callable[..., object]:
    """fn, raising CompileError if a call compiles anything: for calls that are timed."""
    def call(*args, **kwargs):
        with CompileCounter() as w:
            out = fn(*args, **kwargs)
        if w.graphs:
            raise CompileError(f"torch.compile recompiled {name} during a timed call ({w.graphs} graph(s)): "
                               "its times would include compiling")
        return out
    return call
