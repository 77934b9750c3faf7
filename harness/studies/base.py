"""What a study declares. A study is a suite `kind:`; `resbench run SUITE` and `resbench report
RESULTS --suite SUITE` dispatch on it, so adding a study is adding one module to this package.

Two shapes of study share the protocol suite → cells → run → analyse → report:
- a *measurement* study (loss, overhead) is a measurement suite (variants × shapes × workloads,
  run by the runner in worker processes) plus the keys it adds (`keys`, checked by
  `parse_keys`); `analyse` turns the suite's records into its report;
- an *in-process* study (scaling, projection: `own_schema = True`) has its own schema (`parse`),
  runs its cells itself (`run`) and re-renders from the records it wrote (`report`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..registry import Registry

REGISTRY = Registry("study")
register = REGISTRY.register  # class decorator: one instance of the study, as suite kind `name`


class Study:
    name: str = ""
    help: str = ""
    own_schema: bool = False
    keys: tuple[str, ...] = ()  # measurement study: the top-level suite keys it adds
    command: str | None = None  # in-process study: a shortcut subcommand (`resbench scale` = `run scaling`)
    default_suite: str | None = None  # the shipped suite the shortcut runs without an argument

    # -- measurement studies -----------------------------------------------------------------
    def parse_keys(self, raw: dict, shapes: list[str], labels: list[str]) -> dict[str, Any]:
        """This study's keys of a suite → their validated values (Suite.study)."""
        return {}

    def bounds(self, values: dict) -> dict:
        """Suite.bounds from this study's validated keys: {shape: {label: {(cost key, compile
        mode): bound}}}, the ratios it checks against a bound (adaptive rounds settle them)."""
        return {}

    def check(self, suite) -> None:
        """Raise ConfigError if the parsed suite cannot give this study its report (a workload
        it joins is missing): at parse time, not as a silent exit 1 after the run."""

    def analyse(self, records: list[dict], suite, out: Path) -> tuple[str, bool]:
        """(report text, whether its checks pass) from the suite's records; files go under `out`."""
        raise NotImplementedError

    # -- in-process studies -------------------------------------------------------------------
    def parse(self, raw: dict, default_name: str):
        raise NotImplementedError

    def run(self, study, out: Path, progress: bool) -> int:
        raise NotImplementedError

    def report(self, paths: list[str], study, out: Path) -> int:
        raise NotImplementedError

    def count_cells(self, study) -> int:
        """How many cells its config runs (`resbench suites`)."""
        raise NotImplementedError
