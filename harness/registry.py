"""The plug-in pattern workloads and studies share (variants have their own, importing nothing
of the harness): a class decorated with `@REGISTRY.register("name")` is registered as one
instance, and a package's modules are imported once to find them."""
from __future__ import annotations

import importlib
import pkgutil


class Registry(dict):
    """{name: the one instance of the class registered under it}."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str):
        def deco(cls):
            if name in self and type(self[name]) is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered by {type(self[name]).__qualname__}")
            cls.name = name
            self[name] = cls()
            return cls
        return deco


def discover(package: str, path, skip: tuple[str, ...] = ("base",)) -> None:
    """Import every public module of a package (its registrations run on import)."""
    for mod in pkgutil.iter_modules(path):
        if mod.name not in skip and not mod.name.startswith("_"):
            importlib.import_module(f"{package}.{mod.name}")
