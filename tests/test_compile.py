"""The implementation axis (harness/compiling.py): every registered variant runs under
torch.compile(fullgraph=True) as one graph per mode, never recompiles in its steady state, and
computes what it computes eager, forward and gradients; decoding compiles with a static cache.
The functional AttnRes form (what `impl: fast` runs compiled) equals the equations.

Graph breaks and recompiles are a property of tracing, so most tests use the aot_eager backend
(dynamo + AOTAutograd, no code generation: seconds); the numerics test compiles with inductor."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch._dynamo

from resbench import variants
from resbench.compiling import CompileCounter, CompileError, compile_model, steady
from resbench.model import KVCache, ModelConfig, build_model
from resbench.workloads.common import RunContext

from conftest import TINY, perturb_variant, tokens

# every registered variant, plus the options that change the compiled code path
CASES = [(n, {}) for n in variants.names()] + [
    ("block-attnres", {"block_size": 4}),
    ("block-attnres", {"n_blocks": 3, "impl": "reference"}),
    ("full-attnres", {"impl": "functional"}),
    ("densenet", {"dilation": 2, "period": 2}),
    ("highway", {"gate": "scalar"}),
]
IDS = [f"{n}{o or ''}" for n, o in CASES]
MISSION = ("prenorm", "highway", "densenet", "full-attnres", "block-attnres")
# inductor costs 5-85 s a case on 2 cores: the default run compiles the five mission variants
# (and HC once, to repeat); the field's others, other forms and options (every one traced without
# breaks below) are -m slow
RECOMPILE_CASES = [pytest.param(n, o, id=i, marks=[pytest.mark.slow] if o or n not in (*MISSION, "hc") else [])
                   for (n, o), i in zip(CASES, IDS)]
INDUCTOR_NAMES = [pytest.param(n, marks=[] if n in MISSION else [pytest.mark.slow]) for n in variants.names()]


def _model(name, options, cfg=TINY, dtype=torch.float32):
    model = build_model(cfg, name, options, seed=0, dtype=dtype)
    perturb_variant(model)  # no mixing weight at its symmetric init
    return model


def _fwd_bwd(call, model, idx):
    model.zero_grad(set_to_none=True)
    out = call(idx)
    (out.float().square().mean()).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_every_variant_traces_to_one_graph_without_breaks(name, options):
    torch._dynamo.reset()
    explained = torch._dynamo.explain(_model(name, options))(tokens(TINY))
    assert explained.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize("name,options", RECOMPILE_CASES)
def test_every_variant_compiles_once_per_mode_and_never_recompiles(name, options):
    """fullgraph: a break would raise. Train (grad) and prefill (no grad) are one graph each, a
    static-cache decode point two (the prompt, then every step); a second pass compiles nothing."""
    model = _model(name, options)
    run = compile_model(model, "default", backend="aot_eager")
    cache = KVCache(TINY, 2, TINY.seq_len, static=True)
    idx = tokens(TINY)

    def decode():
        cache.length = 0
        with torch.no_grad():
            run(idx[:, :5], cache=cache, last_only=True)
            for t in range(5, 9):
                run(idx[:, t:t + 1], cache=cache, last_only=True)

    expected = {"train": 1, "prefill": 1, "decode": 2}
    calls = {"train": lambda: _fwd_bwd(run, model, idx), "prefill": lambda: torch.no_grad()(run)(idx), "decode": decode}
    for what, fn in calls.items():
        with CompileCounter() as first:
            fn()
        with CompileCounter() as again:
            fn()
            if what == "train":
                _fwd_bwd(run, model, tokens(TINY, seed=5))  # other tokens, same shapes
        assert (first.graphs, again.graphs) == (expected[what], 0), what


def test_compiled_decode_equals_the_full_forward():
    model = _model("block-attnres", {"block_size": 4}).eval()
    run = compile_model(model, "default", backend="aot_eager")
    idx = tokens(TINY, seed=3)
    cache = KVCache(TINY, idx.shape[0], static=True)
    with torch.no_grad():
        full = model(idx)
        got = [model.prefill(idx[:, :6], cache, last_only=False, forward=run)]
        got += [run(idx[:, t:t + 1], cache=cache) for t in range(6, idx.shape[1])]
    torch.testing.assert_close(torch.cat(got, dim=1), full, rtol=1e-5, atol=1e-5)


# inductor's code generation: a 2-block model (L = 4) keeps each compile to seconds
SMALL = ModelConfig(vocab_size=64, d_model=32, depth=2, n_heads=4, mlp_ratio=2.0, seq_len=16)


@pytest.mark.parametrize("name", INDUCTOR_NAMES)
def test_inductor_compiled_forward_and_gradients_equal_eager(name):
    options = {"n_blocks": 2} if name == "block-attnres" else {}
    model = _model(name, options, SMALL)
    idx = tokens(SMALL)
    eager_out, eager_grads = _fwd_bwd(model, model, idx)
    torch._dynamo.reset()
    out, grads = _fwd_bwd(compile_model(model, "default"), model, idx)
    torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-5)
    assert grads.keys() == eager_grads.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], eager_grads[k], rtol=1e-3, atol=1e-6, msg=k)


@pytest.mark.parametrize("options", [{}, {"n_blocks": 2}, {"block_size": 4}, {"block_size": 5}])
@pytest.mark.parametrize("name", ["full-attnres", "block-attnres"])
def test_functional_form_equals_the_equations(name, options):
    """float64, eager: forward and every gradient, against impl: reference with the same weights."""
    if name == "full-attnres" and options:
        pytest.skip("full AttnRes has no layout options")
    ref = _model(name, {**options, "impl": "reference"}, dtype=torch.float64)
    fun = build_model(TINY, name, {**options, "impl": "functional"}, dtype=torch.float64)
    fun.load_state_dict(ref.state_dict())
    idx = tokens(TINY, seed=2)
    out_r, g_r = _fwd_bwd(ref, ref, idx)
    out_f, g_f = _fwd_bwd(fun, fun, idx)
    torch.testing.assert_close(out_f, out_r, rtol=1e-12, atol=1e-12)
    assert g_f.keys() == g_r.keys()
    for k in g_r:
        torch.testing.assert_close(g_f[k], g_r[k], rtol=1e-10, atol=1e-12, msg=k)


def test_a_variant_that_cannot_compile_says_so_never_runs_eager():
    """two_phase is an eager schedule: under compile it is refused, as the cell's error. Run in a
    fresh process, as the runner runs every job: after a failed trace, eager forwards in the same
    process keep one extra d-vector alive at their peak (seen with torch 2.13), which would skew
    the exact memory tests that follow."""
    code = """
