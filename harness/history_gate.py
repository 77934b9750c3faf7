"""The regression gate over asv history: one commit's asv results against another's (or the
same commit measured twice), series by series, with a threshold per rule.

A series' rule comes from the benchmark's declared unit (benchmarks/*.py): interleaved ratios vs
PreNorm are what this machine resolves, so they gate at `--threshold`; absolute milliseconds
move with the machine's load and gate only at the loose `--time-threshold`; bytes and FLOPs are
exact, so any increase is a regression and any decrease a change worth seeing; the fixed-seed
loss is deterministic on one CPU but moves in its 7th digit when a commit reorders float
operations, so it gates at 0.1%. A series measured at BASE that HEAD failed or skipped is a regression too.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from tabulate import tabulate

from .compare import judge
from .errors import UserError

RULES = {  # the unit a benchmark declares -> how its series is gated
    "x PreNorm": "ratio", "ms (machine-dependent)": "time", "bytes": "exact", "FLOPs/token": "exact",
    "nats": "fixed-seed"}
EXACT_TOLERANCE = 1e-9  # relative: JSON round-trips, nothing more
LOSS_TOLERANCE = 1e-3


@dataclass
class SeriesRow:
    series: str
    rule: str  # ratio, time, exact or fixed-seed (RULES)
    base: float | None
    head: float | None
    ratio: float | None
    allowed: float
    verdict: str
    regressed: bool


def is_asv_result(path: str) -> bool:
    """An asv results file (one per commit and machine, e.g.
    results/asv/xeon-2core/f8fd65b0-virtualenv-py3.11-torch2.13.0.json), not resbench JSONL."""
    p = Path(path)
    if p.suffix != ".json" or not p.is_file():
        return False
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "commit_hash" in d and "results" in d


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def read_benchmarks(path: Path) -> dict:
    """The benchmarks.json asv writes beside the machine folders, checked as asv publish reads it:
    a mapping of benchmark name -> description, with asv's format version."""
    from asv.benchmarks import Benchmarks
    from asv.commands.publish import check_benchmark_params

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable asv benchmarks.json ({_why(exc)})") from None
    if not isinstance(doc, dict) or doc.get("version") != Benchmarks.api_version:
        got = f"version {doc.get('version')!r}" if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
        raise UserError(f"{path}: not an asv benchmarks.json (a mapping with version {Benchmarks.api_version}; "
                        f"got {got})")
    benches = {k: v for k, v in doc.items() if k != "version"}
    for name, desc in benches.items():
        try:
            if not isinstance(desc, dict):
                raise ValueError("not a mapping")
            check_benchmark_params(name, dict(desc))
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: benchmark {name[:80]!r} is malformed ({_why(exc)})") from None
    return benches


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_results_file(path: Path) -> None:
    """What asv's Results.load and this gate rely on, checked up front: asv raises whatever its
    parser trips on, and silently pairs a short value list with the first parameter combinations."""
    from asv.results import Results

    def bad(why: str) -> UserError:
        return UserError(f"{path}: not an asv results file this asv can read: {why}")

    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise bad(_why(exc)) from None
    if not isinstance(d, dict):
        raise bad(f"a JSON {type(d).__name__}, not a mapping")
    if d.get("version") != Results.api_version:
        raise bad(f"format version {d.get('version')!r}, this asv reads {Results.api_version}")
    for key, typ in (("params", dict), ("requirements", dict), ("result_columns", list), ("results", dict)):
        if not isinstance(d.get(key), typ):
            raise bad(f"{key!r} is missing or not a {'mapping' if typ is dict else 'list'}")
    cols = d["result_columns"]
    if not all(isinstance(c, str) for c in cols) or "result" not in cols or "params" not in cols:
        raise bad("'result_columns' must be names including 'result' and 'params'")
    i_res, i_par = cols.index("result"), cols.index("params")
    for name, row in d["results"].items():
        if not isinstance(row, list) or len(row) <= max(i_res, i_par) or len(row) > len(cols):
            raise bad(f"the entry of {name[:80]!r} is not a list of {max(i_res, i_par) + 1} to {len(cols)} columns")
        params, values = row[i_par], row[i_res]
        if not isinstance(params, list) or not all(isinstance(p, list) for p in params):
            raise bad(f"the params of {name[:80]!r} are not a list of lists")
        if values is None:  # every combination failed
            continue
        n = math.prod(len(p) for p in params)
        if not isinstance(values, list) or len(values) != n or not all(v is None or _is_number(v) for v in values):
            raise bad(f"the result of {name[:80]!r} is not a list of {n} numbers or nulls (one per combination "
                      "of its params)")


