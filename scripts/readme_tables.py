"""The README's tables are command output: regenerate them from the committed reference results.

    python scripts/readme_tables.py          # rewrite the marked blocks of README.md
    python scripts/readme_tables.py --check  # exit 1 if a block differs from its command's output

A block is the text between `<!-- NAME -->` and `<!-- /NAME -->`; BLOCKS says which command
prints it. tests/test_readme.py runs --check, so a README table never drifts from the code or the
results under it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import warnings
from pathlib import Path

from resbench.cli import main

ROOT = Path(__file__).resolve().parent.parent
REF = "results/reference/xeon-2core"  # the machine of the latest reference runs
BLOCKS = {
    "quick-table": ["report", f"{REF}/quick.jsonl"],
    "overhead-readme": ["report", f"{REF}/overhead.jsonl", "--targets", "overhead"],
    "list-table": ["list", "--d-model", "1024", "--blocks", "16"],
}


def output(argv: list[str]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(argv)
    return f"```text\n$ resbench {' '.join(argv)}\n{buf.getvalue().rstrip()}\n```"


def render(text: str) -> str:
    for name, argv in BLOCKS.items():
        pattern = re.compile(rf"<!-- {name} -->.*?<!-- /{name} -->", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no block <!-- {name} -->")
        text = pattern.sub(lambda m: f"<!-- {name} -->\n{output(argv)}\n<!-- /{name} -->", text)
    return text


def cli() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README.md differs; write nothing")
    args = p.parse_args()
    readme = ROOT / "README.md"
    old = readme.read_text()
    here = os.getcwd()
    os.chdir(ROOT)  # the commands name the reference files relative to the repository
    try:
        new = render(old)
    finally:
        os.chdir(here)
    if args.check:
        if new != old:
            print("README.md tables differ from their commands: run python scripts/readme_tables.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
