"""A variant living outside the package: one file, `@register`, picked up by load_module, by the
CLI's --variants-module, by RESBENCH_VARIANTS and by the "resbench.variants" entry point group."""
from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from resbench import variants
from conftest import tokens
from resbench.cli import main
from resbench.model import build_model
from resbench.variants.base import VariantError

MODULE = "resbench_tmp_scaled_variant"
SOURCE = textwrap.dedent('''
    import torch
    from torch import nn

    from resbench.variants import register
    from resbench.variants.base import Residual


    @register("tmp-scaled")
    class TmpScaled(Residual):
        """x <- x + a_i * f_i(x), a_i = scale at init."""

        def __init__(self, d_model, n_layers, *, scale: float = 0.5):
            super().__init__(d_model, n_layers)
            self.scale = scale
            self.a = nn.Parameter(torch.full((n_layers,), float(scale)))

        def begin(self, e):
            return e

        def read(self, x, i):
            return x

        def write(self, x, i, y):
            return x + self.a[i] * y

        def end(self, x):
            return x

        def declared_extra_params(self):
            return self.n_layers
''')


@pytest.fixture
def tmp_variant_module(tmp_path, monkeypatch):
    """Write the module into tmp_path, put it on sys.path, and leave registry/sys.modules clean."""
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    variants.names()  # discover the built-in variants before the registry is swapped
    monkeypatch.setattr(variants, "_REGISTRY", dict(variants._REGISTRY))
    if hasattr(variants, "loaded_modules"):  # load_module records what it imported
        monkeypatch.setattr(variants, "loaded_modules", list(variants.loaded_modules))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    assert "tmp-scaled" not in variants.names()
    yield MODULE
    sys.modules.pop(MODULE, None)


def check_usable(cfg):
    assert "tmp-scaled" in variants.names()
    model = build_model(cfg, "tmp-scaled", {"scale": 0.25}, dtype=torch.float64)
    assert torch.equal(model.residual.a, torch.full((cfg.n_layers,), 0.25, dtype=torch.float64))
    assert model.residual.declared_extra_params() == sum(p.numel() for p in model.residual.parameters())
    out = model(tokens(cfg))
    assert out.shape == (2, cfg.seq_len, cfg.vocab_size) and torch.isfinite(out).all()
    # the wiring is really the module's: scale 0 gives the bare embedding through norm_f and head
    zero = build_model(cfg, "tmp-scaled", {"scale": 0.0}, dtype=torch.float64)
    idx = tokens(cfg)
    torch.testing.assert_close(zero(idx), zero.head(zero.norm_f(zero.embed(idx))))


def test_load_module(tmp_variant_module, tiny_cfg):
    variants.load_module(tmp_variant_module)
    check_usable(tiny_cfg)
    assert variants.get("tmp-scaled").option_defaults() == {"scale": 0.5}


def test_cli_variants_module(tmp_variant_module, tiny_cfg, capsys):
    assert main(["--variants-module", tmp_variant_module, "list", "--d-model", "64", "--depth", "2"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    row = next(line for line in out.splitlines() if line.startswith("tmp-scaled"))
    assert "scale=0.5" in row and tmp_variant_module in row
    assert row.split()[-3:] == ["1", "0", tmp_variant_module]  # state d-vectors, mixing FLOPs (defaults), module
    assert " 4 " in row  # declared extra params: L = 4
    check_usable(tiny_cfg)


def test_env_var(tmp_variant_module, tiny_cfg, monkeypatch):
    monkeypatch.setenv("RESBENCH_VARIANTS", f" , {tmp_variant_module} ,")
    monkeypatch.setattr(variants, "_discovered", False)
    check_usable(tiny_cfg)


def test_env_var_bad_module_is_one_line_error(tmp_variant_module, monkeypatch):
    monkeypatch.setenv("RESBENCH_VARIANTS", "no_such_resbench_mod_xyz")
    monkeypatch.setattr(variants, "_discovered", False)
    with pytest.raises(VariantError, match="no_such_resbench_mod_xyz"):
        variants.names()


def test_entry_point_group(tmp_variant_module, tiny_cfg, monkeypatch):
    from importlib.metadata import EntryPoint

    ep = EntryPoint(name="tmp", value=tmp_variant_module, group="resbench.variants")
    asked = []

    def fake_entry_points(group):
        asked.append(group)
        return [ep] if group == "resbench.variants" else []

    monkeypatch.setattr(variants, "entry_points", fake_entry_points)
    monkeypatch.setattr(variants, "_discovered", False)
    check_usable(tiny_cfg)
    assert asked == ["resbench.variants"]


def test_name_clash_and_non_residual_rejected(tmp_variant_module):
    variants.load_module(tmp_variant_module)

    class Impostor(variants.Residual):
        pass

    with pytest.raises(VariantError, match="tmp-scaled"):
        variants.register("tmp-scaled")(Impostor)
    with pytest.raises(TypeError):
        variants.register("not-a-residual")(dict)
    assert variants.get("tmp-scaled").__module__ == tmp_variant_module
