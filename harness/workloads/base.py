"""The workload protocol: what one kind of measurement declares so that config, runner, worker,
report and compare can handle it without knowing its name.

A workload module defines a `Workload` subclass, decorated with `@register("name")`:

    Params            a frozen dataclass: the YAML keys of `workloads.<name>`, typed, with defaults
    positive/choices  fields that must be > 0 (other numbers must be >= 0), fields with a fixed set
    compiles          whether it honours the suite's compile axis (cell.compile; harness/compiling.py)
    timed/times       whether its jobs time things (executors never run one beside another job)
    check/preflight   checks against the rest of the suite (config time) and its data (before any cell)
    jobs              how its cells group into worker processes (default: one cell per process)
    run / run_cell    what the worker process does, in the job's RunContext (device, precision,
                      compile, threads; harness/workloads/common.py): {cell key: (status, message, metrics)}
    summary/columns   the report's row fields from a variant's ok records, and the columns showing them
    footnotes/warning lines under a report table; a reason the table's numbers cannot be trusted
    compare_metrics   metric -> (read (value, raw samples or None) from metrics, format)
    metrics_schema    the fields and types an ok record's metrics must have (checked on read)
    cost              the overhead study's fields (`Cost`) from a variant's ok records, and with
    relative_cost     the baseline's (ratios needing both); cost_columns: the study's columns
    machine_peak      the machine's own speed as a record measured it (compare's drift warning)
"""
from __future__ import annotations

import statistics
from typing import Any, Callable, TypedDict

from ..cells import Cell
from ..errors import classify
from ..registry import Registry

Outcome = tuple[str, "str | None", dict]  # (status, message, metrics)
TIMING_SCHEMA = {"median": float, "min": float, "max": float, "samples?": list}  # measure.summarize's
RATIO_SCHEMA = ({"median": float, "ci?": (list, None)}, None)  # a paired ratio with its interval, or none
REGISTRY = Registry("workload")
register = REGISTRY.register  # class decorator: one instance of the workload under `name`


class Cost(TypedDict, total=False):
    """A variant's cost at one shape, the fields each workload's `cost` contributes (the overhead
    study reads them, and names the ratios it derives train_memory and infer_state)."""
    train: float | None          # throughput: median train-step time ratio to the baseline
    train_ci: list | None        # its 95% interval
    prefill: float | None
    prefill_ci: list | None
    train_mfu: float | None
    prefill_mfu: float | None
    decode: float | None         # decode: inter-token latency ratio, batch 1 at the longest context
    decode_ci: list | None
    train_peak: int              # memory: peak live bytes of a train step
    infer_peak: int              # peak live bytes of a no-grad forward
    state_vectors: int           # the variant's declared depth state, d-vectors per token
    vector_bytes: int            # bytes of one d-vector for every token of the batch


