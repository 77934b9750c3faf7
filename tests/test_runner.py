"""The runner end to end, in real worker processes: statuses, resume, torn records, timeouts."""
import json
import textwrap
import warnings

import pytest
import yaml

from resbench.cli import main
from resbench.config import parse_suite
from resbench.report import render
from resbench.results import append_record, read_records
from resbench.config import expand_cells
from resbench.executors.process import run_job
from resbench.runner import plan_jobs, run_suite

BOMBS = textwrap.dedent('''
    import os
    import torch
    from resbench.variants import register
    from resbench.variants.prenorm import PreNorm

    @register("oom-bomb")
    class OomBomb(PreNorm):
        """Behaves like an allocator that has run out: every forward raises torch's OOM error."""
        def write(self, x, i, y):
            raise torch.OutOfMemoryError("CPU out of memory (injected by the test)")

    @register("crash-bomb")
    class CrashBomb(PreNorm):
        """Kills its worker process outright, as a segfault or abort would."""
        def write(self, x, i, y):
            os._exit(3)
''')

SHAPE = [{"name": "t", "d_model": 16, "depth": 1, "n_heads": 2, "seq_len": 8}]


@pytest.fixture
def bombs(plugin_variants):
    return plugin_variants("rb_bombs", BOMBS)


def suite(**over):
    raw = {"name": "t", "variants": ["prenorm"], "shapes": SHAPE, "threads": 1,
           "workloads": {"memory": {"batch": 2}}}
    raw.update(over)
    return parse_suite(raw)


def statuses(records):
    return {(r["cell"]["variant"], r["cell"]["workload"]): r["status"] for r in records}


def test_bad_cells_are_recorded_and_the_sweep_goes_on(tmp_path, bombs):
    s = suite(variants=["oom-bomb", "crash-bomb", "prenorm"],
              workloads={"memory": {"batch": 2}, "loss": {"steps": 4, "batch": 2, "lr": 1.0e6, "warmup": 0,
                                                           "eval_every": 0, "corpus": "generated",
                                                           "corpus_bytes": 20000}})
    out = tmp_path / "r.jsonl"
    recs = run_suite(s, out, progress=False)
    assert statuses(recs) == {
        ("oom-bomb", "memory"): "oom", ("crash-bomb", "memory"): "error", ("prenorm", "memory"): "ok",
        ("oom-bomb", "loss"): "oom", ("crash-bomb", "loss"): "error", ("prenorm", "loss"): "diverged",
    }
    by = {(r["cell"]["variant"], r["cell"]["workload"]): r for r in recs}
    assert "exited with code 3" in by[("crash-bomb", "memory")]["message"]
    assert "step" in by[("prenorm", "loss")]["message"]
    ok = by[("prenorm", "memory")]
    assert ok["metrics"]["inference"]["peak_bytes"] > ok["metrics"]["param_bytes"] > 0
    assert ok["env"]["torch"] and "commit" in ok["env"] and ok["env"]["threads"] == 1
    assert len(read_records(out)) == 6
    # resume: ok / oom / diverged are finished; the crashed (error) cells are retried
    again = run_suite(s, out, progress=False)
    assert sorted(r["cell"]["variant"] for r in again) == ["crash-bomb", "crash-bomb"]
    text = render(read_records(out))
    assert "oom-bomb" in text and "memory: oom" in text and "loss: diverged" in text


def test_resume_skips_finished_and_force_redoes(tmp_path):
    out = tmp_path / "r.jsonl"
    first = run_suite(suite(), out, progress=False)
    assert [r["status"] for r in first] == ["ok"]
    assert run_suite(suite(), out, progress=False) == []
    assert len(run_suite(suite(), out, force=True, progress=False)) == 1
    assert len(read_records(out)) == 2


def test_timeout_is_a_status(tmp_path):
    out = tmp_path / "r.jsonl"
    (rec,) = run_suite(suite(timeout_s=0.05), out, progress=False)
    assert rec["status"] == "timeout" and "timeout_s" in rec["message"]


def test_torn_last_line_keeps_good_records(tmp_path):
    out = tmp_path / "r.jsonl"
    (cell,) = expand_cells(suite(), "cpu")
    good = {"key": cell.key, "cell": cell.to_dict(), "status": "error", "message": "k1", "metrics": {}}
    append_record(out, good)
    with open(out, "a") as fh:
        fh.write(json.dumps({**good, "message": "k2"})[:25])  # a run killed mid-write
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [r["message"] for r in read_records(out)] == ["k1"]
    assert "not JSON" in str(caught[0].message)
    append_record(out, {**good, "message": "k3"})  # the next record starts on a fresh line
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [r["message"] for r in read_records(out)] == ["k1", "k3"]


