"""Bad names, options and shapes fail with a one-line VariantError that names the culprit, and the
CLI turns them into `resbench: error: ...` with exit code 2 (no traceback)."""
from __future__ import annotations

import pytest

from resbench import variants
from resbench.cli import main
from resbench.model import ModelConfig, Transformer, build_model
from resbench.errors import ConfigError
from resbench.variants.base import VariantError

D, L = 32, 6


def one_line_error(fn, *names, error=VariantError):
    with pytest.raises(error) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for n in names:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


def test_variant_error_is_a_value_error():
    assert issubclass(VariantError, ValueError)


def test_unknown_variant_lists_registered_names(tiny_cfg):
    for fn in (lambda: variants.get("resnet-9000"), lambda: variants.build("resnet-9000", D, L),
               lambda: build_model(tiny_cfg, "resnet-9000")):
        one_line_error(fn, "resnet-9000", *variants.names())


@pytest.mark.parametrize("name,options,culprit", [
    ("block-attnres", {"n_blocks": 0}, "n_blocks"),
    ("block-attnres", {"n_blocks": -3}, "n_blocks"),
    ("block-attnres", {"n_blocks": L + 1}, "n_blocks"),
    ("block-attnres", {"block_size": 0}, "block_size"),
    ("block-attnres", {"block_size": -2}, "block_size"),
    ("block-attnres", {"block_size": L + 1}, "block_size"),
    ("densenet", {"dilation": -1}, "dilation"),
    ("densenet", {"dilation": 0}, "dilation"),
    ("densenet", {"period": -2}, "period"),
    ("densenet", {"period": 0}, "period"),
    ("highway", {"gate": "matrix"}, "gate"),
    # the field's schemes and the AttnRes ablations
    ("hc", {"n": 0}, "n"),
    ("hc", {"dynamic": "no"}, "dynamic"),
    ("mhc", {"sinkhorn_iters": 0}, "sinkhorn_iters"),
    ("mhc", {"logit_cap": 1.0}, "logit_cap"),
    ("mhc-lite", {"n": 6}, "n"),
    ("laurel", {"rank": 0}, "rank"),
    ("laurel", {"rank": 10_000}, "rank"),
    ("rezero", {"init": "zero"}, "init"),
    ("layerscale", {"init": "small"}, "init"),
    ("deepnorm", {"alpha": -1.0}, "alpha"),
    ("full-attnres", {"sigmoid": True}, "impl: reference"),
    ("full-attnres", {"impl": "reference", "heads": 5}, "heads"),
    ("full-attnres", {"impl": "reference", "window": 0}, "window"),
    ("full-attnres", {"impl": "reference", "key_norm": "no"}, "key_norm"),
    ("block-attnres", {"impl": "reference", "static_mixing": True, "input_query": True}, "static_mixing"),
    # wrong types
    ("block-attnres", {"n_blocks": "4"}, "n_blocks"),
    ("block-attnres", {"n_blocks": 2.0}, "n_blocks"),
    ("block-attnres", {"n_blocks": True}, "n_blocks"),
    ("block-attnres", {"block_size": 1.5}, "block_size"),
    ("block-attnres", {"two_phase": "false"}, "two_phase"),
    ("block-attnres", {"two_phase": 1}, "two_phase"),
    ("densenet", {"dilation": 2.5}, "dilation"),
    ("densenet", {"period": "2"}, "period"),
    ("highway", {"gate_bias": "low"}, "gate_bias"),
    ("highway", {"gate_bias": None}, "gate_bias"),
    ("highway", {"gate": 1}, "gate"),
    # unknown option names
    ("prenorm", {"dilation": 2}, "dilation"),
    ("highway", {"gates": "vector"}, "gates"),
    ("block-attnres", {"num_blocks": 2}, "num_blocks"),
    ("full-attnres", {"n_blocks": 2}, "n_blocks"),
])
def test_bad_option_one_line_naming_it(name, options, culprit):
    one_line_error(lambda: variants.build(name, D, L, options), culprit)


def test_unknown_option_lists_the_valid_ones():
    one_line_error(lambda: variants.build("densenet", D, L, {"dilatoin": 2}), "dilatoin", "dilation", "period")


@pytest.mark.parametrize("name", ["prenorm", "highway", "densenet", "full-attnres", "block-attnres"])
@pytest.mark.parametrize("d,n,culprit", [(0, L, "d_model"), (-4, L, "d_model"), (D, 0, "n_layers"),
                                         (D, -2, "n_layers"), ("32", L, "d_model")])
def test_bad_shape_for_variant(name, d, n, culprit):
    one_line_error(lambda: variants.build(name, d, n), culprit)


def test_densenet_needs_whole_blocks():
    one_line_error(lambda: variants.build("densenet", D, 5), "densenet", "5")


@pytest.mark.parametrize("field", ["vocab_size", "d_model", "depth", "n_heads", "seq_len", "mlp_ratio"])
@pytest.mark.parametrize("value", [0, -1, "8"])
def test_model_config_rejects_bad_sizes(field, value):
    one_line_error(lambda: ModelConfig(**{field: value}), field, error=ConfigError)  # the harness's, not a variant's


def test_model_config_heads_must_divide_width():
    one_line_error(lambda: ModelConfig(d_model=100, n_heads=3), "d_model", "n_heads", "100", "3", error=ConfigError)


def test_model_rejects_residual_of_other_shape(tiny_cfg):
    one_line_error(lambda: Transformer(tiny_cfg, variants.build("prenorm", tiny_cfg.d_model, tiny_cfg.n_layers + 2)),
                   "L=", error=ConfigError)


# -- the CLI -------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,culprit", [
    (["list", "--d-model", "100", "--heads", "3"], "n_heads"),
    (["list", "--depth", "0"], "depth"),
    (["list", "--d-model", "-8"], "d_model"),
    (["--variants-module", "no_such_resbench_variants_mod", "list"], "no_such_resbench_variants_mod"),
])
def test_cli_user_error_exit_2_one_line(capsys, argv, culprit):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("resbench: error: ") and err.count("\n") == 1, err
    assert culprit in err and "Traceback" not in err


def test_cli_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["list", "--d-model", "wide"])
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_cli_list_ok_exit_0(capsys):
    assert main(["list", "--d-model", "64", "--depth", "2", "--heads", "4"]) == 0
    assert capsys.readouterr().err == ""