class Workload:
    name = "?"
    Params: type = type(None)
    order = 50  # expansion order: cells of a lower order run first
    positive: tuple[str, ...] = ()
    choices: dict[str, tuple] = {}
    deterministic = False  # the worker asks torch for deterministic algorithms (bit-for-bit curves)
    compiles = False  # it runs cells under torch.compile (a suite's compile axis); else eager cells only
    timed_calls = False  # the worker reports progress per timed call (an inner progress bar)
    # it times things: its job never shares its device (on a CPU, the machine) with another job
    timed = False
    columns: tuple[tuple[str, Callable[[dict], str]], ...] = ()
    compare_metrics: dict[str, tuple[Callable[[dict], tuple], str]] = {}
    # what an ok record's metrics must hold for the readers above (results.check_value's specs:
    # float = any number, (x, None) = nullable, "name?" = may be absent); a record that does not
    # is skipped on read with one warning, never a traceback in a report
    metrics_schema: dict = {}
    cost_columns: tuple[tuple[str, str], ...] = ()  # (Cost key, header) in the overhead table; bounds by key
    cost_exact = False  # its cost columns are exact counts (a bound is met by the value), not timed ratios
    distributed = False  # its cells run on several ranks (the suite's launcher; harness/parallel/launch.py)
    axes: tuple[str, ...] = ()  # Params fields a suite may give as a list: one cell per value
    # Params fields added after records existed: at these defaults they stay out of the cell, so
    # earlier cells keep their keys (as an eager cell keeps its key without `compile`)
    unkeyed_defaults: dict = {}

    # -- config time ------------------------------------------------------------------------
    def check(self, params, variant_names: list[str]) -> None:
        """Raise ConfigError for a combination with the rest of the suite that cannot run."""

    def check_run(self, params, launch, shapes, precisions) -> None:
        """Raise ConfigError for how the suite runs it (launcher's ranks, shapes, precisions)."""

    def normalize(self, params: dict) -> dict:
        """One cell's params after the axes are expanded (e.g. fields that one value makes moot)."""
        return params

    def skips(self, params: dict, variant: str) -> bool:
        """Whether a (params, variant) combination measures nothing new and makes no cell."""
        return False

    def times(self, params: dict) -> bool:
        """Whether a job of these params is a timing (executors keep it alone on its device)."""
        return self.timed

    def preflight(self, params, shapes) -> None:
        """Raise ConfigError for a user-fixable problem with the data, once, before any cell."""

    # -- running ----------------------------------------------------------------------------
    def jobs(self, cells: list[Cell], todo: set[str]) -> list[list[Cell]]:
        return [[c] for c in cells if c.key in todo]

    def run(self, cells: list[Cell], ctx, progress=None) -> dict[str, Outcome]:
        """`ctx`: the job's RunContext (harness/workloads/common.py), resolved once by the worker."""
        out = {}
        for cell in cells:
            try:
                out[cell.key] = self.run_cell(cell, ctx)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - recorded as the cell's status
                out[cell.key] = classify(exc)
        return out

    def run_cell(self, cell: Cell, ctx) -> Outcome:
        raise NotImplementedError

    # -- reading records --------------------------------------------------------------------
    def summary(self, metrics: list[dict]) -> dict[str, Any]:
        """Report row fields from one variant's ok metrics (an empty list: the fields, all None)."""
        return {}

    def footnotes(self, metrics: list[dict], rows: list[dict]) -> list[str]:
        return []

    def warning(self, records: list[dict]) -> str | None:
        return None

    def cost(self, records: list[dict]) -> Cost:
        return {}

    def relative_cost(self, cost: Cost, base: Cost) -> Cost:
        """Fields of a variant's cost that need the baseline's cost too (both hold every workload's)."""
        return {}

    def machine_peak(self, metrics: dict) -> float | None:
        """A speed of the machine itself this record measured (a GEMM probe), if any."""
        return None


# -- formatting helpers for columns -----------------------------------------------------------

def median_present(xs):
    """Median of the values that are not None; None if there are none."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def fmt_ms(ms: dict | None) -> str:
    if not ms:
        return "-"
    return f"{ms['median']:.1f} [{ms['min']:.1f}–{ms['max']:.1f}]"


# -- adaptive rounds (harness/measure/rounds.py), for every timed workload alike ----------------------

def check_rounds(workload: str, params) -> None:
    """`precision` a relative half-width in [0, 0.5) (0: fixed rounds), `budget_s` >= 0."""
    import math

    from ..errors import ConfigError

    p, b = getattr(params, "precision", 0.0), getattr(params, "budget_s", 0.0)
    if not (isinstance(p, (int, float)) and math.isfinite(p) and 0 <= p < 0.5):
        raise ConfigError(f"workloads.{workload}.precision must be a relative half-width in [0, 0.5) "
                          f"(0.02 = stop at ±2%; 0 = fixed rounds), got {p!r}")
    if not (isinstance(b, (int, float)) and math.isfinite(b) and b >= 0):
        raise ConfigError(f"workloads.{workload}.budget_s must be a finite number of seconds >= 0, got {b!r}")


def rounds_notes(metrics: list[dict], views: tuple[str, ...]) -> list[str]:
    """One footnote line on adaptive rounds: how many ran per view and why they ended."""
    why = {"precision": "precise enough", "resolved": "every bound settled", "rounds": "the most allowed",
           "budget": "budget spent"}
    parts, looks, precision = [], 0, None
    for view in views:
        recs = [m.get(f"{view}_rounds") for m in metrics if m.get(f"{view}_rounds")]
        adaptive = [r for r in recs if r.get("precision")]
        if not adaptive:
            continue
        looks, precision = max(r["looks"] for r in adaptive), adaptive[0]["precision"]
        seen = sorted({(r["rounds"], r["stopped"]) for r in adaptive})
        parts.append(f"{view} " + ", ".join(f"{n} rounds ({why.get(w, w)})" for n, w in seen))
    if not parts:
        return []
    plan = (f"each interval is 95% jointly over the {looks} planned looks, so stopping on the data keeps it valid"
            if looks > 1 else "repeats below the first look (8): one look, as fixed rounds")
    return [f"Adaptive rounds to ±{precision:.1%}: " + "; ".join(parts) + f"; {plan}."]
