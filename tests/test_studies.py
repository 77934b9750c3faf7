"""The study seam: a study is one module declaring itself (resbench.studies.base); `resbench run`
and `resbench report --suite` dispatch on a suite's `kind:` without being touched."""
from __future__ import annotations

import json

import pytest
import yaml

from resbench import studies
from resbench.cli import main
from resbench.config import ConfigError, positive
from resbench.studies.base import REGISTRY, Study

SUITE = {"name": "t", "threads": 1, "variants": ["prenorm", "densenet"],
         "shapes": [{"name": "s", "d_model": 16, "depth": 1, "n_heads": 2, "seq_len": 8}],
         "workloads": {"memory": {"batch": 1}}}


class CountOk(Study):
    """A toy measurement study: passes when at least `at_least` records finished ok."""
    help = "toy"
    keys = ("at_least",)

    def parse_keys(self, raw, shapes, labels):
        return {"at_least": positive("at_least", raw.get("at_least", 1))}

    def analyse(self, records, suite, out):
        n = sum(r["status"] == "ok" for r in records)
        return f"count-ok: {n} ok of {len(records)}", n >= suite.study_keys["at_least"]


@pytest.fixture
def toy_study():
    CountOk.name = "count-ok"
    REGISTRY["count-ok"] = CountOk()
    yield
    del REGISTRY["count-ok"]


def test_a_new_study_is_one_class_run_and_reported_by_kind(toy_study, tmp_path, capsys):
    path, out = tmp_path / "s.yaml", tmp_path / "r.jsonl"
    path.write_text(yaml.safe_dump({**SUITE, "kind": "count-ok", "at_least": 2}))
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    assert "count-ok: 2 ok of 2" in capsys.readouterr().out
    path.write_text(yaml.safe_dump({**SUITE, "kind": "count-ok", "at_least": 3}))
    assert main(["report", str(out), "--suite", str(path)]) == 1  # the study's check decides the exit code
    assert "count-ok: 2 ok of 2" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="at_least must be > 0"):
        studies.parse({**SUITE, "kind": "count-ok", "at_least": 0})
    with pytest.raises(ConfigError, match="at_least belongs to the count-ok study"):
        studies.parse({**SUITE, "at_least": 2})


def test_every_shipped_suite_parses_through_the_one_validator():
    from resbench.config import suites_dir

    kinds = {}
    for path in sorted(suites_dir().glob("*.yaml")):
        study, cfg = studies.load(str(path))
        kinds[path.stem] = study.name if study else None
        assert cfg.name == path.stem
    assert kinds["overhead"] == "overhead" and kinds["loss"] == "loss" and kinds["quick"] is None
    assert kinds["scaling"] == "scaling" and kinds["projection"] == "projection"


def test_loss_suite_run_writes_its_report_beside_the_records(tmp_path, capsys):
    raw = {**SUITE, "kind": "loss", "seeds": [0, 1], "variants": ["prenorm", "full-attnres"],
           "workloads": {"loss": {"steps": 4, "batch": 2, "warmup": 1, "eval_every": 2, "eval_batches": 1,
                                  "corpus": "generated", "corpus_bytes": 20000}}}
    path, out = tmp_path / "l.yaml", tmp_path / "l.jsonl"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    assert "# Short-run loss study" in capsys.readouterr().out
    assert "Final validation loss" in (tmp_path / "l" / "report.md").read_text()


