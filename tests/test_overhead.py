"""The overhead table: ratios and the declared-state check from records, targets met or not."""
import json

import pytest

from resbench.cells import cell_key
from resbench.cli import main
from resbench.studies.overhead import overhead_metrics, render_overhead

MiB = 2**20
SHAPE = {"vocab_size": 256, "d_model": 64, "depth": 2, "n_heads": 4, "mlp_ratio": 4.0, "seq_len": 16}


def rec(label, variant, workload, metrics, shape="A"):
    cell = {"label": label, "variant": variant, "options": {}, "workload": workload, "shape_name": shape,
            "shape": SHAPE, "params": {"batch": 4}, "device": "cpu", "precision": "fp32", "seed": 0}
    if workload == "throughput":  # what the plain table reads besides the study's ratios
        ms = {"median": 10.0, "min": 9.0, "max": 11.0}
        metrics = {"train_ms": ms, "prefill_ms": ms, "train_tokens_per_s": 1e4, "peak_flops": 1e11,
                   "peak_flops_source": "planted", **metrics}
    return {"key": cell_key(cell), "status": "ok", "cell": cell, "metrics": metrics}


def records(full_infer_extra_vectors=4.0):
    vec = 4 * 16 * 64 * 4  # batch x seq x d x fp32 bytes
    base_inf, base_train = 10 * MiB, 50 * MiB
    out = []
    for label, variant, tr, pf, sv, train_peak, inf_extra in [
        ("prenorm", "prenorm", 1.0, 1.0, 1, base_train, 0),
        ("full", "full-attnres", 1.20, 1.01, 5, 1.02 * base_train, full_infer_extra_vectors * vec),
        ("block", "block-attnres", 1.10, 0.99, 3, 1.06 * base_train, 2 * vec),
    ]:
        out.append(rec(label, variant, "throughput", {"train_ratio_vs_prenorm": tr, "prefill_ratio_vs_prenorm": pf,
                                                      "train_ratio_ci": [tr - 0.01, tr + 0.01],
                                                      "prefill_ratio_ci": [pf - 0.01, pf + 0.01],
                                                      "train_mfu": 0.5, "prefill_mfu": 0.4}))
        out.append(rec(label, variant, "memory", {"state_vectors": sv, "train": {"peak_bytes": train_peak},
                                                  "inference": {"peak_bytes": base_inf + inf_extra}}))
    return out


def test_metrics_from_records():
    m = overhead_metrics(records())["A"]
    assert m["full"]["train"] == pytest.approx(1.20)
    assert m["full"]["infer_state"] == pytest.approx(1.0)  # 4 extra vectors declared, 4 held
    assert m["block"]["train_memory"] == pytest.approx(1.06)
    assert m["prenorm"]["infer_state"] is None  # no extra state to compare against


def test_targets_met_and_missed():
    good = {"A": {"full": {"train": 1.25, "infer_state": 1.1}}}
    text, ok = render_overhead(records(), good)
    assert ok and "1.200 [1.190–1.210] (≤ 1.25 ✓)" in text and "2 met (✓), 0 missed" in text
    # an O(L^2 d)-style blow-up of inference memory fails the state check
    text, ok = render_overhead(records(full_infer_extra_vectors=20), good)
    assert not ok and "5.000 (≤ 1.1 ✗)" in text
    _, ok = render_overhead(records(), {"A": {"block": {"train_memory": 1.05}}})
    assert not ok
    _, ok = render_overhead(records(), {"B": {"block": {"train": 2.0}}})  # nothing measured: not met
    assert not ok


def test_cli_report_targets_exit_code(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records()))
    suite = tmp_path / "s.yaml"
    base = ("kind: overhead\nname: s\nvariants: [prenorm, {name: block-attnres, label: block}]\n"
            "shapes: [{name: A, d_model: 64, depth: 2, n_heads: 2}]\nworkloads: {memory: {}}\n")
    suite.write_text(base + "targets: {A: {block: {train: 1.2}}}\n")
    assert main(["report", str(path), "--suite", str(suite)]) == 0
    assert "shape A" in capsys.readouterr().out
    suite.write_text(base + "targets: {A: {block: {train: 1.05}}}\n")
    assert main(["report", str(path), "--suite", str(suite)]) == 1


def test_timed_ratio_interval_decides_met_missed_or_unresolved():
    recs = records()
    tp = next(r for r in recs if r["cell"]["label"] == "full" and r["cell"]["workload"] == "throughput")
    tp["metrics"]["train_ratio_ci"] = [1.15, 1.30]
    text, ok = render_overhead(recs, {"A": {"full": {"train": 1.25}}})
    assert ok and "1.200 [1.150–1.300] (≤ 1.25 ?)" in text and "1 unresolved" in text
    _, ok = render_overhead(recs, {"A": {"full": {"train": 1.10}}})  # all of the interval above
    assert not ok
    text, ok = render_overhead(recs, {"A": {"full": {"train": 1.40}}})
    assert ok and "(≤ 1.4 ✓)" in text and "1 met" in text


def test_decode_target_reads_batch_one_at_the_longest_context():
    def point(ctx, batch, ratio, ci):
        return {"context": ctx, "batch": batch, "itl_ratio_vs_prenorm": ratio, "itl_ratio_ci": ci}

    recs = [rec("prenorm", "prenorm", "decode", {"points": [point(64, 1, 1.0, [1, 1]), point(256, 1, 1.0, [1, 1])]}),
            rec("block", "block-attnres", "decode",
                {"points": [point(64, 1, 1.5, [1.4, 1.6]), point(256, 1, 1.03, [1.01, 1.04]),
                            point(256, 4, 2.0, [1.9, 2.1])]})]
    assert overhead_metrics(recs)["A"]["block"]["decode"] == 1.03
    text, ok = render_overhead(recs, {"A": {"block": {"decode": 1.05}}})
    assert ok and "decode ×" in text and "(≤ 1.05 ✓)" in text
    assert "train ×" not in text and "MFU" not in text  # only what was measured or bounded
    text, ok = render_overhead(recs, {"A": {"block": {"decode": 1.02}}})
    assert ok and "1 unresolved" in text  # the interval straddles the bound: this run cannot tell
    _, ok = render_overhead(recs, {"A": {"block": {"decode": 1.0}}})
    assert not ok  # the whole interval is above the bound
    del recs[1]["metrics"]["points"][1]["itl_ratio_ci"]  # too few rounds for an interval
    text, ok = render_overhead(recs, {"A": {"block": {"decode": 1.05}}})
    assert ok and "1 unresolved" in text and "0 met" in text
