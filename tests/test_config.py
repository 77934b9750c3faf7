"""Suite validation: every bad input is a one-line ConfigError naming the key (and exit 2 via the CLI)."""
import copy

import pytest
import yaml

from resbench.cli import main
from resbench import studies
from resbench.config import ConfigError, expand_cells, load_suite, parse_suite

GOOD = {
    "name": "t",
    "variants": ["prenorm", {"name": "block-attnres", "options": {"n_blocks": 2}}],
    "shapes": [{"name": "s", "d_model": 32, "depth": 2, "n_heads": 2, "seq_len": 16}],
    "workloads": {"throughput": {"batch": 2, "warmup": 1, "repeats": 2}, "memory": {"batch": 2}},
}


def bad(**changes):
    raw = copy.deepcopy(GOOD)
    for key, value in changes.items():
        if value is KeyError:
            raw.pop(key)
        else:
            raw[key] = value
    return raw


def test_good_suite_expands_to_cells():
    suite = parse_suite(GOOD)
    cells = expand_cells(suite, "cpu")
    assert len(cells) == 2 * 1 * 2 * 1  # variants × shapes × workloads × seeds
    assert cells[1].label == "block-attnres(n_blocks=2)"
    assert len({c.key for c in cells}) == len(cells)


def test_shape_overrides_apply_to_workloads_with_the_field_at_that_shape_only():
    shapes = [{**GOOD["shapes"][0], "batch": 5, "repeats": 9}, {**GOOD["shapes"][0], "name": "t"}]
    _, suite = studies.parse(bad(shapes=shapes, kind="overhead", targets={"s": {"prenorm": {"train": 1.1}}}))
    params = {(c.shape_name, c.workload): c.params for c in expand_cells(suite, "cpu")}
    assert params[("s", "throughput")]["batch"] == 5 and params[("s", "throughput")]["repeats"] == 9
    assert params[("s", "memory")] == {"batch": 5}  # memory has no repeats
    assert params[("t", "throughput")]["batch"] == 2 and params[("t", "throughput")]["repeats"] == 2
    assert suite.study_keys == {"targets": {"s": {"prenorm": {"train": 1.1}}}} and suite.kind == "overhead"
    assert studies.load("overhead")[1].shape_overrides["B"]["batch"] == 2


def test_cell_key_ignores_label_but_not_options():
    a, b = expand_cells(parse_suite(GOOD), "cpu")[:2]
    relabel = parse_suite(bad(variants=[{"name": "prenorm", "label": "base"}, GOOD["variants"][1]]))
    assert expand_cells(relabel, "cpu")[0].key == a.key
    assert a.key != b.key


