"""The roofline ×: each variant's residual traffic against an independent count from its layout,
the arithmetic, a real throughput run's probes and rooflines, and the overhead study's table;
adaptive rounds that stop once every bound is settled."""
import random

import pytest
import torch

from resbench import variants
from resbench.config import expand_cells
from resbench.measure.roofline import TRAIN_PASSES, copy_probe, extra_bytes, roofline
from resbench.measure.rounds import Rounds
from resbench.studies import parse as parse_suite
from resbench.studies.overhead import render_overhead
from resbench import workloads
from resbench.workloads.common import RunContext

from test_overhead import records


def _naive_traffic(starts: list[int], L: int) -> int:
    """d-vectors per token a fused AttnRes moves, counted from the block starts alone: a reader
    reads the embedding, every block completed before it and (inside a block) the partial sum,
    then writes its input; every output after a block's first is added into the partial sum."""
    ends = starts[1:] + [L]
    total = 0
    for i in range(L + 1):
        completed = sum(1 for e in ends if e <= i)
        inside = any(s < i < e for s, e in zip(starts, ends))
        total += 1 + completed + inside + 1
    return total + 3 * sum(1 for i in range(L) if i not in starts)


@pytest.mark.parametrize("name,options,L", [("full-attnres", {}, 8), ("full-attnres", {}, 32),
                                            ("block-attnres", {"block_size": 4}, 32),
                                            ("block-attnres", {"block_size": 3}, 16),
                                            ("block-attnres", {"n_blocks": 2}, 8)])
def test_attnres_traffic_matches_a_count_from_its_layout(name, options, L):
    res = variants.build(name, 16, L, options)
    assert res.residual_traffic() == _naive_traffic(list(res.starts), L)
    if name == "full-attnres":  # every output its own source: (L+1)(L+2)/2 reads + L+1 writes
        assert res.residual_traffic() == (L + 1) * (L + 2) // 2 + L + 1


def test_two_phase_moves_fewer_bytes_than_the_direct_form_at_paper_like_blocks():
    direct = variants.build("block-attnres", 16, 32, {"block_size": 8})
    two = variants.build("block-attnres", 16, 32, {"block_size": 8, "two_phase": True})
    assert two.residual_traffic() < direct.residual_traffic()


def test_every_variant_declares_at_least_prenorms_traffic():
    base = variants.build("prenorm", 16, 8, {}).residual_traffic()
    assert base == 3 * 8
    for name in variants.names():
        assert variants.build(name, 16, 8, {}).residual_traffic() >= base, name


def test_roofline_arithmetic():
    # 1 GB extra at 10 GB/s over a 1 s step, plus 1 GFLOP at 10 GFLOP/s
    assert roofline(1.0, 1e9, 1e10, 1e9, 1e10) == pytest.approx(1.2)
    assert roofline(1.0, 1e9, None) is None
    assert extra_bytes(10, 6, 100, 8, 4, TRAIN_PASSES) == 4 * 100 * 8 * 4 * 3
    fn, moved = copy_probe("cpu", nbytes=2**22)
    fn()
    assert moved == 2**23


def _suite(**workload):
    return {"kind": "overhead", "name": "t", "device": "cpu", "threads": 1, "timeout_s": 300,
            "variants": ["prenorm", "full-attnres", {"name": "block-attnres", "options": {"n_blocks": 2},
                                                     "label": "block"}],
            "shapes": [{"name": "A", "d_model": 64, "depth": 4, "n_heads": 4, "seq_len": 32, "vocab_size": 64,
                        "batch": 2, "repeats": 3}],
            "workloads": {"throughput": {"warmup": 1, **workload}},
            "targets": {"A": {"full-attnres": {"train": 1.5}, "block": {"prefill": 1.2}}}}


def test_bounds_reach_only_adaptive_cells_and_key_them():
    _, fixed = parse_suite(_suite())
    _, adaptive = parse_suite(_suite(precision=0.02))
    assert all("bounds" not in c.params for c in expand_cells(fixed, "cpu"))
    cells = {c.label: c for c in expand_cells(adaptive, "cpu")}
    assert cells["full-attnres"].params["bounds"] == {"train": 1.5}
    assert cells["block"].params["bounds"] == {"prefill": 1.2}
    assert "bounds" not in cells["prenorm"].params
    _, other = parse_suite({**_suite(precision=0.02), "targets": {"A": {"full-attnres": {"train": 1.6}}}})
    assert {c.label: c for c in expand_cells(other, "cpu")}["full-attnres"].key != cells["full-attnres"].key


def test_a_throughput_run_times_the_copy_probe_and_gives_each_variant_its_roofline():
    _, suite = parse_suite(_suite())
    cells = [c for c in expand_cells(suite, "cpu")]
    out = workloads.get("throughput").run(cells, RunContext.of(cells))
    m = {c.label: out[c.key][2] for c in cells}
    assert all(out[c.key][0] == "ok" for c in cells)
    bw = m["prenorm"]["bandwidth"]
    assert bw["best_bytes_per_s"] > 1e8 and bw["ms"]["n"] == 3
    assert m["prenorm"]["train_roofline"] == 1.0  # nothing extra over itself
    # Full AttnRes moves more extra bytes than Block AttnRes (N = 2): its roofline is higher
    assert m["full-attnres"]["train_roofline"] > m["block"]["train_roofline"] > 1.0
    assert m["full-attnres"]["prefill_roofline"] > 1.0


def test_the_overhead_report_shows_the_roofline_and_targets_beyond_it():
    recs = records()
    for r in recs:
        if r["cell"]["workload"] == "throughput" and r["cell"]["variant"] != "prenorm":
            r["metrics"].update(train_roofline=1.15, prefill_roofline=1.005,
                                train_rounds={"rounds": 8, "stopped": "budget", "looks": 5, "precision": 0.02})
            r["metrics"]["train_ratio_ci"] = [1.0, 1.3]
    text, ok = render_overhead(recs, {"A": {"full": {"train": 1.10}, "block": {"train": 1.12}}})
    assert "measured × vs roofline ×" in text
    row = next(ln for ln in text.split("measured × vs roofline ×")[1].splitlines() if ln.startswith("| full"))
    assert [c.strip() for c in row.split("|")[2:5]] == ["1.200", "1.150", "+0.050"]
    assert "Beyond the roofline" in text and "A full train ≤ 1.1 (roofline 1.150)" in text
    assert "? at budget" in text and "2 of them when the rounds' budget ran out" in text


def test_rounds_stop_once_every_bound_is_settled():
    rng = random.Random(0)
    noisy = lambda mean: [mean * (1 + rng.gauss(0, 0.08)) for _ in range(200)]  # noqa: E731
    far, near = noisy(1.30), noisy(1.00)

    def run(bounds):
        plan = Rounds(200, precision=0.01)
        for n in range(1, 201):
            if plan.check(n, [(far[:n], bounds[0]), (near[:n], bounds[1])]):
                break
        return plan

    settled = run((1.05, 1.20))  # both far from their bounds: settled long before ±1%
    precise = run((None, None))
    assert settled.stopped == "resolved" and settled.rounds < precise.rounds
    assert run((1.05, None)).rounds >= settled.rounds  # the unbounded one still needs its precision
