"""Incremental decoding is the same function as the full forward: for every registered variant
(and the AttnRes/DenseNet forms and options that change the code path), a prompt prefilled into
the KV cache and then decoded token by token gives the full forward's logits at every position;
so does a prefill in chunks."""
from __future__ import annotations

import pytest
import torch

from resbench import variants
from resbench.errors import ConfigError
from resbench.model import KVCache, build_model
from resbench.workloads.common import RunContext

from conftest import TINY, perturb_variant, tokens

CASES = [(n, {}) for n in variants.names()] + [
    ("block-attnres", {"n_blocks": 2, "two_phase": True}),
    ("block-attnres", {"n_blocks": 3, "impl": "reference"}),
    ("full-attnres", {"impl": "reference"}),
    ("densenet", {"impl": "reference", "dilation": 2}),
    ("highway", {"gate": "scalar"}),
]


def _model(name, options):
    model = build_model(TINY, name, options, seed=0, dtype=torch.float64).eval()
    perturb_variant(model)  # no mixing weight at its symmetric init
    return model


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}{o or ''}" for n, o in CASES])
def test_decode_logits_equal_the_full_forward_at_every_position(name, options, static):
    """Both cache forms: the dynamic one eager decoding uses, and the static one (length a
    tensor, masked attention over every position) that compiled decoding uses."""
    model = _model(name, options)
    idx = tokens(TINY, seed=3)
    B, T = idx.shape
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(TINY, B, dtype=torch.float64, static=static)
        prompt = 5
        got = [model.prefill(idx[:, :prompt], cache, last_only=False)]
        for t in range(prompt, T):
            got.append(model(idx[:, t:t + 1], cache=cache))
        assert cache.length == T
    torch.testing.assert_close(torch.cat(got, dim=1), full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name,options", CASES[:5], ids=[n for n, _ in CASES[:5]])
def test_chunked_prefill_equals_one_prefill(name, options):
    model = _model(name, options)
    idx = tokens(TINY, seed=4)
    with torch.no_grad():
        full = model(idx)
        for chunk in (1, 3, 7):
            cache = KVCache(TINY, idx.shape[0], dtype=torch.float64)
            torch.testing.assert_close(model.prefill(idx, cache, chunk=chunk, last_only=False), full,
                                       rtol=1e-9, atol=1e-9)
            last = model.prefill(idx, KVCache(TINY, idx.shape[0], dtype=torch.float64), chunk=chunk)
            torch.testing.assert_close(last, full[:, -1:], rtol=1e-9, atol=1e-9)


def test_cache_bytes_are_keys_and_values_of_every_block():
    cache = KVCache(TINY, batch=2, max_len=10, dtype=torch.float32)
    cache.length = 7
    assert cache.nbytes() == 2 * TINY.depth * 2 * 7 * TINY.d_model * 4
    assert cache.nbytes(10) == cache.k.nbytes + cache.v.nbytes


def test_cache_overflow_and_checkpointing_are_errors():
    model = _model("prenorm", {})
    cache = KVCache(TINY, 1, max_len=4, dtype=torch.float64)
    with torch.no_grad(), pytest.raises(ValueError, match="holds 4 positions"):
        model(tokens(TINY, batch=1, seq=5), cache=cache)
    with pytest.raises(ConfigError, match="not both"):
        model(tokens(TINY, batch=1, seq=4), checkpoint_every=1, cache=KVCache(TINY, 1, dtype=torch.float64))


def test_every_registered_variant_declares_token_local_mixing():
    # the decode path runs the residual protocol per token; a variant mixing across tokens would
    # need its own cache, and the decode workload refuses it
    for name in variants.names():
        assert variants.get(name).token_local is True, name


# -- the decode workload ----------------------------------------------------------------------

DECODE_SUITE = {"name": "dec", "threads": 1, "variants": ["prenorm", "full-attnres"],
                "shapes": [{"name": "s", "d_model": 32, "depth": 2, "n_heads": 2, "seq_len": 32}],
                "workloads": {"decode": {"contexts": [4, 16], "batches": [1, 2], "new_tokens": 3, "repeats": 3,
                                         "warmup": 0}}}


def test_decode_workload_records_latency_cache_and_state_per_point():
    from resbench import studies
    from resbench.config import expand_cells
    from resbench.workloads.decode import run_decode

    _, suite = studies.parse(DECODE_SUITE)
    cells = expand_cells(suite, "cpu")
    out = run_decode(cells, RunContext.of(cells))
    base, full = (out[c.key] for c in expand_cells(suite, "cpu"))
    assert base[0] == full[0] == "ok", (base[1], full[1])
    d = 32
    for pb, pf in zip(base[2]["points"], full[2]["points"]):
        assert (pb["context"], pb["batch"]) == (pf["context"], pf["batch"])
        # the KV cache: keys and values of 2 blocks for every position, fp32
        assert pf["kv_cache_bytes"] == 2 * 2 * pf["batch"] * (pf["context"] + 3) * d * 4
        assert pf["depth_state_bytes"] == 5 * pf["batch"] * d * 4  # full AttnRes: L + 1 = 5 d-vectors
        assert len(pf["itl_ms"]["samples"]) == 3 * 3 and len(pf["ttft_ms"]["samples"]) == 3
        assert pb["itl_ratio_vs_prenorm"] == 1.0
        assert pf["itl_ratio_vs_prenorm"] > 0 and pf["tokens_per_s"] > 0
        # a decode step holds the variant's depth state on top of the baseline's stream
        assert pf["step_extra_bytes"] >= pf["depth_state_bytes"] - pb["depth_state_bytes"]


@pytest.mark.parametrize("patch,needle", [
    ({"contexts": [4, 40]}, "exceed shapes[s].seq_len 32"),
    ({"contexts": []}, "contexts must be a list of distinct positive integers"),
    ({"batches": [1, 1]}, "batches must be a list of distinct positive integers"),
    ({"new_tokens": 0}, "new_tokens must be > 0"),
])
def test_bad_decode_params_are_one_line_errors(tmp_path, capsys, patch, needle):
    import yaml

    from resbench.cli import main

    raw = {**DECODE_SUITE, "workloads": {"decode": {**DECODE_SUITE["workloads"]["decode"], **patch}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "r.jsonl"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "r.jsonl").exists()
