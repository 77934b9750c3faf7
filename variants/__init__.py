"""Registry of residual variants.

`@register("name")` on a Residual subclass adds it. Every module in this package is imported on
first use, so a new variant is one new file here. A variant living elsewhere is picked up from
the environment variable RESBENCH_VARIANTS (comma-separated module paths, imported on first
use), from `resbench --variants-module MOD ...`, or by installing a distribution that declares an
entry point in the group "resbench.variants".
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import pkgutil
from importlib.metadata import entry_points
from typing import Any

from .base import Residual, VariantError

__all__ = ["Residual", "VariantError", "register", "get", "names", "build", "load_module", "source_of"]

_REGISTRY: dict[str, type[Residual]] = {}
_discovered = False
loaded_modules: list[str] = []  # external modules imported so far (worker processes re-import them)


def register(name: str):
    """Class decorator: make a Residual subclass available under `name`."""

    def deco(cls: type[Residual]) -> type[Residual]:
        if not (isinstance(cls, type) and issubclass(cls, Residual)):
            raise TypeError(f"@register({name!r}) needs a Residual subclass, got {cls!r}")
        other = _REGISTRY.get(name)
        if other is not None and other is not cls:  # a look-alike (same class name) is another class
            raise VariantError(f"variant name {name!r} is already registered by {other.__module__}."
                               f"{other.__qualname__}; {cls.__module__}.{cls.__qualname__} cannot take it")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def load_module(path: str) -> None:
    """Import a module (dotted path) that registers variants; one-line error if it fails."""
    try:
        importlib.import_module(path)
    except VariantError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - whatever the module does on import is its error
        why = str(exc).splitlines()[0][:300] if str(exc) else "(no message)"
        raise VariantError(f"cannot import variants module {path!r}: {type(exc).__name__}: {why}") from None
    if path not in loaded_modules:
        loaded_modules.append(path)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "base" and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    for path in filter(None, (p.strip() for p in os.environ.get("RESBENCH_VARIANTS", "").split(","))):
        load_module(path)
    for ep in entry_points(group="resbench.variants"):
        ep.load()


def names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get(name: str) -> type[Residual]:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise VariantError(
            f"unknown variant {name!r}; registered: {', '.join(sorted(_REGISTRY))}"
        ) from None


def source_of(name: str) -> str:
    """`module:Class@sha` of the class registered as `name` (sha: the first 12 hex digits of its
    source file's sha256; "?" when the file cannot be read): what produced a record, precisely
    enough that an edit of the file or a look-alike class from another module differs."""
    cls = get(name)
    try:
        with open(inspect.getsourcefile(cls) or "", "rb") as fh:
            sha = hashlib.sha256(fh.read()).hexdigest()[:12]
    except (OSError, TypeError):
        sha = "?"
    return f"{cls.__module__}:{cls.__qualname__}@{sha}"


def build(name: str, d_model: int, n_layers: int, options: dict[str, Any] | None = None) -> Residual:
    """Instantiate a registered variant, turning bad option names into a one-line error."""
    cls = get(name)
    options = dict(options or {})
    allowed = cls.option_defaults()
    for key in options:
        if key not in allowed:
            listed = ", ".join(allowed) or "none"
            raise VariantError(f"variant {name!r} has no option {key!r}; options: {listed}")
    try:
        return cls(d_model, n_layers, **options)
    except TypeError as exc:  # e.g. a string where a number belongs
        raise VariantError(f"variant {name!r}: {exc}") from None
