"""Workloads: what a cell measures. One module per workload in this package, each a `Workload`
subclass registered with `@register("name")` (see base.py for what it declares) and discovered
by import, like the variants. Adding a workload is adding one module here."""
from __future__ import annotations

from .base import REGISTRY, Workload, register

__all__ = ["Workload", "register", "get", "names", "registered"]
REGISTRY.scan(__name__, __path__, skip=("base", "common"), order=lambda w: (w.order, w.name))  # expansion order
registered, names, get = REGISTRY.registered, REGISTRY.names, REGISTRY.lookup


# The functions of the pre-plugin API, for callers that measure older commits too (asv).
from .loss import run_loss  # noqa: E402
from .memory import run_memory  # noqa: E402
from .throughput import run_throughput  # noqa: E402