@pytest.mark.parametrize("raw, needle", [
    (bad(colour="red"), "unknown key 'colour'; allowed: name, variants"),
    (bad(variants=["nope"]), "unknown variant 'nope'; registered: block-attnres"),
    (bad(variants=[{"name": "prenorm", "opts": {}}]), "variants[0]: unknown key 'opts'"),
    (bad(variants=[{"name": "block-attnres", "options": {"n_blocks": 0}}]), "n_blocks"),
    (bad(variants=[{"name": "block-attnres", "options": {"n_blocks": 99}}]), "n_blocks must be <= the number of transformer blocks"),
    (bad(variants=[{"name": "highway", "options": {"colour": 1}}]), "has no option 'colour'"),
    (bad(variants=["prenorm", "prenorm"]), "duplicate label"),
    (bad(shapes=[{"d_model": 30, "n_heads": 4}]), "divisible by n_heads"),
    (bad(shapes=[{"d_model": -8}]), "d_model"),
    (bad(shapes=[{"d_model": "wide"}]), "shapes[shape0].d_model must be int"),
    (bad(shapes=[{"width": 3}]), "unknown key 'width'"),
    (bad(shapes=[{"n_blocks": 3}]), "shapes[0]: n_blocks is now depth"),
    (bad(workloads={"speed": {}}), "unknown key 'speed'; allowed: throughput, memory, loss"),
    (bad(workloads={"throughput": {"batch": 0}}), "workloads.throughput.batch must be > 0"),
    (bad(workloads={"throughput": {"batch": "8"}}), "workloads.throughput.batch must be int"),
    (bad(workloads={"loss": {"schedule": "linear"}}), "schedule must be one of cosine, wsd, constant"),
    (bad(device="tpu"), "device must be one of cpu, cuda, auto"),
    (bad(precision="fp8"), "precision must be one of fp32, bf16-autocast, bf16-pure, fp16-autocast"),
    (bad(dtype="bfloat16"), "write precision: bf16-pure (or bf16-autocast)"),
    (bad(seeds=["a"]), "seeds must be"),
    (bad(threads=-1), "threads must be >= 0"),
    (bad(variants=KeyError), "missing key 'variants'"),
    (bad(workloads={"throughput": {"group": "all"}}), "workloads.throughput.group must be one of shape, pair"),
    (bad(variants=["densenet"], workloads={"throughput": {"group": "pair"}}), "add 'prenorm' to variants"),
    (bad(shapes=[{"name": "s", "batch": 0}]), "shapes[s].batch must be > 0"),
    (bad(shapes=[{"name": "s", "repeats": "many"}]), "shapes[s].repeats must be int"),
    (bad(kind="overhead", targets={"z": {}}), "targets: unknown key 'z'; allowed: s"),
    (bad(kind="overhead", targets={"s": {"highway": {}}}), "targets.s: unknown key 'highway'"),
    (bad(kind="overhead", targets={"s": {"prenorm": {"speed": 1}}}), "allowed: train, prefill, train_memory, infer_state"),
    (bad(kind="overhead", targets={"s": {"prenorm": {"train": "fast"}}}), "targets.s.prenorm.train must be float"),
    (bad(targets={"s": {}}), "targets belongs to the overhead study: add `kind: overhead`"),
    (bad(kind="speed"), "kind must be one of decision, distributed, loss, overhead, projection, scaling"),
    (None, "suite is empty"),
])
def test_bad_suite_is_one_line_error(raw, needle):
    with pytest.raises(ConfigError) as info:
        studies.parse(raw)  # the one validator of every suite kind
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nvariants: [prenorm\nshapes: {}\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+"):
        load_suite(str(path))


def test_shipped_suite_by_name_and_missing_file():
    assert load_suite("quick").name == "quick"
    with pytest.raises(ConfigError, match="suite file not found"):
        load_suite("/nonexistent/suite.yaml")
    with pytest.raises(ConfigError, match="shipped suites are: .*quick"):
        load_suite("no-such-suite")


@pytest.mark.parametrize("raw", [bad(colour="red"), bad(variants=["nope"]), bad(device="tpu")])
def test_cli_exit_2_one_line_nothing_written(tmp_path, capsys, raw):
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump(raw))
    out = tmp_path / "res" / "r.jsonl"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resbench: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_cli_cuda_without_gpu(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump(bad(device="cuda")))
    out = tmp_path / "r.jsonl"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err
    assert not out.exists()


def test_cli_missing_corpus_and_unwritable_dir(tmp_path, capsys):
    raw = bad(workloads={"loss": {"steps": 2, "corpus": str(tmp_path / "missing.txt")}})
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump(raw))
    out = tmp_path / "r.jsonl"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 2
    assert "missing.txt" in capsys.readouterr().err
    assert not out.exists()

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        suite.write_text(yaml.safe_dump(GOOD))
        code = main(["run", str(suite), "--out", str(locked / "sub" / "r.jsonl"), "--quiet"])
        err = capsys.readouterr().err
    finally:
        locked.chmod(0o700)
    import os

    if os.geteuid() == 0:  # root ignores directory permissions; use a path under a file instead
        code = main(["run", str(suite), "--out", str(suite / "r.jsonl"), "--quiet"])
        err = capsys.readouterr().err
    assert code == 2 and "results" in err and err.count("\n") == 1


def test_a_shape_may_run_more_seeds():
    """shapes[NAME].seeds: more seeds where an effect is small (the largest size), the suite's elsewhere."""
    from resbench.config import expand_cells, parse_suite
    raw = {"name": "s", "variants": ["prenorm"], "seeds": [0, 1], "workloads": {"memory": {}},
           "shapes": [{"name": "a", "d_model": 32, "depth": 1, "n_heads": 2, "seq_len": 16},
                      {"name": "b", "d_model": 32, "depth": 2, "n_heads": 2, "seq_len": 16, "seeds": [0, 1, 2, 3]}]}
    cells = expand_cells(parse_suite(raw), "cpu")
    assert sorted((c.shape_name, c.seed) for c in cells) == [("a", 0), ("a", 1)] + [("b", s) for s in range(4)]
    raw["shapes"][1]["seeds"] = [1, 1]
    with pytest.raises(ConfigError, match=r"shapes\[b\].seeds has duplicates"):
        parse_suite(raw)
