"""Registry of residual variants.

`@register("name")` on a Residual subclass adds it. Every module in this package is imported on
first use, so a new variant is one new file here. A variant living elsewhere is picked up from
the environment variable RESBENCH_VARIANTS (comma-separated module paths, imported on first
use), from `resbench --variants-module MOD ...`, or by installing a distribution that declares an
entry point in the group "resbench.variants".
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from .base import Residual, VariantError

__all__ = ["Residual", "VariantError", "register", "get", "names", "build", "load_module", "source_of",
           "source_files"]

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


def _one_line(what: str, exc: BaseException) -> VariantError:
    why = next((line.strip() for line in str(exc).splitlines() if line.strip()), "(no message)")[:300]
    return VariantError(f"cannot import {what}: {type(exc).__name__}: {why}")


def load_module(path: str) -> None:
    """Import a module (dotted path) that registers variants; one-line error if it fails."""
    try:
        importlib.import_module(path)
    except VariantError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - whatever the module does on import is its error
        raise _one_line(f"variants module {path!r}", exc) from None
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
        try:  # an installed plugin that is broken must not turn every command into a traceback
            ep.load()
        except VariantError:
            raise
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - as in load_module
            raise _one_line(f"entry point {ep.group}:{ep.name} = {ep.value}", exc) from None


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


def _module_file(name: str) -> Path | None:
    """The file module `name` runs from, without importing anything new: the loaded module's
    file, else what the import system would find (asked only where the parent is a loaded package,
    so no package code runs for the question)."""
    mod = sys.modules.get(name)
    if mod is not None:
        file = getattr(mod, "__file__", None)
        return Path(file).resolve() if file else None
    parent = name.rpartition(".")[0]
    if parent and not hasattr(sys.modules.get(parent), "__path__"):
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None
    return Path(spec.origin).resolve() if spec and spec.has_location and spec.origin else None


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module an import statement of the source may name (`from a import b`: a, and a.b
    in case b is a submodule), with their parent packages, which importing runs first."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):  # imports inside functions too: they run when the variant does
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            try:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            except (ImportError, ValueError):
                continue
            found |= {base} | {f"{base}.{a.name}" for a in node.names if a.name != "*"}
    parents = {n.rsplit(".", k)[0] for n in found for k in range(1, n.count(".") + 1)}
    return found | parents


def _scope(module: str) -> Callable[[str], Path | None]:
    """name -> file of a module that counts as the variant's own code, None otherwise: for a module
    of this package its modules but this registry (which computes nothing); for one in an
    installed or external package that top-level package; for a lone module the lone modules of
    its folder (never a whole site-packages). Names are tested first: no file is looked up for
    torch or the standard library."""
    if module.startswith(__name__ + "."):
        return lambda n: _module_file(n) if n.startswith(__name__ + ".") else None
    if "." in module:
        root = module.split(".")[0]
        return lambda n: _module_file(n) if n == root or n.startswith(root + ".") else None
    here = _module_file(module)

    def sibling(n: str) -> Path | None:
        f = _module_file(n) if "." not in n else None
        return f if f is not None and here is not None and f.parent == here.parent \
            and f.name != "__init__.py" else None
    return sibling


def _forms_of(module: str, file: Path) -> set[str]:
    """The forms of a module's equations (`_<module>_<impl>.py` beside it, base.implementation):
    loaded by name, not imported, yet part of what the variant runs."""
    pkg, _, stem = module.rpartition(".")
    return {f"{pkg}.{p.stem}" if pkg else p.stem for p in file.parent.glob(f"_{stem}_*.py")}


def _source_modules(name: str) -> list[tuple[str, Path]]:
    cls = get(name)
    module = cls.__module__
    first = _module_file(module) or Path(inspect.getsourcefile(cls) or "").resolve()
    # What the variant runs is its module and the project modules that module imports, followed
    # through their own imports. The import statements (read with ast) say that the same way in
    # every process, whatever else it happened to import; sys.modules only says where each lives.
    own = _scope(module)
    seen = {module: first}
    todo = [(module, first)]
    while todo:
        mod, file = todo.pop()
        try:
            tree = ast.parse(file.read_bytes(), filename=str(file))
        except (OSError, SyntaxError, ValueError):
            continue
        deps = _imported_names(tree, mod, file.name == "__init__.py") | _forms_of(mod, file)
        for dep in sorted(deps - set(seen)):
            dep_file = own(dep)
            if dep_file is not None and dep_file.suffix == ".py":
                seen[dep] = dep_file
                todo.append((dep, dep_file))
    return [(module, first)] + sorted((m, f) for m, f in seen.items() if m != module)


def source_files(name: str) -> list[Path]:
    """The files whose text is hashed into source_of(name): the variant's module first, then the
    project modules it imports, directly or through one another, by module name."""
    return [f for _, f in _source_modules(name)]


def source_of(name: str) -> str:
    """`module:Class@sha` of the class registered as `name` (sha: the first 12 hex digits of a
    sha256 over its module and the project modules that module imports, each named and read;
    "?" when one cannot be read): what produced a record, precisely enough that an edit of any of
    those files, or a look-alike class from another module, differs."""
    cls = get(name)
    digest = hashlib.sha256()
    try:
        for mod, file in _source_modules(name):
            body = file.read_bytes()
            # module names, not paths: the same code in another checkout gets the same sha
            digest.update(f"{mod}\0{len(body)}\0".encode() + body)
        sha = digest.hexdigest()[:12]
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
