"""What names a variant's code in a record (source_of: its module and the project modules it
imports), and a broken installed plugin as a one-line error rather than a traceback."""
from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from resbench import variants
from resbench.cli import main

VARIANT = textwrap.dedent('''
    from resbench.variants import register
    from resbench.variants.base import Residual
    {helper_import}


    @register("{name}")
    class Plug(Residual):
        def begin(self, e):
            return e

        def read(self, x, i):
            return x

        def write(self, x, i, y):
            return x + helper() * y

        def end(self, x):
            return x
''')


@pytest.fixture
def registry(monkeypatch, tmp_path):
    """A registry and sys.modules that forget what the test registers and imports from tmp_path."""
    variants.names()  # the package's own first, so the copy is complete
    monkeypatch.setattr(variants, "_REGISTRY", dict(variants._REGISTRY))
    monkeypatch.setattr(variants, "loaded_modules", list(variants.loaded_modules))
    monkeypatch.delenv("RESBENCH_VARIANTS", raising=False)
    yield tmp_path
    forget(tmp_path)


def forget(folder: Path) -> None:
    for name, mod in list(sys.modules.items()):
        if str(getattr(mod, "__file__", None) or "").startswith(str(folder)):
            del sys.modules[name]


def load_fresh(module: str, variant: str, folder: Path, monkeypatch) -> str:
    """Import `module` from `folder` anew (as a new process would) and return source_of(variant)."""
    forget(folder.parent)
    variants._REGISTRY.pop(variant, None)
    monkeypatch.syspath_prepend(str(folder))
    variants.load_module(module)
    return variants.source_of(variant)


def test_a_helper_in_the_plugin_package_is_part_of_the_source(registry, monkeypatch):
    pkg = registry / "plugins" / "rb_plug"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mod_a.py").write_text(VARIANT.format(name="tmp-plug", helper_import="from .mod_b import helper"))
    (pkg / "mod_b.py").write_text("def helper():\n    return 1.0\n")
    (pkg / "unused.py").write_text("X = 1\n")
    before = load_fresh("rb_plug.mod_a", "tmp-plug", pkg.parent, monkeypatch)
    assert before.startswith("rb_plug.mod_a:Plug@") and len(before.split("@")[1]) == 12
    (pkg / "unused.py").write_text("X = 2\n")  # not imported: not part of it
    assert load_fresh("rb_plug.mod_a", "tmp-plug", pkg.parent, monkeypatch) == before
    (pkg / "mod_b.py").write_text("def helper():\n    return 0.5\n")  # only the helper changes
    after = load_fresh("rb_plug.mod_a", "tmp-plug", pkg.parent, monkeypatch)
    assert after.split("@")[0] == before.split("@")[0] and after != before
    assert variants.source_files("tmp-plug") == [pkg / "mod_a.py", pkg / "__init__.py", pkg / "mod_b.py"]


def test_a_lone_module_counts_the_lone_modules_it_imports_beside_it(registry, monkeypatch):
    for copy in ("one", "two"):  # the same code in two folders: the same sha (names, not paths)
        folder = registry / copy
        folder.mkdir()
        (folder / "rb_lone_a.py").write_text(VARIANT.format(name="tmp-lone", helper_import="from rb_lone_b import helper"))
        (folder / "rb_lone_b.py").write_text("import os\n\ndef helper():\n    return 1.0\n")
    shas = [load_fresh("rb_lone_a", "tmp-lone", registry / copy, monkeypatch) for copy in ("one", "two")]
    assert shas[0] == shas[1]
    (registry / "two" / "rb_lone_b.py").write_text("import os\n\ndef helper():\n    return 2.0\n")
    assert load_fresh("rb_lone_a", "tmp-lone", registry / "two", monkeypatch) != shas[0]
    # the standard library, torch and resbench are not the plugin's code
    assert variants.source_files("tmp-lone") == [registry / "two" / "rb_lone_a.py", registry / "two" / "rb_lone_b.py"]


def test_a_variant_of_the_package_counts_its_helpers_but_not_the_registry():
    folder = Path(variants.__file__).resolve().parent
    assert variants.source_files("full-attnres") == [
        folder / f for f in ("attnres.py", "_attnres_fast.py", "_attnres_fla.py", "_attnres_functional.py", "base.py")]
    assert variants.source_files("prenorm") == [folder / "prenorm.py", folder / "base.py"]
    assert variants.source_of("full-attnres").startswith("resbench.variants.attnres:FullAttnRes@")


def test_an_edit_of_the_fast_attnres_helper_changes_the_source(tmp_path, monkeypatch):
    real = variants._module_file
    copy = tmp_path / "_attnres_fast.py"
    copy.write_bytes(real("resbench.variants._attnres_fast").read_bytes())
    before = variants.source_of("full-attnres")
    # the helper read from an editable copy: the real file stays as it is for everyone else
    monkeypatch.setattr(variants, "_module_file",
                        lambda n: copy if n == "resbench.variants._attnres_fast" else real(n))
    assert variants.source_of("full-attnres") == before
    copy.write_bytes(copy.read_bytes() + b"\nEPS = 1e-6\n")
    assert variants.source_of("full-attnres") != before
    assert variants.source_of("prenorm") == variants.source_of("prenorm")  # deterministic


@pytest.mark.parametrize("value,words", [
    ("no_such_resbench_plugin_xyz", "ModuleNotFoundError: No module named 'no_such_resbench_plugin_xyz'"),
    ("rb_raising_plugin", "RuntimeError: plugin broke"),
    ("rb_raising_plugin:missing_attr", "RuntimeError: plugin broke"),
])
def test_a_broken_entry_point_is_one_line_and_exit_2(registry, monkeypatch, capsys, value, words):
    (registry / "rb_raising_plugin.py").write_text('raise RuntimeError("plugin broke\\nsecond line")\n')
    monkeypatch.syspath_prepend(str(registry))
    ep = EntryPoint(name="broken", value=value, group="resbench.variants")
    monkeypatch.setattr(variants, "entry_points", lambda group: [ep] if group == "resbench.variants" else [])
    monkeypatch.setattr(variants, "_discovered", False)
    assert main(["list"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith(f"resbench: error: cannot import entry point resbench.variants:broken = {value}: ")
    assert words in err and "second line" not in err
