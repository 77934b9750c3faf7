"""The package's layers, as docs/ARCHITECTURE.md's table states them: every module in exactly one
layer, no import upward (relative or absolute, at module level or inside a function), no cycle.
The checker is tested on planted violations, so it is known to fail."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"resbench": ROOT / "harness", "resbench.variants": ROOT / "variants"}


def modules(packages: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__)."""
    out = {}
    for pkg, base in packages.items():
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            init = parts[-1] == "__init__"
            if init:
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = (path, init)
    return out


def import_graph(mods: dict[str, tuple[Path, bool]], top: str = "resbench") -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file. `from pkg import name`
    counts pkg.name when that is a module, else pkg itself."""
    graph = {}
    for name, (path, init) in mods.items():
        here = name.split(".") if init else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                subs = [f"{mod}.{a.name}" for a in node.names]
                deps.update(s for s in subs if s in mods)
                if mod in mods and any(s not in mods for s in subs):
                    deps.add(mod)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in mods)
        graph[name] = {d for d in deps if d != name and d.split(".")[0] == top}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def documented_layers() -> list[tuple[str, list[str]]]:
    """(layer, [file or folder/]) per row of ARCHITECTURE.md's layer table, bottom layer first."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    table = text.split("## Layers", 1)[1].split("\n\n")
    rows = next(t for t in table if t.lstrip().startswith("| layer |")).strip().splitlines()[2:]
    out = []
    for row in rows:
        layer, files = [c.strip() for c in row.strip("|").split("|")][:2]
        out.append((layer, re.findall(r"`([^`]+)`", files)))
    return out


def layer_of(module: str, layers: list[tuple[str, list[str]]]) -> list[int]:
    """Every layer index whose files name `module` (a folder holds its whole subpackage)."""
    hits = []
    for i, (_, files) in enumerate(layers):
        for f in files:
            if f == "variants/":
                name = "resbench.variants"
            else:
                name = "resbench" if f == "__init__.py" else "resbench." + f.removesuffix("/").removesuffix(".py")
            if module == name or (f.endswith("/") and module.startswith(name + ".")):
                hits.append(i)
    return hits


def upward(graph, layers) -> list[str]:
    where = {m: layer_of(m, layers)[0] for m in graph}
    return [f"{m} ({layers[where[m]][0]}) imports {d} ({layers[where[d]][0]})"
            for m in sorted(graph) for d in sorted(graph[m]) if where[d] > where[m]]


MODS = modules(PACKAGES)
GRAPH = import_graph(MODS)


def test_every_module_is_in_exactly_one_documented_layer():
    layers = documented_layers()
    assert [name for name, _ in layers][:2] == ["variants", "base"]
    wrong = {m: [layers[i][0] for i in layer_of(m, layers)] for m in MODS if len(layer_of(m, layers)) != 1}
    assert not wrong, f"modules in no layer or in several (docs/ARCHITECTURE.md): {wrong}"
    named = {f for _, files in documented_layers() for f in files}
    for f in named:
        target = ROOT / ("variants" if f == "variants/" else "harness") / ("" if f == "variants/" else f)
        assert target.exists(), f"ARCHITECTURE.md names {f}, which does not exist"


def test_no_module_imports_a_layer_above_its_own():
    assert upward(GRAPH, documented_layers()) == []


def test_the_package_has_no_import_cycle():
    assert cycles(GRAPH) == []


def test_the_checks_catch_a_planted_cycle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from resbench.sub import c\n")  # absolute, inside a function
    (pkg / "sub" / "c.py").write_text("from ..a import thing\n")
    graph = import_graph(modules({"resbench": pkg}))
    assert cycles(graph) == [["resbench.a", "resbench.b", "resbench.sub.c"]]
    layers = [("low", ["__init__.py", "a.py", "b.py"]), ("high", ["sub/"])]
    assert upward(graph, layers) == ["resbench.b (low) imports resbench.sub.c (high)"]


@pytest.mark.parametrize("module", ["resbench.errors", "resbench.cells", "resbench.results"])
def test_the_vocabulary_and_the_record_file_import_nothing_above_them(module):
    layers = documented_layers()
    mine = layer_of(module, layers)[0]
    assert all(layer_of(d, layers)[0] <= mine for d in GRAPH[module]), GRAPH[module]
