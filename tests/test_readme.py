"""The README's "Add a variant" walkthrough works as printed, and .ci/run runs the README's test command."""
import re
import shlex
from pathlib import Path

import yaml

from resbench import variants
from resbench.cli import build_parser, main
from resbench.config import check_builds, parse_variants
from resbench.variant_template import module_name
from test_new_variant import scratch_registry  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def add_a_variant_section() -> str:
    return README.split("## Add a variant\n", 1)[1].split("\n## ", 1)[0]


def commands(section: str) -> list[str]:
    """The shell commands of a section: lines of its bash blocks and inline `resbench ...` /
    `pytest ...` spans."""
    lines = [line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
             for line in block.splitlines()]
    return [c for c in lines + re.findall(r"`((?:resbench|pytest) [^`]*)`", section) if c]


def test_add_a_variant_walkthrough_runs(scratch_registry, capsys, monkeypatch):
    """Each step of the walkthrough, as printed: new-variant writes a file that registers, the
    shown excerpt is the generated code, `resbench list` shows it, the pytest command selects it,
    the naive reference matches it, and the suite entries build."""
    import test_equations
    from conftest import TINY, make_model, tokens

    tmp = scratch_registry
    section = add_a_variant_section()
    cmds = commands(section)
    writes = [shlex.split(c) for c in cmds if c.startswith("resbench new-variant ")]
    assert writes, "the walkthrough has no `resbench new-variant` command"
    for argv in writes:
        build_parser().parse_args(argv[1:])  # the subcommand and its flags exist
    name = writes[0][2]
    assert name not in variants.names(), f"the README's example {name!r} is a registered variant"
    assert main(writes[0][1:] + ["--out", str(tmp)]) == 0
    module = module_name(name)
    monkeypatch.chdir(tmp)
    for argv in writes[1:]:  # e.g. --out mypkg/my_variant.py: relative to where it runs
        out = Path(argv[argv.index("--out") + 1])
        out.parent.mkdir(parents=True, exist_ok=True)
        assert main(argv[1:]) == 0 and out.is_file()
    capsys.readouterr()

    listing = [shlex.split(c) for c in cmds if c.startswith("resbench list")]
    assert listing
    for argv in listing:  # from tmp/: registered the way a module outside variants/ is
        assert main(["--variants-module", module, *argv[1:]]) == 0
        assert re.search(rf"^{re.escape(name)}\s", capsys.readouterr().out, re.M)
    assert variants.get(name).__module__ == module

    (pytest_cmd,) = [shlex.split(c) for c in cmds if c.startswith("pytest ")]
    assert (ROOT / pytest_cmd[1]).is_file() and pytest_cmd[pytest_cmd.index("-k") + 1] == name

    excerpt, reference = re.findall(r"```python\n(.*?)```", section, re.S)
    generated = iter(line.strip() for line in (tmp / f"{module}.py").read_text().splitlines())
    for line in excerpt.splitlines():  # the excerpt's lines, in order, are the file's
        if line.strip() not in ("", "..."):
            assert line.strip() in generated, f"README excerpt line not in the generated file: {line.strip()}"

    scope = vars(test_equations).copy()  # the reference runs where step 5 puts it
    exec(reference, scope)
    ref = next(v for k, v in scope.items() if k.startswith("ref_") and k not in vars(test_equations))
    model = make_model(test_equations.CFG, name, seed=2, perturb=True)
    test_equations.assert_matches(model, ref, tokens(test_equations.CFG, seed=4))

    (suite,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    specs = parse_variants(yaml.safe_load(suite)["variants"])
    assert name in [s.name for s in specs]
    for spec in specs:
        check_builds(spec, TINY, "README")


def test_ci_runs_the_readme_test_command():
    assert "make test" in README
    assert re.search(r"^make test\s*$", (ROOT / ".ci" / "run").read_text(), re.M)


def test_doc_tables_are_the_output_of_their_sources():
    """Every table in README.md and docs/ between <!-- NAME --> markers is re-produced by its
    command at the current code, or is its committed output file (scripts/doc_tables.py)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "doc_tables.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_no_placeholder_is_left_in_the_docs():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert "@@" not in path.read_text(), f"{path.name} still has a @@placeholder@@"
