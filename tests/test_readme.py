"""The README's "Add a variant" walkthrough passes when followed literally, its tables are command
output, and .ci/run runs the README's test command."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from resbench import variants
from resbench.variant_template import module_name

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def add_a_variant_section() -> str:
    return README.split("## Add a variant\n", 1)[1].split("\n## ", 1)[0]


def test_add_a_variant_walkthrough_passes_when_followed_literally(tmp_path):
    """The README's steps, done as written in a copy of this checkout: new-variant, the
    reference and its CASES entry, doc_tables; then the tests a new variant touches pass there
    (conformance, FLOPs and equations for it; the asv grid, the scaling suite, the variant table
    and `resbench list` for the registry)."""
    section = add_a_variant_section()
    name = re.search(r"`resbench new-variant ([a-z0-9-]+)`", section).group(1)
    assert name not in variants.names(), f"the README's example {name!r} is a registered variant"
    copy = tmp_path / "copy"
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"], capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file() and not rel.startswith(("results/asv/", "docs/dashboard")):
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, copy / rel)
    pkg = tmp_path / "pkg"  # the copy laid out as installed: harness/ is resbench, variants/ resbench.variants
    pkg.mkdir()
    (pkg / "resbench").symlink_to(copy / "harness")
    (copy / "harness" / "variants").symlink_to(copy / "variants")
    (copy / "harness" / "suites").symlink_to(copy / "benchmarks" / "suites")
    env = {**os.environ, "PYTHONPATH": f"{pkg}{os.pathsep}{copy / 'tests'}", "RESBENCH_VARIANTS": ""}

    def run(*argv, check=True):
        done = subprocess.run([sys.executable, *argv], cwd=copy, env=env, capture_output=True, text=True,
                              timeout=1200)
        assert not check or done.returncode == 0, f"{argv}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
        return done

    run("-m", "resbench", "new-variant", name)  # step 1
    assert (copy / "variants" / f"{module_name(name)}.py").is_file()
    excerpt, reference = re.findall(r"```python\n(.*?)```", section, re.S)  # step 2: the skeleton is the excerpt
    generated = [ln.strip() for ln in (copy / "variants" / f"{module_name(name)}.py").read_text().splitlines()]
    for line in excerpt.splitlines():
        assert not line.strip() or line.strip() in generated, f"README excerpt line not in the file: {line}"
    eq = copy / "tests" / "test_equations.py"  # step 3: the reference and its CASES entry
    ref_name = re.search(r"def (ref_\w+)", reference).group(1)
    case = re.search(r'`\((".*?", \{\}, ref_\w+)\)`', section.replace("\n   ", " ")).group(1)
    text = eq.read_text().replace("CASES = [\n", f"CASES = [\n    ({case}),\n", 1)
    eq.write_text(text.replace("\n\nCASES = [", f"\n\n{reference}\n\nCASES = [", 1))
    assert ref_name in eq.read_text()
    run("scripts/doc_tables.py")  # step 4
    listed = run("-m", "resbench", "list").stdout
    assert re.search(rf"^{re.escape(name)}\s", listed, re.M)
    tests = ["tests/test_conformance.py", "tests/test_equations.py", "tests/test_measure_flops.py",
             "tests/test_asv_suite.py::test_the_history_grid_has_every_registered_variant",
             "tests/test_scaling.py::test_shipped_suites_parse_and_cover_every_variant", "tests/test_cli_list.py"]
    done = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *tests, "-k", f"{name} or registered or cover or list",
               check=False)
    assert done.returncode == 0 and " passed" in done.stdout, done.stdout[-4000:]


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
