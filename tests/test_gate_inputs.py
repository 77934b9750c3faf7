"""`resbench compare` on hostile input: a numeric flag that is not finite or out of range, a
malformed asv results file or benchmarks.json, a non-finite value. Each is one line and exit 2,
or a regression, never a pass and never a traceback."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from resbench.cli import main
from resbench.compare import compare
from test_compare import draws, throughput, write

ROOT = Path(__file__).resolve().parent.parent
HISTORY = ROOT / "results" / "asv"
RATIO = "bench_speed.SpeedVsPreNorm.track_train_ratio"


def one_line_error(capsys) -> str:
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("resbench: error: "), cap.err
    assert cap.out == ""
    return err[0]


@pytest.fixture
def sides(tmp_path):
    """Two copies of a committed asv results file, laid out as asv writes them."""
    files = sorted((HISTORY / "xeon-2core").glob("*-*.json"))
    if not files:
        pytest.skip("no committed asv history")
    shutil.copy(HISTORY / "benchmarks.json", tmp_path / "benchmarks.json")
    out = {}
    for side in ("base", "head"):
        (tmp_path / side).mkdir()
        out[side] = tmp_path / side / files[-1].name
        shutil.copy(files[-1], out[side])
    return out


def edit(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def slower_head(sides) -> None:
    def slower(d):
        d["results"][RATIO][0] = [v * 3 for v in d["results"][RATIO][0]]
    edit(sides["head"], slower)


# -- numeric flags ------------------------------------------------------------------------------

BAD_FLAGS = [("--threshold", "nan"), ("--threshold", "inf"), ("--threshold", "-0.1"), ("--time-threshold", "nan"),
             ("--time-threshold", "-inf"), ("--alpha", "nan"), ("--alpha", "0"), ("--alpha", "1")]


@pytest.mark.parametrize("flag,value", BAD_FLAGS)
def test_asv_gate_refuses_a_non_finite_or_out_of_range_flag(sides, capsys, flag, value):
    slower_head(sides)  # 3x slower: a NaN threshold used to report 0 regressions and exit 0
    assert main(["compare", str(sides["base"]), str(sides["head"]), f"{flag}={value}"]) == 2
    assert flag in one_line_error(capsys)


@pytest.mark.parametrize("flag,value", BAD_FLAGS)
def test_jsonl_gate_refuses_a_non_finite_or_out_of_range_flag(tmp_path, capsys, flag, value):
    base = write(tmp_path / "b.jsonl", [throughput(draws(1), draws(2))])
    head = write(tmp_path / "h.jsonl", [throughput(draws(3, scale=3.0), draws(4))])
    assert main(["compare", base, head, f"{flag}={value}"]) == 2
    assert flag in one_line_error(capsys)


def test_a_non_finite_value_at_head_is_a_regression():
    # reading records skips such a record; the gate itself must not pass one either
    b, h = throughput(draws(1), draws(2)), throughput(draws(3), draws(4))
    h["metrics"]["train_ms"]["median"] = math.nan  # compares false with any threshold
    row = next(r for r in compare({"k": b}, {"k": h}) if r.metric == "train_ms")
    assert row.regressed and row.verdict == "not finite at HEAD: REGRESSION"


# -- malformed asv files ------------------------------------------------------------------------

def _set(key, value):
    return lambda d: d.__setitem__(key, value)


def _row(fn):
    return lambda d: d["results"].__setitem__(RATIO, fn(d["results"][RATIO]))


CORRUPT = {
    "results not a mapping": _set("results", [1, 2]),
    "a string entry": _row(lambda row: "abc"),
    "string values": _row(lambda row: [["x"] * len(row[0])] + row[1:]),
    "a short entry": _row(lambda row: row[:1]),
    "too few values": _row(lambda row: [row[0][:3]] + row[1:]),
    "params not lists": _row(lambda row: [row[0], "zz"] + row[2:]),
    "version 99": _set("version", 99),
    "version as text": _set("version", "2"),
    "no params": lambda d: d.pop("params"),
    "no commit date": lambda d: d.pop("date"),
    "columns not a list": _set("result_columns", 5),
}


@pytest.mark.parametrize("how", list(CORRUPT))
def test_a_malformed_asv_results_file_is_one_line_naming_it(sides, capsys, how):
    edit(sides["head"], CORRUPT[how])
    assert main(["compare", str(sides["base"]), str(sides["head"])]) == 2
    assert str(sides["head"]) in one_line_error(capsys)


@pytest.mark.parametrize("text", ["garbage", "[1, 2]", '{"version": 2, "bench": 5}', '{"bench": {}}'])
def test_a_malformed_benchmarks_json_is_one_line_naming_it(sides, capsys, text):
    bench = sides["base"].parent.parent / "benchmarks.json"
    bench.write_text(text)
    assert main(["compare", str(sides["base"]), str(sides["head"])]) == 2
    assert str(bench) in one_line_error(capsys)


def test_an_unparameterized_benchmark_is_compared(sides, capsys):
    # asv stores its one value as a one-item list, like any other benchmark's values
    for side, value in (("base", 1.0), ("head", 1.5)):
        edit(sides[side], lambda d, v=value: d["results"].__setitem__("bench_x.track_plain", [[v], []]))
    assert main(["compare", str(sides["base"]), str(sides["head"]), "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["series"] for r in rows if r["regressed"]] == ["bench_x.track_plain"]


def test_infinite_values_are_no_data_and_the_report_stays_json(sides, capsys):
    def infinite(d):
        d["results"][RATIO][0][0] = math.inf
    edit(sides["base"], infinite)
    edit(sides["head"], infinite)
    assert main(["compare", str(sides["base"]), str(sides["head"]), "--json"]) == 0

    def strict(name):
        raise ValueError(f"{name} in the report")
    report = json.loads(capsys.readouterr().out, parse_constant=strict)
    row = next(r for r in report["rows"] if r["series"] == f"{RATIO}(highway, 2)")
    assert row["verdict"] == "no data" and row["base"] is None
