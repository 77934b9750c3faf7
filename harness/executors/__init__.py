"""Executors: where a planned job's worker runs. One module per executor in this package, each
an `Executor` subclass registered with `@register("name")` (base.py says what it declares) and
discovered by import, like workloads and studies: `local` (this machine, one job at a time or a
pool of devices / slots) and `slurm` (a Slurm job array)."""
from __future__ import annotations

from .base import REGISTRY, Context, Executor, Job, register

__all__ = ["Context", "Executor", "Job", "register", "get", "names", "registered"]
REGISTRY.scan(__name__, __path__, skip=("base", "process", "task", "shards"))
registered, names, get = REGISTRY.registered, REGISTRY.names, REGISTRY.lookup
