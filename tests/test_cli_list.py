"""`resbench list`: every variant with the analytic costs of docs/VARIANTS.md's table."""
from __future__ import annotations

import json
import re

import pytest
import torch

from resbench import variants
from resbench.cli import main
from resbench.model import ModelConfig, Transformer, count_params

MISSION = ["prenorm", "highway", "densenet", "full-attnres", "block-attnres"]


def list_rows(capsys, *args) -> tuple[str, dict[str, list[str]]]:
    assert main(["list", *args]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    header, *lines = out.splitlines()
    rows = {}
    for line in lines[2:]:  # column titles, dashes
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == 7, line
        rows[cells[0]] = cells
    return header, rows


def field_costs(d, L, n=4, rank=16):
    """(extra params, state vectors, mixing FLOPs/token) of the field's variants, from their papers'
    shapes (docs/VARIANTS.md): HC's B, A_m, A_r, W_beta|W_m|W_r, s_alpha, s_beta per sublayer; mHC's
    phi over n*d inputs to 2n + n^2 (mhc-lite: 2n + n!) outputs, 3 gates and the biases."""
    fact = 24 if n == 4 else __import__("math").factorial(n)
    return {"rezero": (L, 1, 0), "layerscale": (L * d, 1, 0), "postnorm": (L * d, 1, 0), "deepnorm": (L * d, 1, 0),
            "laurel": (2 * L * rank * d, 1, L * 4 * rank * d),
            "hc": (L * (2 * n + n * n + d * (n + 2) + 2), n, L * (2 * n * d * (n + 2) + 2 * n * d + 2 * n * n * d)),
            "mhc": (L * (n * d * (2 * n + n * n) + 3 + 2 * n + n * n), n,
                    L * (2 * n * d * (2 * n + n * n) + 2 * n * d + 2 * n * n * d)),
            "mhc-lite": (L * (n * d * (2 * n + fact) + 3 + 2 * n + fact), n,
                         L * (2 * n * d * (2 * n + fact) + 2 * n * d + 2 * n * n * d))}


def test_at_least_twelve_variants_with_the_fields_costs(capsys):
    header, rows = list_rows(capsys)
    assert len(rows) >= 12
    d, L = 1024, 32
    for name, (params, state, flops) in field_costs(d, L).items():
        assert costs(rows, name) == (params, state), name
        assert int(rows[name][5].replace(",", "")) == flops, name
    assert rows["full-attnres"][1] == "impl=fast, +6 ablations"


def costs(rows, name) -> tuple[int, int]:
    """(extra params, state d-vectors per token) as printed."""
    return int(rows[name][2].replace(",", "")), int(rows[name][4])


def test_lists_every_registered_variant(capsys):
    _, rows = list_rows(capsys)
    assert sorted(rows) == variants.names()
    assert set(MISSION) <= set(rows)
    assert rows["highway"][1] == "gate=vector, gate_bias=-2.0"
    assert rows["prenorm"][1] == "-"
    assert rows["block-attnres"][6] == "resbench.variants.attnres"


def test_default_shape_costs_match_formulas(capsys):
    header, rows = list_rows(capsys)
    d, L_b = 1024, 16
    L = 2 * L_b
    N = 8  # block-attnres default, the paper's
    assert f"d_model={d}, {L_b} blocks (L={L} sublayers)" in header
    assert costs(rows, "prenorm") == (0, 1)
    assert costs(rows, "highway") == (L * (d * d + d), 1)
    assert costs(rows, "densenet") == (L_b * (L_b + 3) // 2, L_b + 1)
    assert costs(rows, "full-attnres") == (2 * d * (L + 1), L + 1)
    assert costs(rows, "block-attnres") == (2 * d * (L + 1), N + 1)


def shared_params_formula(d, L_b, vocab=256, seq=8, mlp_ratio=4):
    block = (d + 3 * d * d + d * d) + (d + 2 * mlp_ratio * d * d)  # attn: norm, qkv, proj; mlp: norm, fc, proj
    return vocab * d + seq * d + L_b * block + d + d * vocab


def test_default_shape_shared_params_and_ratio(capsys):
    header, rows = list_rows(capsys)
    base = shared_params_formula(1024, 16)
    assert f"{base:,} shared params" in header
    assert rows["highway"][3] == f"{32 * (1024 * 1024 + 1024) / base:.2%}"


@pytest.mark.parametrize("d,blocks,heads", [(64, 2, 4), (48, 3, 2)])
def test_small_shape_costs_match_real_models(capsys, d, blocks, heads):
    """At a shape small enough to build, the printed numbers are the real parameter counts."""
    header, rows = list_rows(capsys, "--d-model", str(d), "--depth", str(blocks), "--heads", str(heads))
    cfg = ModelConfig(d_model=d, depth=blocks, n_heads=heads, seq_len=8)
    base = count_params(Transformer(cfg, variants.build("prenorm", d, cfg.n_layers)))
    assert base == shared_params_formula(d, blocks)
    assert f"{base:,} shared params" in header
    L, L_b = cfg.n_layers, blocks
    N = min(8, L_b)  # the paper's layout counts transformer blocks
    expected = {"prenorm": (0, 1), "highway": (L * (d * d + d), 1), "densenet": (L_b * (L_b + 3) // 2, L_b + 1),
                "full-attnres": (2 * d * (L + 1), L + 1), "block-attnres": (2 * d * (L + 1), N + 1)}
    expected.update({k: v[:2] for k, v in field_costs(d, L).items()})
    for name, want in expected.items():
        assert costs(rows, name) == want, name
        real = sum(p.numel() for p in variants.build(name, d, L).parameters())
        assert real == want[0], name


def test_list_uses_meta_device_for_huge_shapes(capsys):
    # a 4096-wide, 48-block Highway would be ~13 GB of gates on CPU; listing must not allocate it
    _, rows = list_rows(capsys, "--d-model", "4096", "--depth", "48", "--heads", "32")
    assert costs(rows, "highway") == (96 * (4096 * 4096 + 4096), 1)
    assert torch.zeros(1).device.type == "cpu"  # the default device is restored


def test_list_json_has_the_declared_costs(capsys):
    assert main(["list", "--json", "--d-model", "64", "--depth", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    by = {r["variant"]: r for r in out["variants"]}
    assert by["highway"]["mixing_flops_per_token"] == 4 * 2 * 64 * 64 and by["prenorm"]["extra_params"] == 0
    assert by["full-attnres"]["source"].startswith("resbench.variants.attnres:FullAttnRes@")
