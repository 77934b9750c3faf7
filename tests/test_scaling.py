"""Depth-scaling study: fit and class logic, checkpointing by segments, pipeline traffic from a
real split, fake-tensor projection vs real measurement, a mini sweep, the YAML schema and CLI."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from resbench import variants
from resbench.cli import main
from resbench.config import ConfigError
from resbench.measure.projection import project
from resbench.model import ModelConfig, build_model
from resbench.measure import memory_views as V
from resbench.studies.scaling import series
from resbench.studies.scaling_fit import (
    declared_depth_class,
    declared_n_class,
    depth_class,
    fit_line,
    n_class,
)
from resbench.studies.scaling_report import analyse
from resbench.precision import PRECISIONS

from conftest import TINY, perturb_variant, tokens

# every registered variant, plus block-attnres's other code path and a partial last block
CASES = [(n, {}) for n in variants.names()] + [
    ("block-attnres", {"n_blocks": 2, "two_phase": True}),  # paper layout: blocks of 2 and 4 sublayers
    ("block-attnres", {"block_size": 4}),
]


# -- fit and class logic on synthetic data --------------------------------------------------

def test_fit_line_recovers_known_line():
    f = fit_line([4, 8, 16, 32], [5 + 3 * x for x in (4, 8, 16, 32)])
    assert f.slope == pytest.approx(3) and f.intercept == pytest.approx(5) and f.r2 == pytest.approx(1)


def test_fit_line_constant_is_a_perfect_flat_fit():
    f = fit_line([1, 2, 3], [7.0, 7.0, 7.0])
    assert f.slope == pytest.approx(0, abs=1e-9) and f.r2 == 1.0


def test_fit_line_r2_drops_with_scatter():
    f = fit_line([1, 2, 3, 4], [1.0, 3.0, 2.0, 4.0])
    assert f.slope == pytest.approx(0.8) and f.r2 == pytest.approx(0.64)
    with pytest.raises(ValueError):
        fit_line([3, 3], [1, 2])


def test_classes_and_thresholds():
    assert depth_class(0.0) == "O(d)" and depth_class(0.2) == "O(d)"
    assert depth_class(0.25) == "O(L·d)" and depth_class(1.0) == "O(L·d)"
    assert depth_class(0.5, floor_dvec=0.5) == "O(d)"  # checkpoint floor subtracted
    assert n_class(1.0) == "O(N·d)" and n_class(0.25) == "O(N·d)" and n_class(0.1) == "O(d)"
    # declared state per variant: 1 (prenorm), L_b + 1 (densenet), L + 1 (full), N + 1 (block)
    assert declared_depth_class(1, 1, 8, 64) == "O(d)"
    assert declared_depth_class(5, 33, 8, 64) == "O(L·d)"
    assert declared_depth_class(9, 65, 8, 64) == "O(L·d)"
    assert declared_depth_class(9, 9, 8, 64) == "O(d)"
    assert declared_n_class(2, 33, 1, 32) == "O(N·d)"


def _rec(label, L, sv, views, sweep="depth", N=None, d=16):
    return {"sweep": sweep, "label": label, "L": L, "N": N, "d_model": d, "itemsize": 4, "batch": 1,
            "seq_len": 1, "state_vectors": sv, "checkpoint_every": 1, "bytes": views}


def test_analyse_synthetic_known_answers():
    unit = 16 * 4
    recs = []
    for L in (8, 16, 32):
        recs.append(_rec("flat", L, 1, {"inference": 10 * unit, "checkpointed": 3 * unit + L * unit / 2}))
        recs.append(_rec("linear", L, L + 1, {"inference": 10 * unit + L * unit, "checkpointed": 3 * unit + L * unit}))
        recs.append(_rec("liar", L, L + 1, {"inference": 10 * unit, "checkpointed": 3 * unit}))  # declares O(L·d)
    rows = {(r["variant"], r["view"]): r for r in analyse(recs)}
    assert rows[("flat", "inference")]["class"] == "O(d)" and rows[("flat", "inference")]["agrees"]
    assert rows[("flat", "checkpointed")]["slope_dvec"] == pytest.approx(0.5)
    assert rows[("flat", "checkpointed")]["class"] == "O(d)"  # exactly the one-vector-per-boundary floor
    assert rows[("linear", "inference")]["slope_dvec"] == pytest.approx(1.0)
    assert rows[("linear", "inference")]["class"] == "O(L·d)" and rows[("linear", "inference")]["agrees"]
    assert rows[("linear", "checkpointed")]["class"] == "O(L·d)"
    assert not rows[("liar", "inference")]["agrees"]  # measured flat, declared O(L·d): flagged


# -- checkpointing by segments ----------------------------------------------------------------

def _loss_and_grads(model, idx, y, k):
    model.zero_grad(set_to_none=True)
    logits = model(idx, checkpoint_every=k)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}{o or ''}" for n, o in CASES])
def test_checkpointed_loss_and_grads_equal_plain(name, options):
    model = build_model(TINY, name, options, seed=3, dtype=torch.float64)
    perturb_variant(model, seed=5)
    idx, y = tokens(TINY, seed=1), tokens(TINY, seed=2)
    ref_loss, ref_grads = _loss_and_grads(model, idx, y, 0)
    for k in (1, 2, TINY.depth + 1):  # per block, uneven segments, a single segment
        loss, grads = _loss_and_grads(model, idx, y, k)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_checkpointing_actually_saves_memory():
    cfg = ModelConfig(vocab_size=64, d_model=32, depth=8, n_heads=4, seq_len=32)
    model = build_model(cfg, "prenorm")
    idx = tokens(cfg, batch=1)
    assert V.train_bytes(model, idx, idx, 1) < 0.5 * V.train_bytes(model, idx, idx, 0)


def test_checkpointing_rejects_a_state_that_is_not_a_pytree():
    model = build_model(TINY, "prenorm")

    class Box:
        def __init__(self, x):
            self.x = x

    r = model.residual
    r.begin, r.read, r.end = Box, (lambda s, i: s.x), (lambda s: s.x)
    r.write = lambda s, i, y: Box(s.x + y)
    with pytest.raises(ConfigError, match="pytree"):
        model(tokens(TINY), checkpoint_every=1)


# -- pipeline traffic from a real split --------------------------------------------------------

def test_state_bytes_dedups_by_storage():
    buf = torch.zeros(4, 10)
    assert V.state_bytes({"a": buf, "b": [buf, buf[1]]}) == 160  # same storage counts once
    assert V.state_bytes([buf[0], buf[2]]) == 80  # two slices of one buffer: just the slices
    assert V.state_bytes([buf[0:2], buf[1:3]]) == 120  # overlap merged
    assert V.state_bytes((torch.zeros(3), None, 1)) == 12
    assert V.state_bytes([torch.zeros(2, 5, 10), torch.zeros(2, 10)], width=10) == 400  # d-vectors only


@pytest.mark.parametrize("name", ["prenorm", "highway"])
def test_pipeline_traffic_is_one_dvector(name):
    model = build_model(TINY, name)
    idx = tokens(TINY, batch=2)
    vec = 2 * TINY.seq_len * TINY.d_model * 4  # B·T·d·itemsize
    cuts = list(range(1, TINY.n_layers + 1))
    assert V.boundary_bytes(model, idx, cuts) == [vec] * len(cuts)  # a real split, every sublayer
    pipe = V.pipeline_bytes(model, idx, 3)
    assert list(pipe["boundaries"]) == [2, 4] and set(pipe["boundaries"].values()) == {vec}
    assert set(pipe["fixed"].values()) == {0}


def _dvector_bytes(model, idx, stop):
    """Bytes of the [B, T, d] leaves of the state after `stop` sublayers (d-vectors only)."""
    return V.boundary_bytes(model, idx, [stop], width=model.cfg.d_model)[0]


@torch.no_grad()
def test_pipeline_traffic_attnres_counts_exactly_the_sources():
    """Full: after m sublayers the sources are v_0 = e, v_1 .. v_m: (m + 1) d-vectors per token.
    Block (S sublayers per block): the embedding, the completed blocks and, mid-block, the
    partial sum. (Per-token scalars such as cached logits are bounded in the next test.)"""
    B, T, d, L = 2, TINY.seq_len, TINY.d_model, TINY.n_layers
    vec = B * T * d * 4
    idx = tokens(TINY, batch=B)
    full = build_model(TINY, "full-attnres")
    for m in range(1, L + 1):
        assert _dvector_bytes(full, idx, m) == (m + 1) * vec
    block = build_model(TINY, "block-attnres", {"n_blocks": 2})  # paper layout: blocks [0, 1], [2 .. 5]
    assert block.residual.block_sizes() == [2, 4]
    for m in range(1, L + 1):
        completed = (m >= 2) + (m >= 6)
        assert _dvector_bytes(block, idx, m) == (1 + completed + (m not in (2, 6))) * vec, m
    block = build_model(TINY, "block-attnres", {"block_size": 4})  # blocks [0 .. 3], [4, 5]
    for m in range(1, L + 1):
        assert _dvector_bytes(block, idx, m) == (1 + (m >= 4) + (m >= 6) + (m not in (4, 6))) * vec, m


def test_pipeline_traffic_densenet_and_full_per_token():
    idx = tokens(TINY, batch=2)
    vec = 2 * TINY.seq_len * TINY.d_model * 4
    dense = V.pipeline_bytes(build_model(TINY, "densenet"), idx, 3)["boundaries"]
    for m, b in dense.items():  # after block m/2: X_0 .. X_{m/2} and the mixed stream
        assert (m // 2 + 1) * vec <= b <= (m // 2 + 2) * vec
    full = V.pipeline_bytes(build_model(TINY, "full-attnres"), idx, 3)
    for m, b in full["boundaries"].items():  # sources, plus at most one fp32 logit per later reader
        assert full["vectors"][m] == (m + 1) * vec
        assert (m + 1) * vec <= b <= (m + 1) * (vec + (TINY.n_layers + 1) * 2 * TINY.seq_len * 4)


# -- projection under fake tensors vs real measurement ---------------------------------------

@pytest.mark.parametrize("name,options", [("prenorm", {}), ("densenet", {}), ("full-attnres", {}),
                                          ("block-attnres", {"n_blocks": 2}), ("highway", {})])
def test_projection_matches_real_within_5_percent(name, options):
    cfg = ModelConfig(vocab_size=64, d_model=32, depth=2, n_heads=4, seq_len=16)
    model = build_model(cfg, name, options)
    idx = tokens(cfg, batch=2)
    real = {"inference": V.inference_bytes(model, idx), "checkpointed": V.train_bytes(model, idx, idx, 1),
            "train": V.train_bytes(model, idx, idx, 0), "pipeline": V.pipeline_bytes(model, idx, 2)["max"]}
    for view, chunk in (("prefill", 0), ("prefill_chunked", 5)):
        real[view], kv = V.prefill_bytes(model, idx, chunk)
        assert kv == 2 * cfg.depth * 2 * cfg.seq_len * cfg.d_model * 4  # keys and values, every block
        assert real[view] > kv
    fake, _ = project(cfg, name, options, 2, PRECISIONS["fp32"], tuple(real), checkpoint_every=1, stages=2, chunk=5)
    for view, r in real.items():
        assert r > 0 and abs(fake["bytes"][view] - r) <= 0.05 * r, (view, fake["bytes"][view], r)
    assert fake["kv_cache_bytes"] == kv


@pytest.mark.parametrize("name,options", [("prenorm", {}), ("full-attnres", {}), ("block-attnres", {"n_blocks": 2})])
def test_chunked_prefill_holds_one_chunk_beyond_the_cache(name, options):
    """Past the KV cache, a prefill holds the forward of its chunk: chunking cuts it."""
    cfg = ModelConfig(vocab_size=64, d_model=64, depth=2, n_heads=4, seq_len=64)
    idx = tokens(cfg, batch=1)
    model = build_model(cfg, name, options)
    whole, kv = V.prefill_bytes(model, idx, 0)
    chunked, _ = V.prefill_bytes(model, idx, 8)
    assert chunked - kv < (whole - kv) / 2, (whole, chunked, kv)


def test_projection_runs_a_production_shape_quickly():
    cfg = ModelConfig(vocab_size=256, d_model=7168, depth=2, n_heads=56, seq_len=131072)
    r, _ = project(cfg, "prenorm", {}, 1, PRECISIONS["bf16-pure"], ("inference",))
    vec = 131072 * 7168 * 2
    assert 2 * vec < r["bytes"]["inference"] < 20 * vec  # O(T) attention: no T² score matrix
    assert r["seconds"] < 20


# -- a mini sweep through the runner gives the expected classes ------------------------------

MINI = {
    "kind": "scaling", "name": "mini", "threads": 1,
    "shapes": [{"name": "mini", "d_model": 64, "n_heads": 4, "seq_len": 32, "vocab_size": 32, "mlp_ratio": 2,
                "depth": [2, 4, 8]}],
    "variants": ["prenorm", "highway", "densenet", "full-attnres",
                 {"name": "block-attnres", "options": {"n_blocks": 2}},  # S >= 2 at every depth
                 "hc",  # n = 4 streams: n·d per token, constant in depth
                 # the N sweep at 4 blocks: N = 1, 2 (the entry above), 4
                 {"name": "block-attnres", "options": {"n_blocks": 1}, "shapes": ["mini-4"]},
                 {"name": "block-attnres", "options": {"n_blocks": 4}, "shapes": ["mini-4"]}],
    "workloads": {"memory_views": {"batch": 1, "checkpoint_every": 1, "pipeline_stages": 2}},
}


def write_suite(tmp_path, raw, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_mini_sweep_runs_through_the_runner_and_gives_the_declared_classes(tmp_path, capsys):
    out = tmp_path / "mini.jsonl"
    assert main(["scale", write_suite(tmp_path, MINI), "--out", str(out), "--quiet"]) == 0
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == 6 * 3 + 2 and all(r["status"] == "ok" for r in records)
    assert {r["cell"]["workload"] for r in records} == {"memory_views"}  # ordinary records, one format
    rows = analyse(series(records))
    got = {(r["sweep"], r["variant"], r["view"]): r["class"] for r in rows}
    for view in ("inference", "pipeline", "checkpointed"):
        assert got[("depth", "prenorm", view)] == "O(d)"
        assert got[("depth", "highway", view)] == "O(d)"
        assert got[("depth", "densenet", view)] == "O(L·d)"
        assert got[("depth", "full-attnres", view)] == "O(L·d)"
        assert got[("depth", "block-attnres(n_blocks=2)", view)] == "O(d)"
        assert got[("N", "block-attnres", view)] == "O(N·d)"
        assert got[("depth", "hc", view)] == "O(d)"  # n·d: n fixed (checkpointed: above its n-stream floor)
    for label in ("prenorm", "highway", "densenet", "full-attnres", "block-attnres(n_blocks=2)", "hc"):
        assert got[("depth", label, "train")] == "O(L·d)"  # plain training saves everything
    assert all(r["agrees"] for r in rows), [r for r in rows if not r["agrees"]]
    files = {p.name for p in (tmp_path / "mini").iterdir()}
    assert {"mini_fits.csv", "mini_table.md"} <= files
    # the report re-renders the same table from the records alone
    table = (tmp_path / "mini" / "mini_table.md").read_text()
    capsys.readouterr()
    assert main(["report", str(out), "--suite", write_suite(tmp_path, MINI), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "mini_table.md").read_text() == table


def _record(label, variant, options, shape_name, depth, N, L):
    cell = {"label": label, "variant": variant, "options": options, "shape_name": shape_name, "workload": "memory_views",
            "shape": {"depth": depth, "d_model": 8, "seq_len": 4}, "precision": "fp32",
            "params": {"batch": 1, "checkpoint_every": 1, "pipeline_stages": 2}}
    return {"status": "ok", "cell": cell, "metrics": {"L": L, "N": N, "bytes": {}}}


def test_series_are_found_in_the_records():
    """A label at two depths is a depth series; one variant at one shape with two N values is an N
    series, and a record may be in both; a variant whose N does not follow its option is none."""
    recs = [_record("b8", "block-attnres", {"n_blocks": 8}, f"d-{b}", b, 8, 2 * b) for b in (8, 16)]
    recs += [_record(f"b{n}", "block-attnres", {"n_blocks": n}, "d-16", 16, n, 32) for n in (2, 4)]
    recs += [_record(f"s{n}", "stuck", {"n_blocks": n}, "d-16", 16, 1, 32) for n in (2, 4)]
    got = [(r["sweep"], r["label"], r["L"], r["N"]) for r in series(recs)]
    assert got == [("depth", "b8", 16, 8), ("depth", "b8", 32, 8),
                   ("N", "block-attnres", 32, 2), ("N", "block-attnres", 32, 4), ("N", "block-attnres", 32, 8)]


# -- schema and CLI ---------------------------------------------------------------------------

def load_study(spec: str):
    """A shipped suite through the one validator (studies.parse), as `resbench run` reads it."""
    from resbench.config import read_yaml, resolve_suite_path
    from resbench.studies import parse

    path = resolve_suite_path(spec)
    return parse(read_yaml(path), path.stem)[1]


def test_shipped_suites_parse_and_cover_every_variant():
    scaling = load_study("scaling")
    assert {s.name for s in scaling.variants} == set(variants.names())
    assert [n for n, _ in scaling.shapes] == ["depth-8", "depth-12", "depth-16", "depth-24", "depth-32"]
    swept = sorted(s.options["n_blocks"] for s in scaling.variants if s.shapes == ("depth-32",))
    assert swept == [1, 2, 4, 16, 32]  # with the N = 8 entry at every depth: the paper's N and its neighbours
    proj = load_study("projection")
    (_, cfg), = proj.shapes
    p = proj.workloads["memory_views"]
    assert (cfg.d_model, cfg.depth, cfg.seq_len, proj.precisions, p.batch, p.tensors) == \
        (7168, 27, 131072, ("bf16-pure",), 1, "fake")


@pytest.mark.parametrize("patch,match", [
    ({"workloads": {"memory_views": {"views": ["inference", "bogus"]}}}, "views must be"),
    ({"workloads": {"memory_views": {"pipeline_stages": 3}}}, "pipeline_stages .3. must be <= the blocks"),
    ({"workloads": {"memory_views": {"tensors": "paper"}}}, "tensors must be one of real, fake"),
    ({"workloads": {"throughput": {}}}, "kind: scaling suite measures workloads.memory_views"),
    ({"variants": [{"name": "prenorm", "shapes": ["mini-3"]}]}, "no shape 'mini-3'; shapes: mini-2, mini-4"),
    ({"shapes": [{**MINI["shapes"][0], "depth": [2, 2]}]}, "list of distinct values"),
    ({"variants": [{"name": "block-attnres", "options": {"n_blocks": 8}}]}, "at shape 'mini-2'"),
])
def test_bad_scaling_yaml_is_one_line_error(patch, match):
    from resbench.studies import parse

    with pytest.raises(ConfigError, match=match) as exc:
        parse({**MINI, **patch})
    assert "\n" not in str(exc.value)


def test_cli_bad_suite_exits_2(tmp_path, capsys):
    bad = tmp_path / "s.yaml"
    bad.write_text("kind: scaling\nshapes: [{d_model: 64, depth: [1, 2]}]\nvariants: [nope]\n"
                   "workloads: {memory_views: {}}\n")
    assert main(["scale", str(bad), "--out", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resbench: error:") and "unknown variant 'nope'" in err
    assert main(["project", "scaling"]) == 2
    assert "runs a `kind: projection` suite" in capsys.readouterr().err


PROJ = {"kind": "projection", "name": "p", "precision": "bf16-pure",
        "shapes": [{"name": "big", "d_model": 256, "depth": 2, "n_heads": 4, "seq_len": 4096}],
        "variants": ["prenorm", {"name": "block-attnres", "options": {"n_blocks": 2}}],
        "workloads": {"memory_views": {"tensors": "fake", "views": ["inference", "prefill"], "pipeline_stages": 2}}}


def test_project_and_run_are_one_command_with_one_record_format(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert main(["project", write_suite(tmp_path, PROJ), "--out", str(out), "--quiet"]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert {r["cell"]["label"] for r in recs} == {"prenorm", "block-attnres(n_blocks=2)"}
    assert all(r["metrics"]["bytes"]["inference"] > 0 and r["metrics"]["kv_cache_bytes"] > 0
               and r["env"]["code_hash"] for r in recs)
    table = (tmp_path / "p" / "p.md").read_text()
    assert "Projected (fake tensors, no storage) — shape 'big'" in table and "prefill into KV cache" in table
    capsys.readouterr()
    assert main(["run", write_suite(tmp_path, PROJ), "--out", str(out), "--quiet"]) == 0  # the same cells: resumed
    assert "already finished" in capsys.readouterr().err