def load(path: str) -> tuple[dict, dict, dict]:
    """({"name(p1, p2)": value or None}, {"name(...)": unit}, machine params) of one results file.
    Units come from the benchmarks.json asv writes beside the machine folders."""
    from asv.results import Results  # asv is the [history] extra

    p = Path(path)
    bench_file = p.parent.parent / "benchmarks.json"
    units = {}
    if bench_file.is_file():
        units = {k: v.get("unit", "") for k, v in read_benchmarks(bench_file).items()}
    check_results_file(p)
    try:  # checked above; asv may still raise what its parser trips on
        res = Results.load(str(p))
        values, unit_of = {}, {}
        for key in sorted(res.get_all_result_keys()):
            params = res.get_result_params(key)
            # one value per combination, a one-item list for an unparameterized benchmark
            got = res.get_result_value(key, params)
            for combo, v in zip(itertools.product(*params), got):
                name = f"{key}({', '.join(str(x).strip(chr(39)) for x in combo)})" if combo else key
                # NaN is how asv records a failed measurement; an infinite one is no measurement either
                values[name] = float(v) if v is not None and math.isfinite(v) else None
                unit_of[name] = units.get(key, "")
    except Exception as exc:  # noqa: BLE001 - a results file is input: one line naming it, never a traceback
        raise UserError(f"{path}: not an asv results file this asv can read ({_why(exc)})") from None
    return values, unit_of, res.params


def compare(base: dict, head: dict, units: dict, threshold: float, time_threshold: float) -> list[SeriesRow]:
    if not all(math.isfinite(t) and t >= 0 for t in (threshold, time_threshold)):  # NaN would pass anything
        raise UserError(f"thresholds must be finite and >= 0, got {threshold} and {time_threshold}")
    allowed = {"ratio": threshold, "time": time_threshold, "exact": EXACT_TOLERANCE, "fixed-seed": LOSS_TOLERANCE}
    rows = []
    for name in sorted(set(base) | set(head)):
        rule = RULES.get(units.get(name, ""), "ratio")
        b, h, lim = base.get(name), head.get(name), allowed[rule]
        if b is None:
            rows.append(SeriesRow(name, rule, b, h, None, lim, "new at HEAD" if h is not None else "no data", False))
            continue
        if h is None:
            rows.append(SeriesRow(name, rule, b, h, None, lim, "missing at HEAD: REGRESSION", True))
            continue
        ratio = h / b if b else (1.0 if h == b else math.inf)
        _, verdict, bad = judge(ratio, lim, lower="better" if rule in ("ratio", "time") else "changed (lower)")
        rows.append(SeriesRow(name, rule, b, h, ratio, lim, verdict, bad))
    return rows


def spread(rows: list[SeriesRow]) -> dict[str, float]:
    """Largest |HEAD/BASE - 1| per rule: how far apart the two runs are at worst."""
    out: dict[str, float] = {}
    for r in rows:
        if r.ratio is not None:
            out[r.rule] = max(out.get(r.rule, 0.0), abs(r.ratio - 1))
    return out


def render(rows: list[SeriesRow], show_all: bool) -> str:
    shown = rows if show_all else [r for r in rows if r.verdict not in ("within threshold", "no data")]
    def num(v):
        return "-" if v is None else f"{v:.10g}"

    table = [[r.series, r.rule, num(r.base), num(r.head), "-" if r.ratio is None else f"{r.ratio:.4f}",
              "exact" if r.rule == "exact" else f"±{r.allowed:.1%}",
              r.verdict] for r in shown]
    return tabulate(table, headers=["series", "rule", "BASE", "HEAD", "HEAD/BASE", "allowed", "verdict"],
                    disable_numparse=True, tablefmt="github")


def compare_asv(args) -> int:
    import sys

    (base, units_b, mb), (head, units_h, mh) = load(args.base), load(args.head)
    rows = compare(base, head, {**units_h, **units_b}, args.threshold, args.time_threshold)
    if not any(r.ratio is not None for r in rows):
        raise UserError(f"{args.base} and {args.head} have no series in common")
    for k in ("machine", "cpu", "arch"):
        if mb.get(k) != mh.get(k):
            print(f"resbench: warning: BASE and HEAD differ in {k}: {mb.get(k)!r} vs {mh.get(k)!r}", file=sys.stderr)
    bad = [r for r in rows if r.regressed]
    worst = spread(rows)
    if args.json:
        print(json.dumps({"base": args.base, "head": args.head, "threshold": args.threshold,
                          "time_threshold": args.time_threshold, "spread": worst,
                          "rows": [asdict(r) for r in rows], "regressions": len(bad)}, indent=1),
              file=getattr(args, "stdout", sys.stdout))  # the CLI's real stdout under --json
        return 1 if bad else 0
    print(f"BASE {args.base}\nHEAD {args.head}\nregression: a ratio vs PreNorm above {1 + args.threshold:.2f}x "
          f"BASE's, an absolute time above {1 + args.time_threshold:.2f}x, any increase of bytes or FLOPs, "
          f"the loss up by more than {LOSS_TOLERANCE:.1%}\n")
    print(render(rows, args.all))
    print("\nlargest |HEAD/BASE - 1|: " + ", ".join(f"{k} {v:.2%}" for k, v in sorted(worst.items())))
    print(f"{len(rows)} series, {len(bad)} regression(s)" + (": " + "; ".join(r.series for r in bad[:20]) if bad else ""))
    return 1 if bad else 0
