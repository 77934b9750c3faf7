#!/usr/bin/env python3
"""Measure the history gate: its false alarms on unchanged code and its power on a planted
slowdown, with asv's own runs on this machine.

    .venv/bin/python scripts/history_gate_check.py [--commit HEAD] [--machine NAME] [--out DIR]

1. The same commit, measured twice by `asv run COMMIT^!` (two results folders, back to back):
   `resbench compare` of the two must flag nothing.
2. A planted regression: the commit plus two extra matmuls in Highway's gate (numerically a no-op,
   `0 * W u`), committed on a throwaway branch and measured the same way: it must be flagged.
3. The committed history (results/asv/MACHINE): every pair of consecutive commits whose diff
   touches nothing under harness/ or variants/ (the measured code) is a pair of unchanged-code
   runs taken hours apart; the flags among them are the gate's false alarms in practice.

Writes DIR (default results/reference/<machine>/history-gate): the three results files laid
out as asv writes them (benchmarks.json beside run-a/, run-b/, planted/), the two comparisons
(`--all`: every series, both values) and summary.md. Takes ~5 minutes on 2 cores; run it on
a quiet machine (it times things) and not beside another asv run (they share .asv/env).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLANT_FILE = "variants/highway.py"
PLANT_FROM = "g = torch.sigmoid(self.gates[i](u))"
PLANT_TO = "g = torch.sigmoid(self.gates[i](u) + 0.0 * self.gates[i](u) + 0.0 * self.gates[i](u))"
MEASURED_CODE = ("harness/", "variants/")


def sh(*cmd: str, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, check=check, capture_output=True, text=True)


def asv_conf(tmp: Path, results: Path) -> Path:
    from asv.util import load_json

    conf = load_json(str(ROOT / "asv.conf.json"), js_comments=True)
    conf.update(repo=str(ROOT), benchmark_dir=str(ROOT / "benchmarks"), results_dir=str(results),
                html_dir=str(tmp / "html"), env_dir=str(ROOT / ".asv" / "env"))
    path = tmp / f"asv-{results.name}.json"
    path.write_text(json.dumps(conf))
    return path


def asv_run(commit: str, machine: str, results: Path, tmp: Path) -> Path:
    print(f"asv run {commit[:8]}^! -> {results}", file=sys.stderr)
    res = subprocess.run([sys.executable, "-m", "asv", "run", f"{commit}^!", "--machine", machine,
                          "--config", str(asv_conf(tmp, results))], cwd=ROOT, capture_output=True, text=True)
    files = list((results / machine).glob(f"{commit[:8]}-*.json"))
    if res.returncode != 0 or not files:
        sys.exit(f"asv run failed for {commit}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return files[0]


def planted_commit(commit: str, tmp: Path) -> tuple[str, str]:
    """(hash, branch) of COMMIT plus the planted slowdown, committed in a throwaway worktree."""
    branch = f"resbench-planted-{commit[:8]}"
    wt = tmp / "planted-worktree"
    sh("git", "worktree", "add", "-q", "-b", branch, str(wt), commit)
    src = (wt / PLANT_FILE).read_text()
    if PLANT_FROM not in src:
        sys.exit(f"{PLANT_FILE} at {commit[:8]} has no `{PLANT_FROM}` to plant into")
    (wt / PLANT_FILE).write_text(src.replace(PLANT_FROM, PLANT_TO, 1))
    sh("git", "-c", "user.name=resbench", "-c", "user.email=resbench@localhost", "commit", "-qam",
       "planted regression: two extra matmuls in Highway's gate (history_gate_check.py)", cwd=wt)
    return sh("git", "rev-parse", "HEAD", cwd=wt).stdout.strip(), branch


def gate(base: Path, head: Path, report: Path) -> dict:
    cmd = [sys.executable, "-m", "resbench", "compare", str(base), str(head)]
    text = subprocess.run(cmd + ["--all"], cwd=ROOT, capture_output=True, text=True).stdout
    report.write_text(f"```text\n$ resbench compare {base.parent.name}/{base.name} {head.parent.name}/{head.name} --all\n"
                      f"{text}```\n")
    out = subprocess.run(cmd + ["--json"], cwd=ROOT, capture_output=True, text=True)
    return json.loads(out.stdout)


def history_pairs(machine: str) -> list[tuple[str, str, Path, Path]]:
    """Consecutive first-parent commits of main with results, whose diff leaves the measured code alone."""
    folder = ROOT / "results" / "asv" / machine
    by_hash = {p.name.split("-")[0]: p for p in folder.glob("*-*.json")}
    commits = sh("git", "rev-list", "--first-parent", "--reverse", "main").stdout.split()
    measured = [c for c in commits if c[:8] in by_hash]
    pairs = []
    for a, b in zip(measured, measured[1:]):
        changed = sh("git", "diff", "--name-only", a, b).stdout.split()
        if not any(f.startswith(MEASURED_CODE) for f in changed):
            pairs.append((a, b, by_hash[a[:8]], by_hash[b[:8]]))
    return pairs


def history_span(machine: str) -> str:
    """Which first-parent commits of main, from the one that added the asv suite, have results."""
    first = sh("git", "log", "--diff-filter=A", "--format=%H", "main", "--", "asv.conf.json").stdout.split()[-1]
    commits = sh("git", "rev-list", "--first-parent", "--reverse", f"{first}^..main").stdout.split()
    have = {p.name.split("-")[0] for p in (ROOT / "results" / "asv" / machine).glob("*-*.json")}
    missing = [c[:8] for c in commits if c[:8] not in have]
    return (f"Shipped history `results/asv/{machine}/`: {len(commits) - len(missing)} of the {len(commits)} commits on "
            f"main from {first[:8]} (the commit that added the asv suite) to {commits[-1][:8]}; missing: "
            f"{', '.join(missing) or 'none'}.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commit", default="HEAD")
    ap.add_argument("--machine", help="asv machine name (default: the only one in ~/.asv-machine.json)")
    ap.add_argument("--out", help="output folder (default results/reference/<machine>/history-gate)")
    args = ap.parse_args()
    machines = [k for k in json.loads((Path.home() / ".asv-machine.json").read_text()) if k != "version"]
    machine = args.machine or (machines[0] if len(machines) == 1 else sys.exit(f"pick --machine of {machines}"))
    commit = sh("git", "rev-parse", args.commit).stdout.strip()
    out = Path(args.out) if args.out else ROOT / "results" / "reference" / machine / "history-gate"
    with tempfile.TemporaryDirectory(prefix="resbench-gate-") as t:
        tmp = Path(t)
        runs = {name: asv_run(commit, machine, tmp / name, tmp) for name in ("run-a", "run-b")}
        planted, branch = planted_commit(commit, tmp)
        try:
            runs["planted"] = asv_run(planted, machine, tmp / "planted", tmp)
        finally:
            sh("git", "worktree", "remove", "--force", str(tmp / "planted-worktree"), check=False)
            sh("git", "branch", "-D", branch, check=False)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        shutil.copy(tmp / "run-a" / "benchmarks.json", out / "benchmarks.json")
        kept = {}
        for name, f in runs.items():
            (out / name).mkdir()
            kept[name] = out / name / f.name
            shutil.copy(f, kept[name])
    same = gate(kept["run-a"], kept["run-b"], out / "same-commit.md")
    plant = gate(kept["run-a"], kept["planted"], out / "planted.md")
    pairs = history_pairs(machine)
    flagged = []
    for a, b, fa, fb in pairs:
        res = subprocess.run([sys.executable, "-m", "resbench", "compare", str(fa), str(fb), "--json"], cwd=ROOT,
                             capture_output=True, text=True)
        rows = json.loads(res.stdout)["rows"]
        flagged += [(a[:8], b[:8], r["series"]) for r in rows if r["regressed"]]
    lines = [f"**History gate on {machine}, commit {commit[:8]}**", "",
             f"Command: `.venv/bin/python scripts/history_gate_check.py --commit {commit[:8]}`; thresholds: "
             f"ratio ±{same['threshold']:.0%}, absolute time ±{same['time_threshold']:.0%}, bytes/FLOPs exact, "
             "loss 0.1%.", "",
             "| check | series | flagged | largest \\|HEAD/BASE − 1\\| (ratio / time / exact / loss) |", "|---|---|---|---|"]
    for name, rep in (("same commit twice (run-a vs run-b)", same), ("planted Highway slowdown (run-a vs planted)", plant)):
        s = rep["spread"]
        lines.append(f"| {name} | {len(rep['rows'])} | {rep['regressions']} | "
                     + " / ".join(f"{s.get(k, 0):.2%}" for k in ("ratio", "time", "exact", "fixed-seed")) + " |")
    lines += ["", "Flagged in the planted run:", ""]
    lines += [f"- {r['series']}: {r['base']:.6g} → {r['head']:.6g} (×{r['ratio']:.3f})"
              for r in plant["rows"] if r["regressed"]]
    lines += ["", history_span(machine), "", f"In it, {len(pairs)} pairs of consecutive commits whose diff touches nothing under "
              f"{' or '.join(MEASURED_CODE)}, each side measured in its own `asv run`; flagged series among them: "
              f"{len(flagged)}", ""]
    lines += [f"- {a} → {b}: {s}" for a, b, s in flagged]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(out / "summary.md")
    return 0 if same["regressions"] == 0 and plant["regressions"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