import torch
from resbench.compiling import CompileError, compile_model, steady
from resbench.model import ModelConfig, build_model
cfg = ModelConfig(vocab_size=64, d_model=32, depth=3, n_heads=4, mlp_ratio=2.0, seq_len=16)
model = build_model(cfg, "block-attnres", {"n_blocks": 2, "two_phase": True}, dtype=torch.float64)
run = compile_model(model, "default", backend="aot_eager")
idx = torch.randint(0, 64, (2, 16))
try:
    steady({"prefill": lambda: torch.no_grad()(run)(idx)}, "default")
except CompileError as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch.compile (default, fullgraph) cannot run prefill" in out.stdout and "two_phase" in out.stdout


def test_a_recompile_during_timing_fails_the_call():
    model = _model("prenorm", {})
    run = compile_model(model, "default", backend="aot_eager")
    batch = {"n": 2}
    fns, info = steady({"prefill": lambda: torch.no_grad()(run)(tokens(TINY, batch=batch["n"]))}, "default")
    assert info["prefill"]["graphs"] == 1 and info["prefill"]["compile_s"] > 0
    fns["prefill"]()  # steady: fine
    batch["n"] = 3  # a new shape: static compilation must compile again
    with pytest.raises(CompileError, match="recompiled prefill during a timed call"):
        fns["prefill"]()


def test_mode_none_is_the_model_itself():
    model = _model("prenorm", {})
    assert compile_model(model, "none") is model
    with pytest.raises(ValueError, match="compile must be one of none, default, max-autotune"):
        compile_model(model, "fast")


# -- the suite's compile axis ----------------------------------------------------------------

SUITE = {"name": "c", "threads": 1, "variants": ["prenorm", {"name": "block-attnres", "options": {"n_blocks": 2}}],
         "shapes": [{"name": "s", "d_model": 32, "depth": 2, "n_heads": 2, "seq_len": 16}],
         "workloads": {"throughput": {"batch": 2, "warmup": 0, "repeats": 2}, "memory": {"batch": 2}}}


def _suite(**changes):
    from resbench.config import parse_suite
    return parse_suite({**SUITE, **changes})


