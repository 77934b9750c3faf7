"""`resbench new-variant`: the skeleton it writes is a conforming variant that starts as PreNorm,
and every refusal is one line on stderr, exit 2, nothing written."""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import torch

import test_conformance as conformance
from conftest import make_model, tokens
from resbench import variants
from resbench.cli import build_parser, main
from resbench.variant_template import class_name, module_name, render


@pytest.fixture
def scratch_registry(monkeypatch, tmp_path):
    """tmp_path on sys.path and a registry that forgets what the test registers; the modules
    imported from tmp_path are dropped too, so the next test imports its own file afresh."""
    variants.names()  # the package's own first, so the restored registry is complete
    monkeypatch.setattr(variants, "_REGISTRY", dict(variants._REGISTRY))
    monkeypatch.setattr(variants, "loaded_modules", list(variants.loaded_modules))  # workers must not inherit it
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name, mod in list(sys.modules.items()):
        if str(getattr(mod, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def new_variant(capsys, *args) -> tuple[int, str, str]:
    rc = main(["new-variant", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_generated_variant_conforms_and_starts_as_prenorm(scratch_registry, capsys, tiny_cfg):
    tmp = scratch_registry
    rc, out, err = new_variant(capsys, "my-mix", "--out", str(tmp))
    assert (rc, err) == (0, "")
    assert out.count("\n") == 1 and out.startswith(f"wrote {tmp / 'my_mix.py'}: ")
    assert "RESBENCH_VARIANTS=my_mix" in out and "pytest tests/test_conformance.py -k my-mix" in out
    # the way a variant outside the repository is loaded, and what `resbench list` shows of it
    assert main(["--variants-module", "my_mix", "list", "--d-model", "32", "--depth", "3", "--json"]) == 0
    row = {r["variant"]: r for r in json.loads(capsys.readouterr().out)["variants"]}["my-mix"]
    assert (row["options"], row["extra_params"], row["state_vectors"], row["mixing_flops_per_token"]) == \
        ({"init": 1.0}, 6, 1, 0)
    assert variants.get("my-mix").__name__ == "MyMix"

    name = "my-mix"
    conformance.test_output_shape_and_finite(tiny_cfg, name)
    conformance.test_causal(tiny_cfg, name, {})
    conformance.test_gradients_reach_every_parameter(tiny_cfg, name, {})
    conformance.test_same_seed_bitwise_identical(tiny_cfg, name)
    conformance.test_declared_extra_params_match_count(tiny_cfg, name, {})
    conformance.test_runs_in_bfloat16_close_to_float32(tiny_cfg, name)

    idx = tokens(tiny_cfg, seed=6)
    prenorm = make_model(tiny_cfg, "prenorm", seed=11)(idx)
    assert torch.equal(make_model(tiny_cfg, name, seed=11)(idx), prenorm)  # a_i = 1: exactly PreNorm
    assert not torch.allclose(make_model(tiny_cfg, name, seed=11, perturb=True)(idx), prenorm)
    half = variants.build(name, 8, 4, {"init": 0.5})
    assert half.options() == {"init": 0.5} and torch.equal(half.scale, torch.full((4,), 0.5))


def test_skeleton_imports_only_torch_and_the_protocol():
    tree = ast.parse(render("my-mix"))
    imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports |= {(a.name, None) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports break the file outside variants/"
            imports |= {(node.module, a.name) for a in node.names}
    assert imports - {("__future__", "annotations")} == {
        ("torch", None), ("torch", "nn"), ("resbench.variants", "register"), ("resbench.variants.base", "Residual")}
    doc = ast.get_docstring(tree)
    assert doc.startswith("MyMix: x <- x + a_i * f_i(x), a_i a learned scalar per sublayer")
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    assert ast.unparse(cls.decorator_list[0]) == "register('my-mix')"
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    assert {"begin", "read", "write", "end", "declared_extra_params", "state_vectors", "mixing_flops"} <= methods


@pytest.mark.parametrize("name,module,cls", [("my-mix", "my_mix", "MyMix"), ("x2", "x2", "X2"),
                                             ("deep-mix-v2", "deep_mix_v2", "DeepMixV2")])
def test_file_and_class_names(name, module, cls):
    assert (module_name(name), class_name(name)) == (module, cls)
    compile(render(name), f"{module}.py", "exec")


def assert_refused(rc, out, err, words):
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("resbench: error: ") and words in err, err


@pytest.mark.parametrize("args,words", [
    (["My-Mix"], "invalid variant name"),
    (["2mix"], "invalid variant name"),
    (["my_mix"], "invalid variant name"),
    (["my-"], "invalid variant name"),
    (["prenorm"], "already registered"),
    (["prenorm", "--force"], "already registered"),
])
def test_refuses_bad_or_taken_names(capsys, tmp_path, args, words):
    assert_refused(*new_variant(capsys, *args, "--out", str(tmp_path)), words)
    assert list(tmp_path.iterdir()) == []


def test_refuses_an_existing_file_unless_forced(scratch_registry, capsys):
    target = scratch_registry / "my_mix.py"
    target.write_text("keep\n")
    assert_refused(*new_variant(capsys, "my-mix", "--out", str(target)), "exists (--force overwrites it)")
    assert target.read_text() == "keep\n"
    rc, out, err = new_variant(capsys, "my-mix", "--out", str(target), "--force")
    assert (rc, err) == (0, "") and target.read_text() == render("my-mix")


def test_force_never_overwrites_imported_code(scratch_registry, capsys):
    code = scratch_registry / "helper_mod.py"
    code.write_text("X = 1\n")
    __import__("helper_mod")
    assert_refused(*new_variant(capsys, "helper-mod", "--out", str(scratch_registry), "--force"), "not overwriting")
    assert code.read_text() == "X = 1\n"


@pytest.mark.parametrize("out,words", [("notes.txt", "not a folder and not a .py file"),
                                       ("missing/my_mix.py", "cannot write")])
def test_refuses_an_unusable_out(capsys, tmp_path, out, words):
    assert_refused(*new_variant(capsys, "my-mix", "--out", str(tmp_path / out)), words)
    assert list(tmp_path.iterdir()) == []


def fake_checkout(root: Path, monkeypatch) -> Path:
    """A resbench checkout (its marker files) whose variants/ the package is taken to live in: the
    default --out lands there, never in the real variants/ others are using."""
    for d in ("harness", "variants"):
        (root / d).mkdir(parents=True)
    (root / "asv.conf.json").write_text("{}")
    variants.names()  # discovered before the package path moves
    monkeypatch.setattr(variants, "__path__", [str(root / "variants")])
    monkeypatch.chdir(root)
    return root / "variants"


def test_default_out_is_the_checkouts_variants_folder(capsys, tmp_path, monkeypatch):
    folder = fake_checkout(tmp_path / "co", monkeypatch)
    rc, out, err = new_variant(capsys, "my-mix")
    assert (rc, err) == (0, "")
    assert out == ("wrote variants/my_mix.py: edit write() and its docstring equation; then `resbench list` "
                   "and `pytest tests/test_conformance.py -k my-mix`\n")
    assert (folder / "my_mix.py").read_text() == render("my-mix")


def test_default_out_needs_the_checkout(capsys, tmp_path, monkeypatch):
    fake_checkout(tmp_path / "co", monkeypatch)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert_refused(*new_variant(capsys, "my-mix"), "--out is needed")
    assert list(elsewhere.iterdir()) == [] and list((tmp_path / "co" / "variants").iterdir()) == []


def test_a_broken_module_in_variants_is_one_line(capsys, tmp_path, monkeypatch):
    folder = fake_checkout(tmp_path / "co", monkeypatch)
    (folder / "half_edited.py").write_text("def write(:\n")
    monkeypatch.setattr(variants, "_REGISTRY", dict(variants._REGISTRY))
    monkeypatch.setattr(variants, "_discovered", False)  # rediscover: the broken file is imported
    assert_refused(*new_variant(capsys, "my-mix"), "SyntaxError")
    assert sorted(p.name for p in folder.iterdir()) == ["half_edited.py"]


def test_help_documents_every_flag(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["new-variant"]
    for action in sub._actions:
        assert action.help, action.option_strings or action.dest
    with pytest.raises(SystemExit):
        main(["new-variant", "--help"])
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("NAME", "--out PATH", "--force"))


@pytest.mark.parametrize("name,words", [
    # in variants/ these replace what resbench.variants itself uses (its os, register, ...)
    ("os", "resbench.variants already uses the name 'os'"),
    ("register", "resbench.variants already uses the name 'register'"),
    ("importlib", "resbench.variants already uses the name 'importlib'"),
    ("hashlib", "resbench.variants already uses the name 'hashlib'"),
    ("build", "resbench.variants already uses the name 'build'"),
    ("entry-points", "resbench.variants already uses the name 'entry_points'"),
    ("attnres", "resbench.variants already uses the name 'attnres'"),  # a module, not a registered name
    # outside, loaded by module name: the real module would be imported instead, or be shadowed
    ("json", "shadow the standard library module 'json'"),
    ("torch", "shadow the loaded module 'torch'"),
    ("a" * 300, "300 characters, at most 40"),
    ("my-" + "a" * 38, "41 characters, at most 40"),
])
def test_refuses_a_name_whose_module_is_taken_or_too_long(capsys, tmp_path, monkeypatch, name, words):
    assert_refused(*new_variant(capsys, name, "--out", str(tmp_path)), words)
    assert list(tmp_path.iterdir()) == []
    folder = fake_checkout(tmp_path / "co", monkeypatch)  # the default: into variants/
    assert_refused(*new_variant(capsys, name), words)
    assert list(folder.iterdir()) == []


def test_refuses_a_module_name_found_elsewhere_on_the_path(scratch_registry, capsys, monkeypatch):
    elsewhere = scratch_registry / "lib"
    elsewhere.mkdir()
    (elsewhere / "rb_found_mod.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(elsewhere))
    out = scratch_registry / "out"
    out.mkdir()
    assert_refused(*new_variant(capsys, "rb-found-mod", "--out", str(out)), "shadow the module 'rb_found_mod'")
    monkeypatch.setitem(sys.modules, "rb_loaded_only", type(sys)("rb_loaded_only"))
    assert_refused(*new_variant(capsys, "rb-loaded-only", "--out", str(out)), "shadow the loaded module")
    # the file name, not the variant name, is the module: --out .../json.py is refused too
    assert_refused(*new_variant(capsys, "my-mix", "--out", str(out / "json.py")), "module json.py")
    assert list(out.iterdir()) == []


def test_a_name_of_the_longest_length_is_written(scratch_registry, capsys):
    name = "my-" + "a" * 37
    rc, out, err = new_variant(capsys, name, "--out", str(scratch_registry))
    assert (rc, err) == (0, "") and (scratch_registry / f"{module_name(name)}.py").read_text() == render(name)
