"""The front door: `resbench suites` lists every shipped suite with what it is for; `--set` changes
a suite's value through the same validation; the plots share one colour per variant."""
import json

import pytest
import yaml

from resbench.cli import main
from resbench.config import ConfigError, apply_overrides, expand_cells, suites_dir
from resbench.palette import FIXED, colour, variant_of
from resbench.studies import parse


def test_suites_lists_every_shipped_suite_with_kind_cells_and_purpose(capsys):
    assert main(["suites", "--json"]) == 0
    rows = {r["suite"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {p.stem for p in suites_dir().glob("*.yaml")}
    assert rows["quick"]["kind"] == "measurement" and rows["quick"]["cells"] == 15
    assert rows["loss"]["kind"] == "loss" and rows["loss"]["cells"] == 45
    assert rows["scaling"]["kind"] == "scaling" and rows["scaling"]["cells"] > 0
    assert all(r["purpose"] not in ("", "-") for r in rows.values()), [k for k, r in rows.items() if r["purpose"] == "-"]
    assert all(not r["kind"].startswith("invalid") for r in rows.values())
    assert rows["quick"]["reference_s"] > 0  # the committed reference run of quick took that long
    assert main(["suites"]) == 0
    text = capsys.readouterr().out
    assert "| quick" in text and "inference-gpu" in text
    assert main(["suites", "--show", "quick"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["name"] == "quick"
    assert main(["suites", "--show", "nosuch"]) == 2


def test_set_changes_a_value_and_the_cells_carry_it():
    raw = yaml.safe_load((suites_dir() / "quick.yaml").read_text())
    changed = apply_overrides(raw, ["workloads.loss.steps=10", "shapes[0].d_model=64", "seeds=[0, 1]",
                                    "variants=[prenorm, {name: block-attnres, options: {n_blocks: 2}}]"])
    _, suite = parse(changed, "quick")
    cells = expand_cells(suite, "cpu")
    assert {c.params["steps"] for c in cells if c.workload == "loss"} == {10}
    assert {c.shape["d_model"] for c in cells} == {64} and {c.seed for c in cells} == {0, 1}
    assert {c.label for c in cells} == {"prenorm", "block-attnres(n_blocks=2)"}
    _, plain = parse(raw, "quick")
    assert not {c.key for c in cells} & {c.key for c in expand_cells(plain, "cpu")}  # other cells, other keys
    assert raw["workloads"]["loss"].get("steps") != 10  # the file's mapping is left as it was


@pytest.mark.parametrize("item,words", [
    ("workloads.loss.stepz=10", "unknown key 'stepz'"),
    ("shapes[0].d_model=abc", "must be int"),
    ("shapes[7].d_model=64", "--set shapes[7].d_model"),
    ("seeds", "give KEY=VALUE"),
    ("threads=[1", "not YAML"),
    ("workloads.loss.lr=.nan", "finite"),
])
def test_a_bad_set_is_one_line_and_exit_2(tmp_path, capsys, item, words):
    out = tmp_path / "r.jsonl"
    assert main(["run", "quick", "--set", item, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and not out.exists()
    with pytest.raises(ConfigError):
        parse(apply_overrides(yaml.safe_load((suites_dir() / "quick.yaml").read_text()), [item]), "quick")


def test_one_colour_per_variant_everywhere():
    assert colour("block-attnres(n_blocks=4)") == colour("block-attnres") == FIXED["block-attnres"]
    assert variant_of("prenorm [highway]") == "highway"  # a label posing as the baseline keeps its colour
    assert len(set(FIXED.values())) == len(FIXED)  # no two variants share a colour
    assert colour("my-own") == colour("my-own(x=1)")  # any other name: one stable colour


def test_every_package_folder_is_shipped_by_pip_install():
    """`pip install .` installs only the packages pyproject.toml lists: every folder with an
    __init__.py under harness/ and variants/ must be one of them (a missing one imports in a
    checkout and fails once installed)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    dirs = {pkg: root / path for pkg, path in setup["package-dir"].items()}
    found = set()
    for pkg, base in dirs.items():
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            found.add(".".join((pkg, *rel)))
    assert found - listed == set(), f"packages not listed in pyproject.toml: {sorted(found - listed)}"
