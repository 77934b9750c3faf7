"""The plug-in pattern workloads, studies and executors share (variants have their own, importing
nothing of the harness): a class decorated with `@REGISTRY.register("name")` is registered as one
instance, and its package's modules are imported once, on first use, to find them."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable


class Registry(dict):
    """{name: the one instance of the class registered under it}. `scan` names the package whose
    modules register into it; `registered`, `names` and `lookup` import them on first use."""

    def __init__(self, item: str):
        super().__init__()
        self.item = item  # what it holds, for messages: "workload", "study", "executor"
        self._package: tuple | None = None
        self._order: Callable = lambda obj: obj.name
        self._discovered = False

    def register(self, name: str):
        def deco(cls):
            if name in self and type(self[name]) is not cls:
                raise ValueError(f"{self.item} {name!r} is already registered by {type(self[name]).__qualname__}")
            cls.name = name
            self[name] = cls()
            return cls
        return deco

    def scan(self, package: str, path, skip: tuple[str, ...] = ("base",), order: Callable | None = None) -> None:
        """Where the registrations live: every public module of `package` not in `skip` (helpers),
        imported on first use; `order` sorts `registered()` (default: by name)."""
        self._package = (package, path, skip)
        if order is not None:
            self._order = order

    def _discover(self) -> None:
        if not self._discovered and self._package is not None:
            self._discovered = True
            package, path, skip = self._package
            for mod in pkgutil.iter_modules(path):
                if mod.name not in skip and not mod.name.startswith("_"):
                    importlib.import_module(f"{package}.{mod.name}")

    def registered(self) -> list:
        self._discover()
        return sorted(self.values(), key=self._order)

    def names(self) -> list[str]:
        return [obj.name for obj in self.registered()]

    def lookup(self, name: str):
        """The instance registered as `name` (KeyError if none)."""
        self._discover()
        return self[name]
