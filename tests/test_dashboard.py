"""`resbench dashboard` on a results folder of one's own, outside any checkout, and its one-line
errors when it lacks what asv publish needs."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import resbench.history as history
from resbench.cli import main

ROOT = Path(__file__).resolve().parent.parent
ASV_RESULTS = ROOT / "results" / "asv"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def own_results(tmp_path, monkeypatch):
    if not (ASV_RESULTS / "benchmarks.json").is_file():
        pytest.skip("no committed asv history")
    shutil.copytree(ASV_RESULTS, tmp_path / "mine" / "asv")
    monkeypatch.chdir(tmp_path)  # no asv.conf.json here or above
    return tmp_path / "mine" / "asv"


def test_publishes_a_results_folder_outside_the_checkout(own_results, capsys):
    assert main(["dashboard", "--results", str(own_results), "--no-serve"]) == 0
    index = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert index == own_results.parent / "asv-html" / "index.html" and index.is_file()
    graphs = list((index.parent / "graphs").rglob("bench_speed.SpeedVsPreNorm.track_train_ratio.json"))
    assert graphs, "no graph of the train ratio"


def test_without_a_checkout_it_says_what_it_needs(own_results, monkeypatch, capsys):
    monkeypatch.setattr(history, "checkout_root", lambda: None)
    assert main(["dashboard", "--no-serve"]) == 2
    assert "--results DIR" in one_line_error(capsys)
    assert main(["dashboard", "--results", str(own_results), "--no-serve"]) == 2
    assert "--repo PATH" in one_line_error(capsys)


def test_bad_folders_are_one_line_errors(own_results, tmp_path, capsys):
    assert main(["dashboard", "--results", str(tmp_path), "--no-serve"]) == 2
    assert "no benchmarks.json" in one_line_error(capsys)
    assert main(["dashboard", "--results", str(own_results), "--repo", str(tmp_path), "--no-serve"]) == 2
    assert "not a git repository" in one_line_error(capsys)
    assert not (own_results.parent / "asv-html").exists()  # nothing half-written
