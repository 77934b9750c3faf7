"""The gate over asv results (`resbench compare A.json B.json`) on planted changes to a real
committed results file: what moves past its kind's threshold is flagged, nothing else is."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from resbench.cli import main

ROOT = Path(__file__).resolve().parent.parent
HISTORY = ROOT / "results" / "asv" / "xeon-2core"
RATIO = "bench_speed.SpeedVsPreNorm.track_train_ratio"
TIME = "bench_speed.CpuTime.track_train_ms"
BYTES = "bench_memory.PeakMemory.track_train_peak_bytes"


def _template() -> Path:
    files = sorted(p for p in HISTORY.glob("*-*.json"))
    if not files:
        pytest.skip("no committed asv history")
    return files[-1]


@pytest.fixture
def sides(tmp_path):
    """BASE and a HEAD to plant changes in, laid out as asv writes them (benchmarks.json beside)."""
    src = _template()
    shutil.copy(ROOT / "results" / "asv" / "benchmarks.json", tmp_path / "benchmarks.json")
    out = {}
    for side in ("base", "head"):
        (tmp_path / side).mkdir()
        out[side] = tmp_path / side / src.name
        shutil.copy(src, out[side])
    return out


def plant(path: Path, bench: str, index: int, fn) -> None:
    d = json.loads(path.read_text())
    d["results"][bench][0][index] = fn(d["results"][bench][0][index])
    path.write_text(json.dumps(d))


def gate(sides, capsys, *extra) -> tuple[int, str]:
    rc = main(["compare", str(sides["base"]), str(sides["head"]), "--json", *extra])
    return rc, json.loads(capsys.readouterr().out)


def flagged(report) -> list[str]:
    return [r["series"] for r in report["rows"] if r["regressed"]]


def test_unchanged_results_pass(sides, capsys):
    rc, report = gate(sides, capsys)
    assert rc == 0 and report["regressions"] == 0
    assert set(report["spread"].values()) == {0.0}


def test_a_ratio_past_the_threshold_is_flagged_and_one_within_is_not(sides, capsys):
    plant(sides["head"], RATIO, 0, lambda v: v * 1.25)  # highway, 2 blocks
    plant(sides["head"], RATIO, 3, lambda v: v * 1.08)  # densenet, 4 blocks (values run variant-major)
    rc, report = gate(sides, capsys)
    assert rc == 1
    assert flagged(report) == [f"{RATIO}(highway, 2)"]


def test_exact_series_flag_any_increase_and_show_a_decrease(sides, capsys):
    plant(sides["head"], BYTES, 0, lambda v: v + 4)
    plant(sides["head"], BYTES, 1, lambda v: v - 4)
    rc, report = gate(sides, capsys)
    assert rc == 1 and flagged(report) == [f"{BYTES}(prenorm, 2)"]
    lower = [r for r in report["rows"] if r["series"] == f"{BYTES}(prenorm, 4)"]
    assert lower[0]["verdict"] == "changed (lower)"


def test_absolute_times_gate_only_at_the_loose_threshold(sides, capsys):
    plant(sides["head"], TIME, 0, lambda v: v * 1.4)
    rc, report = gate(sides, capsys)
    assert rc == 0
    plant(sides["head"], TIME, 0, lambda v: v * 1.2)  # now 1.68x BASE
    rc, report = gate(sides, capsys)
    assert rc == 1 and flagged(report) == [f"{TIME}(prenorm, 2)"]
    rc, report = gate(sides, capsys, "--time-threshold", "0.8")
    assert rc == 0


def test_a_series_lost_at_head_is_a_regression(sides, capsys):
    plant(sides["head"], RATIO, 2, lambda v: None)
    rc, report = gate(sides, capsys)
    assert rc == 1 and flagged(report) == [f"{RATIO}(densenet, 2)"]


def test_asv_against_jsonl_is_a_one_line_error(sides, tmp_path, capsys):
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text("")
    assert main(["compare", str(sides["base"]), str(jsonl)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "both asv results" in err[0]


def test_the_loss_tolerates_float_reordering_only(sides, capsys):
    loss = "bench_loss.ShortRunLoss.track_final_val_loss"
    plant(sides["head"], loss, 0, lambda v: v * (1 + 1e-6))
    assert gate(sides, capsys)[0] == 0
    plant(sides["head"], loss, 0, lambda v: v * 1.01)
    rc, report = gate(sides, capsys)
    assert rc == 1 and flagged(report) == [f"{loss}(prenorm, 2)"]
