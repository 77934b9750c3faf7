"""Executors: where a planned job's worker runs. One module per executor in this package, each
an `Executor` subclass registered with `@register("name")` (base.py says what it declares) and
discovered by import, like workloads and studies: `local` (this machine, one job at a time or a
pool of devices / slots) and `slurm` (a Slurm job array)."""
from __future__ import annotations

from ..registry import discover
from .base import REGISTRY, Context, Executor, Job, register

__all__ = ["Context", "Executor", "Job", "register", "get", "names", "registered"]
_discovered = False


def _discover() -> None:
    global _discovered
    if not _discovered:
        _discovered = True
        discover(__name__, __path__, skip=("base", "process", "task", "shards"))


def registered() -> list[Executor]:
    _discover()
    return sorted(REGISTRY.values(), key=lambda e: e.name)


def names() -> list[str]:
    return [e.name for e in registered()]


def get(name: str) -> Executor:
    _discover()
    return REGISTRY[name]
