"""Workloads: what a cell measures. One module per workload in this package, each a `Workload`
subclass registered with `@register("name")` (see base.py for what it declares) and discovered
by import, like the variants. Adding a workload is adding one module here."""
from __future__ import annotations

from ..registry import discover
from .base import REGISTRY, Workload, register

__all__ = ["Workload", "register", "get", "names", "registered"]
_discovered = False


def _discover() -> None:
    global _discovered
    if not _discovered:
        _discovered = True
        discover(__name__, __path__, skip=("base", "common"))


def registered() -> list[Workload]:
    """Every workload, in expansion order."""
    _discover()
    return sorted(REGISTRY.values(), key=lambda w: (w.order, w.name))


def names() -> list[str]:
    return [w.name for w in registered()]


def get(name: str) -> Workload:
    _discover()
    return REGISTRY[name]


# The functions of the pre-plugin API, for callers that measure older commits too (asv).
from .loss import run_loss  # noqa: E402
from .memory import run_memory  # noqa: E402
from .throughput import run_throughput  # noqa: E402