def test_compile_is_an_axis_for_workloads_that_compile_and_eager_keys_stay():
    from resbench.config import expand_cells
    eager = expand_cells(_suite(), "cpu")
    both = expand_cells(_suite(compile=["none", "default"]), "cpu")
    assert {c.compile for c in eager} == {"none"}
    # memory runs eager only; throughput once per mode
    assert sorted((c.workload, c.compile) for c in both) == sorted(
        [("memory", "none")] * 2 + [("throughput", "none")] * 2 + [("throughput", "default")] * 2)
    # an eager cell's key is the one it had before the axis existed; a compiled one differs
    assert {c.key for c in eager} <= {c.key for c in both}
    assert len({c.key for c in both}) == len(both)
    import dataclasses, hashlib, json
    c = eager[0]
    d = {k: v for k, v in dataclasses.asdict(c).items() if k not in ("label", "compile", "launch")}
    assert c.key == hashlib.sha1(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


@pytest.mark.parametrize("value,needle", [
    ("fast", "compile must be one of none, default, max-autotune (or a list of them); got 'fast'"),
    (["default", "default"], "compile lists ['default', 'default'] twice"),
    ("default", "workloads.memory runs eager only (compile: none)"),
])
def test_bad_compile_is_a_one_line_error(value, needle):
    from resbench.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        _suite(compile=value)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_targets_bound_compiled_ratios_by_mode_and_refuse_compiled_memory():
    from resbench import studies
    from resbench.errors import ConfigError
    raw = {**SUITE, "kind": "overhead", "compile": ["none", "default"],
           "targets": {"s": {"block-attnres(n_blocks=2)": {"train": 1.1, "train@default": 1.04}}}}
    _, suite = studies.parse(raw)
    assert suite.study_keys["targets"]["s"]["block-attnres(n_blocks=2)"] == {"train": 1.1, "train@default": 1.04}
    raw["targets"] = {"s": {"block-attnres(n_blocks=2)": {"train_memory@default": 1.0}}}
    with pytest.raises(ConfigError, match="unknown key 'train_memory@default'"):
        studies.parse(raw)


def test_overhead_study_shows_eager_and_compiled_side_by_side():
    """Planted records: ratios per mode, each vs the baseline under the same mode."""
    from resbench.studies.overhead import render_overhead

    def rec(variant, mode, train, ci=None, ms=None):
        cell = {"variant": variant, "label": variant, "shape_name": "s", "shape": {}, "workload": "throughput",
                "device": "cpu", "precision": "fp32", "seed": 0, "compile": mode}
        return {"key": variant + mode, "cell": cell, "status": "ok", "env": {},
                "metrics": {"train_ratio_vs_prenorm": train, "train_ratio_ci": ci, "train_ms": {"median": ms}}}
    records = [rec("prenorm", "none", 1.0, ms=5000.0), rec("block-attnres", "none", 1.30, [1.2, 1.4]),
               rec("prenorm", "default", 1.0, ms=4500.0), rec("block-attnres", "default", 1.03, [1.01, 1.035])]
    text, ok = render_overhead(records, {"s": {"block-attnres": {"train": 1.08, "train@default": 1.04}}})
    header = next(x for x in text.splitlines() if x.startswith("| variant"))
    assert "train ×" in header and "train × compiled" in header
    row = next(x for x in text.splitlines() if x.startswith("| block-attnres"))
    assert "1.300 [1.200–1.400] (≤ 1.08 ✗)" in row and "1.030 [1.010–1.035] (≤ 1.04 ✓)" in row
    assert not ok and "1 met (✓), 1 missed" in text
    # the baseline's own compiled vs eager step, as a plain (not interleaved) ratio of medians
    assert "prenorm under torch.compile default vs eager" in text and "train 4,500.0 vs 5,000.0 ms (0.90×)" in text


def test_compiled_cells_run_and_record_their_compile_cost():
    """The real path, inductor: throughput and decode cells under compile: default."""
    from resbench import studies
    from resbench.config import expand_cells
    from resbench.workloads.decode import run_decode
    from resbench.workloads.throughput import run_throughput

    raw = {**SUITE, "compile": "default", "workloads": {
        "throughput": {"batch": 2, "warmup": 0, "repeats": 2},
        "decode": {"contexts": [4], "batches": [1], "new_tokens": 2, "repeats": 2, "warmup": 0}}}
    _, suite = studies.parse(raw)
    cells = expand_cells(suite, "cpu")
    tp_cells, dec_cells = [c for c in cells if c.workload == "throughput"], [c for c in cells if c.workload == "decode"]
    tp = run_throughput(tp_cells, RunContext.of(tp_cells))
    dec = run_decode(dec_cells, RunContext.of(dec_cells))
    for status, msg, m in [*tp.values(), *dec.values()]:
        assert status == "ok", msg
        assert m["compile"]["mode"] == "default"
    for status, msg, m in tp.values():
        assert m["compile"]["train"]["graphs"] >= 1 and m["compile"]["train"]["compile_s"] > 0
        assert m["compile"]["prefill"]["graphs"] == 1
        assert len(m["train_ms"]["samples"]) == 2
    for status, msg, m in dec.values():
        assert m["kv_cache"] == "static" and m["compile"]["points"][0]["graphs"] == 2
        assert len(m["points"][0]["itl_ms"]["samples"]) == 2 * 2
