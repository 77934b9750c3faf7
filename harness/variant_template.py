"""The skeleton `resbench new-variant NAME` writes: a working variant (PreNorm with a learned
scalar per sublayer) to be edited into a new one. It lives here, not in variants/, because every
module there is imported and registered."""
from __future__ import annotations

import importlib.util
import pkgutil
import re
import sys
from pathlib import Path
from string import Template

# lowercase words of letters and digits joined by single '-', starting with a letter: my-mix
NAME_RE = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
MAX_NAME_LEN = 40  # a name is typed, tabulated and made a file name: long ones are mistakes

# $-placeholders: Python code has no '$', so nothing in it needs escaping
SKELETON = Template('''\
"""$cls: x <- x + a_i * f_i(x), a_i a learned scalar per sublayer, `init` (1) at init: PreNorm at step 0.

Written by `resbench new-variant $name` as a starting point: change the equation above and the
code below together. declared_extra_params, state_vectors, residual_traffic and mixing_flops must stay true to what
__init__ and write() do (tests/test_conformance.py holds the parameter count against them).
"""
from __future__ import annotations

import torch
from torch import nn

# absolute imports: the same file works in variants/ and outside the repository
# (resbench --variants-module MOD, RESBENCH_VARIANTS=MOD)
from resbench.variants import register
from resbench.variants.base import Residual


@register("$name")
class $cls(Residual):
    def __init__(self, d_model: int, n_layers: int, *, init: float = 1.0):
        # options are keyword-only with a default (the default documents the variant), each kept
        # as an attribute of its name: records and `resbench list` read them back from there
        super().__init__(d_model, n_layers)
        self.init = init
        # a_i, one per sublayer (n_layers = L counts attention and MLP separately); 1 at init: the
        # variant starts equal to PreNorm, so a difference later is what it learned
        self.scale = nn.Parameter(torch.full((n_layers,), init, dtype=torch.float32))

    def begin(self, e):
        # the embedding [B, T, d] enters; return the residual state (a tensor or a tuple of tensors)
        return e

    def read(self, x, i):
        # the input of sublayer i, from the state (e.g. a weighted sum of earlier outputs)
        return x

    def write(self, x, i, y):
        # y = f_i(read(x, i)), f_i with its own pre-RMSNorm; return the new state: your equation
        return x + self.scale[i] * y

    def end(self, x):
        # the state after the last sublayer -> one [B, T, d] tensor for the final norm and the head
        return x

    def declared_extra_params(self) -> int:
        # parameters added to the shared model: exactly what __init__ creates
        return self.n_layers

    def state_vectors(self) -> int:
        # d-vectors per token the state keeps alive across depth: 1 for one stream
        return 1

    def residual_traffic(self) -> int:
        # d-vectors per token the residual path reads and writes in one forward, as few as a fused
        # implementation moves: x + a_i * y reads x and y and writes one, 3 per sublayer (its roofline)
        return 3 * self.n_layers

    def mixing_flops(self) -> int:
        # FLOPs per token of the variant's own matrix products (2 per multiply-add); elementwise
        # mixing such as a_i * y counts none
        return 0
''')


def module_name(name: str) -> str:
    return name.replace("-", "_")


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))


def render(name: str) -> str:
    return SKELETON.substitute(name=name, cls=class_name(name))


def module_name_taken(module: str, out: Path) -> str | None:
    """Why `module` cannot name a new variant's module written to `out`, or None if it can.

    In variants/ the module becomes an attribute of resbench.variants on import, so a name the
    package uses (os, register, build, a submodule...) would replace it and break every command;
    refused wherever the file goes, since it may be moved there later. Outside, loaded by name
    (RESBENCH_VARIANTS, --variants-module), a name that already means a module (json, torch, os)
    imports that module instead, or shadows it for everything else on the path."""
    from resbench import variants

    if hasattr(variants, module) or module in {m.name for m in pkgutil.iter_modules(variants.__path__)}:
        return f"resbench.variants already uses the name {module!r}"
    if module in sys.stdlib_module_names:
        return f"it would shadow the standard library module {module!r}"
    loaded = sys.modules.get(module)
    if loaded is not None:
        file = getattr(loaded, "__file__", None)
        if file is None or Path(file).resolve() != out:  # out itself: the --force case, checked after
            return f"it would shadow the loaded module {module!r} ({file or 'built in'})"
    try:
        spec = importlib.util.find_spec(module)  # top-level: searches the path, imports nothing
    except (ImportError, ValueError):
        spec = None
    # a namespace package (no origin) gives way to any regular module of that name
    if spec is not None and spec.has_location and spec.origin and Path(spec.origin).resolve() != out:
        return f"it would shadow the module {module!r} ({spec.origin})"
    return None
