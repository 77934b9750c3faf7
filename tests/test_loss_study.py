"""The loss study: real loss cells (in-process) feed the analysis; synthetic records check the maths."""
import numpy as np
import pytest

from resbench.cells import cell_key
from resbench.cli import main
from resbench.config import expand_cells, parse_suite
from resbench.results import append_record
from resbench.studies.loss import collect, compute_equivalence, final_loss_table, report, time_to_target
from resbench.workloads import run_loss
from resbench.workloads.common import RunContext


def _record(label, d, blocks, seed, final, flops_per_step, curve):
    cell = {"variant": label, "label": label, "options": {}, "shape_name": f"d{d}", "workload": "loss",
            "shape": {"d_model": d, "depth": blocks, "n_heads": 2, "seq_len": 16, "vocab_size": 256,
                      "mlp_ratio": 4.0},
            "params": {}, "device": "cpu", "precision": "fp32", "seed": seed, "threads": 1}
    steps = [s for s, _ in curve]
    return {"key": cell_key(cell), "cell": cell, "status": "ok", "metrics": {
        "final_val_loss": final, "params": d * d * 12 * blocks, "train_flops": flops_per_step * steps[-1],
        "flops_per_step": flops_per_step, "val_loss": curve, "train_loss": curve,
        "val_train_seconds": [0.1 * s for s in steps]}}


def synthetic(shift: float, noise: float, rng):
    """Variant reaches each loss with `shift`× less compute than PreNorm: L = 20·(shift·C)^−0.05."""
    recs = []
    for d, blocks in [(32, 1), (64, 2), (128, 4)]:
        fps = 1e9 * d * blocks
        for label, s in [("prenorm", 1.0), ("full-attnres", shift)]:
            for seed in range(4):
                final = 20.0 * (s * fps * 100) ** -0.05 * (1 + rng.normal(0, noise))
                curve = [[k, final * (1 + 0.5 * (100 - k) / 100)] for k in (25, 50, 75, 100)]
                recs.append(_record(label, d, blocks, seed, final, fps, curve))
    return recs


def test_synthetic_study_finds_the_planted_multiplier():
    rng = np.random.default_rng(0)
    data = collect(synthetic(1.25, 0.0005, rng), rederive_flops=False)
    ce = {row[0]: row for row in compute_equivalence(data)}
    point = float(ce["full-attnres"][5].split()[0])
    assert point == pytest.approx(1.25, rel=0.05)
    table = {(r[0], r[1]): r for r in final_loss_table(data)}
    assert table[("d128×4b", "full-attnres")][7] == "better"
    size, target, rows = time_to_target(data)
    assert size == (128, 4) and rows[0][0] == "prenorm"


def test_synthetic_no_difference_is_said_so():
    rng = np.random.default_rng(1)
    data = collect(synthetic(1.0, 0.01, rng), rederive_flops=False)
    verdicts = {r[7] for r in final_loss_table(data) if r[1] == "full-attnres"}
    assert verdicts == {"no detectable difference"}


def test_real_loss_cells_with_dynamics_render_a_report(tmp_path, capsys):
    suite = parse_suite({
        "name": "t", "threads": 1, "seeds": [0, 1],
        "variants": ["prenorm", "full-attnres", "densenet"],
        "shapes": [{"name": "a", "d_model": 16, "depth": 1, "n_heads": 2, "seq_len": 16},
                   {"name": "b", "d_model": 32, "depth": 2, "n_heads": 2, "seq_len": 16}],
        "workloads": {"loss": {"steps": 6, "batch": 2, "warmup": 1, "eval_every": 2, "eval_batches": 1,
                               "corpus": "generated", "corpus_bytes": 20000, "dynamics": True}}})
    out = tmp_path / "r.jsonl"
    for cell in expand_cells(suite, "cpu"):
        status, msg, metrics = run_loss(cell, RunContext.of([cell]))
        assert status == "ok", msg
        append_record(out, {"key": cell.key, "cell": cell.to_dict(), "status": status, "metrics": metrics})
    dyn = metrics["dynamics"]  # the last cell: densenet at shape b (L = 4)
    assert len(dyn["input_rms"]) == len(dyn["grad_norm"]) == 4 and all(g > 0 for g in dyn["grad_norm"])
    assert metrics["train_flops"] == 6 * metrics["flops_per_step"] > 0
    # the report's compute axis (re-derived from shapes) is what the counter saw in each cell
    from resbench.results import read_records

    for size in collect(read_records(out)).values():
        for runs in size.values():
            assert all(m["flops_per_step"] == m["counted_flops_per_step"] > 0 for m in runs)
    assert main(["report", str(out), "--suite", "loss", "--out", str(tmp_path / "study")]) == 0
    text = (tmp_path / "study" / "report.md").read_text()
    assert "Welch" in text and "Compute-equivalence" in text and "dynamics" in text.lower()
    for png in ("loss_curves.png", "loss_vs_compute.png", "dynamics_depth.png"):
        assert (tmp_path / "study" / png).stat().st_size > 1000


def test_report_names_who_measured_and_who_counted_flops(tmp_path):
    from resbench.provenance import code_hash

    recs = synthetic(1.0, 0.01, np.random.default_rng(2))
    for i, r in enumerate(recs):
        r["env"] = {"commit": "abcdef0123456789", "dirty": i == 0, "machine_id": "m1", "cpu": "Test CPU"}
    text = report(recs, tmp_path, rederive_flops=False)
    line = text.splitlines()[2]
    assert line.startswith(f"Measured by: {len(recs)} records, commit abcdef0123, abcdef0123 (dirty), machine m1 (Test CPU)")
    assert "FLOPs as recorded" in line
    recs[0]["env"] = {}
    from resbench.studies.loss import measured_by

    line = measured_by(recs, rederive_flops=True)
    assert "id not recorded" in line and f"re-derived at report time by code {code_hash()}" in line
