"""Studies: a suite's `kind:` (overhead, loss, scaling, projection). One module per study in this
package, each a `Study` subclass registered with `@register("kind")` (base.py says what it
declares) and discovered by import, like workloads and variants. A suite without `kind:` is a
plain measurement suite: its records and their tables, no study on top."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..config import Suite, apply_overrides, parse_suite, read_yaml, resolve_suite_path, short
from ..errors import ConfigError
from .base import REGISTRY, Study, register

__all__ = ["Study", "register", "get", "names", "registered", "load", "parse"]
REGISTRY.scan(__name__, __path__)
registered, names, get = REGISTRY.registered, REGISTRY.names, REGISTRY.lookup


def parse(raw: Any, default_name: str = "suite") -> tuple[Study | None, Any]:
    """The one validator of every suite: (its study or None, its validated config). The `kind:`
    picks the schema: a study's own, or the measurement suite's plus the study's keys."""
    if raw is None:
        raise ConfigError("suite is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"suite must be a mapping, got {type(raw).__name__}")
    kind = raw.get("kind")
    if kind is None:
        owner = {key: s.name for s in registered() for key in s.keys}
        for key in raw:
            if key in owner:
                raise ConfigError(f"suite: {key} belongs to the {owner[key]} study: add `kind: {owner[key]}`")
        return None, parse_suite(raw, default_name)
    if not isinstance(kind, str) or kind not in names():
        raise ConfigError(f"kind must be one of {', '.join(names())} (or absent: a plain measurement suite); "
                          f"got {short(kind)}")
    study = get(kind)
    suite: Suite = parse_suite(raw, default_name, extra_keys=("kind", *study.keys))
    values = study.parse_keys({k: raw[k] for k in study.keys if k in raw}, [n for n, _ in suite.shapes],
                              [s.label for s in suite.variants])
    suite = dataclasses.replace(suite, kind=kind, study_keys=values, bounds=study.bounds(values))
    study.check(suite)
    return study, suite


def load(spec: str, sets: list[str] | None = None) -> tuple[Study | None, Any]:
    """A suite path or shipped name (with `--set` changes) → (study or None, config)."""
    path = resolve_suite_path(spec)
    return parse(apply_overrides(read_yaml(path), sets or []), default_name=Path(path).stem)