def test_cli_run_then_report(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "variants": ["prenorm", "densenet"], "shapes": SHAPE,
                                    "threads": 1, "workloads": {"throughput": {"batch": 2, "warmup": 1,
                                                                               "repeats": 2}}}))
    out = tmp_path / "r.jsonl"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "densenet" in printed and "× prenorm" in printed
    recs = read_records(out)
    dense = next(r for r in recs if r["cell"]["variant"] == "densenet")["metrics"]
    assert dense["train_ms"]["n"] == 2 and dense["train_ratio_vs_prenorm"] > 0 and 0 < dense["train_mfu"]
    # MFU is against the probe timed in the same rounds: flops / median step time / that peak
    assert dense["train_mfu"] == pytest.approx(dense["train_flops"] / (dense["train_ms"]["median"] / 1e3)
                                               / dense["peak_flops"])
    assert "train rounds" in dense["peak_flops_source"]
    # the peak is the best GEMM rate at the model's own shapes: a ceiling for what a step does
    for r in recs:
        m = r["metrics"]
        assert 0 < m["train_mfu"] <= 1 and 0 < m["prefill_mfu"] <= 1
        assert m["peak_flops"] == max(p["best_flops_per_s"] for p in m["peak_probes"].values())
        assert {"qkv", "mlp-up", "head", "square"} <= set(m["peak_probes"])
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out == printed
    assert main(["report", str(out), "--json"]) == 0
    (table,) = json.loads(capsys.readouterr().out)
    rows = {r["variant"]: r for r in table["rows"]}
    assert rows["densenet"]["train_ratio"] == pytest.approx(dense["train_ratio_vs_prenorm"])
    assert table["precision"] == "fp32" and table["code_hash"] == recs[0]["env"]["code_hash"]
    # a machine whose speed moved during the rounds is named, not reported as usual
    def shake(r, q3):
        probes = {k: {**p, "ms": {**p["ms"], "q1": 1.0, "q3": q3}} for k, p in r["metrics"]["peak_probes"].items()}
        return {**r, "metrics": {**r["metrics"], "peak_probes": probes}}

    assert "WARNING: the machine is unstable" in render([shake(r, 1.6) for r in recs])
    assert "unstable" not in render([shake(r, 1.1) for r in recs])


def _tp_suite(group):
    return suite(variants=["prenorm", "densenet", "full-attnres"],
                 workloads={"throughput": {"batch": 2, "warmup": 0, "repeats": 2, "group": group}})


def test_pair_groups_split_into_baseline_pairs_and_resume_per_pair():
    cells = expand_cells(_tp_suite("pair"), "cpu")
    base, dense, full = cells
    everything = {c.key for c in cells}
    assert plan_jobs(cells, everything) == [[base, dense], [base, full]]
    assert plan_jobs(cells, {full.key}) == [[base, full]]
    assert plan_jobs(cells, {base.key}) == [[base, dense]]  # only the baseline is missing
    assert plan_jobs(cells, set()) == []
    shape_cells = expand_cells(_tp_suite("shape"), "cpu")
    assert plan_jobs(shape_cells, {shape_cells[2].key}) == [shape_cells]


def test_pair_run_writes_one_record_per_cell(tmp_path):
    out = tmp_path / "r.jsonl"
    recs = run_suite(_tp_suite("pair"), out, progress=False)
    assert sorted(r["cell"]["variant"] for r in recs) == ["densenet", "full-attnres", "prenorm"]
    assert all(r["status"] == "ok" for r in recs)
    by = {r["cell"]["variant"]: r["metrics"] for r in recs}
    assert by["prenorm"]["train_ratio_vs_prenorm"] == 1.0
    assert by["full-attnres"]["train_ratio_vs_prenorm"] > 0
    assert run_suite(_tp_suite("pair"), out, progress=False) == []


def test_throughput_worker_streams_progress_to_the_parent():
    cells = expand_cells(_tp_suite("shape"), "cpu")
    seen = []
    outcome = run_job(cells, 300, lambda done, total: seen.append((done, total)))
    assert all(outcome[c.key]["status"] == "ok" for c in cells)
    # (3 variants + 8 GEMM probes + the copy probe) x 2 train calls + 3 variants x 2 prefill calls, one line each
    assert [d for d, _ in seen] == list(range(1, 31)) and {t for _, t in seen} == {30}
