"""The tables in README.md and docs/ are command output: regenerate them from the committed
reference results.

    python scripts/doc_tables.py          # rewrite the marked blocks
    python scripts/doc_tables.py --check  # exit 1 if a block differs from its source; write nothing

A block is the text between `<!-- NAME -->` and `<!-- /NAME -->`. BLOCKS says, per file, what
fills it: a resbench command (run now, at the current code, on the committed records), a script
that derives a table from the code alone (run now), or a
committed output file (written by the reference run's command, named in docs/RESULTS.md).
tests/test_readme.py runs --check, so a table never drifts from the code or the results under it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import runpy
import sys
import warnings
from pathlib import Path

from resbench.cli import main

ROOT = Path(__file__).resolve().parent.parent
REF = "results/reference/xeon-2core"  # the quick table, the per-op profiles and the asv gate
EPYC = "results/reference/epyc-2core"  # overhead (adaptive and fixed rounds), compiled, inference, scaling, projection


def command(*argv: str):
    return ("command", list(argv))


def script(path: str, *argv: str):
    """A derivation the repository computes (no measurement): a script's output, run now."""
    return ("script", [path, *argv])


def written(path: str, by: str, fenced: bool = True):
    """A committed file and the command that wrote it: fenced as text output, or included as markdown."""
    return ("written", [path, by, fenced])


OVERHEAD = command("report", f"{EPYC}/overhead.jsonl", "--suite", "overhead")
OVERHEAD_FIXED = command("report", f"{EPYC}/overhead-fixed.jsonl", "--suite", "overhead")
COMPILED = command("report", f"{EPYC}/overhead-compiled.jsonl", "--suite", "overhead-compiled")
INFERENCE_TARGETS = command("report", f"{EPYC}/inference.jsonl", "--suite", "inference")
INFERENCE = command("report", f"{EPYC}/inference.jsonl")
FIELD = "results/reference/epyc-zen4-2core"  # the field's schemes (another machine)
FIELD_OVERHEAD = command("report", f"{FIELD}/overhead-field.jsonl", "--suite", "overhead-field")
DECISION = command("report", f"{FIELD}/decision/decision.jsonl", "--suite", "decision")
DECISION_BUDGET = command("report", f"{FIELD}/decision/decision-budget.jsonl", "--suite", "decision-budget")
DISTRIBUTED = command("report", "results/reference/epyc-2core/distributed/distributed.jsonl", "--suite", "distributed")
PROJECTION = written(f"{EPYC}/projection/projection.md",
                     f"resbench project --out {EPYC}/projection.jsonl", fenced=False)
GATE = written(f"{REF}/history-gate/summary.md", "python scripts/history_gate_check.py", fenced=False)
BLOCKS = {
    "README.md": {
        "quick-table": command("report", f"{REF}/quick.jsonl"),
        "suites-table": command("suites"),
    },
    "docs/FINDINGS.md": {
        "overhead-readme": OVERHEAD,
        "field-overhead-readme": FIELD_OVERHEAD,
        "compiled-readme": COMPILED,
        "inference-readme": INFERENCE_TARGETS,
        "gate-readme": GATE,
        "distributed-readme": DISTRIBUTED,
        "decision-readme": DECISION,
    },
    "docs/VARIANTS.md": {
        "list-table": command("list", "--d-model", "1024", "--depth", "16"),
    },
    "docs/CLUSTER.md": {
        "executors-pool": written("results/reference/epyc-2core/executors/summary-pool.md",
                                  "python scripts/executor_check.py --parts pool", fenced=False),
        "executors-slurm": written("results/reference/epyc-2core/executors/summary-slurm.md",
                                   "python scripts/executor_check.py --parts slurm", fenced=False),
        "executors-decision": written("results/reference/epyc-2core/executors/summary-decision.md",
                                      "python scripts/executor_check.py --parts decision", fenced=False),
    },
    "docs/DECISION.md": {
        "decision-doc": DECISION,
        "decision-budget-doc": DECISION_BUDGET,
    },
    "docs/DISTRIBUTED.md": {
        "distributed-doc": DISTRIBUTED,
        "distributed-field-doc": command("report", f"{FIELD}/distributed/distributed-field.jsonl", "--suite",
                                         "distributed-field"),
    },
    "docs/INFERENCE.md": {
        "inference-targets": INFERENCE_TARGETS,
        "inference-table": INFERENCE,
        "profile-decode-A": written(f"{REF}/inference/profile-decode-A.md",
                                    "python scripts/profile_overhead.py block-attnres --option block_size=4 "
                                    "--view decode --batch 1 --top 12"),
        "projection-inference": PROJECTION,
    },
    "docs/MEASURING.md": {
        "roofline-h100": script("scripts/roofline_table.py"),
    },
    "docs/HISTORY.md": {
        "gate-summary": GATE,
    },
    "docs/OVERHEAD.md": {
        "overhead-table": OVERHEAD,
        "overhead-fixed-table": OVERHEAD_FIXED,
        "field-overhead": FIELD_OVERHEAD,
        "compiled-table": COMPILED,
        "profile-compiled-block-A": written(f"{REF}/overhead/profile-compiled-block-A.md",
                                            "python scripts/profile_overhead.py block-attnres --option block_size=4 "
                                            "--compile default --rounds 4 --top 12"),
        "profile-full-A": written(f"{REF}/overhead/profile-full-A.md",
                                  "python scripts/profile_overhead.py full-attnres --top 12"),
        "profile-block-B": written(f"{REF}/overhead/profile-block-B.md",
                                   "python scripts/profile_overhead.py block-attnres --option block_size=4 "
                                   "--d-model 2048 --depth 8 --heads 16 --batch 2 --top 12"),
    },
    "docs/SCALING.md": {
        "scaling-table": written(f"{EPYC}/scaling/scaling_table.md", f"resbench scale --out {EPYC}/scaling.jsonl",
                                 fenced=False),
        "projection-table": PROJECTION,
    },
}


def output(source) -> str:
    kind, args = source
    if kind == "written":
        path, by, fenced = args
        body = Path(path).read_text().rstrip()
        return f"```text\n$ {by}\n{body}\n```" if fenced else f"`{path}` (`{by}`):\n\n{body}"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "script":
            argv = sys.argv
            sys.argv = list(args)
            try:
                runpy.run_path(args[0], run_name="__main__")
            finally:
                sys.argv = argv
            return f"```text\n$ python {' '.join(args)}\n{buf.getvalue().rstrip()}\n```"
        main(args)
    return f"```text\n$ resbench {' '.join(args)}\n{buf.getvalue().rstrip()}\n```"


def render(text: str, blocks: dict, where: str) -> str:
    for name, source in blocks.items():
        pattern = re.compile(rf"<!-- {name} -->.*?<!-- /{name} -->", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{where} has no block <!-- {name} -->")
        body = output(source)
        text = pattern.sub(lambda m: f"<!-- {name} -->\n{body}\n<!-- /{name} -->", text)
    return text


def cli() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a file differs from its sources; write nothing")
    args = p.parse_args()
    here = os.getcwd()
    os.chdir(ROOT)  # sources name the reference files relative to the repository
    try:
        changed = []
        for rel, blocks in BLOCKS.items():
            old = Path(rel).read_text()
            new = render(old, blocks, rel)
            if new != old:
                changed.append(rel)
                if not args.check:
                    Path(rel).write_text(new)
    finally:
        os.chdir(here)
    if args.check and changed:
        print(f"{', '.join(changed)}: tables differ from their sources: run python scripts/doc_tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
